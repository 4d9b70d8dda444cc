//! The store's identity: a marker Portico writes in a store when it first uses it (a seed's
//! Redis gets one at the first start), remembered in each node's data directory.
//!
//! A store that loses its data (a Redis without persistence restarted empty, `FLUSHALL`)
//! loses the marker with it. Followed blindly, that would make every node drop every host,
//! every certificate and every user within seconds, and a new internal CA would replace the
//! one clients trust. [`IdentifiedStore`] is the store every long-running part of a node
//! uses: when the marker is gone or another one is there, it refuses every read and write
//! ([`StoreError::IdentityLost`]), so the node keeps routing and serving certificates from
//! memory and its API answers 503, until a backup with the marker is restored or an operator
//! runs `portico store adopt` (which writes a new marker flagged as adopted, which every
//! node then accepts).
//!
//! The marker is checked whenever the store answers that something is absent, whenever a
//! whole kind is listed (a resync), and by the caller's periodic [`IdentifiedStore::verify`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{Change, Fields, Key, Kind, Lease, Revision, Store, StoreError, keys};

/// The file in the data directory that remembers the identity of the store a node used.
pub const REMEMBERED: &str = "store-identity";

/// A store that refuses to be followed once it lost its identity.
#[derive(Debug)]
pub struct IdentifiedStore {
    inner: Arc<dyn Store>,
    /// The identity this node expects.
    expected: Mutex<String>,
    lost: AtomicBool,
    /// Where the identity is remembered (`<data_dir>/store-identity`), if anywhere.
    remember: Option<PathBuf>,
    /// The inner store's changes, and [`Change::Resync`] when the identity comes back, so
    /// every follower (routes, certificates, live feeds) re-reads the restored store.
    changes: broadcast::Sender<Change>,
}

/// What the marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    id: String,
    /// Written by `portico store adopt`: every node accepts it.
    adopted: bool,
}

impl IdentifiedStore {
    /// Wraps `inner`, whose identity is established now: the marker in the store, checked
    /// against the one remembered in `data_dir` if any. A store without a marker gets one,
    /// unless this node remembers another (then it starts lost). A store whose marker is not
    /// the remembered one starts lost, unless it was adopted.
    pub async fn establish(inner: Arc<dyn Store>, data_dir: Option<&Path>) -> Result<Self, StoreError> {
        let remember = data_dir.map(|d| d.join(REMEMBERED));
        let remembered = remember
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let (expected, lost) = match (read_marker(inner.as_ref()).await?, remembered) {
            (Some(marker), Some(known)) if marker.id != known && !marker.adopted => (known, true),
            (Some(marker), _) => (marker.id, false),
            (None, Some(known)) => (known, true),
            (None, None) => (first_marker(inner.as_ref()).await?, false),
        };
        let (changes, _) = broadcast::channel(4096);
        tokio::spawn(forward_changes(inner.changes(), changes.clone()));
        let store = Self { inner, expected: Mutex::new(expected), lost: AtomicBool::new(false), remember, changes };
        if lost {
            store.set_lost(true);
        } else {
            store.remember();
        }
        Ok(store)
    }

    /// Whether the store lost its identity (nothing is read from it or written to it).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Reads the marker again: `Ok(true)` when it is the expected one (or an adopted one,
    /// which becomes the expected one); `Ok(false)` when the identity is lost. A store that
    /// does not answer is an error, and changes nothing.
    pub async fn verify(&self) -> Result<bool, StoreError> {
        let marker = read_marker(self.inner.as_ref()).await?;
        let expected = self.expected();
        match marker {
            Some(marker) if marker.id == expected => self.set_lost(false),
            Some(marker) if marker.adopted => {
                tracing::warn!("the store was adopted (`portico store adopt`): following it as it is now");
                *self.expected.lock().unwrap_or_else(|e| e.into_inner()) = marker.id;
                self.remember();
                self.set_lost(false);
            }
            _ => self.set_lost(true),
        }
        Ok(!self.is_lost())
    }

    fn expected(&self) -> String {
        self.expected.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_lost(&self, lost: bool) {
        let was = self.lost.swap(lost, Ordering::AcqRel);
        match (was, lost) {
            (false, true) => tracing::error!(
                "the store lost its identity marker (wiped, e.g. a Redis without persistence restarted empty, or \
                 replaced by another store): routing and certificates go on from memory, the API refuses \
                 requests, /readyz fails; restore a backup, or run `portico store adopt` to accept the store as \
                 it is now"
            ),
            (true, false) => {
                tracing::info!("the store's identity is back: following it again");
                let _ = self.changes.send(Change::Resync);
            }
            _ => {}
        }
    }

    fn remember(&self) {
        if let Some(path) = &self.remember
            && let Err(e) = std::fs::write(path, self.expected())
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remember the store's identity");
        }
    }

