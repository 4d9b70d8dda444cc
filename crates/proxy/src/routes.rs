//! Keeping the routing snapshot ([`Routes`], in `portico-model`) in step with the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use portico_model::{Rebuilt, Routes};
use portico_store::{Fields, Followed, Kind, Store, StoreError, Subscription};
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
/// (as the node's [`Follower`](portico_store::Follower) read it), and rebuilds from every
/// host on a resync, when changes were lost, and every 5 minutes. `changes` must have asked
/// for hosts to be read.
pub async fn follow_store(
    store: Arc<dyn Store>,
    mut changes: Subscription,
    routes: Arc<Routes>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        let mut pending = Pending::default();
        let mut heard = None;
        let open = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = resync.tick() => { pending.full = true; true }
            change = changes.next() => { heard = Some(std::time::Instant::now()); pending.note(change) }
        };
        if !open {
            return;
        }
        // One pass covers every change already queued.
        while let Some(change) = changes.ready() {
            pending.note(Some(change));
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
            if let Some((rebuilt, written)) = patch(&routes, pending.hosts) {
                record(&rebuilt, written);
                continue;
            }
            // Nothing to patch yet: rebuild.
        }
        match reload(&routes, store.as_ref()).await {
            Ok(rebuilt) => record(&rebuilt, None),
            Err(e) => tracing::warn!(error = %e, "cannot reload hosts; routing with the previous table"),
        }
    }
}

/// What the changes seen since the last pass ask for.
#[derive(Default)]
struct Pending {
    /// A rebuild from every host.
    full: bool,
    /// The changed hosts, as they now are (the latest of each).
    hosts: BTreeMap<String, Option<Arc<Fields>>>,
}

impl Pending {
    /// Notes one change; false when the follower has stopped.
    fn note(&mut self, change: Option<Followed>) -> bool {
        match change {
            Some(Followed::Record { kind: Kind::Host, key, now }) => {
                self.hosts.insert(key, now);
            }
            Some(Followed::Resync) => self.full = true,
            Some(_) => {}
            None => return false,
        }
        true
    }
}

/// Patches the changed hosts in; `None` when there is no table to patch. Also says when the
/// earliest of them was written (`updated_on`, milliseconds), if any says.
fn patch(routes: &Routes, hosts: BTreeMap<String, Option<Arc<Fields>>>) -> Option<(Rebuilt, Option<u64>)> {
    let mut last = None;
    let mut changed = false;
    let mut written: Option<u64> = None;
    for (key, record) in hosts {
        if let Some(at) = record.as_ref().and_then(|r| r.get("updated_on")?.parse().ok()) {
            written = Some(written.map_or(at, |w| w.min(at)));
        }
        let rebuilt = routes.patch(&key, record.as_deref())?;
        for (key, error) in &rebuilt.skipped {
            tracing::warn!(host = %key, error = %error, "skipping a host record that does not parse");
        }
        changed |= rebuilt.changed;
        last = Some(rebuilt);
    }
    last.map(|r| (Rebuilt { changed, ..r }, written))
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

    #[test]
    fn a_patch_says_when_the_earliest_changed_host_was_written() {
        let routes = Routes::new();
        routes.rebuild(Vec::new());
        let mut hosts = BTreeMap::new();
        for (name, written) in [("a.test", 5_000), ("b.test", 3_000)] {
            let host = Host::new(
                HostPattern::parse(name).unwrap(),
                Target::new("127.0.0.1", 80).unwrap(),
                false,
                false,
                "t",
                written,
            );
            hosts.insert(name.to_owned(), Some(Arc::new(host.to_fields())));
        }
        hosts.insert("gone.test".to_owned(), None);
        let (rebuilt, written) = patch(&routes, hosts).expect("a table to patch");
        assert_eq!((rebuilt.hosts, rebuilt.changed, written), (2, true, Some(3_000)));
        // A deleted host says nothing of when.
        let gone = BTreeMap::from([("gone.test".to_owned(), None)]);
        assert_eq!(patch(&routes, gone).expect("a table").1, None);
    }
}
