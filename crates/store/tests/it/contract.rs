//! The contract every [`Store`] backend passes. A backend's test module calls
//! `contract_suite!(factory)`, where `factory: impl Backend`.

use std::sync::Arc;
use std::time::Duration;

use portico_store::{Change, Fields, Kind, Store, StoreError, keys};

/// How a test gets a store, and the same store again after closing it.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// A fresh, empty store.
    async fn fresh() -> Self;
    /// A handle on the store.
    async fn open(&self) -> Arc<dyn Store>;
}

pub fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Waits up to `deadline` for the feed to yield an event matching `want`.
pub async fn expect_event(
    rx: &mut tokio::sync::broadcast::Receiver<Change>,
    deadline: Duration,
    want: impl Fn(&Change) -> bool,
) -> Change {
    tokio::time::timeout(deadline, async {
        loop {
            match rx.recv().await {
                Ok(c) if want(&c) => return c,
                Ok(_) => continue,
                Err(e) => panic!("change feed closed: {e}"),
            }
        }
    })
    .await
    .expect("no matching change event in time")
}

pub async fn crud(store: Arc<dyn Store>) {
    let a = fields(&[("host", "a.example"), ("ip", "127.0.0.1"), ("targetPort", "80")]);
    assert_eq!(store.record(Kind::Host, "a.example").await.unwrap(), None);
    store.create(Kind::Host, "a.example", &a).await.unwrap();
    assert_eq!(store.record(Kind::Host, "a.example").await.unwrap(), Some(a.clone()));
    let b = fields(&[("host", "b.example")]);
    store.put(Kind::Host, "b.example", &b).await.unwrap();
    assert_eq!(store.keys(Kind::Host).await.unwrap(), vec!["a.example", "b.example"]);
    let listed = store.records(Kind::Host).await.unwrap();
    assert_eq!(listed, vec![("a.example".to_string(), a.clone()), ("b.example".to_string(), b.clone())]);
    // Kinds are separate indexes.
    assert!(store.keys(Kind::User).await.unwrap().is_empty());

    let a2 = fields(&[("host", "a.example"), ("ip", "127.0.0.2"), ("targetPort", "81")]);
    store.replace(Kind::Host, "a.example", "a.example", &a2).await.unwrap();
    assert_eq!(store.record(Kind::Host, "a.example").await.unwrap(), Some(a2.clone()));

    // Rename.
    let c = fields(&[("host", "c.example")]);
    store.replace(Kind::Host, "a.example", "c.example", &c).await.unwrap();
    assert_eq!(store.record(Kind::Host, "a.example").await.unwrap(), None);
    assert_eq!(store.record(Kind::Host, "c.example").await.unwrap(), Some(c));

    assert!(store.delete(Kind::Host, "c.example").await.unwrap());
    assert!(!store.delete(Kind::Host, "c.example").await.unwrap());
    assert_eq!(store.keys(Kind::Host).await.unwrap(), vec!["b.example"]);
}

pub async fn name_conflicts(store: Arc<dyn Store>) {
    let f = fields(&[("x", "1")]);
    store.create(Kind::User, "alice", &f).await.unwrap();
    let err = store.create(Kind::User, "alice", &fields(&[("x", "2")])).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { kind: Kind::User, ref key } if key == "alice"), "{err}");
    // The loser changed nothing.
    assert_eq!(store.record(Kind::User, "alice").await.unwrap(), Some(f.clone()));

    store.create(Kind::User, "bob", &f).await.unwrap();
    let err = store.replace(Kind::User, "bob", "alice", &f).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(store.record(Kind::User, "bob").await.unwrap().is_some());

    let err = store.replace(Kind::User, "carol", "carol", &f).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(store.record(Kind::User, "carol").await.unwrap().is_none());
}

