//! The contract suite on the embedded (redb) backend, plus what only it does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portico_store::{Change, EmbeddedStore, Kind, Store};
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
/// other's writes, and the feed of the one that did not write says to resync.
#[tokio::test]
async fn second_handle_sees_writes_and_resyncs() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("portico.redb");
    let serving = EmbeddedStore::open(&path).await.unwrap();
    let cli = EmbeddedStore::open(&path).await.unwrap();
    let mut rx = serving.changes();
    cli.create(Kind::Host, "new.example", &fields(&[("ip", "127.0.0.1")])).await.unwrap();
    expect_event(&mut rx, Duration::from_secs(2), |c| *c == Change::Resync).await;
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
    serving.put_blob("own", b"x", None).await.unwrap();
    expect_event(&mut rx, Duration::from_secs(2), |c| *c == Change::Resync).await;
}

#[tokio::test]
async fn open_via_url() {
    let dir = TempDir::new().unwrap();
    let url = format!("redb://{}", dir.path().join("p.redb").display());
    let store = portico_store::open(&url).await.unwrap();
    store.ping().await.unwrap();
}
