//! Certificates in memory and in the store: what a handshake finds without issuing.

use super::*;

/// A certificate in memory, and whether it has been served since it was loaded.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) loaded: Arc<Loaded>,
    pub(super) used: AtomicBool,
}

impl Certs {
    /// The certificate in memory for `name`, unless it has expired.
    pub fn cached(&self, name: &str) -> Option<Arc<Loaded>> {
        self.cached_entry(name).map(|c| c.loaded.clone())
    }

    pub(super) fn cached_entry(&self, name: &str) -> Option<Arc<Cached>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.get(name).filter(|c| c.loaded.meta.not_after > now_secs()).cloned()
    }

    pub(super) fn remember(&self, name: &str, loaded: Arc<Loaded>) {
        let cached = Arc::new(Cached { loaded, used: AtomicBool::new(false) });
        self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), cached);
    }

    /// Notes in the store that `name`'s certificate was served (once per certificate and
    /// process, off the handshake's path): names under wildcard patterns are renewed only then.
    pub(super) fn mark_used(&self, name: &str) {
        let (store, name) = (self.store.clone(), name.to_owned());
        tokio::spawn(async move {
            let now = now_secs().to_string();
            if let Err(e) = store.put_blob(&keys::cert_used(&name), now.as_bytes(), None).await {
                tracing::debug!(name, error = %e, "cannot note that a certificate was used");
            }
        });
    }

    /// When `name`'s certificate was last noted as served (seconds; 0 if never).
    pub(crate) async fn last_used(&self, name: &str) -> Result<i64, CertError> {
        let used = self.store.blob(&keys::cert_used(name)).await?;
        Ok(used.and_then(|b| String::from_utf8(b).ok()).and_then(|t| t.parse().ok()).unwrap_or(0))
    }

    pub(super) fn forget(&self, name: &str) {
        self.cache.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The stored certificate of `name`, if it parses and has not expired.
    pub(super) async fn stored(&self, name: &str) -> Result<Option<Arc<Loaded>>, CertError> {
        let Some(bytes) = self.store.blob(&keys::cert_latest(name)).await? else {
            return Ok(None);
        };
        match StoredCert::from_json(&bytes).and_then(|s| s.load()) {
            // Served only for names it covers (a seed deployment may hold one under the
            // wrong key).
            Ok(loaded) if !loaded.meta.covers(name) => {
                tracing::warn!(name, names = ?loaded.meta.names, "the certificate stored for this name does not cover it; it is not served");
                Ok(None)
            }
            Ok(loaded) if loaded.meta.not_after > now_secs() => Ok(Some(Arc::new(loaded))),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(name, error = %chain(&e), "the stored certificate is unusable; a new one will be issued");
                Ok(None)
            }
        }
    }

    /// Re-reads `name` from the store into memory (another node renewed it).
    pub async fn reload(&self, name: &str) {
        match self.stored(name).await {
            Ok(Some(loaded)) => self.remember(name, loaded),
            Ok(None) => self.forget(name),
            Err(e) => tracing::warn!(name, error = %chain(&e), "cannot re-read a certificate"),
        }
    }

    /// Takes on the certificate stored for `name` that Portico does not manage yet (one
    /// the seed wrote as `<name>:latest`): records its state, so that it is renewed when due
    /// by its real expiry (the seed's wildcard certificates carry a made-up one). Returns
    /// whether there was one to take on.
    pub(crate) async fn adopt(&self, name: &str) -> Result<bool, CertError> {
        if self.looked_for.lock().unwrap_or_else(|e| e.into_inner()).contains(name) {
            return Ok(false);
        }
        let Some(loaded) = self.stored(name).await? else {
            self.looked_for.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
            return Ok(false);
        };
        let meta = &loaded.meta;
        let mut state = CertState {
            issuer: "imported".to_owned(),
            not_after: meta.not_after,
            issued: meta.not_before,
            next_attempt: meta.renew_at(self.settings().renew_remaining_ratio),
            ..CertState::default()
        };
        state.note(now_secs(), format!("taken on from the store, issued by {}", meta.issuer));
        match self.store.create(Kind::Cert, name, &state.to_fields()).await {
            Ok(()) => {
                tracing::info!(name, not_after = meta.not_after, "took on a stored certificate");
                Ok(true)
            }
            // Another node took it on first.
            Err(portico_store::StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