pub async fn blobs_and_ttl(store: Arc<dyn Store>) {
    store.put_blob(&keys::cert_latest("a.example"), b"forever", None).await.unwrap();
    store.put_blob(&keys::http01("a.example", "token"), b"short", Some(Duration::from_millis(300))).await.unwrap();
    assert_eq!(store.blob(&keys::cert_latest("a.example")).await.unwrap().as_deref(), Some(&b"forever"[..]));
    assert_eq!(store.blob(&keys::http01("a.example", "token")).await.unwrap().as_deref(), Some(&b"short"[..]));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.blob(&keys::http01("a.example", "token")).await.unwrap(), None, "expired blob still readable");
    assert!(!store.delete_blob(&keys::http01("a.example", "token")).await.unwrap());
    assert_eq!(store.blob(&keys::cert_latest("a.example")).await.unwrap().as_deref(), Some(&b"forever"[..]));
    // Overwrite, binary content, delete.
    store.put_blob(&keys::cert_latest("a.example"), &[0, 255, 1], None).await.unwrap();
    assert_eq!(store.blob(&keys::cert_latest("a.example")).await.unwrap().as_deref(), Some(&[0u8, 255, 1][..]));
    assert!(store.delete_blob(&keys::cert_latest("a.example")).await.unwrap());
    assert_eq!(store.blob(&keys::cert_latest("a.example")).await.unwrap(), None);
}

/// Lasting blobs are listed; leases, counters and short-lived blobs are not.
pub async fn blob_keys(store: Arc<dyn Store>) {
    store.put_blob(&keys::cert_latest("b"), b"1", None).await.unwrap();
    store.put_blob(&keys::cert_latest("a"), b"2", None).await.unwrap();
    store.put_blob(&keys::http01("a", "t"), b"3", Some(Duration::from_secs(60))).await.unwrap();
    store.acquire(&keys::issue_lock("a"), Duration::from_secs(60)).await.unwrap().unwrap();
    store.count(&keys::issue_rate("x", 1), Duration::from_secs(60)).await.unwrap();
    store.create(Kind::Host, "a", &fields(&[("ip", "1")])).await.unwrap();
    assert_eq!(store.blob_keys().await.unwrap(), [keys::cert_latest("a"), keys::cert_latest("b")]);
}

