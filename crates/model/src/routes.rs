//! The routing snapshot: the host table every part of a node reads (the proxy routes by it,
//! certificates follow from it, the API answers lookups from it), immutable and swapped whole
//! when the hosts change. Keeping it in step with the store is the proxy crate's
//! `routes::follow_store`; this module does no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::{FieldError, Fields, Host, HostTable};

/// The hosts a node routes, as an immutable snapshot swapped whole on change.
#[derive(Debug, Default)]
pub struct Routes {
    table: ArcSwap<HostTable<Arc<Host>>>,
    /// The hosts the table was built from, by record key: a change to one host is patched
    /// in without reading the others again, and a full rebuild that changes nothing (the
    /// periodic resync, mostly) leaves the table as it is. `None` until the first rebuild.
    hosts: Mutex<Option<BTreeMap<String, Arc<Host>>>>,
    /// The table's generation (one more with every swap) and size, set together so that a
    /// reader never pairs one table's generation with another's size; held while the
    /// observer is told, so it hears the generations in order.
    state: Mutex<RoutingState>,
    /// Told of every swap (the service manager's status, `/readyz`'s waiters).
    observer: OnceLock<Observer>,
}

/// Which table a node routes by: its generation (one more with every swap) and how many
/// host patterns it holds. Reported by `/readyz` and to a service manager, so that a
/// deployment script or a test can wait until a change is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutingState {
    /// Swaps of the table since the process started.
    pub generation: u64,
    /// Host patterns in the table.
    pub hosts: usize,
}

