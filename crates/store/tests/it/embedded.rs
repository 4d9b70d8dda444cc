//! The contract suite on the embedded (redb) backend, plus what only it does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portico_store::{Change, EmbeddedStore, Kind, Store, keys};
use tempfile::TempDir;

use crate::contract::{expect_event, fields};

pub struct Embedded {
    _dir: TempDir,
    path: PathBuf,
}

impl crate::contract::Backend for Embedded {
    async fn fresh() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("nested/portico.redb");
        Self { _dir: dir, path }
    }

    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(&self.path).await.unwrap())
    }
}

crate::contract_suite!(Embedded);

/// Two handles on one file (as `portico host add` beside `portico serve`): each sees the
/// other's writes, and the feed of the one that did not write says what changed.
#[tokio::test]
async fn second_handle_sees_writes_and_what_changed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("portico.redb");
    let serving = EmbeddedStore::open(&path).await.unwrap();
    let cli = EmbeddedStore::open(&path).await.unwrap();
    let mut rx = serving.changes();
    cli.create(Kind::Host, "new.example", &fields(&[("ip", "127.0.0.1")])).await.unwrap();
    let host = Change::Record { kind: Kind::Host, key: "new.example".into() };
    expect_event(&mut rx, Duration::from_secs(2), |c| *c == host).await;
    assert!(serving.record(Kind::Host, "new.example").await.unwrap().is_some());
    let err = cli.create(Kind::Host, "new.example", &fields(&[])).await.unwrap_err();
    assert!(matches!(err, portico_store::StoreError::Conflict { .. }));
}

/// Another process writes, then this one writes before its watcher polls: the other write
/// is still announced (marking our own write as seen must not hide it).
#[tokio::test]
async fn a_foreign_write_followed_by_our_own_is_still_announced() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("portico.redb");
    let serving = EmbeddedStore::open(&path).await.unwrap();
    let cli = EmbeddedStore::open(&path).await.unwrap();
    let mut rx = serving.changes();
    cli.create(Kind::Host, "foreign.example", &fields(&[("ip", "127.0.0.1")])).await.unwrap();
    serving.put_blob(&keys::cert_latest("own"), b"x", None).await.unwrap();
    let foreign = Change::Record { kind: Kind::Host, key: "foreign.example".into() };
    expect_event(&mut rx, Duration::from_secs(2), |c| *c == foreign).await;
}

/// Leases and short-lived blobs (challenge answers) are not announced to other processes:
/// one node's issuance makes no other node re-read anything.
#[tokio::test]
async fn leases_and_short_lived_blobs_stay_out_of_other_processes_feeds() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("portico.redb");
    let serving = EmbeddedStore::open(&path).await.unwrap();
    let node = EmbeddedStore::open(&path).await.unwrap();
    let mut rx = serving.changes();
    let lease = node.acquire(&keys::issue_lock("a.example"), Duration::from_secs(30)).await.unwrap().unwrap();
    node.put_blob(&keys::http01("a.example", "tok"), b"answer", Some(Duration::from_secs(60))).await.unwrap();
    node.delete_blob(&keys::http01("a.example", "tok")).await.unwrap();
    node.release(&lease).await.unwrap();
    node.put_blob(&keys::cert_latest("a.example"), b"{}", None).await.unwrap();
    // The first event the other process hears of is the certificate, nothing before it.
    let first = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, Change::Blob { key: keys::cert_latest("a.example") });
}

/// A process that falls further behind than the kept change events is told to resync.
#[tokio::test]
async fn a_process_far_behind_resyncs() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("portico.redb");
    let serving = EmbeddedStore::open(&path).await.unwrap();
    let mut rx = serving.changes();
    // Versions whose events are no longer kept (pruned, or written by an older Portico): the
    // counter moves ahead with nothing stored for it.
    let mut builder = redb::Database::builder();
    builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    let raw = builder.open(&path).unwrap();
    let txn = raw.begin_write().unwrap();
    {
        let mut meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
        let version = redb::ReadableTable::get(&meta, "version").unwrap().map_or(0, |v| v.value());
        meta.insert("version", version + 5).unwrap();
    }
    txn.commit().unwrap();
    expect_event(&mut rx, Duration::from_secs(2), |c| *c == Change::Resync).await;
}

#[tokio::test]
async fn open_via_url() {
    let dir = TempDir::new().unwrap();
    let url = format!("redb://{}", dir.path().join("p.redb").display());
    let store = portico_store::open(&url).await.unwrap();
    store.ping().await.unwrap();
}

/// The file holds every private key: a new store is private to its owner.
#[tokio::test]
async fn a_new_store_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data/portico.redb");
    let store = EmbeddedStore::open(&path).await.unwrap();
    store.ping().await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
}

/// An empty file, a file of something else, or a redb database of another program is never
/// taken for a fresh install (which would mean a new admin, a new root, everything gone).
#[tokio::test]
async fn an_empty_or_foreign_file_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let cases: [(&str, &[u8]); 2] = [("empty.redb", b""), ("notes.redb", b"these are my notes, not a database\n")];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = EmbeddedStore::open(&path).await.unwrap_err();
        assert!(matches!(err, portico_store::StoreError::NotAStore { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "the message names the file: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name} untouched");
    }
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("their_table")).unwrap().insert("x", 1).unwrap();
        txn.commit().unwrap();
    }
    let err = EmbeddedStore::open(&other).await.unwrap_err();
    assert!(matches!(err, portico_store::StoreError::NotAStore { .. }), "{err}");
}

/// Commands that only read or change what is there do not create a store.
#[tokio::test]
async fn open_existing_refuses_a_missing_store() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("typo/portico.redb");
    let err = EmbeddedStore::open_existing(&path).await.unwrap_err();
    assert!(matches!(err, portico_store::StoreError::Missing { .. }), "{err}");
    assert!(!path.exists() && !path.parent().unwrap().exists(), "nothing was created");
    EmbeddedStore::open(&path).await.unwrap();
    EmbeddedStore::open_existing(&path).await.unwrap();
}

/// A damaged page is an error naming the file (redb may panic on one: that is caught), and
/// the integrity check says so too.
#[tokio::test]
async fn a_damaged_file_is_an_error_that_names_it() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("portico.redb");
    {
        let store = EmbeddedStore::open(&path).await.unwrap();
        for i in 0..200 {
            let key = format!("host{i}.example");
            store.create(Kind::Host, &key, &fields(&[("ip", "127.0.0.1"), ("pad", &"x".repeat(500))])).await.unwrap();
        }
    }
    assert!(portico_store::check(&format!("redb://{}", path.display())).await.unwrap(), "sound before");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for b in &mut bytes[4096..len.min(4096 * 64)] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = match EmbeddedStore::open(&path).await {
        Err(e) => e,
        Ok(store) => store.records(Kind::Host).await.expect_err("a damaged store does not read as sound"),
    };
    let text = err.to_string();
    assert!(matches!(err, portico_store::StoreError::Damaged { .. }), "{err:?}");
    assert!(text.contains("portico.redb") && text.contains("portico store check"), "{text}");
    let checked = portico_store::check(&format!("redb://{}", path.display())).await;
    assert!(!matches!(checked, Ok(true)), "the check finds the damage: {checked:?}");
}