/// A snapshot holds every record and lasting blob and writes them back as they were; the
/// write counter moves with every announced write and with nothing else.
pub async fn snapshots(store: Arc<dyn Store>) {
    use portico_store::copy::Snapshot;
    let version = || async { store.write_version().await.unwrap().expect("every backend keeps a write counter") };
    let start = version().await;
    store.create(Kind::Host, "a.example", &fields(&[("ip", "1")])).await.unwrap();
    store.create(Kind::User, "admin", &fields(&[("role", "admin")])).await.unwrap();
    let after_records = version().await;
    assert!(after_records > start, "{start} → {after_records}");
    store.put_blob(&keys::cert_latest("a.example"), b"PEM", None).await.unwrap();
    let after_blob = version().await;
    assert!(after_blob > after_records);
    store.put_blob(&keys::http01("a.example", "t"), b"answer", Some(Duration::from_secs(60))).await.unwrap();
    store.acquire(&keys::issue_lock("a.example"), Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(version().await, after_blob, "short-lived things are not announced");

    let (snapshot, settled) = Snapshot::read_settled(store.as_ref()).await.unwrap();
    assert!(settled, "nothing wrote meanwhile");
    assert_eq!(
        snapshot.counts().to_string(),
        "1 Host, 1 User, 0 AuthToken, 0 DnsProvider, 0 Domain, 0 Cert, 0 Audit, 0 Stream, 1 blobs"
    );
    store.delete(Kind::Host, "a.example").await.unwrap();
    store.delete(Kind::User, "admin").await.unwrap();
    store.delete_blob(&keys::cert_latest("a.example")).await.unwrap();
    assert_eq!(portico_store::copy::held(store.as_ref()).await.unwrap(), None);
    snapshot.write(store.as_ref()).await.unwrap();
    assert_eq!(Snapshot::read(store.as_ref()).await.unwrap(), snapshot);
    assert_eq!(store.blob(&keys::cert_latest("a.example")).await.unwrap().as_deref(), Some(&b"PEM"[..]));
}

pub async fn lock_exclusivity_and_expiry(store: Arc<dyn Store>) {
    let ttl = Duration::from_millis(400);
    let first = store.acquire(&keys::issue_lock("a.example"), ttl).await.unwrap().expect("free lock");
    assert!(store.acquire(&keys::issue_lock("a.example"), ttl).await.unwrap().is_none(), "lock taken twice");
    // Another name is independent.
    let other = store.acquire(&keys::issue_lock("b.example"), ttl).await.unwrap().expect("other lock");
    assert!(store.refresh(&first, Duration::from_secs(5)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Refreshed: still held.
    assert!(store.acquire(&keys::issue_lock("a.example"), ttl).await.unwrap().is_none());
    // Not refreshed: expired, so anyone may take it, and the old holder lost it.
    let second = store.acquire(&keys::issue_lock("b.example"), ttl).await.unwrap().expect("expired lock is free");
    assert!(!store.release(&other).await.unwrap(), "a stale holder released someone else's lock");
    assert!(!store.refresh(&other, ttl).await.unwrap());
    assert!(store.acquire(&keys::issue_lock("b.example"), ttl).await.unwrap().is_none());
    assert!(store.release(&second).await.unwrap());
    assert!(store.release(&first).await.unwrap());
    assert!(!store.release(&first).await.unwrap());
    assert!(store.acquire(&keys::issue_lock("a.example"), ttl).await.unwrap().is_some());
}

pub async fn concurrent_lock_has_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { store.acquire(&keys::issue_lock("race"), Duration::from_secs(10)).await.unwrap() },
            )
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}

pub async fn change_events(store: Arc<dyn Store>) {
    let mut rx = store.changes();
    let f = fields(&[("a", "b")]);
    store.create(Kind::Host, "x.example", &f).await.unwrap();
    let is = |k: &'static str| move |c: &Change| matches!(c, Change::Record { kind: Kind::Host, key } if key == k);
    expect_event(&mut rx, Duration::from_secs(2), is("x.example")).await;
    store.replace(Kind::Host, "x.example", "y.example", &f).await.unwrap();
    expect_event(&mut rx, Duration::from_secs(2), is("y.example")).await;
    store.delete(Kind::Host, "y.example").await.unwrap();
    expect_event(&mut rx, Duration::from_secs(2), is("y.example")).await;
    store.put_blob(&keys::cert_latest("b"), b"1", None).await.unwrap();
    expect_event(
        &mut rx,
        Duration::from_secs(2),
        |c| matches!(c, Change::Blob { key } if *key == keys::cert_latest("b")),
    )
    .await;
}

/// Every write of a record gives it a new revision; a compare-and-set against an old one
/// fails and changes nothing; renames carry the record and its revision along.
pub async fn revisions_and_compare_and_set(store: Arc<dyn Store>) {
    use portico_store::StoreError;
    store.create(Kind::Host, "r.example", &fields(&[("ip", "10.0.0.1")])).await.unwrap();
    let (_, first) = store.record_at(Kind::Host, "r.example").await.unwrap().unwrap();
    let second =
        store.replace_if(Kind::Host, "r.example", "r.example", &fields(&[("ip", "10.0.0.2")]), first).await.unwrap();
    assert!(second > first, "{second} after {first}");
    assert_eq!(store.record_at(Kind::Host, "r.example").await.unwrap().unwrap().1, second);
    // A writer that read the first revision loses.
    let stale = store.replace_if(Kind::Host, "r.example", "r.example", &fields(&[("ip", "10.0.0.3")]), first).await;
    assert!(matches!(stale, Err(StoreError::Stale { .. })), "{stale:?}");
    assert_eq!(store.record(Kind::Host, "r.example").await.unwrap().unwrap()["ip"], "10.0.0.2");
    // Any write moves the revision on.
    store.put(Kind::Host, "r.example", &fields(&[("ip", "10.0.0.4")])).await.unwrap();
    let third = store.record_at(Kind::Host, "r.example").await.unwrap().unwrap().1;
    assert!(third > second);
    let stale = store.replace_if(Kind::Host, "r.example", "r.example", &fields(&[]), second).await;
    assert!(matches!(stale, Err(StoreError::Stale { .. })), "{stale:?}");
    // A rename under compare-and-set.
    let moved =
        store.replace_if(Kind::Host, "r.example", "s.example", &fields(&[("ip", "10.0.0.5")]), third).await.unwrap();
    assert_eq!(store.record_at(Kind::Host, "r.example").await.unwrap(), None);
    assert_eq!(store.record_at(Kind::Host, "s.example").await.unwrap().unwrap().1, moved);
    let gone = store.replace_if(Kind::Host, "r.example", "r.example", &fields(&[]), moved).await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
}

/// Counters count, apart from each other, and start over once their window has passed.
pub async fn counters(store: Arc<dyn Store>) {
    let window = Duration::from_millis(300);
    assert_eq!(store.count(&keys::issue_rate("a", 1), window).await.unwrap(), 1);
    assert_eq!(store.count(&keys::issue_rate("a", 1), window).await.unwrap(), 2);
    assert_eq!(store.count(&keys::issue_rate("b", 1), window).await.unwrap(), 1);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { store.count(&keys::issue_rate("many", 1), Duration::from_secs(30)).await.unwrap() },
            )
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>(), "every increment counted once");
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    assert_eq!(store.count(&keys::issue_rate("a", 1), window).await.unwrap(), 1, "a new window");
}

