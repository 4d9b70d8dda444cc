//! The contract suite on the Redis backend: one server, a master found through Sentinel, a
//! three-master Cluster, each a real Redis started for the test. Plus what only Redis does:
//! the seed's key layout, announcements between nodes, and writes cut short.

use std::sync::Arc;
use std::time::Duration;

use portico_store::{Change, Kind, RedisStore, Store, keys};
use portico_test_support::{RedisCluster, RedisSentinel, RedisServer};

use crate::contract::{expect_event, fields};

/// A Redis setup the contract suite runs on.
pub trait Setup {
    fn start() -> Self;
    fn url(&self) -> String;
}

impl Setup for RedisServer {
    fn start() -> Self {
        RedisServer::start()
    }
    fn url(&self) -> String {
        RedisServer::url(self)
    }
}

impl Setup for RedisSentinel {
    fn start() -> Self {
        RedisSentinel::start_small()
    }
    fn url(&self) -> String {
        RedisSentinel::url(self)
    }
}

impl Setup for RedisCluster {
    fn start() -> Self {
        RedisCluster::start()
    }
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
}

pub struct OnRedis<S>(S);

impl<S: Setup> crate::contract::Backend for OnRedis<S> {
    async fn fresh() -> Self {
        Self(S::start())
    }

    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(RedisStore::open(&self.0.url()).await.unwrap())
    }
}

mod standalone {
    crate::contract_suite!(super::OnRedis<portico_test_support::RedisServer>);
}

mod sentinel {
    crate::contract_suite!(super::OnRedis<portico_test_support::RedisSentinel>);
}

mod cluster {
    crate::contract_suite!(super::OnRedis<portico_test_support::RedisCluster>);
}

fn members(reply: &str) -> Vec<String> {
    let mut out: Vec<String> = reply.lines().filter(|l| !l.starts_with(['*', '$', '~'])).map(str::to_owned).collect();
    out.sort();
    out
}

/// What Portico writes is what the seed wrote: an index set, a hash of string fields per
/// record, certificates as `<name>:latest` strings; and what the seed wrote, Portico reads,
/// at revision 0, and can update under compare-and-set.
#[tokio::test]
async fn the_seed_key_layout_both_ways() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).await.unwrap();
    store.create(Kind::Host, "app.example.com", &fields(&[("ip", "10.0.0.5"), ("targetPort", "8080")])).await.unwrap();
    store.put_blob(&keys::cert_latest("app.example.com"), br#"{"expiry":1}"#, None).await.unwrap();
    assert_eq!(members(&redis.command("SMEMBERS proxy_Host")), ["app.example.com"]);
    assert_eq!(redis.command("HGET proxy_Host_app.example.com targetPort"), "$4\r\n8080\r\n");
    assert_eq!(redis.command("GET app.example.com:latest"), "$12\r\n{\"expiry\":1}\r\n");

    // As model-redis writes: SADD, then one HSET per field.
    redis.command("SADD proxy_User proxyadmin2");
    redis.command("HSET proxy_User_proxyadmin2 username proxyadmin2");
    redis.command("HSET proxy_User_proxyadmin2 password $2b$10$abcdefghijklmnopqrstuv");
    let (user, revision) = store.record_at(Kind::User, "proxyadmin2").await.unwrap().unwrap();
    assert_eq!(user, fields(&[("username", "proxyadmin2"), ("password", "$2b$10$abcdefghijklmnopqrstuv")]));
    assert_eq!(revision.0, 0);
    let next = store.replace_if(Kind::User, "proxyadmin2", "proxyadmin2", &user, revision).await.unwrap();
    assert!(next.0 > 0);
    // The revision is kept beside the fields, never shown as one.
    assert_eq!(store.record(Kind::User, "proxyadmin2").await.unwrap(), Some(user));
    assert_eq!(store.keys(Kind::User).await.unwrap(), ["proxyadmin2"]);
}

