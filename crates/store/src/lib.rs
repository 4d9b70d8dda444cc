//! Portico's store: everything a cluster shares.
//!
//! [`Store`] is deliberately small: typed records with an index per [`Kind`], blobs with an
//! optional time to live, lease locks, and a change feed. Every backend passes one contract
//! suite (`tests/it/contract.rs`). Backends:
//!
//! - [`EmbeddedStore`] (default): a redb file under the data directory. Several processes on
//!   one machine may open it at once (the CLI beside `portico serve`); each sees the others'
//!   writes through a version counter it polls.
//! - [`RedisStore`]: one Redis server, a master found through Sentinel, or a Redis Cluster,
//!   in the seed's key layout, so that any number of nodes share it and a seed deployment's
//!   data is used as it is.
//!
//! Records are maps of string fields, as the seed's Redis hashes are, so a record read from a
//! seed deployment and one written by Portico look the same.

pub mod backup;
pub mod copy;
mod embedded;
mod error;
pub mod follow;
pub mod identity;
pub mod keys;
pub mod metered;
mod redis_store;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use follow::{Followed, Follower, Subscription};
pub use identity::IdentifiedStore;
pub use keys::{Key, Kind};
pub use metered::MeteredStore;
pub use redis_store::{RESYNC_EVERY, RedisStore};

/// A record: field name to string value (the model's one record type).
pub use portico_model::Fields;

/// What changed in the store. Receivers that lag or see [`Change::Resync`] re-read what they
/// keep.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A record was created, replaced, renamed or deleted. A rename is two events.
    Record {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
    },
    /// A blob was written or deleted.
    Blob {
        /// The blob's key.
        key: Key,
    },
    /// Something changed that this process did not see directly (another process wrote, or
    /// events were lost): re-read everything.
    Resync,
}

/// A record's revision: it changes with every write of the record, so a writer can tell
/// whether the record changed since it read it ([`Store::replace_if`]; the API's `ETag`).
/// Records written before revisions were kept read as revision 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lease on a named lock; only its holder can refresh or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    name: String,
    token: String,
}

