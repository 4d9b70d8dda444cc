//! The routing snapshot: the host table every part of a node reads (the proxy routes by it,
//! certificates follow from it, the API answers lookups from it), immutable and swapped whole
//! when the hosts change. Keeping it in step with the store is the proxy crate's
//! `routes::follow_store`; this module does no I/O.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::{Fields, Host, HostError, HostTable};

/// The hosts a node routes, as an immutable snapshot swapped whole on change.
#[derive(Debug, Default)]
pub struct Routes {
    table: ArcSwap<HostTable<Arc<Host>>>,
    /// A hash of the host records the table was last built from, to tell a rebuild that
    /// changes nothing (the periodic resync, mostly) from one that does.
    built_from: Mutex<Option<u64>>,
}

/// What a [`Routes::rebuild`] did.
#[derive(Debug)]
pub struct Rebuilt {
    /// Hosts in the table.
    pub hosts: usize,
    /// Whether the records differed from those of the previous table (if not, the table was
    /// left as it was).
    pub changed: bool,
    /// Records that do not parse, left out, with why.
    pub skipped: Vec<(String, HostError)>,
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
        *self.built_from.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.swap(hosts);
    }

    fn swap(&self, hosts: impl IntoIterator<Item = Host>) {
        let table: HostTable<Arc<Host>> = hosts.into_iter().map(|h| (h.host.clone(), Arc::new(h))).collect();
        self.table.store(Arc::new(table));
    }

    /// Rebuilds the table from host records as the store holds them (key, fields), unless
    /// they are the ones it was built from.
    pub fn rebuild(&self, mut records: Vec<(String, Fields)>) -> Rebuilt {
        records.sort_unstable();
        let fingerprint = {
            let mut hasher = DefaultHasher::new();
            records.hash(&mut hasher);
            hasher.finish()
        };
        let mut built_from = self.built_from.lock().unwrap_or_else(|e| e.into_inner());
        if *built_from == Some(fingerprint) {
            return Rebuilt { hosts: self.snapshot().len(), changed: false, skipped: Vec::new() };
        }
        let mut skipped = Vec::new();
        let hosts: Vec<Host> = records
            .into_iter()
            .filter_map(|(key, fields)| match Host::from_fields(&fields) {
                Ok(host) => Some(host),
                Err(e) => {
                    skipped.push((key, e));
                    None
                }
            })
            .collect();
        let count = hosts.len();
        self.swap(hosts);
        *built_from = Some(fingerprint);
        Rebuilt { hosts: count, changed: true, skipped }
    }
}
