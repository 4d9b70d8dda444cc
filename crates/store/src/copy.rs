//! Copying a whole store to another (`portico migrate`): every record of every kind and
//! every lasting blob. Leases, counters and challenge answers are not copied: they are
//! short-lived by nature.

use std::collections::BTreeMap;

use crate::{Kind, Store, StoreError};

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

/// Whether a store holds no record and no lasting blob.
pub async fn is_empty(store: &dyn Store) -> Result<bool, StoreError> {
    for kind in Kind::ALL {
        if !store.keys(kind).await?.is_empty() {
            return Ok(false);
        }
    }
    Ok(store.blob_keys().await?.is_empty())
}

/// Copies every record and lasting blob of `from` into `to` (overwriting what has the same
/// key), then checks that `to` holds every one of them.
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, CopyError> {
    let mut copied = Copied::default();
    for kind in Kind::ALL {
        let records = from.records(kind).await?;
        for (key, fields) in &records {
            to.put(kind, key, fields).await?;
        }
        let there = to.keys(kind).await?;
        let missing = records.iter().filter(|(k, _)| there.binary_search(k).is_err()).count();
        if missing > 0 {
            return Err(CopyError::Missing { what: kind.name(), missing });
        }
        copied.records.insert(kind, records.len());
    }
    let keys = from.blob_keys().await?;
    for key in &keys {
        // A blob deleted since it was listed is simply not copied.
        if let Some(value) = from.blob(key).await? {
            to.put_blob(key, &value, None).await?;
            copied.blobs += 1;
        }
    }
    let there = to.blob_keys().await?;
    let missing = keys.iter().filter(|k| there.binary_search(k).is_err()).count();
    if missing > 0 {
        return Err(CopyError::Missing { what: "blob", missing });
    }
    Ok(copied)
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