impl Lease {
    fn new(name: &Key) -> Self {
        let token: String = std::iter::repeat_with(fastrand::alphanumeric).take(32).collect();
        Self { name: name.as_str().to_owned(), token }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The shared state of a Portico cluster.
///
/// Contract, for every backend:
/// - record keys are unique per kind; [`Store::create`] fails with [`StoreError::Conflict`] if
///   the key exists, [`Store::replace`] with [`StoreError::NotFound`] if it does not;
/// - a successful write is durable when the call returns;
/// - a blob written with a time to live is gone once it expires;
/// - at most one holder has an unexpired lease on a lock name;
/// - every write is announced on [`Store::changes`] of the process that made it, and reaches
///   other processes' feeds as a specific event, or [`Change::Resync`] when the backend lost
///   track; lease writes and blobs with a time to live are announced nowhere;
/// - every write of a record gives it a new [`Revision`]; [`Store::replace_if`] writes only
///   if the record is still at the revision the caller read, else [`StoreError::Stale`];
/// - a write to one record is atomic; a record and its kind's index are kept so that no
///   reader sees an index entry without its record ([`Store::keys`] and [`Store::records`]
///   list only records that exist), and a write cut short leaves at worst an index entry
///   without a record, removed at a later resync; a rename cut short leaves both names,
///   never none (the embedded store does all of it in one transaction; Redis, where index and
///   record may live in different Cluster slots, by ordering its commands).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// One record, if it exists.
    async fn record(&self, kind: Kind, key: &str) -> Result<Option<Fields>, StoreError>;
    /// One record and its revision, if it exists.
    async fn record_at(&self, kind: Kind, key: &str) -> Result<Option<(Fields, Revision)>, StoreError>;
    /// Every record of a kind, with its key, in key order.
    async fn records(&self, kind: Kind) -> Result<Vec<(String, Fields)>, StoreError>;
    /// Every key of a kind, in key order.
    async fn keys(&self, kind: Kind) -> Result<Vec<String>, StoreError>;
    /// Adds a record; fails if the key is taken.
    async fn create(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError>;
    /// Replaces a record whole, moving it to `new_key` when that differs (on Redis a move is
    /// ordered, not one transaction: see the Redis backend).
    async fn replace(&self, kind: Kind, key: &str, new_key: &str, fields: &Fields) -> Result<(), StoreError> {
        self.replace_at(kind, key, new_key, fields, None).await.map(|_| ())
    }
    /// Like [`Store::replace`], only if the record is still at `revision`; returns the new
    /// revision. [`StoreError::Stale`] when someone wrote it since.
    async fn replace_if(
        &self,
        kind: Kind,
        key: &str,
        new_key: &str,
        fields: &Fields,
        revision: Revision,
    ) -> Result<Revision, StoreError> {
        self.replace_at(kind, key, new_key, fields, Some(revision)).await
    }
    /// [`Store::replace`], and with `expected`, only if the record is still at that
    /// revision; returns the new revision.
    async fn replace_at(
        &self,
        kind: Kind,
        key: &str,
        new_key: &str,
        fields: &Fields,
        expected: Option<Revision>,
    ) -> Result<Revision, StoreError>;
    /// Writes a record whether or not it exists.
    async fn put(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError>;
    /// Deletes a record; returns whether it existed.
    async fn delete(&self, kind: Kind, key: &str) -> Result<bool, StoreError>;

    /// A blob, unless absent or expired.
    async fn blob(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a blob, expiring after `ttl` if given.
    async fn put_blob(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Deletes a blob; returns whether it existed (and had not expired).
    async fn delete_blob(&self, key: &Key) -> Result<bool, StoreError>;

    /// The key of every blob without a time to live (certificates, Portico's own), in key
    /// order: for copying a whole store (`portico migrate`). Slow on a big store (on Redis a
    /// `SCAN` of every master); nothing on a request's path uses it.
    async fn blob_keys(&self) -> Result<Vec<Key>, StoreError>;

    /// Adds one to the counter `key` and returns its new value. A counter that does not
    /// exist (or has expired) starts at 1 and lives for `window` from then. Not announced in
    /// any feed. Issuance rates use it, so that they hold across the cluster.
    async fn count(&self, key: &Key, window: Duration) -> Result<u64, StoreError>;

    /// Takes the lock `name` for `ttl` unless someone else holds an unexpired lease on it.
    async fn acquire(&self, name: &Key, ttl: Duration) -> Result<Option<Lease>, StoreError>;
    /// Extends a lease; false if it expired or someone else took the lock since.
    async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives a lease back; false if it had already expired or been taken over.
    async fn release(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// How much memory the store's server uses, in bytes, where it says (Redis: `INFO
    /// memory`'s `used_memory` of the server that answers; in a Cluster, one master's);
    /// `None` for the embedded store.
    async fn memory_used(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// The store's write counter, where it keeps one: it grows with every announced write
    /// (records and lasting blobs), so two equal readings mean no such write landed between
    /// them ([`copy::Snapshot::read_settled`]). `None` where the backend keeps none.
    async fn write_version(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// A receiver of this store's change feed.
    fn changes(&self) -> broadcast::Receiver<Change>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The time by the store's clock (Redis's `TIME`: one clock for every node), in
    /// milliseconds since the epoch; this machine's for the embedded store. What several
    /// nodes judge together (tokens' expiry) is judged by it, so one node's wrong clock
    /// cannot expire everyone's tokens.
    async fn clock_ms(&self) -> Result<u64, StoreError> {
        Ok(now_ms())
    }
}

/// Every DNS zone and provider account, read once, for the relations among them and hosts
/// (which zone a host is in, a provider's zones).
pub async fn load_zones(store: &dyn Store) -> Result<portico_model::dns::Zones, StoreError> {
    Ok(portico_model::dns::Zones::new(store.records(Kind::Domain).await?, store.records(Kind::DnsProvider).await?))
}

/// Opens the store a URL names: `redb://<path>` (embedded), creating it if it does not
/// exist, or `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, true).await
}

/// Opens the store a URL names; an embedded one must exist already: for commands that read
/// or change what is there (`host ls`, `user passwd`), so that a mistyped path is an error,
/// not a new empty store.
pub async fn open_existing(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, false).await
}

/// Checks the integrity of the store a URL names (`portico store check`); see
/// [`EmbeddedStore::check`]. A Redis store is checked by Redis itself: this only says
/// whether it answers.
pub async fn check(url: &str) -> Result<bool, StoreError> {
    match Backend::of(url)? {
        Backend::Embedded(path) => EmbeddedStore::check(path).await,
        Backend::Redis => RedisStore::open(url).await?.ping().await.map(|()| true),
    }
}

async fn open_with(url: &str, create: bool) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Backend::of(url)? {
        Backend::Embedded(path) if create => Arc::new(EmbeddedStore::open(path).await?),
        Backend::Embedded(path) => Arc::new(EmbeddedStore::open_existing(path).await?),
        Backend::Redis => Arc::new(RedisStore::open(url).await?),
    })
}

/// Which backend a URL names.
enum Backend<'a> {
    /// The file of a `redb://` URL.
    Embedded(&'a str),
    /// Any Redis URL.
    Redis,
}

impl<'a> Backend<'a> {
    fn of(url: &'a str) -> Result<Self, StoreError> {
        if let Some(path) = url.strip_prefix("redb://") {
            if path.is_empty() {
                return Err(StoreError::Url { url: url.to_owned(), reason: "the path is empty" });
            }
            return Ok(Self::Embedded(path));
        }
        if ["redis://", "rediss://", "redis+sentinel://", "redis+cluster://"].iter().any(|s| url.starts_with(s)) {
            return Ok(Self::Redis);
        }
        Err(StoreError::Url {
            url: redact(url),
            reason: "the scheme must be redb://, redis://, rediss://, redis+sentinel:// or redis+cluster://",
        })
    }
}

/// The URL without a password (`redis://:secret@host` → `redis://***@host`), for logs and
/// messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Who this process runs as, for messages: `portico (uid 999)`.
pub fn whoami() -> String {
    let uid = rustix::process::getuid().as_raw();
    // The name from the password database's file (no NSS lookup: a message needs no more).
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
        })
    });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Change events as JSON, for other processes: a list of `{"kind", "key"}` and `{"blob"}`.
