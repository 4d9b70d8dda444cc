//! The embedded backend: one redb file.
//!
//! The file is opened in redb's multi-writer mode, so `portico host add` can write while
//! `portico serve` runs on the same data directory. A write that others must hear about
//! (records, and blobs without a time to live) also increments a version counter and stores
//! its change events under the new version, in the same transaction; each process polls the
//! counter and announces the events of writes it did not make, or [`Change::Resync`] when
//! they are no longer kept. Leases and short-lived blobs (challenge answers) are not
//! announced: one node's issuance makes no other node re-read anything. Commits are durable when they return (redb's default
//! `Durability::Immediate`).
//!
//! The file holds every private key, so it is created 0600 in a 0700 directory, and a wider
//! mode is warned about at open. A fresh store is made only where no file exists: an empty
//! or foreign file is refused, never overwritten. A damaged file (redb may panic on a bad
//! page) is an error that names the file, not a crash. After an I/O error (a full disk) redb
//! refuses every operation until the file is reopened: the watch task reopens it, with
//! backoff, and logs once when the store fails and once when it works again.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    TableHandle, WriteTransaction,
};
use tokio::sync::broadcast;

use crate::{Change, Fields, Key, Kind, Lease, Revision, Store, StoreError, now_ms};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
/// Change events by version, for other processes (a JSON list per version).
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// Each record's revision (the version of the write that last changed it), keyed by
/// `<kind>\0<key>`.
const REVISIONS: TableDefinition<&str, u64> = TableDefinition::new("revisions");
/// How many versions' events are kept; a process further behind resyncs.
const CHANGES_KEPT: u64 = 10_000;
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
    /// Replaced whole when the file is reopened after an I/O error.
    db: RwLock<Arc<Database>>,
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
    /// Opens the database file at `path`, creating it (0600, in a 0700 directory) if no file
    /// is there. Must be called inside a Tokio runtime: it starts the task that watches for
    /// other processes' writes, which ends when the store is dropped.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref().to_owned(), true).await
    }

    /// Opens the database file at `path`, which must exist: for commands that only read or
    /// change what is there, where a mistyped path must not start an empty store.
    pub async fn open_existing(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref().to_owned(), false).await
    }

    /// Runs redb's integrity check on the file at `path` (which must exist, and which no
    /// other process may be writing meanwhile: the check holds the writer lock). `Ok(true)`:
    /// sound; `Ok(false)`: it was damaged, and redb repaired what it could.
    pub async fn check(path: impl AsRef<Path>) -> Result<bool, StoreError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Err(StoreError::Missing { path });
            }
            let mut db = open_file(&path, false)?;
            let checked = catch_unwind(AssertUnwindSafe(|| db.check_integrity()));
            match checked {
                Ok(result) => result.map_err(|e| damaged(&path, e)),
                Err(_) => Err(StoreError::Damaged { path: path.clone(), detail: "redb panicked reading it".into() }),
            }
        })
        .await
        .map_err(StoreError::Task)?
    }

    async fn open_with(path: PathBuf, create: bool) -> Result<Self, StoreError> {
        let inner =
            tokio::task::spawn_blocking(move || Inner::open(path, create)).await.map_err(StoreError::Task)??;
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

    /// Runs a write transaction and announces `events`, and any `f` adds, once it has
    /// committed (with any other process's events this process had not announced yet). No
    /// events: nobody is told.
    async fn write<T: Send + 'static>(
        &self,
        events: Vec<Change>,
        f: impl FnOnce(&WriteTransaction, Revision, &mut Vec<Change>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (out, foreign, own) = self.blocking(move |inner| inner.write(events, f)).await?;
        // No receiver is not an error: nobody is listening yet.
        for event in foreign.into_iter().chain(own) {
            let _ = self.inner.changes.send(event);
        }
        Ok(out)
    }
}

