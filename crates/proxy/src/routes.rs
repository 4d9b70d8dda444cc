//! Keeping the routing snapshot ([`Routes`], in `portico-model`) in step with the store.

use std::sync::Arc;
use std::time::Duration;

pub use portico_model::{Rebuilt, Routes};
use portico_store::{Change, Kind, Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// How often the table is rebuilt even without change events, in case some were lost.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Rebuilds `routes` from the store's hosts, unless they are the ones it was built from.
/// Records that do not parse are skipped with a warning; on a store error the current table
/// stays.
pub async fn reload(routes: &Routes, store: &dyn Store) -> Result<Rebuilt, StoreError> {
    let rebuilt = routes.rebuild(store.records(Kind::Host).await?);
    for (key, error) in &rebuilt.skipped {
        tracing::warn!(host = %key, error = %error, "skipping a host record that does not parse");
    }
    Ok(rebuilt)
}

/// Keeps `routes` in step with the store until `shutdown`: rebuilds on every host change, on
/// a resync signal, when events were lost, and every 30 seconds.
pub async fn follow_store(store: Arc<dyn Store>, routes: Arc<Routes>, shutdown: CancellationToken) {
    let mut changes = store.changes();
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        let due = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = resync.tick() => true,
            event = changes.recv() => match event {
                Ok(Change::Record { kind: Kind::Host, .. } | Change::Resync) | Err(RecvError::Lagged(_)) => true,
                Ok(_) => false,
                Err(RecvError::Closed) => return,
            },
        };
        if !due {
            continue;
        }
        // One rebuild covers every event already queued.
        while changes.try_recv().is_ok() {}
        match reload(&routes, store.as_ref()).await {
            Ok(Rebuilt { hosts, changed: true, .. }) => tracing::info!(hosts, "routing table rebuilt"),
            Ok(Rebuilt { hosts, changed: false, .. }) => tracing::debug!(hosts, "hosts unchanged"),
            Err(e) => tracing::warn!(error = %e, "cannot reload hosts; routing with the previous table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{Host, HostPattern, Target};

    fn summary(rebuilt: Rebuilt) -> (usize, bool) {
        (rebuilt.hosts, rebuilt.changed)
    }

    #[tokio::test]
    async fn a_reload_that_finds_the_same_hosts_keeps_the_table_and_says_so() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = portico_store::open(&format!("redb://{}", dir.path().join("s.redb").display())).await.unwrap();
        let routes = Routes::new();
        assert_eq!(summary(reload(&routes, store.as_ref()).await.unwrap()), (0, true));
        let host = Host::new(
            HostPattern::parse("a.test").unwrap(),
            Target::new("127.0.0.1", 80).unwrap(),
            false,
            false,
            "t",
            0,
        );
        store.create(Kind::Host, "a.test", &host.to_fields()).await.unwrap();
        assert_eq!(summary(reload(&routes, store.as_ref()).await.unwrap()), (1, true));
        let table = routes.snapshot();
        assert_eq!(summary(reload(&routes, store.as_ref()).await.unwrap()), (1, false));
        assert!(Arc::ptr_eq(&table, &routes.snapshot()), "the same table serves on");
        let mut moved = host.to_fields();
        moved.insert("targetPort".into(), "81".into());
        store.put(Kind::Host, "a.test", &moved).await.unwrap();
        assert_eq!(summary(reload(&routes, store.as_ref()).await.unwrap()), (1, true));
    }
}
