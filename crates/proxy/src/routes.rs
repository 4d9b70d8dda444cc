//! The routing snapshot and the task that keeps it in step with the store.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portico_model::{Host, HostTable};
use portico_store::{Change, Kind, Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// How often the table is rebuilt even without change events, in case some were lost.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The hosts the proxy routes, as an immutable snapshot swapped whole on change.
#[derive(Debug, Default)]
pub struct Routes {
    table: ArcSwap<HostTable<Arc<Host>>>,
    /// A hash of the host records the table was last built from, to tell a rebuild that
    /// changes nothing (the periodic resync, mostly) from one that does.
    built_from: Mutex<Option<u64>>,
}

/// What a [`Routes::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// Hosts in the table.
    pub hosts: usize,
    /// Whether the records differed from those of the previous table (if not, the table was
    /// left as it was).
    pub changed: bool,
}

impl Routes {
    /// An empty routing table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<HostTable<Arc<Host>>> {
        self.table.load_full()
    }

    /// Replaces the table with one built from `hosts` (the next [`Routes::reload`] rebuilds).
    pub fn replace(&self, hosts: impl IntoIterator<Item = Host>) {
        *self.built_from.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.swap(hosts);
    }

    fn swap(&self, hosts: impl IntoIterator<Item = Host>) {
        let table: HostTable<Arc<Host>> = hosts.into_iter().map(|h| (h.host.clone(), Arc::new(h))).collect();
        self.table.store(Arc::new(table));
    }

    /// Rebuilds the table from the store's hosts, unless they are the ones it was built from.
    /// Records that do not parse are skipped with a warning; on a store error the current
    /// table stays.
    pub async fn reload(&self, store: &dyn Store) -> Result<Reloaded, StoreError> {
        let mut records = store.records(Kind::Host).await?;
        records.sort_unstable();
        let fingerprint = {
            let mut hasher = std::hash::DefaultHasher::new();
            records.hash(&mut hasher);
            hasher.finish()
        };
        let mut built_from = self.built_from.lock().unwrap_or_else(|e| e.into_inner());
        if *built_from == Some(fingerprint) {
            return Ok(Reloaded { hosts: self.snapshot().len(), changed: false });
        }
        let hosts: Vec<Host> = records
            .into_iter()
            .filter_map(|(key, fields)| match Host::from_fields(&fields) {
                Ok(host) => Some(host),
                Err(e) => {
                    tracing::warn!(host = %key, error = %e, "skipping a host record that does not parse");
                    None
                }
            })
            .collect();
        let count = hosts.len();
        self.swap(hosts);
        *built_from = Some(fingerprint);
        Ok(Reloaded { hosts: count, changed: true })
    }
}

/// Routing decides certificates: a name may have one when a host pattern matches it.
impl portico_certs::NamePolicy for Routes {
    fn owner(&self, name: &str) -> Option<portico_certs::Owner> {
        let table = self.snapshot();
        let (pattern, _) = table.lookup(name)?;
        let explicit = pattern.labels().all(|l| matches!(l, portico_model::PatternLabel::Literal(_)));
        Some(portico_certs::Owner { pattern: pattern.to_string(), explicit })
    }
}

/// Keeps `routes` in step with the store until `shutdown`: rebuilds on every host change, on
/// a resync signal, when events were lost, and every 30 seconds.
pub async fn follow_store(store: Arc<dyn Store>, routes: Arc<Routes>, shutdown: CancellationToken) {
    let mut changes = store.changes();
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        let reload = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = resync.tick() => true,
            event = changes.recv() => match event {
                Ok(Change::Record { kind: Kind::Host, .. } | Change::Resync) | Err(RecvError::Lagged(_)) => true,
                Ok(_) => false,
                Err(RecvError::Closed) => return,
            },
        };
        if !reload {
            continue;
        }
        // One rebuild covers every event already queued.
        while changes.try_recv().is_ok() {}
        match routes.reload(store.as_ref()).await {
            Ok(Reloaded { hosts, changed: true }) => tracing::info!(hosts, "routing table rebuilt"),
            Ok(Reloaded { hosts, changed: false }) => tracing::debug!(hosts, "hosts unchanged"),
            Err(e) => tracing::warn!(error = %e, "cannot reload hosts; routing with the previous table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{HostPattern, Target};

    #[tokio::test]
    async fn a_reload_that_finds_the_same_hosts_keeps_the_table_and_says_so() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = portico_store::open(&format!("redb://{}", dir.path().join("s.redb").display())).await.unwrap();
        let routes = Routes::new();
        assert_eq!(routes.reload(store.as_ref()).await.unwrap(), Reloaded { hosts: 0, changed: true });
        let host = Host::new(
            HostPattern::parse("a.test").unwrap(),
            Target::new("127.0.0.1", 80).unwrap(),
            false,
            false,
            "t",
            0,
        );
        store.create(Kind::Host, "a.test", &host.to_fields()).await.unwrap();
        assert_eq!(routes.reload(store.as_ref()).await.unwrap(), Reloaded { hosts: 1, changed: true });
        let table = routes.snapshot();
        assert_eq!(routes.reload(store.as_ref()).await.unwrap(), Reloaded { hosts: 1, changed: false });
        assert!(Arc::ptr_eq(&table, &routes.snapshot()), "the same table serves on");
        let mut moved = host.to_fields();
        moved.insert("targetPort".into(), "81".into());
        store.put(Kind::Host, "a.test", &moved).await.unwrap();
        assert_eq!(routes.reload(store.as_ref()).await.unwrap(), Reloaded { hosts: 1, changed: true });
    }
}
