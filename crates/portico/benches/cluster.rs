//! Portico on Redis, measured: a bench binary (not a timed test) that prints
//!
//! 1. **propagation**: a host written through node A's API until node B routes it, over
//!    1,000 changes (p50, p99, max), measured from the moment the write is sent;
//! 2. **store operations** on Redis and, in the same run, on the embedded store (p50, p99);
//! 3. **start-up and memory** of `portico serve` on a Redis holding 100,000 hosts and
//!    10,000 certificates (with their records): time to listening, then memory once every
//!    certificate has been served once.
//!
//! Run with `cargo bench -p portico --bench cluster` (needs `redis-server`). Set
//! `CLUSTER_BENCH_HOSTS` / `CLUSTER_BENCH_CERTS` / `CLUSTER_BENCH_CHANGES` for other sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use portico_store::{Kind, Store};
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, RedisServer, tls};
use rcgen::{CertificateParams, KeyPair};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn on(url: &str) -> String {
    format!("store.url=\"{url}\"")
}

/// p50, p99 and max of `samples`, as text.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    format!("p50 {:?}  p99 {:?}  max {:?}  (n = {})", at(0.50), at(0.99), at(1.0), samples.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter, if given, picks parts by name.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    if wanted("propagation") {
        propagation().await;
    }
    if wanted("store") {
        store_operations().await;
    }
    if wanted("startup") {
        startup().await;
    }
}

