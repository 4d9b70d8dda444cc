//! Copying a whole store: to another store (`portico migrate`), or to a file and back
//! (`portico store export` and `import`, [`crate::backup`]). What is copied is a
//! [`Snapshot`]: every record of every kind and every lasting blob. Leases, counters and
//! challenge answers are not copied: they are short-lived by nature.

use std::collections::BTreeMap;

use tokio::sync::broadcast::error::TryRecvError;

use crate::{Fields, Key, Kind, Store, StoreError};

/// What a copy moved, per kind and in blobs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Records per kind.
    pub records: BTreeMap<Kind, usize>,
    /// Lasting blobs (certificates, the ACME account, the internal CA).
    pub blobs: usize,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, count) in &self.records {
            write!(f, "{count} {kind}, ")?;
        }
        write!(f, "{} blobs", self.blobs)
    }
}

/// Everything that lasts in a store, read at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every record, by kind, in key order.
    pub records: BTreeMap<Kind, Vec<(String, Fields)>>,
    /// Every lasting blob, in key order.
    pub blobs: Vec<(Key, Vec<u8>)>,
}

/// How many times [`Snapshot::read_settled`] reads a store that keeps changing.
const SETTLE_ATTEMPTS: usize = 5;

impl Snapshot {
    /// Reads every record and lasting blob of `store`, one after another: each is read
    /// whole, but a write landing meanwhile may be in the snapshot for some records and not
    /// others (see [`Snapshot::read_settled`]).
    pub async fn read(store: &dyn Store) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        for kind in Kind::ALL {
            snapshot.records.insert(kind, store.records(kind).await?);
        }
        for key in store.blob_keys().await? {
            // A blob deleted since it was listed is simply not in the snapshot.
            if let Some(value) = store.blob(&key).await? {
                snapshot.blobs.push((key, value));
            }
        }
        Ok(snapshot)
    }

    /// Reads a snapshot no write landed during: while nodes run, the store's write counter
    /// ([`Store::write_version`]) and change feed are watched, and a read that saw a write land (a renewal replacing a certificate
    /// and its state, a host edited) is read again, up to a few times. Returns the snapshot
    /// and whether it settled (false: writes kept landing, and the last read is returned).
    pub async fn read_settled(store: &dyn Store) -> Result<(Snapshot, bool), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut changes = store.changes();
            let before = store.write_version().await?;
            let snapshot = Snapshot::read(store).await?;
            let after = store.write_version().await?;
            let quiet = before == after && matches!(changes.try_recv(), Err(TryRecvError::Empty));
            if quiet || attempt == SETTLE_ATTEMPTS {
                return Ok((snapshot, quiet));
            }
            tracing::debug!(attempt, "the store changed while it was read: reading it again");
        }
    }

    /// How many records of each kind and blobs this holds.
    pub fn counts(&self) -> Copied {
        Copied {
            records: self.records.iter().map(|(kind, records)| (*kind, records.len())).collect(),
            blobs: self.blobs.len(),
        }
    }

    /// Writes every record and blob into `to` (overwriting what has the same key), then
    /// checks that `to` holds every one of them.
    pub async fn write(&self, to: &dyn Store) -> Result<Copied, CopyError> {
        for (kind, records) in &self.records {
            for (key, fields) in records {
                to.put(*kind, key, fields).await?;
            }
            let there = to.keys(*kind).await?;
            let missing = records.iter().filter(|(k, _)| there.binary_search(k).is_err()).count();
            if missing > 0 {
                return Err(CopyError::Missing { what: kind.name(), missing });
            }
        }
        for (key, value) in &self.blobs {
            to.put_blob(key, value, None).await?;
        }
        let there = to.blob_keys().await?;
        let missing = self.blobs.iter().filter(|(k, _)| there.binary_search(k).is_err()).count();
        if missing > 0 {
            return Err(CopyError::Missing { what: "blob", missing });
        }
        Ok(self.counts())
    }
}

/// What a store holds, for saying so (`2 Host, 1 User, 3 blobs (a.example:latest, …)`);
/// `None` when it holds no record and no lasting blob.
pub async fn held(store: &dyn Store) -> Result<Option<String>, StoreError> {
    let mut parts = Vec::new();
    for kind in Kind::ALL {
        let count = store.keys(kind).await?.len();
        if count > 0 {
            parts.push(format!("{count} {kind}"));
        }
    }
    let blobs = store.blob_keys().await?;
    if !blobs.is_empty() {
        let mut named: Vec<&str> = blobs.iter().take(3).map(Key::as_str).collect();
        if blobs.len() > named.len() {
            named.push("…");
        }
        parts.push(format!("{} blobs ({})", blobs.len(), named.join(", ")));
    }
    Ok((!parts.is_empty()).then(|| parts.join(", ")))
}

/// Copies every record and lasting blob of `from` into `to` (overwriting what has the same
/// key), then checks that `to` holds every one of them.
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, CopyError> {
    Snapshot::read(from).await?.write(to).await
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target does not hold everything copied to it.
    #[error("{missing} {what} records are missing from the target after the copy")]
    Missing {
        /// Which kind (or `blob`).
        what: &'static str,
        /// How many.
        missing: usize,
    },
}