impl Inner {
    fn open(path: PathBuf, create: bool) -> Result<Self, StoreError> {
        // Whether a file is there; a directory this process may not search is not "no store".
        let fresh = match std::fs::symlink_metadata(&path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_error(&path, e)),
        };
        if fresh && !create {
            return Err(StoreError::Missing { path });
        }
        if fresh {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io_error(dir, e))?;
            }
            // Empty and private; redb fills it in.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
        } else {
            warn_if_readable(&path);
        }
        let db = open_file(&path, fresh)?;
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<u64, StoreError> {
            if !fresh {
                let txn = db.begin_read().or_store()?;
                if !txn.list_tables().or_store()?.any(|t| t.name() == META.name()) {
                    return Err(StoreError::NotAStore {
                        path: path.clone(),
                        why: "it is a redb file of something else",
                    });
                }
            }
            let txn = db.begin_write().or_store()?;
            for kind in Kind::ALL {
                txn.open_table(records(kind)).or_store()?;
            }
            txn.open_table(BLOBS).or_store()?;
            txn.open_table(LOCKS).or_store()?;
            txn.open_table(CHANGES).or_store()?;
            txn.open_table(REVISIONS).or_store()?;
            let version = txn.open_table(META).or_store()?.get(VERSION).or_store()?.map_or(0, |v| v.value());
            txn.commit().or_store()?;
            Ok(version)
        }));
        let version = match opened {
            Ok(version) => version?,
            Err(_) => return Err(StoreError::Damaged { path, detail: "redb panicked reading it".into() }),
        };
        let (changes, _) = broadcast::channel(1024);
        Ok(Self { db: RwLock::new(Arc::new(db)), path, changes, seen_version: AtomicU64::new(version) })
    }

    /// The open database.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        Ok(self.db.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Opens the file again (after an I/O error, redb refuses everything until then).
    fn reopen(&self) -> Result<(), StoreError> {
        let db = open_file(&self.path, false)?;
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(db);
        Ok(())
    }

    /// Runs `f` in a write transaction, which may add to `events` (what it found decides
    /// them); with events, also bumps the version and stores them under it. Returns `f`'s
    /// result, the events of versions another process wrote that this one had not announced
    /// yet (marking our own version as seen would hide them from the watcher), and the events.
    fn write<T>(
        &self,
        mut events: Vec<Change>,
        f: impl FnOnce(&WriteTransaction, Revision, &mut Vec<Change>) -> Result<T, StoreError>,
    ) -> Result<(T, Vec<Change>, Vec<Change>), StoreError> {
        let txn = self.db()?.begin_write().or_store()?;
        let before = txn.open_table(META).or_store()?.get(VERSION).or_store()?.map_or(0, |v| v.value());
        let version = before + 1;
        // The version this write will have is the revision of the records it writes.
        let out = f(&txn, Revision(version), &mut events)?;
        if events.is_empty() {
            txn.commit().or_store()?;
            return Ok((out, Vec::new(), events));
        }
        txn.open_table(META).or_store()?.insert(VERSION, version).or_store()?;
        let seen = self.seen_version.load(Ordering::SeqCst);
        let missed = {
            let mut changes = txn.open_table(CHANGES).or_store()?;
            changes.insert(version, encode_events(&events).as_slice()).or_store()?;
            if before > seen { events_between(&changes, seen, before)? } else { Vec::new() }
        };
        txn.commit().or_store()?;
        // Two writes of this process racing here announce some foreign events twice; that
        // is harmless (receivers re-read).
        let missed = if before > self.seen_version.fetch_max(version, Ordering::SeqCst) { missed } else { Vec::new() };
        Ok((out, missed, events))
    }

    /// Events of the versions after `seen` up to the current one, and that version.
    fn events_since(&self, seen: u64) -> Result<(u64, Vec<Change>), StoreError> {
        let txn = self.db()?.begin_read().or_store()?;
        let version = txn.open_table(META).or_store()?.get(VERSION).or_store()?.map_or(0, |v| v.value());
        if version <= seen {
            return Ok((version, Vec::new()));
        }
        let changes = txn.open_table(CHANGES).or_store()?;
        Ok((version, events_between(&changes, seen, version)?))
    }

    fn version(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().or_store()?;
        Ok(txn.open_table(META).or_store()?.get(VERSION).or_store()?.map_or(0, |v| v.value()))
    }

    fn sweep(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let txn = self.db()?.begin_write().or_store()?;
        for def in [BLOBS, LOCKS] {
            txn.open_table(def).or_store()?.retain(|_, v| !expired(v, now)).or_store()?;
        }
        let version = txn.open_table(META).or_store()?.get(VERSION).or_store()?.map_or(0, |v| v.value());
        let oldest_kept = version.saturating_sub(CHANGES_KEPT);
        txn.open_table(CHANGES).or_store()?.retain(|v, _| v > oldest_kept).or_store()?;
        txn.commit().or_store()?;
        Ok(())
    }
}