async fn propagation() {
    let changes = setting("CLUSTER_BENCH_CHANGES", 1000);
    let redis = RedisServer::start();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "serve", &[&store, "log.access_log=false"]);
    let b = Portico::start_role(BIN, "proxy", &[&store, "log.access_log=false"]);
    let backend = Backend::start("bench").await;
    let api = ApiClient::new(a.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let proxy = Proxy::h1(b.http);
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let name = format!("p{i}.bench.test");
        let body = json!({"host": name, "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
        let sent = Instant::now();
        let reply = api.call("POST", "/api/host", Some(&token), Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
        while proxy.get(&name, "/").await.status != StatusCode::OK {
            assert!(sent.elapsed() < Duration::from_secs(10), "{name} never routed");
        }
        samples.push(sent.elapsed());
    }
    println!("propagation, API write on node A until node B routes it: {}", summary(&mut samples));
}

async fn store_operations() {
    let redis = RedisServer::start();
    let dir = tempfile::TempDir::new().unwrap();
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("redis", portico_store::open(&redis.url()).await.unwrap()),
        ("embedded", portico_store::open(&format!("redb://{}", dir.path().join("b.redb").display())).await.unwrap()),
    ];
    let n = 2000;
    let fields = |i: usize| {
        [("host", format!("s{i}.bench.test")), ("ip", "127.0.0.1".into()), ("targetPort", "8080".into())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<portico_store::Fields>()
    };
    for (name, store) in stores {
        let mut create = Vec::new();
        let mut read = Vec::new();
        let mut update = Vec::new();
        let mut blob = Vec::new();
        let mut lease = Vec::new();
        for i in 0..n {
            let key = format!("s{i}.bench.test");
            let t = Instant::now();
            store.create(Kind::Host, &key, &fields(i)).await.unwrap();
            create.push(t.elapsed());
            let t = Instant::now();
            let (f, revision) = store.record_at(Kind::Host, &key).await.unwrap().unwrap();
            read.push(t.elapsed());
            let t = Instant::now();
            store.replace_if(Kind::Host, &key, &key, &f, revision).await.unwrap();
            update.push(t.elapsed());
            let t = Instant::now();
            store.blob(&portico_store::keys::cert_latest(&key)).await.unwrap();
            blob.push(t.elapsed());
            let t = Instant::now();
            let l =
                store.acquire(&portico_store::keys::issue_lock(&key), Duration::from_secs(10)).await.unwrap().unwrap();
            store.release(&l).await.unwrap();
            lease.push(t.elapsed());
        }
        println!("store {name}: create          {}", summary(&mut create));
        println!("store {name}: read (record_at) {}", summary(&mut read));
        println!("store {name}: compare-and-set {}", summary(&mut update));
        println!("store {name}: blob read       {}", summary(&mut blob));
        println!("store {name}: lease take+give {}", summary(&mut lease));
        let t = Instant::now();
        let all = store.records(Kind::Host).await.unwrap();
        println!("store {name}: list {} records  {:?}", all.len(), t.elapsed());
    }
}

/// Sends commands to Redis pipelined, `chunk` at a time, each answered on one line.
fn pipeline(port: u16, commands: impl Iterator<Item = Vec<String>>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut commands = commands.peekable();
    while commands.peek().is_some() {
        let mut buf = Vec::new();
        let mut sent = 0;
        for command in commands.by_ref().take(5000) {
            buf.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
            for arg in &command {
                buf.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
            sent += 1;
        }
        stream.write_all(&buf).unwrap();
        let mut lines = 0;
        let mut reply = [0u8; 65536];
        while lines < sent {
            let n = stream.read(&mut reply).unwrap();
            assert!(n > 0 && reply[0] != b'-', "{}", String::from_utf8_lossy(&reply[..n]));
            lines += reply[..n].windows(2).filter(|w| w == b"\r\n").count();
        }
    }
}

async fn startup() {
    let hosts = setting("CLUSTER_BENCH_HOSTS", 100_000);
    let certs = setting("CLUSTER_BENCH_CERTS", 10_000).min(hosts);
    let redis = RedisServer::start();
    let backend = Backend::start("bench").await;
    let port = backend.addr.port().to_string();
    let made = Instant::now();
    let name = |i: usize| format!("h{i}.bench.test");
    pipeline(
        redis.port(),
        (0..hosts).flat_map(|i| {
            let name = name(i);
            [
                vec!["SADD".into(), "proxy_Host".into(), name.clone()],
                ["HSET", &format!("proxy_Host_{name}"), "host", &name, "ip", "127.0.0.1", "targetPort", &port]
                    .iter()
                    .chain(&["forcessl", "false", "targetssl", "false", "created_by", "bench"])
                    .map(|s| s.to_string())
                    .collect(),
            ]
        }),
    );
    let ca = rcgen::Issuer::new(CertificateParams::new(Vec::<String>::new()).unwrap(), KeyPair::generate().unwrap());
    let now = time::OffsetDateTime::now_utc();
    pipeline(
        redis.port(),
        (0..certs).flat_map(|i| {
            let name = name(i);
            let mut params = CertificateParams::new(vec![name.clone()]).unwrap();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(89);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            let not_after = params.not_after.unix_timestamp().to_string();
            let stored = json!({"fullchain_pem": cert.pem(), "cert_pem": cert.pem(), "privkey_pem": key.serialize_pem(),
                "expiry": params.not_after.unix_timestamp()});
            [
                vec!["SET".into(), format!("{name}:latest"), stored.to_string()],
                vec!["SADD".into(), "proxy_Cert".into(), name.clone()],
                ["HSET", &format!("proxy_Cert_{name}"), "issuer", "internal", "not_after", &not_after, "issued", "1"]
                    .iter()
                    .chain(&["next_attempt", "4000000000", "failures", "0"])
                    .map(|s| s.to_string())
                    .collect(),
            ]
        }),
    );
    let info = redis.command("INFO memory");
    let used = info.lines().find_map(|l| l.strip_prefix("used_memory_human:")).unwrap_or("?").trim().to_owned();
    println!(
        "startup: Redis filled with {hosts} hosts and {certs} certificates in {:?} (Redis uses {used})",
        made.elapsed()
    );

    let started = Instant::now();
    let p = Portico::start_role(BIN, "serve", &[&on(&redis.url()), "log.access_log=false"]);
    let listening = started.elapsed();
    let opened =
        p.logs().iter().find(|l| l["fields"]["message"] == "store opened").map(|l| l["fields"]["hosts"].clone());
    println!(
        "startup: `portico serve` listening after {listening:?} with {opened:?} hosts; RSS {} MiB",
        p.peak_rss() >> 20
    );
    assert_eq!(Proxy::h1(p.http).get(&name(hosts - 1), "/").await.status, StatusCode::OK);

    let served = Instant::now();
    let https = p.https;
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= certs {
                    return;
                }
                let got = tls::peek(https, &name(i)).await;
                assert_eq!(got.names, [name(i)], "the stored certificate");
            }
        });
    }
    tasks.join_all().await;
    let issued = p.logs().iter().filter(|l| l["fields"]["message"] == "issuing a certificate").count();
    println!(
        "startup: every one of {certs} stored certificates served once in {:?} ({issued} issued anew); RSS {} MiB",
        served.elapsed(),
        p.peak_rss() >> 20
    );
}