pub async fn durable_across_reopen<B: Backend>(backend: B) {
    {
        let store = backend.open().await;
        store.create(Kind::Host, "keep.example", &fields(&[("ip", "1")])).await.unwrap();
        store.put_blob(&keys::cert_latest("keep"), b"blob", None).await.unwrap();
        store.create(Kind::Host, "gone.example", &fields(&[("ip", "2")])).await.unwrap();
        store.delete(Kind::Host, "gone.example").await.unwrap();
    }
    // Let the first handle's background task notice it is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = backend.open().await;
    assert_eq!(store.record(Kind::Host, "keep.example").await.unwrap(), Some(fields(&[("ip", "1")])));
    assert_eq!(store.record(Kind::Host, "gone.example").await.unwrap(), None);
    assert_eq!(store.blob(&keys::cert_latest("keep")).await.unwrap().as_deref(), Some(&b"blob"[..]));
    store.ping().await.unwrap();
}

/// Instantiates the contract suite for a backend type implementing [`Backend`].
#[macro_export]
macro_rules! contract_suite {
    ($backend:ty) => {
        use $crate::contract::{self, Backend as _};
        #[tokio::test]
        async fn crud() {
            contract::crud(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn name_conflicts() {
            contract::name_conflicts(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn blobs_and_ttl() {
            contract::blobs_and_ttl(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn blob_keys() {
            contract::blob_keys(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn snapshots() {
            contract::snapshots(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn lock_exclusivity_and_expiry() {
            contract::lock_exclusivity_and_expiry(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_lock_has_one_winner() {
            contract::concurrent_lock_has_one_winner(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn change_events() {
            contract::change_events(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn counters() {
            contract::counters(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn revisions_and_compare_and_set() {
            contract::revisions_and_compare_and_set(<$backend>::fresh().await.open().await).await
        }
        #[tokio::test]
        async fn durable_across_reopen() {
            contract::durable_across_reopen(<$backend>::fresh().await).await
        }
    };
}