/// Opens the redb file at `path` (`fresh`: initialise the empty file just made), telling a
/// file that is not a redb database, or a damaged one, from other failures.
fn open_file(path: &Path, fresh: bool) -> Result<Database, StoreError> {
    if !fresh && std::fs::metadata(path).map_err(|e| io_error(path, e))?.len() == 0 {
        return Err(StoreError::NotAStore { path: path.to_owned(), why: "the file is empty" });
    }
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
    let opened = catch_unwind(AssertUnwindSafe(|| if fresh { builder.create(path) } else { builder.open(path) }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        // redb reads the header first: a file that is not redb's is "invalid data".
        Ok(Err(DatabaseError::Storage(StorageError::Io(e)))) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(StoreError::NotAStore { path: path.to_owned(), why: "it is not a redb database" })
        }
        Ok(Err(e @ DatabaseError::Storage(StorageError::Corrupted(_)))) => Err(damaged(path, e)),
        Ok(Err(e)) => Err::<Database, _>(e).or_store(),
        Err(_) => Err(StoreError::Damaged { path: path.to_owned(), detail: "redb panicked reading it".into() }),
    }
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged { path: path.to_owned(), detail: e.to_string() }
}

/// Warns when the store file or its directory can be read by other users: it holds every
/// private key and the internal CA's.
fn warn_if_readable(path: &Path) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    for (what, place) in [("store file", path), ("store directory", dir)] {
        if let Ok(meta) = std::fs::metadata(place) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %place.display(), mode = format!("{mode:o}"),
                    "the {what} is open to other users and holds every private key: chmod go-rwx it");
            }
        }
    }
}

/// Whether an error means redb refuses everything since an earlier I/O failure.
fn needs_reopen(error: &StoreError) -> bool {
    let StoreError::Backend { source, .. } = error else { return false };
    matches!(source.downcast_ref::<redb::Error>(), Some(redb::Error::PreviousIo))
}

/// redb's errors as the store's (a backend error whose source is the `redb::Error`).
trait OrStore<T> {
    fn or_store(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrStore<T> for Result<T, E> {
    fn or_store(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend { backend: "embedded", source: Box::new(e.into()) })
    }
}

/// Announces other processes' writes as [`Change::Resync`], sweeps expired entries, and
/// reopens the file after an I/O error (backing off from one poll to 30 seconds). Failures
/// are logged when they start and when they end, not at every poll.
async fn watch(weak: Weak<Inner>) {
    let mut polls = 0u32;
    let mut failing = false;
    let mut reopen_wait = POLL_EVERY;
    let mut next_reopen = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let Some(inner) = weak.upgrade() else { return };
        polls = polls.wrapping_add(1);
        let path = inner.path.clone();
        let checking = inner.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let inner = checking;
            if polls.is_multiple_of(SWEEP_EVERY_POLLS)
                && let Err(e) = inner.sweep()
            {
                tracing::warn!(error = %e, "sweeping expired store entries failed");
            }
            let seen = inner.seen_version.load(Ordering::SeqCst);
            let (version, events) = inner.events_since(seen)?;
            // A write of our own may land between the read and `fetch_max`; announcing its
            // events again is harmless.
            if version > inner.seen_version.fetch_max(version, Ordering::SeqCst) {
                for event in events {
                    let _ = inner.changes.send(event);
                }
            }
            Ok::<_, StoreError>(())
        })
        .await;
        let error = match checked {
            Ok(Ok(())) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(path = %path.display(), "the store works again");
                }
                reopen_wait = POLL_EVERY;
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => StoreError::Task(e),
        };
        if !std::mem::replace(&mut failing, true) {
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            tracing::error!(path = %path.display(), error = %error, cause, "the store failed");
        }
        if needs_reopen(&error) && tokio::time::Instant::now() >= next_reopen {
            match tokio::task::spawn_blocking(move || inner.reopen()).await {
                Ok(Ok(())) => {
                    failing = false;
                    tracing::info!(path = %path.display(), "the store works again (reopened after an I/O error)");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "reopening the store failed; trying again later"),
                Err(e) => tracing::debug!(error = %e, "reopening the store failed; trying again later"),
            }
            next_reopen = tokio::time::Instant::now() + reopen_wait;
            reopen_wait = (reopen_wait * 2).min(Duration::from_secs(30));
        }
    }
}

