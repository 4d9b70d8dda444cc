//! The store's one error type.

use crate::keys::Kind;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist.
    #[error("{kind}:{key} does not exist")]
    NotFound {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
    },
    /// Another record already has this key.
    #[error("{kind}:{key} already exists")]
    Conflict {
        /// The record's kind.
        kind: Kind,
        /// The key in use.
        key: String,
    },
    /// The record changed since the caller read it (a compare-and-set lost the race).
    #[error("{kind}:{key} changed since it was read")]
    Stale {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
    },
    /// The store URL cannot be used.
    #[error("store url {url}: {reason}")]
    Url {
        /// The URL, with any password removed.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stored record cannot be decoded.
    #[error("stored record {kind}:{key} is corrupt")]
    Corrupt {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
        /// The decoding error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The record is larger than [`crate::MAX_RECORD_BYTES`]: refused when written, left
    /// unread when found.
    #[error("record {kind}:{key} holds {size} bytes, more than a record may ({} bytes)", crate::MAX_RECORD_BYTES)]
    TooLarge {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
        /// Its size in bytes (field names and values).
        size: usize,
    },
    /// The backend failed (an I/O error, a database error, a lost connection): its error is
    /// the source. No variant names a backend's types, so callers never depend on one.
    #[error("the {backend} store failed")]
    Backend {
        /// Which backend (`embedded`, …), for the message.
        backend: &'static str,
        /// What it said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Creating or reading the store's file or directory failed.
    #[error("cannot create or read the store file or its directory")]
    Io(#[source] std::io::Error),
    /// The store's file or directory is not this process's to read or write.
    #[error(
        "permission denied on {} for user {user}: run this as the store's owner (`sudo -u portico portico …` for the package's store) or give {user} access",
        path.display()
    )]
    Permission {
        /// The file or directory refused.
        path: std::path::PathBuf,
        /// Who this process runs as (`portico (uid 999)`).
        user: String,
    },
    /// The store server cannot be reached, or refuses this client.
    #[error("cannot reach the store at {url}: {detail}")]
    Unreachable {
        /// The URL, with any password removed.
        url: String,
        /// What went wrong, and what to do.
        detail: String,
    },
    /// No store exists at the path, and the command does not create one.
    #[error("no store at {}: check --data-dir or store.url (only `portico serve` and the commands that add something create one)", path.display())]
    Missing {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The file is there but is not a Portico store; it is never overwritten.
    #[error("{} is not a Portico store ({why}); restore the store from a backup, or move the file away to start afresh", path.display())]
    NotAStore {
        /// The file.
        path: std::path::PathBuf,
        /// Why not.
        why: &'static str,
    },
    /// The store lost the identity marker Portico wrote in it, or carries another one: it was
    /// wiped (a Redis without persistence restarted empty, `FLUSHALL`) or replaced. Nothing
    /// is read from it or written to it until a backup is restored or it is adopted.
    #[error(
        "the store lost its identity (it was wiped or replaced): restore a backup, or run `portico store adopt` to accept the store as it is now"
    )]
    IdentityLost,
    /// The file is damaged.
    #[error("the store file {} is damaged ({detail}); run `portico store check` and restore it from a backup if that cannot repair it", path.display())]
    Damaged {
        /// The file.
        path: std::path::PathBuf,
        /// What redb said.
        detail: String,
    },
    /// A blocking store task did not finish.
    #[error("store task failed")]
    Task(#[source] tokio::task::JoinError),
}