/// Another node hears what changed, by kind and key; leases, counters and short-lived
/// blobs are announced nowhere.
#[tokio::test]
async fn other_nodes_hear_what_changed_and_nothing_else() {
    let redis = RedisServer::start();
    let a = RedisStore::open(&redis.url()).await.unwrap();
    let b = RedisStore::open(&redis.url()).await.unwrap();
    let mut rx = b.changes();
    let lease = a.acquire(&keys::issue_lock("x.example"), Duration::from_secs(5)).await.unwrap().unwrap();
    a.put_blob(&keys::http01("x.example", "t"), b"key-authz", Some(Duration::from_secs(60))).await.unwrap();
    a.count(&keys::issue_rate("explicit", 1), Duration::from_secs(60)).await.unwrap();
    a.release(&lease).await.unwrap();
    a.delete_blob(&keys::http01("x.example", "t")).await.unwrap();
    a.create(Kind::Host, "x.example", &fields(&[("ip", "127.0.0.1")])).await.unwrap();
    // Announcements from one writer arrive in order: the first one B hears is the host.
    let first = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, Change::Record { kind: Kind::Host, key: "x.example".into() });
    a.put_blob(&keys::cert_latest("x.example"), b"{}", None).await.unwrap();
    expect_event(&mut rx, Duration::from_secs(2), |c| *c == Change::Blob { key: keys::cert_latest("x.example") }).await;
    assert!(b.record(Kind::Host, "x.example").await.unwrap().is_some());
}

/// A writer that bumps `proxy_version` without announcing anything (a script, or a node
/// that died between the two) makes every node re-read everything, within two checks.
#[tokio::test]
async fn an_unannounced_change_makes_nodes_resync() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).await.unwrap();
    let mut rx = store.changes();
    redis.command("SADD proxy_Host script.example");
    redis.command("HSET proxy_Host_script.example ip 127.0.0.1");
    redis.command("INCR proxy_version");
    let bumped = std::time::Instant::now();
    expect_event(&mut rx, Duration::from_secs(4), |c| *c == Change::Resync).await;
    assert!(bumped.elapsed() < Duration::from_millis(2500), "{:?}", bumped.elapsed());
    assert!(store.record(Kind::Host, "script.example").await.unwrap().is_some());
}

/// A create cut short after its first step (the index entry, not yet the record): readers
/// do not see it, the name can still be created, and the repair removes a dangling entry
/// only once it has been dangling for a whole resync period.
#[tokio::test]
async fn a_create_cut_short_is_invisible_and_repaired() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).await.unwrap();
    store.create(Kind::Host, "real.example", &fields(&[("ip", "1")])).await.unwrap();
    redis.command("SADD proxy_Host ghost.example half.example");
    assert_eq!(store.keys(Kind::Host).await.unwrap(), ["real.example"]);
    assert_eq!(store.records(Kind::Host).await.unwrap().len(), 1);
    assert_eq!(store.record(Kind::Host, "ghost.example").await.unwrap(), None);
    // The first repair only notes the entries; meanwhile half.example's create completes.
    assert_eq!(store.repair().await.unwrap(), 0);
    store.create(Kind::Host, "half.example", &fields(&[("ip", "2")])).await.unwrap();
    assert_eq!(store.repair().await.unwrap(), 1);
    assert_eq!(members(&redis.command("SMEMBERS proxy_Host")), ["half.example", "real.example"]);
}

/// A rename moves the record and its index entry: the old key and member are gone, the
/// new ones hold the new fields, and the version moves on.
#[tokio::test]
async fn a_rename_moves_the_record_and_its_index_entry() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).await.unwrap();
    store.create(Kind::Host, "old.example", &fields(&[("ip", "1")])).await.unwrap();
    let (_, before) = store.record_at(Kind::Host, "old.example").await.unwrap().unwrap();
    let after =
        store.replace_if(Kind::Host, "old.example", "new.example", &fields(&[("ip", "2")]), before).await.unwrap();
    assert!(after > before);
    assert_eq!(members(&redis.command("SMEMBERS proxy_Host")), ["new.example"]);
    assert_eq!(redis.command("EXISTS proxy_Host_old.example"), ":0\r\n");
    let moved = store.record(Kind::Host, "new.example").await.unwrap().unwrap();
    assert_eq!(moved.get("ip").map(String::as_str), Some("2"));
}
