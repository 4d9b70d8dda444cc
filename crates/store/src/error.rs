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
        source: serde_json::Error,
    },
    /// The embedded database failed.
    #[error("embedded store failed")]
    Embedded(#[source] Box<redb::Error>),
    /// Creating the store's directory failed.
    #[error("cannot create the store directory")]
    Io(#[source] std::io::Error),
    /// A blocking store task did not finish.
    #[error("store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self::Embedded(Box::new(e.into()))
    }
}
