//! Following the node's changes: certificates other nodes wrote, new wildcard hosts.

use super::*;

impl Certs {
    /// Follows the node's changes: certificates another node issued or renewed replace the
    /// ones in memory; a new `*.zone` host gets its wildcard certificate. Runs until
    /// `shutdown`.
    pub async fn follow_store(self: Arc<Self>, mut changes: Subscription, shutdown: CancellationToken) {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.next() => change,
            };
            match change {
                Some(Followed::Blob { key }) => self.blob_changed(&key).await,
                // A new `*.zone` host: its wildcard certificate is made now, not at the first
                // handshake (any node may start it; the lease makes it one order); not for a
                // passthrough host, whose targets hold its certificates.
                Some(Followed::Record { kind: Kind::Host, key, now: Some(fields) })
                    if key.starts_with("*.")
                        && !key[2..].contains('*')
                        && fields.get("kind").is_none_or(|kind| kind != "passthrough") =>
                {
                    let certs = self.clone();
                    tokio::spawn(async move { certs.prepare_wildcard(&key).await });
                }
                Some(Followed::Resync) => {
                    let names: Vec<String> =
                        self.cache.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    for name in names {
                        self.reload(&name).await;
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// A certificate blob another node wrote or removed: reloaded if held here, and the caps
    /// kept in step.
    pub(super) async fn blob_changed(&self, key: &Key) {
        let Some(name) = key.certificate_name() else { return };
        let cached = self.cache.read().unwrap_or_else(|e| e.into_inner()).contains_key(name);
        if cached {
            self.reload(name).await;
        }
        // Another node issued or removed a certificate of a name under a wildcard pattern:
        // keep the caps in step (reading the store only when the reload above did not).
        let Some(owner) = self.owner(name).filter(|o| !o.explicit) else { return };
        let present = if cached {
            Some(self.cached(name).is_some())
        } else {
            self.store.blob(key).await.ok().map(|b| b.is_some())
        };
        match present {
            Some(true) => self.hold(name, &owner),
            Some(false) => self.unhold(name),
            None => {}
        }
    }
}