/// The embedded store keeps it per version; the Redis store publishes it.
pub(crate) fn encode_changes(events: &[Change]) -> serde_json::Value {
    events
        .iter()
        .filter_map(|e| match e {
            Change::Record { kind, key } => Some(serde_json::json!({ "kind": kind.name(), "key": key })),
            Change::Blob { key } => Some(serde_json::json!({ "blob": key.as_str() })),
            Change::Resync => None,
        })
        .collect()
}

/// The events [`encode_changes`] wrote; `None` if anything in it is not understood (the
/// reader then resyncs).
pub(crate) fn decode_changes(list: &serde_json::Value) -> Option<Vec<Change>> {
    list.as_array()?
        .iter()
        .map(|item| match (item["kind"].as_str(), item["key"].as_str(), item["blob"].as_str()) {
            (Some(kind), Some(key), _) => {
                let kind = Kind::ALL.into_iter().find(|k| k.name() == kind)?;
                Some(Change::Record { kind, key: key.to_owned() })
            }
            (_, _, Some(key)) => Some(Change::Blob { key: Key::listed(key.to_owned()) }),
            _ => None,
        })
        .collect()
}

/// The most bytes (field names and values together) a record may hold. Portico writes
/// nothing near it (a host with a hundred basic-auth users is some 15 KiB); a record over
/// it, written by something else, is not read, so one planted record cannot make every
/// node move megabytes at each reload.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// A record's size as [`MAX_RECORD_BYTES`] counts it.
fn record_bytes(fields: &Fields) -> usize {
    fields.iter().map(|(name, value)| name.len() + value.len()).sum()
}

/// Refuses a write of a record over [`MAX_RECORD_BYTES`].
pub(crate) fn within_bounds(kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
    let size = record_bytes(fields);
    if size > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge { kind, key: key.to_owned(), size });
    }
    Ok(())
}

/// For a whole listing: a record that cannot be read (not a record's type, not UTF-8, too
/// large) is left out, with a warning naming it, instead of failing the listing, so one bad
/// record cannot keep every host from loading.
pub fn readable<T>(read: Result<Option<T>, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Err(e @ (StoreError::Corrupt { .. } | StoreError::TooLarge { .. })) => {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::warn!(error = %e, cause, "skipping a stored record that cannot be read; fix or delete it");
            Ok(None)
        }
        other => other,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://:hunter2@10.0.0.1:6379"), "redis://***@10.0.0.1:6379");
        assert_eq!(redact("redis://10.0.0.1"), "redis://10.0.0.1");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_without_secrets() {
        let err = open("redis://:hunter2@127.0.0.1:1").await.unwrap_err();
        let text = format!("{err} {:?}", std::error::Error::source(&err));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(open("postgres://x").await.is_err());
        assert!(open("redb://").await.is_err());
    }
}