struct Observer(Box<dyn Fn(RoutingState) + Send + Sync>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// What a [`Routes::rebuild`] or [`Routes::patch`] did.
#[derive(Debug)]
pub struct Rebuilt {
    /// Hosts in the table.
    pub hosts: usize,
    /// Whether the hosts differed from those of the previous table (if not, the table was
    /// left as it was).
    pub changed: bool,
    /// Records that do not parse, left out, with why.
    pub skipped: Vec<(String, FieldError)>,
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

    /// Replaces the table with one built from `hosts` (the next [`Routes::rebuild`] rebuilds).
    pub fn replace(&self, hosts: impl IntoIterator<Item = Host>) {
        *self.hosts.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.swap(hosts.into_iter().map(Arc::new));
    }

    /// Which table routes now.
    pub fn state(&self) -> RoutingState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `observer` after every swap of the table from now on, with the new state. One
    /// observer per table: false if one was set already.
    pub fn observe(&self, observer: impl Fn(RoutingState) + Send + Sync + 'static) -> bool {
        self.observer.set(Observer(Box::new(observer))).is_ok()
    }

    fn swap(&self, hosts: impl IntoIterator<Item = Arc<Host>>) {
        let table: HostTable<Arc<Host>> = hosts.into_iter().map(|h| (h.host.clone(), h)).collect();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = RoutingState { generation: state.generation + 1, hosts: table.len() };
        self.table.store(Arc::new(table));
        if let Some(Observer(observer)) = self.observer.get() {
            observer(*state);
        }
    }

    /// Rebuilds the table from host records as the store holds them (key, fields), unless
    /// they hold the hosts it was built from.
    pub fn rebuild(&self, records: Vec<(String, Fields)>) -> Rebuilt {
        let mut skipped = Vec::new();
        let fresh: BTreeMap<String, Arc<Host>> = records
            .into_iter()
            .filter_map(|(key, fields)| match routed(&key, &fields) {
                Ok(host) => Some((key, Arc::new(host))),
                Err(e) => {
                    skipped.push((key, e));
                    None
                }
            })
            .collect();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let count = fresh.len();
        if hosts.as_ref() == Some(&fresh) {
            return Rebuilt { hosts: count, changed: false, skipped };
        }
        self.swap(fresh.values().cloned());
        *hosts = Some(fresh);
        Rebuilt { hosts: count, changed: true, skipped }
    }

    /// Patches one host record into the table: `Some(fields)` as the store now holds it,
    /// `None` when it is gone. `None` back when there is no full build to patch yet (the
    /// caller rebuilds).
    pub fn patch(&self, key: &str, record: Option<&Fields>) -> Option<Rebuilt> {
        let mut guard = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = guard.as_mut()?;
        let mut skipped = Vec::new();
        let host = record.and_then(|fields| match routed(key, fields) {
            Ok(host) => Some(Arc::new(host)),
            Err(e) => {
                skipped.push((key.to_owned(), e));
                None
            }
        });
        // A record that no longer parses leaves the table, as a full rebuild leaves it out.
        let changed = match host {
            Some(host) => hosts.insert(key.to_owned(), host.clone()).is_none_or(|old| old != host),
            None => hosts.remove(key).is_some(),
        };
        if changed {
            self.swap(hosts.values().cloned());
        }
        Some(Rebuilt { hosts: hosts.len(), changed, skipped })
    }
}

/// The host a record routes, when it parses and its own `host` field names the pattern its
/// key does: a record stored under one key must not take over another host's name.
fn routed(key: &str, fields: &Fields) -> Result<Host, FieldError> {
    let host = Host::from_fields(fields)?;
    match crate::HostPattern::parse(key) {
        Ok(keyed) if keyed == host.host => Ok(host),
        _ => Err(FieldError::Invalid {
            field: "host",
            reason: format!("{} is not the pattern the record is stored under", host.host),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostPattern, Target};

    fn record(name: &str, port: u16) -> (String, Fields) {
        let host =
            Host::new(HostPattern::parse(name).unwrap(), Target::new("127.0.0.1", port).unwrap(), false, false, "t", 0);
        (name.to_owned(), host.to_fields())
    }

    #[test]
    fn a_record_under_another_key_takes_over_no_name() {
        let routes = Routes::new();
        let (_, known) = record("known1.test", 1);
        let (_, impostor) = record("known1.test", 2);
        let rebuilt = routes.rebuild(vec![("known1.test".into(), known), ("zzz.test".into(), impostor.clone())]);
        assert_eq!(rebuilt.skipped.len(), 1, "{:?}", rebuilt.skipped);
        assert_eq!(routes.snapshot().lookup("known1.test").unwrap().1.target().unwrap().port(), 1);
        assert!(routes.patch("zzz.test", Some(&impostor)).unwrap().skipped.len() == 1);
        assert_eq!(routes.snapshot().lookup("known1.test").unwrap().1.target().unwrap().port(), 1);
        // The seed's keys are as written: a key in capitals is still its host.
        let (_, upper) = record("upper.test", 3);
        assert!(routes.patch("Upper.TEST", Some(&upper)).unwrap().skipped.is_empty());
    }

    #[test]
    fn one_host_is_patched_in_and_out_without_the_others() {
        let routes = Routes::new();
        assert!(routes.patch("a.test", Some(&record("a.test", 1).1)).is_none(), "nothing to patch before a build");
        assert!(routes.rebuild(vec![record("a.test", 1)]).changed);
        let before = routes.snapshot();

        let same = routes.patch("a.test", Some(&record("a.test", 1).1)).unwrap();
        assert!(!same.changed);
        assert!(Arc::ptr_eq(&before, &routes.snapshot()), "an unchanged host keeps the table");

        let added = routes.patch("b.test", Some(&record("b.test", 2).1)).unwrap();
        assert!(added.changed && added.hosts == 2);
        assert_eq!(routes.snapshot().lookup("b.test").unwrap().1.target().unwrap().port(), 2);
        assert!(routes.patch("a.test", None).unwrap().changed);
        assert!(routes.snapshot().lookup("a.test").is_none());
        assert!(!routes.patch("a.test", None).unwrap().changed, "gone already");

        // A record that no longer parses leaves the table.
        let mut broken = record("b.test", 2).1;
        broken.insert("targetPort".into(), "not a port".into());
        let skipped = routes.patch("b.test", Some(&broken)).unwrap();
        assert!(skipped.changed && skipped.skipped.len() == 1 && skipped.hosts == 0);
    }

    #[test]
    fn every_swap_is_a_new_generation_told_to_the_observer() {
        let routes = Routes::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        assert!(routes.observe(move |state| sink.lock().unwrap().push(state)));
        assert!(!routes.observe(|_| {}), "one observer");
        assert_eq!(routes.state(), RoutingState { generation: 0, hosts: 0 });
        routes.rebuild(vec![record("a.test", 1)]);
        routes.rebuild(vec![record("a.test", 1)]);
        routes.patch("b.test", Some(&record("b.test", 2).1));
        routes.patch("a.test", None);
        let states = [(1, 1), (2, 2), (3, 1)].map(|(generation, hosts)| RoutingState { generation, hosts });
        assert_eq!(*seen.lock().unwrap(), states, "an unchanged rebuild is no new generation");
        assert_eq!(routes.state(), states[2]);
    }
}
