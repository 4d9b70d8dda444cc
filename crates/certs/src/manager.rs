//! The certificate manager: cache, on-demand gate, single-flight issuance, backoff.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portico_model::Hostname;
use portico_store::{Change, Kind, Store, keys};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::internal::make_fallback;
use crate::status::CertState;
use crate::{CertError, IssueError, Issuer, Loaded, StoredCert, load_or_create, now_secs};

/// Decides which names may get a certificate: those a host pattern matches.
pub trait NamePolicy: Send + Sync + fmt::Debug {
    /// Whether `name` (normalised) may get a certificate.
    fn allows(&self, name: &str) -> bool;
}

/// Tunables of issuance and renewal.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// Renew when this fraction of a certificate's lifetime remains.
    pub renew_remaining_ratio: f64,
    /// Longest one issuance may take before it counts as failed.
    pub issue_timeout: Duration,
    /// First failure backoff; it doubles per consecutive failure...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// Issuances started per minute by this process, at most (protects the CA account).
    pub max_issuances_per_minute: usize,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            renew_remaining_ratio: 1.0 / 3.0,
            issue_timeout: Duration::from_secs(90),
            backoff_min: Duration::from_secs(60),
            backoff_max: Duration::from_secs(6 * 3600),
            max_issuances_per_minute: 60,
        }
    }
}

/// Why a name gets no certificate of its own.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("in failure backoff until {0}")]
    Backoff(i64),
    #[error("the issuance rate limit is reached")]
    RateLimited,
    #[error("another node is issuing and did not finish in time")]
    Busy,
    #[error(transparent)]
    Failed(#[from] CertError),
}

/// How an issuance was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A handshake for a name with no usable certificate.
    OnDemand,
    /// The renewal scheduler found the name due.
    Renewal,
    /// Someone asked for a new certificate now (`PUT /api/host/:item/renew`).
    Forced,
}

/// Certificates for the TLS acceptor; see the crate documentation.
pub struct Certs {
    store: Arc<dyn Store>,
    issuer: Arc<dyn Issuer>,
    policy: Arc<dyn NamePolicy>,
    settings: CertSettings,
    cache: RwLock<HashMap<String, Arc<Loaded>>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    started: Mutex<VecDeque<Instant>>,
    fallback: Arc<Loaded>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs").field("issuer", &self.issuer.kind()).finish_non_exhaustive()
    }
}

impl Certs {
    /// A manager over `store`, issuing with `issuer` for the names `policy` allows. Reads (or
    /// makes, once) the fallback certificate.
    pub async fn new(
        store: Arc<dyn Store>,
        issuer: Arc<dyn Issuer>,
        policy: Arc<dyn NamePolicy>,
        settings: CertSettings,
    ) -> Result<Arc<Self>, CertError> {
        let fallback =
            load_or_create(store.as_ref(), &keys::portico("fallback-cert"), async || make_fallback()).await?;
        let fallback = Arc::new(StoredCert::from_json(&fallback)?.load()?);
        Ok(Arc::new(Self {
            store,
            issuer,
            policy,
            settings,
            cache: RwLock::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            started: Mutex::new(VecDeque::new()),
            fallback,
        }))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The issuer's kind (`acme`, `internal`).
    pub fn issuer_kind(&self) -> &'static str {
        self.issuer.kind()
    }

    /// Whether the policy lets `name` have a certificate.
    pub fn allows(&self, name: &str) -> bool {
        self.policy.allows(name)
    }

    /// The fallback certificate: self-signed, for no real name.
    pub fn fallback(&self) -> &Arc<Loaded> {
        &self.fallback
    }

