//! The routing snapshot and the task that keeps it in step with the store.

use std::sync::Arc;
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

    /// Replaces the table with one built from `hosts`.
    pub fn replace(&self, hosts: impl IntoIterator<Item = Host>) {
        let table: HostTable<Arc<Host>> = hosts.into_iter().map(|h| (h.host.clone(), Arc::new(h))).collect();
        self.table.store(Arc::new(table));
    }

    /// Rebuilds the table from the store's hosts. Records that do not parse are skipped with a
    /// warning; on a store error the current table stays.
    pub async fn reload(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let records = store.records(Kind::Host).await?;
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
        self.replace(hosts);
        Ok(count)
    }
}

/// Routing decides certificates: a name may have one when a host pattern matches it.
impl portico_certs::NamePolicy for Routes {
    fn allows(&self, name: &str) -> bool {
        self.snapshot().lookup(name).is_some()
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
            Ok(count) => tracing::info!(hosts = count, "routing table rebuilt"),
            Err(e) => tracing::warn!(error = %e, "cannot reload hosts; routing with the previous table"),
        }
    }
}
