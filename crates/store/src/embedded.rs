//! The embedded backend: one redb file.
//!
//! The file is opened in redb's multi-writer mode, so `portico host add` can write while
//! `portico serve` runs on the same data directory. Every write transaction also increments a
//! version counter; each process polls it and announces writes it did not make as
//! [`Change::Resync`]. Commits are durable when they return (redb's default
//! `Durability::Immediate`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use crate::{Change, Fields, Kind, Lease, Store, StoreError, now_ms};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
const VERSION: &str = "version";
/// How often a process looks for other processes' writes.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often expired blobs and locks are swept away, in polls.
const SWEEP_EVERY_POLLS: u32 = 600;

fn records(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.table_name())
}

/// The embedded store (see the module documentation).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    changes: broadcast::Sender<Change>,
    /// The last version this process wrote or announced.
    seen_version: AtomicU64,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.inner.path).finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database file at `path`, and its parent directory.
    /// Must be called inside a Tokio runtime: it starts the task that watches for other
    /// processes' writes, which ends when the store is dropped.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let inner = tokio::task::spawn_blocking(move || Inner::open(path)).await.map_err(StoreError::Task)??;
        let inner = Arc::new(inner);
        tokio::spawn(watch(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(StoreError::Task)?
    }

    /// Runs a write transaction and announces `events` once it has committed.
    async fn write<T: Send + 'static>(
        &self,
        events: Vec<Change>,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let out = self.blocking(move |inner| inner.write(f)).await?;
        for event in events {
            // No receiver is not an error: nobody is listening yet.
            let _ = self.inner.changes.send(event);
        }
        Ok(out)
    }
}

impl Inner {
    fn open(path: PathBuf) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        }
        let db = Database::builder().set_concurrency_mode(ConcurrencyMode::MultiWriter).create(&path)?;
        let txn = db.begin_write()?;
        for kind in Kind::ALL {
            txn.open_table(records(kind))?;
        }
        txn.open_table(BLOBS)?;
        txn.open_table(LOCKS)?;
        let version = txn.open_table(META)?.get(VERSION)?.map_or(0, |v| v.value());
        txn.commit()?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Self { db, path, changes, seen_version: AtomicU64::new(version) })
    }

    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let txn = self.db.begin_write()?;
        let out = f(&txn)?;
        let (before, version) = {
            let mut meta = txn.open_table(META)?;
            let before = meta.get(VERSION)?.map_or(0, |v| v.value());
            meta.insert(VERSION, before + 1)?;
            (before, before + 1)
        };
        txn.commit()?;
        // Versions up to `before` that this process had not seen were written by another
        // process: announce them now, since marking our own write as seen hides them from
        // the watcher. (Two writes of this process racing here cause at most an extra resync.)
        if before > self.seen_version.fetch_max(version, Ordering::SeqCst) {
            let _ = self.changes.send(Change::Resync);
        }
        Ok(out)
    }

    fn version(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(VERSION)?.map_or(0, |v| v.value()))
    }

    fn sweep(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let txn = self.db.begin_write()?;
        for def in [BLOBS, LOCKS] {
            txn.open_table(def)?.retain(|_, v| !expired(v, now))?;
        }
        txn.commit()?;
        Ok(())
    }
}

/// Announces other processes' writes as [`Change::Resync`], and sweeps expired entries.
async fn watch(inner: Weak<Inner>) {
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        polls = polls.wrapping_add(1);
        let checked = tokio::task::spawn_blocking(move || {
            if polls.is_multiple_of(SWEEP_EVERY_POLLS)
                && let Err(e) = inner.sweep()
            {
                tracing::warn!(error = %e, "sweeping expired store entries failed");
            }
            let version = inner.version()?;
            // A write of our own may land between commit and `fetch_max`; the extra resync that
            // causes is harmless.
            if version > inner.seen_version.fetch_max(version, Ordering::SeqCst) {
                let _ = inner.changes.send(Change::Resync);
            }
            Ok::<_, StoreError>(())
        })
        .await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the store version failed"),
            Err(e) => tracing::warn!(error = %e, "store watch task failed"),
        }
    }
}

/// Entry layout for blobs and locks: 8 bytes of expiry (ms since the epoch, 0 = never), then
/// the value.
fn encode(expires_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&expires_ms.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(entry: &[u8]) -> (u64, &[u8]) {
    let (head, value) = entry.split_at(entry.len().min(8));
    let mut expiry = [0u8; 8];
    expiry[..head.len()].copy_from_slice(head);
    (u64::from_le_bytes(expiry), value)
}

fn expired(entry: &[u8], now: u64) -> bool {
    let (expires, _) = decode(entry);
    expires != 0 && expires <= now
}

fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| now_ms().saturating_add(t.as_millis().max(1) as u64))
}