    /// The certificate in memory for `name`, unless it has expired.
    pub fn cached(&self, name: &str) -> Option<Arc<Loaded>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.get(name).filter(|l| l.meta.not_after > now_secs()).cloned()
    }

    fn remember(&self, name: &str, loaded: Arc<Loaded>) {
        self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), loaded);
    }

    fn forget(&self, name: &str) {
        self.cache.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The certificate to serve for a ClientHello's SNI: memory → store → gate → issuance.
    /// `None` means the fallback certificate: no SNI, or the name is an IP literal, unknown, or
    /// failing.
    pub async fn resolve(&self, sni: Option<&str>) -> Option<Arc<Loaded>> {
        let name = Hostname::parse(sni?).ok()?;
        let name = name.as_str();
        if name.parse::<IpAddr>().is_ok() {
            return None;
        }
        if let Some(loaded) = self.cached(name) {
            return Some(loaded);
        }
        if !self.policy.allows(name) {
            tracing::debug!(name, "no host matches this name: serving the fallback certificate");
            return None;
        }
        match self.obtain(name, Mode::OnDemand).await {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                tracing::info!(name, reason = %e, "no certificate for this name: serving the fallback certificate");
                None
            }
        }
    }

    /// Issues a new certificate for `name` now, whatever its state (the API's renew).
    pub async fn renew_now(&self, name: &str) -> Result<Arc<Loaded>, CertError> {
        self.obtain(name, Mode::Forced).await.map_err(refused_to_error)
    }

    /// Renews `name` if it is (still) due; used by the renewal scheduler.
    pub(crate) async fn renew_due(&self, name: &str) -> Result<Arc<Loaded>, CertError> {
        self.obtain(name, Mode::Renewal).await.map_err(refused_to_error)
    }

    /// The stored state of `name`'s certificate.
    pub async fn state(&self, name: &str) -> Result<Option<CertState>, CertError> {
        Ok(self.store.record(Kind::Cert, name).await?.map(|f| CertState::from_fields(&f)))
    }

    /// Asks the CA for `name`'s renewal window (ARI) and moves the next attempt into it, at a
    /// random moment, when that is earlier. Returns the state as stored.
    pub(crate) async fn consult_ari(&self, name: &str) -> Result<CertState, CertError> {
        let now = now_secs();
        let window = match self.store.blob(&keys::cert_latest(name)).await? {
            Some(bytes) => match self.issuer.renewal_window(&StoredCert::from_json(&bytes)?.leaf_der()?).await {
                Ok(window) => window,
                Err(e) => {
                    tracing::debug!(name, error = %e, "cannot read the CA's renewal information");
                    None
                }
            },
            None => None,
        };
        // The state as it is now (an issuance may have finished meanwhile).
        let mut state = self.state(name).await?.unwrap_or_default();
        state.ari_checked = now;
        if let Some((start, end)) = window {
            let at = pick_in_window(start, end, fastrand::f64()).max(now);
            if at < state.next_attempt {
                tracing::info!(
                    name,
                    window_start = start,
                    window_end = end,
                    renew_at = at,
                    "the CA's renewal window moves this renewal earlier"
                );
                state.next_attempt = at;
            }
        }
        self.store.put(Kind::Cert, name, &state.to_fields()).await?;
        Ok(state)
    }

    /// Removes `name`'s certificate and state (its host is gone and it has expired).
    pub(crate) async fn remove(&self, name: &str) -> Result<(), CertError> {
        self.store.delete_blob(&keys::cert_latest(name)).await?;
        self.store.delete(Kind::Cert, name).await?;
        self.forget(name);
        Ok(())
    }

    /// The stored certificate of `name`, if it parses and has not expired.
    async fn stored(&self, name: &str) -> Result<Option<Arc<Loaded>>, CertError> {
        let Some(bytes) = self.store.blob(&keys::cert_latest(name)).await? else {
            return Ok(None);
        };
        match StoredCert::from_json(&bytes).and_then(|s| s.load()) {
            Ok(loaded) if loaded.meta.not_after > now_secs() => Ok(Some(Arc::new(loaded))),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(name, error = %e, "the stored certificate is unusable; a new one will be issued");
                Ok(None)
            }
        }
    }

    /// Re-reads `name` from the store into memory (another node renewed it).
    pub async fn reload(&self, name: &str) {
        match self.stored(name).await {
            Ok(Some(loaded)) => self.remember(name, loaded),
            Ok(None) => self.forget(name),
            Err(e) => tracing::warn!(name, error = %e, "cannot re-read a certificate"),
        }
    }

    fn flight(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(name.to_owned()).or_default().clone()
    }

    fn end_flight(&self, name: &str) {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    fn take_rate(&self) -> Result<(), Refused> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while started.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            started.pop_front();
        }
        if started.len() >= self.settings.max_issuances_per_minute {
            return Err(Refused::RateLimited);
        }
        started.push_back(now);
        Ok(())
    }

    /// One issuance per name at a time in this process (waiters then find the result), one
    /// across nodes (a store lease).
    async fn obtain(&self, name: &str, mode: Mode) -> Result<Arc<Loaded>, Refused> {
        let flight = self.flight(name);
        let result = {
            let _turn = flight.lock().await;
            self.obtain_in_turn(name, mode).await
        };
        self.end_flight(name);
        result
    }

    async fn obtain_in_turn(&self, name: &str, mode: Mode) -> Result<Arc<Loaded>, Refused> {
        if mode == Mode::OnDemand {
            if let Some(loaded) = self.cached(name) {
                return Ok(loaded);
            }
            if let Some(loaded) = self.stored(name).await? {
                self.remember(name, loaded.clone());
                return Ok(loaded);
            }
        }
        let state = self.state(name).await?.unwrap_or_default();
        let now = now_secs();
        if mode == Mode::OnDemand && state.backing_off(now) {
            return Err(Refused::Backoff(state.next_attempt));
        }
        let lock = keys::issue_lock(name);
        let lease_ttl = self.settings.issue_timeout + Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + self.settings.issue_timeout;
        let lease = loop {
            if let Some(lease) = self.store.acquire(&lock, lease_ttl).await.map_err(CertError::from)? {
                break lease;
            }
            // Another node is issuing: take its result when it lands.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if mode != Mode::Forced
                && let Some(loaded) = self.stored(name).await?
                && self.state(name).await?.is_some_and(|s| s.last_attempt >= now)
            {
                self.remember(name, loaded.clone());
                return Ok(loaded);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Refused::Busy);
            }
        };
        let result = self.issue_locked(name, mode, now).await;
        if let Err(e) = self.store.release(&lease).await {
            tracing::warn!(name, error = %e, "cannot release the issuance lock; it expires by itself");
        }
        result
    }

    async fn issue_locked(&self, name: &str, mode: Mode, started: i64) -> Result<Arc<Loaded>, Refused> {
        // What another node may have finished while this one waited for the lock.
        let state = self.state(name).await?.unwrap_or_default();
        match mode {
            Mode::OnDemand => {
                if let Some(loaded) = self.stored(name).await? {
                    self.remember(name, loaded.clone());
                    return Ok(loaded);
                }
                if state.backing_off(now_secs()) {
                    return Err(Refused::Backoff(state.next_attempt));
                }
            }
            Mode::Renewal if state.next_attempt > now_secs() || state.last_attempt >= started => {
                if let Some(loaded) = self.stored(name).await? {
                    self.remember(name, loaded.clone());
                    return Ok(loaded);
                }
            }
            _ => {}
        }
        self.take_rate()?;
        let verb = if mode == Mode::OnDemand { "issuing" } else { "renewing" };
        tracing::info!(name, issuer = self.issuer.kind(), "{verb} a certificate");
        let begun = Instant::now();
        let issued = match tokio::time::timeout(self.settings.issue_timeout, self.issuer.issue(name)).await {
            Ok(result) => result,
            Err(_) => Err(IssueError::local(format!("issuance took longer than {:?}", self.settings.issue_timeout))),
        };
        let now = now_secs();
        match issued.and_then(|stored| {
            stored.load().map(|l| (stored, Arc::new(l))).map_err(|e| IssueError::local(e.to_string()))
        }) {
            Ok((stored, loaded)) => {
                self.store
                    .put_blob(&keys::cert_latest(name), &stored.to_json(), None)
                    .await
                    .map_err(CertError::from)?;
                let lifetime = (loaded.meta.not_after - loaded.meta.not_before).max(0);
                let jitter = fastrand::i64(0..=(lifetime / 20).max(0));
                let next = CertState {
                    issuer: self.issuer.kind().to_owned(),
                    not_after: loaded.meta.not_after,
                    last_attempt: now,
                    next_attempt: loaded.meta.renew_at(self.settings.renew_remaining_ratio) - jitter,
                    ..CertState::default()
                };
                self.store.put(Kind::Cert, name, &next.to_fields()).await.map_err(CertError::from)?;
                self.remember(name, loaded.clone());
                tracing::info!(
                    name,
                    issuer = self.issuer.kind(),
                    not_after = loaded.meta.not_after,
                    elapsed_ms = begun.elapsed().as_millis() as u64,
                    "certificate {}",
                    if mode == Mode::OnDemand { "issued" } else { "renewed" }
                );
                Ok(loaded)
            }
            Err(e) => {
                let failures = state.failures.saturating_add(1);
                let backoff = self.backoff(failures);
                let next = CertState {
                    last_attempt: now,
                    next_attempt: now + backoff.as_secs() as i64,
                    failures,
                    last_error_type: e.problem.clone().unwrap_or_default(),
                    last_error: e.detail.clone(),
                    ..state
                };
                self.store.put(Kind::Cert, name, &next.to_fields()).await.map_err(CertError::from)?;
                tracing::warn!(name, issuer = self.issuer.kind(), failures, retry_in_s = backoff.as_secs(),
                    error = %e, "certificate {} failed", if mode == Mode::OnDemand { "issuance" } else { "renewal" });
                Err(Refused::Failed(e.into()))
            }
        }
    }

    /// The backoff after `failures` consecutive failures: doubling from the minimum, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.settings.backoff_min.saturating_mul(factor).min(self.settings.backoff_max)
    }

    /// Follows the store's change feed: certificates another node issued or renewed replace
    /// the ones in memory. Runs until `shutdown`.
    pub async fn follow_store(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.store.changes();
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(Change::Blob { key }) => {
                    if let Some(name) = key.strip_suffix(":latest")
                        && self.cache.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
                    {
                        self.reload(name).await;
                    }
                }
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    let names: Vec<String> =
                        self.cache.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    for name in names {
                        self.reload(&name).await;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// A moment in `[start, end)` chosen by `unit` (uniform in `[0, 1)`), as RFC 9773 asks of
/// clients so that renewals spread over the window; `start` when the window is empty.
fn pick_in_window(start: i64, end: i64, unit: f64) -> i64 {
    start + ((end - start).max(0) as f64 * unit.clamp(0.0, 1.0)) as i64
}

fn refused_to_error(refused: Refused) -> CertError {
    match refused {
        Refused::Failed(e) => e,
        other => CertError::Issue(IssueError::local(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::pick_in_window;

    #[test]
    fn renewal_moments_spread_over_the_window() {
        assert_eq!(pick_in_window(100, 200, 0.0), 100);
        assert_eq!(pick_in_window(100, 200, 0.5), 150);
        assert!(pick_in_window(100, 200, 0.999_999) < 200);
        assert_eq!(pick_in_window(100, 50, 0.7), 100, "an empty window means its start");
    }
}
