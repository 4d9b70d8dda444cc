//! A writer killed with SIGKILL in the middle of writes leaves a store that opens and holds
//! every write it acknowledged; on Redis, where a create or rename is several commands, a
//! write cut short leaves nothing a reader can trip over, and the repair tidies the index.
//!
//! The writer is this test binary itself, re-run with only the ignored `crash_writer` test
//! selected and the store URL in `PORTICO_CRASH_STORE`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use portico_store::{Kind, RedisStore, Store, keys};
use portico_test_support::RedisServer;
use tempfile::TempDir;

use crate::contract::fields;

const ENV: &str = "PORTICO_CRASH_STORE";

#[tokio::test]
async fn sigkill_mid_write_loses_no_acknowledged_write() {
    let dir = TempDir::new().unwrap();
    let url = format!("redb://{}", dir.path().join("crash.redb").display());
    crash_writes(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_on_redis_leaves_a_sound_index() {
    let redis = RedisServer::start();
    let store = crash_writes(&redis.url()).await;
    let listed = store.keys(Kind::Host).await.unwrap();
    let read: Vec<String> = store.records(Kind::Host).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, read, "an index entry listed without its record");
    // Whatever the write cut short left in the index without a record goes at the second
    // repair (the first only notes it).
    let redis_store = RedisStore::open(&redis.url()).await.unwrap();
    redis_store.repair().await.unwrap();
    redis_store.repair().await.unwrap();
    let mut members: Vec<String> = redis
        .command("SMEMBERS proxy_Host")
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .map(str::to_owned)
        .collect();
    members.sort();
    assert_eq!(members, listed);
}

/// Runs the writer against `url`, kills it with SIGKILL after 150 acknowledged writes,
/// checks every one of them is there, and returns the store.
async fn crash_writes(url: &str) -> std::sync::Arc<dyn Store> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::crash_writer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ENV, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            acked.push(n.parse::<u32>().unwrap());
            if acked.len() == 150 {
                // SIGKILL, while the writer is busy with its next transactions.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), 150, "the writer stopped early");

    let store = portico_store::open(url).await.expect("the store opens after SIGKILL");
    for n in &acked {
        let key = format!("moved{n}.example");
        let record = store.record(Kind::Host, &key).await.unwrap();
        assert_eq!(record, Some(fields(&[("n", &n.to_string()), ("pad", &"x".repeat(512))])), "{key}");
        assert_eq!(store.record(Kind::Host, &format!("host{n}.example")).await.unwrap(), None);
        let blob = store.blob(&keys::cert_latest(&format!("n{n}.test"))).await.unwrap();
        assert_eq!(blob.as_deref(), Some(n.to_string().as_bytes()));
    }
    // The store still takes writes.
    store.create(Kind::Host, "after.example", &fields(&[])).await.unwrap();
    store.delete(Kind::Host, "after.example").await.unwrap();
    store
}

/// The writer half; does nothing unless started by the test above.
#[tokio::test]
#[ignore = "run by sigkill_mid_write_loses_no_acknowledged_write"]
async fn crash_writer() {
    let Ok(url) = std::env::var(ENV) else { return };
    let store = portico_store::open(&url).await.unwrap();
    let pad = "x".repeat(512);
    for n in 0u32.. {
        let (host, moved) = (format!("host{n}.example"), format!("moved{n}.example"));
        let record = fields(&[("n", &n.to_string()), ("pad", &pad)]);
        store.create(Kind::Host, &host, &record).await.unwrap();
        store.replace(Kind::Host, &host, &moved, &record).await.unwrap();
        store.put_blob(&keys::cert_latest(&format!("n{n}.test")), n.to_string().as_bytes(), None).await.unwrap();
        println!("ack {n}");
    }
}