    /// `Err(IdentityLost)` while the identity is lost.
    fn intact(&self) -> Result<(), StoreError> {
        if self.is_lost() { Err(StoreError::IdentityLost) } else { Ok(()) }
    }

    /// Passes `result` on once the marker says the store is still the one expected: an
    /// answer that something is absent, or a whole list, may come from a wiped store.
    async fn confirmed<T>(&self, result: T) -> Result<T, StoreError> {
        if self.verify().await? { Ok(result) } else { Err(StoreError::IdentityLost) }
    }
}

/// Passes the inner store's changes on (a lag as a resync) until the inner store is dropped
/// or nobody listens any more.
async fn forward_changes(mut from: broadcast::Receiver<Change>, to: broadcast::Sender<Change>) {
    loop {
        let change = match from.recv().await {
            Ok(change) => change,
            Err(broadcast::error::RecvError::Lagged(_)) => Change::Resync,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // No receiver yet is fine (followers subscribe after start); none ever again ends it
        // only with the inner store.
        let _ = to.send(change);
    }
}

/// Writes a new marker flagged as adopted: every node accepts the store as it is now, and
/// `data_dir` (if given) remembers it. Returns the new identity.
pub async fn adopt(store: &dyn Store, data_dir: Option<&Path>) -> Result<String, StoreError> {
    let id = new_id();
    write_marker(store, &Marker { id: id.clone(), adopted: true }).await?;
    if let Some(dir) = data_dir {
        std::fs::write(dir.join(REMEMBERED), &id).map_err(StoreError::Io)?;
    }
    Ok(id)
}

async fn read_marker(store: &dyn Store) -> Result<Option<Marker>, StoreError> {
    let Some(bytes) = store.blob(&keys::store_identity()).await? else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let id = value["id"].as_str().unwrap_or("(unreadable)").to_owned();
    Ok(Some(Marker { id, adopted: value["adopted"].as_bool().unwrap_or(false) }))
}

async fn write_marker(store: &dyn Store, marker: &Marker) -> Result<(), StoreError> {
    let value = serde_json::json!({ "id": marker.id, "adopted": marker.adopted });
    store.put_blob(&keys::store_identity(), value.to_string().as_bytes(), None).await
}

/// Writes the first marker of a store, under a lock so that nodes starting together agree
/// on one; returns it.
async fn first_marker(store: &dyn Store) -> Result<String, StoreError> {
    for _ in 0..100 {
        if let Some(lease) = store.acquire(&keys::store_identity_lock(), Duration::from_secs(10)).await? {
            let id = match read_marker(store).await? {
                Some(marker) => marker.id,
                None => {
                    let id = new_id();
                    write_marker(store, &Marker { id: id.clone(), adopted: false }).await?;
                    tracing::info!("the store has no identity marker yet: wrote one");
                    id
                }
            };
            store.release(&lease).await?;
            return Ok(id);
        }
        if let Some(marker) = read_marker(store).await? {
            return Ok(marker.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(StoreError::IdentityLost)
}

fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[async_trait]
impl Store for IdentifiedStore {
    async fn record(&self, kind: Kind, key: &str) -> Result<Option<Fields>, StoreError> {
        self.intact()?;
        match self.inner.record(kind, key).await? {
            None => self.confirmed(None).await,
            found => Ok(found),
        }
    }
    async fn record_at(&self, kind: Kind, key: &str) -> Result<Option<(Fields, Revision)>, StoreError> {
        self.intact()?;
        match self.inner.record_at(kind, key).await? {
            None => self.confirmed(None).await,
            found => Ok(found),
        }
    }
    async fn records(&self, kind: Kind) -> Result<Vec<(String, Fields)>, StoreError> {
        self.intact()?;
        let all = self.inner.records(kind).await?;
        self.confirmed(all).await
    }
    async fn keys(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.intact()?;
        let all = self.inner.keys(kind).await?;
        self.confirmed(all).await
    }
    async fn create(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        self.intact()?;
        self.inner.create(kind, key, fields).await
    }
    async fn replace_at(
        &self,
        kind: Kind,
        key: &str,
        new_key: &str,
        fields: &Fields,
        expected: Option<Revision>,
    ) -> Result<Revision, StoreError> {
        self.intact()?;
        self.inner.replace_at(kind, key, new_key, fields, expected).await
    }
    async fn put(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        self.intact()?;
        self.inner.put(kind, key, fields).await
    }
    async fn delete(&self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        self.intact()?;
        self.inner.delete(kind, key).await
    }
    async fn blob(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.intact()?;
        match self.inner.blob(key).await? {
            None => self.confirmed(None).await,
            found => Ok(found),
        }
    }
    async fn put_blob(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.intact()?;
        self.inner.put_blob(key, value, ttl).await
    }
    async fn delete_blob(&self, key: &Key) -> Result<bool, StoreError> {
        self.intact()?;
        self.inner.delete_blob(key).await
    }
    async fn blob_keys(&self) -> Result<Vec<Key>, StoreError> {
        self.intact()?;
        let all = self.inner.blob_keys().await?;
        self.confirmed(all).await
    }
    async fn count(&self, key: &Key, window: Duration) -> Result<u64, StoreError> {
        self.intact()?;
        self.inner.count(key, window).await
    }
    async fn acquire(&self, name: &Key, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        self.intact()?;
        self.inner.acquire(name, ttl).await
    }
    async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        self.intact()?;
        self.inner.refresh(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.intact()?;
        self.inner.release(lease).await
    }
    async fn memory_used(&self) -> Result<Option<u64>, StoreError> {
        self.inner.memory_used().await
    }
    async fn write_version(&self) -> Result<Option<u64>, StoreError> {
        self.inner.write_version().await
    }
    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await?;
        self.intact()
    }
    async fn clock_ms(&self) -> Result<u64, StoreError> {
        self.inner.clock_ms().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn embedded(dir: &Path) -> Arc<dyn Store> {
        Arc::new(crate::EmbeddedStore::open(dir.join("s.redb")).await.unwrap())
    }

    fn host(name: &str) -> Fields {
        [("host".to_owned(), name.to_owned())].into_iter().collect()
    }

    #[tokio::test]
    async fn a_wiped_store_is_refused_until_restored_or_adopted() {
        let dir = tempfile::TempDir::new().unwrap();
        let node = tempfile::TempDir::new().unwrap();
        let raw = embedded(dir.path()).await;
        let store = IdentifiedStore::establish(raw.clone(), Some(node.path())).await.unwrap();
        store.create(Kind::Host, "a.test", &host("a.test")).await.unwrap();
        let marker = raw.blob(&keys::store_identity()).await.unwrap().unwrap();
        assert!(store.verify().await.unwrap());

        // Wiped: the marker and the host are gone. Nothing is followed or written.
        raw.delete_blob(&keys::store_identity()).await.unwrap();
        raw.delete(Kind::Host, "a.test").await.unwrap();
        assert!(matches!(store.records(Kind::Host).await, Err(StoreError::IdentityLost)), "an empty list is refused");
        assert!(store.is_lost());
        assert!(matches!(store.create(Kind::Host, "b.test", &host("b.test")).await, Err(StoreError::IdentityLost)));
        assert!(store.ping().await.is_err());
        // A node started afresh on it with the same data directory starts lost too, and
        // writes no marker of its own.
        let restarted = IdentifiedStore::establish(raw.clone(), Some(node.path())).await.unwrap();
        assert!(restarted.is_lost());
        assert!(raw.blob(&keys::store_identity()).await.unwrap().is_none());

        // Restored from a backup: the marker is back, so is everything, and every follower
        // is told to re-read it.
        let mut followed = store.changes();
        raw.put_blob(&keys::store_identity(), &marker, None).await.unwrap();
        raw.create(Kind::Host, "a.test", &host("a.test")).await.unwrap();
        assert!(store.verify().await.unwrap());
        assert_eq!(store.keys(Kind::Host).await.unwrap(), ["a.test"]);
        let resync = async {
            loop {
                if followed.recv().await.unwrap() == Change::Resync {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), resync).await.expect("a resync for the followers");

        // Wiped again, then adopted as it is: accepted, and remembered.
        raw.delete_blob(&keys::store_identity()).await.unwrap();
        assert!(!store.verify().await.unwrap());
        let id = adopt(raw.as_ref(), None).await.unwrap();
        assert!(store.verify().await.unwrap());
        assert_eq!(std::fs::read_to_string(node.path().join(REMEMBERED)).unwrap(), id);
        assert!(!IdentifiedStore::establish(raw, Some(node.path())).await.unwrap().is_lost());
    }

    #[tokio::test]
    async fn another_store_is_not_taken_for_the_one_remembered() {
        let node = tempfile::TempDir::new().unwrap();
        let (one, two) = (tempfile::TempDir::new().unwrap(), tempfile::TempDir::new().unwrap());
        let first = IdentifiedStore::establish(embedded(one.path()).await, Some(node.path())).await.unwrap();
        assert!(!first.is_lost());
        // Another store that has a marker of its own.
        let other = embedded(two.path()).await;
        IdentifiedStore::establish(other.clone(), None).await.unwrap();
        assert!(IdentifiedStore::establish(other, Some(node.path())).await.unwrap().is_lost());
        // A store seen for the first time by a node without memory gets a marker.
        let fresh = tempfile::TempDir::new().unwrap();
        let raw = embedded(fresh.path()).await;
        IdentifiedStore::establish(raw.clone(), None).await.unwrap();
        assert!(raw.blob(&keys::store_identity()).await.unwrap().is_some());
    }
}