fn parse_fields(kind: Kind, key: &str, bytes: &[u8]) -> Result<Fields, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { kind, key: key.to_owned(), source })
}

fn fields_bytes(fields: &Fields) -> Vec<u8> {
    // A map of strings always serialises.
    serde_json::to_vec(fields).unwrap_or_default()
}

fn record_event(kind: Kind, key: &str) -> Change {
    Change::Record { kind, key: key.to_owned() }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn record(&self, kind: Kind, key: &str) -> Result<Option<Fields>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(records(kind))?;
            let value = table.get(key.as_str())?;
            value.map(|v| parse_fields(kind, &key, v.value())).transpose()
        })
        .await
    }

    async fn records(&self, kind: Kind) -> Result<Vec<(String, Fields)>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(records(kind))?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                let key = k.value().to_owned();
                let fields = parse_fields(kind, &key, v.value())?;
                out.push((key, fields));
            }
            Ok(out)
        })
        .await
    }

    async fn keys(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(records(kind))?;
            table.iter()?.map(|e| Ok(e?.0.value().to_owned())).collect()
        })
        .await
    }

    async fn create(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        let (key, bytes) = (key.to_owned(), fields_bytes(fields));
        self.write(vec![record_event(kind, &key)], move |txn| {
            let mut table = txn.open_table(records(kind))?;
            if table.get(key.as_str())?.is_some() {
                return Err(StoreError::Conflict { kind, key });
            }
            table.insert(key.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn replace(&self, kind: Kind, key: &str, new_key: &str, fields: &Fields) -> Result<(), StoreError> {
        let (key, new_key, bytes) = (key.to_owned(), new_key.to_owned(), fields_bytes(fields));
        let mut events = vec![record_event(kind, &key)];
        if new_key != key {
            events.push(record_event(kind, &new_key));
        }
        self.write(events, move |txn| {
            let mut table = txn.open_table(records(kind))?;
            if table.get(key.as_str())?.is_none() {
                return Err(StoreError::NotFound { kind, key });
            }
            if new_key != key {
                if table.get(new_key.as_str())?.is_some() {
                    return Err(StoreError::Conflict { kind, key: new_key });
                }
                table.remove(key.as_str())?;
            }
            table.insert(new_key.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn put(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        let (key, bytes) = (key.to_owned(), fields_bytes(fields));
        self.write(vec![record_event(kind, &key)], move |txn| {
            txn.open_table(records(kind))?.insert(key.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(vec![record_event(kind, &key)], move |txn| {
            Ok(txn.open_table(records(kind))?.remove(key.as_str())?.is_some())
        })
        .await
    }

    async fn blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            let entry = table.get(key.as_str())?;
            Ok(entry.filter(|e| !expired(e.value(), now_ms())).map(|e| decode(e.value()).1.to_vec()))
        })
        .await
    }

    async fn put_blob(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let (key, entry) = (key.to_owned(), encode(expiry(ttl), value));
        self.write(vec![Change::Blob { key: key.clone() }], move |txn| {
            txn.open_table(BLOBS)?.insert(key.as_str(), entry.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn delete_blob(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(vec![Change::Blob { key: key.clone() }], move |txn| {
            let mut table = txn.open_table(BLOBS)?;
            let old = table.remove(key.as_str())?;
            Ok(old.is_some_and(|e| !expired(e.value(), now_ms())))
        })
        .await
    }

    async fn acquire(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let lease = Lease::new(name);
        self.write(Vec::new(), move |txn| {
            let mut table = txn.open_table(LOCKS)?;
            let held = table.get(lease.name.as_str())?.is_some_and(|e| !expired(e.value(), now_ms()));
            if held {
                return Ok(None);
            }
            table.insert(lease.name.as_str(), encode(expiry(Some(ttl)), lease.token.as_bytes()).as_slice())?;
            Ok(Some(lease))
        })
        .await
    }

    async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.write(Vec::new(), move |txn| {
            let mut table = txn.open_table(LOCKS)?;
            if !holds(&table, &lease)? {
                return Ok(false);
            }
            table.insert(lease.name.as_str(), encode(expiry(Some(ttl)), lease.token.as_bytes()).as_slice())?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.write(Vec::new(), move |txn| {
            let mut table = txn.open_table(LOCKS)?;
            if !holds(&table, &lease)? {
                return Ok(false);
            }
            table.remove(lease.name.as_str())?;
            Ok(true)
        })
        .await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.version().map(|_| ())).await
    }
}

/// Whether `lease` is the current, unexpired holder of its lock.
fn holds(table: &impl ReadableTable<&'static str, &'static [u8]>, lease: &Lease) -> Result<bool, StoreError> {
    let Some(entry) = table.get(lease.name.as_str())? else { return Ok(false) };
    let (expires, token) = decode(entry.value());
    Ok(token == lease.token.as_bytes() && !(expires != 0 && expires <= now_ms()))
}