/// Change events as stored in `CHANGES`.
fn encode_events(events: &[Change]) -> Vec<u8> {
    serde_json::to_vec(&crate::encode_changes(events)).unwrap_or_default()
}

/// The events of versions `after + 1 ..= upto`, or one [`Change::Resync`] if any of them is
/// no longer kept (or cannot be read).
fn events_between(
    changes: &impl ReadableTable<u64, &'static [u8]>,
    after: u64,
    upto: u64,
) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    let mut expected = after + 1;
    for entry in changes.range(after + 1..=upto).or_store()? {
        let (version, list) = entry.or_store()?;
        let decoded = serde_json::from_slice(list.value()).ok().and_then(|list| crate::decode_changes(&list));
        let (Some(list), true) = (decoded, version.value() == expected) else { return Ok(vec![Change::Resync]) };
        out.extend(list);
        expected += 1;
    }
    if expected != upto + 1 {
        return Ok(vec![Change::Resync]);
    }
    Ok(out)
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
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        kind,
        key: key.to_owned(),
        source: source.into(),
    })
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
            let txn = inner.db()?.begin_read().or_store()?;
            let table = txn.open_table(records(kind)).or_store()?;
            let value = table.get(key.as_str()).or_store()?;
            value.map(|v| parse_fields(kind, &key, v.value())).transpose()
        })
        .await
    }

    async fn records(&self, kind: Kind) -> Result<Vec<(String, Fields)>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db()?.begin_read().or_store()?;
            let table = txn.open_table(records(kind)).or_store()?;
            let mut out = Vec::new();
            for entry in table.iter().or_store()? {
                let (k, v) = entry.or_store()?;
                let key = k.value().to_owned();
                if let Some(fields) = crate::readable(parse_fields(kind, &key, v.value()).map(Some))? {
                    out.push((key, fields));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn keys(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db()?.begin_read().or_store()?;
            let table = txn.open_table(records(kind)).or_store()?;
            table.iter().or_store()?.map(|e| Ok(e.or_store()?.0.value().to_owned())).collect()
        })
        .await
    }

    async fn record_at(&self, kind: Kind, key: &str) -> Result<Option<(Fields, Revision)>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db()?.begin_read().or_store()?;
            let table = txn.open_table(records(kind)).or_store()?;
            let Some(value) = table.get(key.as_str()).or_store()? else { return Ok(None) };
            let fields = parse_fields(kind, &key, value.value())?;
            let revisions = txn.open_table(REVISIONS).or_store()?;
            let revision = revisions.get(revision_key(kind, &key).as_str()).or_store()?.map_or(0, |v| v.value());
            Ok(Some((fields, Revision(revision))))
        })
        .await
    }

    async fn create(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        crate::within_bounds(kind, key, fields)?;
        let (key, bytes) = (key.to_owned(), fields_bytes(fields));
        self.write(vec![record_event(kind, &key)], move |txn, revision, _events| {
            let mut table = txn.open_table(records(kind)).or_store()?;
            if table.get(key.as_str()).or_store()?.is_some() {
                return Err(StoreError::Conflict { kind, key });
            }
            table.insert(key.as_str(), bytes.as_slice()).or_store()?;
            set_revision(txn, kind, &key, Some(revision))
        })
        .await
    }

    async fn put(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        crate::within_bounds(kind, key, fields)?;
        let (key, bytes) = (key.to_owned(), fields_bytes(fields));
        self.write(vec![record_event(kind, &key)], move |txn, revision, _events| {
            txn.open_table(records(kind)).or_store()?.insert(key.as_str(), bytes.as_slice()).or_store()?;
            set_revision(txn, kind, &key, Some(revision))
        })
        .await
    }

    async fn delete(&self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(vec![record_event(kind, &key)], move |txn, _revision, _events| {
            let existed = txn.open_table(records(kind)).or_store()?.remove(key.as_str()).or_store()?.is_some();
            set_revision(txn, kind, &key, None)?;
            Ok(existed)
        })
        .await
    }

    async fn blob(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.as_str().to_owned();
        self.blocking(move |inner| {
            let txn = inner.db()?.begin_read().or_store()?;
            let table = txn.open_table(BLOBS).or_store()?;
            let entry = table.get(key.as_str()).or_store()?;
            Ok(entry.filter(|e| !expired(e.value(), now_ms())).map(|e| decode(e.value()).1.to_vec()))
        })
        .await
    }

    async fn put_blob(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let (key, entry) = (key.as_str().to_owned(), encode(expiry(ttl), value));
        // Short-lived blobs (challenge answers) are read where they are needed, never followed.
        let events = if ttl.is_some() { Vec::new() } else { vec![Change::Blob { key: Key::listed(key.clone()) }] };
        self.write(events, move |txn, _revision, _events| {
            txn.open_table(BLOBS).or_store()?.insert(key.as_str(), entry.as_slice()).or_store()?;
            Ok(())
        })
        .await
    }

    async fn delete_blob(&self, key: &Key) -> Result<bool, StoreError> {
        let key = key.as_str().to_owned();
        self.write(Vec::new(), move |txn, _revision, events| {
            let mut table = txn.open_table(BLOBS).or_store()?;
            let Some(old) = table.remove(key.as_str()).or_store()? else { return Ok(false) };
            let (expires, _) = decode(old.value());
            // Only a lasting blob's removal is news; a short-lived one (a challenge answer)
            // was never announced.
            if expires == 0 {
                events.push(Change::Blob { key: Key::listed(key.clone()) });
            }
            Ok(!expired(old.value(), now_ms()))
        })
        .await
    }

    async fn blob_keys(&self) -> Result<Vec<Key>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db()?.begin_read().or_store()?;
            let table = txn.open_table(BLOBS).or_store()?;
            let mut keys = Vec::new();
            for entry in table.iter().or_store()? {
                let (key, value) = entry.or_store()?;
                if decode(value.value()).0 == 0 {
                    keys.push(Key::listed(key.value().to_owned()));
                }
            }
            Ok(keys)
        })
        .await
    }

    async fn count(&self, key: &Key, window: Duration) -> Result<u64, StoreError> {
        let key = key.as_str().to_owned();
        self.write(Vec::new(), move |txn, _revision, _events| {
            let mut table = txn.open_table(BLOBS).or_store()?;
            let now = now_ms();
            let current = table.get(key.as_str()).or_store()?.filter(|e| !expired(e.value(), now)).and_then(|e| {
                let (expires, value) = decode(e.value());
                <[u8; 8]>::try_from(value).ok().map(|c| (expires, u64::from_le_bytes(c)))
            });
            let (expires, count) = match current {
                Some((expires, count)) => (expires, count + 1),
                None => (expiry(Some(window)), 1),
            };
            table.insert(key.as_str(), encode(expires, &count.to_le_bytes()).as_slice()).or_store()?;
            Ok(count)
        })
        .await
    }

    async fn acquire(&self, name: &Key, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let lease = Lease::new(name);
        self.write(Vec::new(), move |txn, _revision, _events| {
            let mut table = txn.open_table(LOCKS).or_store()?;
            let held = table.get(lease.name.as_str()).or_store()?.is_some_and(|e| !expired(e.value(), now_ms()));
            if held {
                return Ok(None);
            }
            table
                .insert(lease.name.as_str(), encode(expiry(Some(ttl)), lease.token.as_bytes()).as_slice())
                .or_store()?;
            Ok(Some(lease))
        })
        .await
    }

    async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.write(Vec::new(), move |txn, _revision, _events| {
            let mut table = txn.open_table(LOCKS).or_store()?;
            if !holds(&table, &lease)? {
                return Ok(false);
            }
            table
                .insert(lease.name.as_str(), encode(expiry(Some(ttl)), lease.token.as_bytes()).as_slice())
                .or_store()?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.write(Vec::new(), move |txn, _revision, _events| {
            let mut table = txn.open_table(LOCKS).or_store()?;
            if !holds(&table, &lease)? {
                return Ok(false);
            }
            table.remove(lease.name.as_str()).or_store()?;
            Ok(true)
        })
        .await
    }

    async fn replace_at(
        &self,
        kind: Kind,
        key: &str,
        new_key: &str,
        fields: &Fields,
        expected: Option<Revision>,
    ) -> Result<Revision, StoreError> {
        crate::within_bounds(kind, new_key, fields)?;
        let (key, new_key, bytes) = (key.to_owned(), new_key.to_owned(), fields_bytes(fields));
        let mut events = vec![record_event(kind, &key)];
        if new_key != key {
            events.push(record_event(kind, &new_key));
        }
        self.write(events, move |txn, revision, _events| {
            let mut table = txn.open_table(records(kind)).or_store()?;
            if table.get(key.as_str()).or_store()?.is_none() {
                return Err(StoreError::NotFound { kind, key });
            }
            if let Some(expected) = expected {
                let revisions = txn.open_table(REVISIONS).or_store()?;
                let current = revisions.get(revision_key(kind, &key).as_str()).or_store()?.map_or(0, |v| v.value());
                if current != expected.0 {
                    return Err(StoreError::Stale { kind, key });
                }
            }
            if new_key != key {
                if table.get(new_key.as_str()).or_store()?.is_some() {
                    return Err(StoreError::Conflict { kind, key: new_key });
                }
                table.remove(key.as_str()).or_store()?;
                set_revision(txn, kind, &key, None)?;
            }
            table.insert(new_key.as_str(), bytes.as_slice()).or_store()?;
            set_revision(txn, kind, &new_key, Some(revision))?;
            Ok(revision)
        })
        .await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    async fn write_version(&self) -> Result<Option<u64>, StoreError> {
        self.blocking(|inner| inner.version().map(Some)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.version().map(|_| ())).await
    }
}

/// An I/O error on `path`: a refusal names the path and who asked.
fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        return StoreError::Permission { path: path.to_owned(), user: crate::whoami() };
    }
    StoreError::Io(e)
}

/// The key of a record's revision in `REVISIONS`.
fn revision_key(kind: Kind, key: &str) -> String {
    format!("{}\0{key}", kind.name())
}

/// Records `revision` as the record's (or forgets it, for a deleted record).
fn set_revision(txn: &WriteTransaction, kind: Kind, key: &str, revision: Option<Revision>) -> Result<(), StoreError> {
    let mut revisions = txn.open_table(REVISIONS).or_store()?;
    match revision {
        Some(revision) => revisions.insert(revision_key(kind, key).as_str(), revision.0).or_store()?,
        None => revisions.remove(revision_key(kind, key).as_str()).or_store()?,
    };
    Ok(())
}

/// Whether `lease` is the current, unexpired holder of its lock.
fn holds(table: &impl ReadableTable<&'static str, &'static [u8]>, lease: &Lease) -> Result<bool, StoreError> {
    let Some(entry) = table.get(lease.name.as_str()).or_store()? else { return Ok(false) };
    let (_, token) = decode(entry.value());
    Ok(token == lease.token.as_bytes() && !expired(entry.value(), now_ms()))
}
