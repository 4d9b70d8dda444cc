//! Keeping the routing snapshot ([`Routes`], in `portico-model`) in step with the store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub use portico_model::{Rebuilt, Routes};
use portico_store::{Change, Kind, Store, StoreError};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

/// How often the table is rebuilt even without change events, in case some were lost
/// unnoticed (every backend also says `Change::Resync` when it knows it lost some). A
/// rebuild reads every host: on Redis with 100,000 hosts, about a second of its time.
const RESYNC_EVERY: Duration = Duration::from_secs(300);

/// A changed record's `updated_on` older than this is no stamp of the change at hand (a raw
/// write that did not set it): the delay is counted from when this node heard instead.
const STAMP_TRUSTED_MS: u64 = 60_000;

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

/// Keeps `routes` in step with the store until `shutdown`: patches in each changed host
/// (one record read each), and rebuilds from every host on a resync signal, when events
/// were lost, and every 5 minutes.
pub async fn follow_store(
    store: Arc<dyn Store>,
    routes: Arc<Routes>,
    metrics: Arc<portico_metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut changes = store.changes();
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        let mut pending = Pending::default();
        let mut heard = None;
        let open = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = resync.tick() => { pending.full = true; true }
            event = changes.recv() => { heard = Some(std::time::Instant::now()); pending.note(event) }
        };
        if !open {
            return;
        }
        // One pass covers every event already queued.
        loop {
            match changes.try_recv() {
                Ok(event) => pending.note(Ok(event)),
                Err(TryRecvError::Lagged(n)) => pending.note(Err(RecvError::Lagged(n))),
                Err(_) => break,
            };
        }
        let started = std::time::Instant::now();
        // `written`: when the earliest of the patched records was written, by its writer's
        // clock (any node's), when it says so.
        let record = |rebuilt: &Rebuilt, written: Option<u64>| {
            metrics.routes_hosts.set(rebuilt.hosts as i64);
            metrics.routes_rebuild.observe(started.elapsed().as_secs_f64());
            if let Some(heard) = heard {
                let since_write = written.and_then(|at| portico_store::now_ms().checked_sub(at));
                let delay = match since_write {
                    Some(ms) if ms < STAMP_TRUSTED_MS => std::time::Duration::from_millis(ms),
                    // Deleted, or written without a fresh stamp: from when this node heard.
                    _ => heard.elapsed(),
                };
                metrics.routes_change_delay.observe(delay.as_secs_f64());
            }
            report(rebuilt);
        };
        if !pending.full {
            if pending.hosts.is_empty() {
                continue;
            }
            match patch(&routes, store.as_ref(), &pending.hosts).await {
                Ok(Some((rebuilt, written))) => {
                    record(&rebuilt, written);
                    continue;
                }
                // Nothing to patch yet: rebuild.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read changed hosts; routing with the previous table");
                    continue;
                }
            }
        }
        match reload(&routes, store.as_ref()).await {
            Ok(rebuilt) => record(&rebuilt, None),
            Err(e) => tracing::warn!(error = %e, "cannot reload hosts; routing with the previous table"),
        }
    }
}

/// What the events seen since the last pass ask for.
#[derive(Default)]
struct Pending {
    /// A rebuild from every host.
    full: bool,
    /// The hosts to read again.
    hosts: BTreeSet<String>,
}

impl Pending {
    /// Notes one event; false when the feed has closed.
    fn note(&mut self, event: Result<Change, RecvError>) -> bool {
        match event {
            Ok(Change::Record { kind: Kind::Host, key }) => {
                self.hosts.insert(key);
            }
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => self.full = true,
            Ok(_) => {}
            Err(RecvError::Closed) => return false,
        }
        true
    }
}

/// Reads the changed hosts and patches them in; `None` when there is no table to patch.
/// Also says when the earliest of them was written (`updated_on`, milliseconds), if any
/// says.
async fn patch(
    routes: &Routes,
    store: &dyn Store,
    keys: &BTreeSet<String>,
) -> Result<Option<(Rebuilt, Option<u64>)>, StoreError> {
    let mut last = None;
    let mut changed = false;
    let mut written: Option<u64> = None;
    for key in keys {
        // One that cannot be read is skipped (unrouted), as a full rebuild skips it.
        let record = portico_store::readable(store.record(Kind::Host, key).await)?;
        if let Some(at) = record.as_ref().and_then(|r| r.get("updated_on")?.parse().ok()) {
            written = Some(written.map_or(at, |w| w.min(at)));
        }
        let Some(rebuilt) = routes.patch(key, record) else { return Ok(None) };
        for (key, error) in &rebuilt.skipped {
            tracing::warn!(host = %key, error = %error, "skipping a host record that does not parse");
        }
        changed |= rebuilt.changed;
        last = Some(rebuilt);
    }
    Ok(last.map(|r| (Rebuilt { changed, ..r }, written)))
}

fn report(rebuilt: &Rebuilt) {
    if rebuilt.changed {
        tracing::info!(hosts = rebuilt.hosts, "routing table rebuilt");
    } else {
        tracing::debug!(hosts = rebuilt.hosts, "hosts unchanged");
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

    #[tokio::test]
    async fn a_patch_says_when_the_earliest_changed_host_was_written() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = portico_store::open(&format!("redb://{}", dir.path().join("s.redb").display())).await.unwrap();
        let routes = Routes::new();
        reload(&routes, store.as_ref()).await.unwrap();
        for (name, written) in [("a.test", 5_000), ("b.test", 3_000)] {
            let host = Host::new(
                HostPattern::parse(name).unwrap(),
                Target::new("127.0.0.1", 80).unwrap(),
                false,
                false,
                "t",
                written,
            );
            store.create(Kind::Host, name, &host.to_fields()).await.unwrap();
        }
        let keys: BTreeSet<String> = ["a.test".to_owned(), "b.test".to_owned(), "gone.test".to_owned()].into();
        let (rebuilt, written) = patch(&routes, store.as_ref(), &keys).await.unwrap().expect("a table to patch");
        assert_eq!((rebuilt.hosts, rebuilt.changed, written), (2, true, Some(3_000)));
        // A deleted host says nothing of when.
        let gone: BTreeSet<String> = ["gone.test".to_owned()].into();
        assert_eq!(patch(&routes, store.as_ref(), &gone).await.unwrap().expect("a table").1, None);
    }
}
