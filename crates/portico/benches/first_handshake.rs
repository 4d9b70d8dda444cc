//! On-demand issuance latency: the time from a client's first TLS handshake for a new allowed
//! name to its response, against a local Pebble (issue budget: under 250 ms; Caddy 2.6 takes
//! about 530 ms). Also: 12 different new names requested at once, all answered.
//!
//! Run with `cargo bench -p portico --bench first_handshake` (needs `pebble` and
//! `pebble-challtestsrv` on the PATH). When `caddy` is on the PATH too (Debian's 2.6), the
//! same measurement runs against Caddy's on-demand TLS, with its own Pebble, in the same run:
//! both use TLS-ALPN-01 there, so the comparison is like for like. Every name is new: `n<i>.bench.test` under a `**`
//! host, so each measurement is a whole ACME order (new order, TLS-ALPN-01 or HTTP-01
//! validation, finalize, download) plus the handshake and one proxied request.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use portico_test_support::client::{Proxy, empty};
use portico_test_support::pebble::{Options, Pebble, with_portico};
use portico_test_support::{Backend, Portico, tls};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
/// Every new name is under `**.bench.test`: lift the budget and caps of names under wildcard
/// patterns, which would otherwise (rightly) refuse a benchmark's thousands of names.
const UNLIMITED: [&str; 4] = [
    "tls.max_issuances_per_minute=100000",
    "tls.max_pattern_issuances_per_minute=100000",
    "tls.max_certs_per_pattern=10000000",
    "tls.max_certs_per_domain=10000000",
];

/// Caddy with on-demand TLS from `pebble`, proxying to `backend`, on loopback only.
struct Caddy {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Caddy {
    fn start(pebble: &Pebble, backend: std::net::SocketAddr) -> Option<Self> {
        let dir = tempfile::TempDir::new().unwrap();
        let caddyfile = format!(
            "{{\n\tadmin off\n\thttp_port {http}\n\thttps_port {tls}\n\tauto_https disable_redirects\n\
             \tskip_install_trust\n\tstorage file_system {store}\n\ton_demand_tls {{\n\t\task http://{backend}/ask\n\t}}\n}}\n\
             https:// {{\n\tbind 127.0.0.1\n\ttls {{\n\t\ton_demand\n\t\tissuer acme {{\n\t\t\tdir {dir}\n\
             \t\t\ttrusted_roots {roots}\n\t\t\tdisable_http_challenge\n\t\t}}\n\t}}\n\treverse_proxy {backend}\n}}\n",
            http = pebble.ports.http,
            tls = pebble.ports.tls,
            store = dir.path().join("data").display(),
            dir = pebble.directory,
            roots = pebble.listener_ca.display(),
        );
        let config = dir.path().join("Caddyfile");
        std::fs::write(&config, caddyfile).unwrap();
        let child = std::process::Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pebble.ports.tls));
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, addr, _dir: dir })
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The time from a new client's first request for a new name to its response.
async fn first_requests(
    addr: std::net::SocketAddr,
    roots: &rustls::RootCertStore,
    names: impl Iterator<Item = String>,
) -> Duration {
    let mut total = Duration::ZERO;
    for name in names {
        let client = Proxy::https(addr, roots.clone(), false);
        let started = Instant::now();
        let answer = client.get(&name, "/").await;
        total += started.elapsed();
        assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.text());
    }
    total
}

fn first_handshake(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let backend = runtime.block_on(Backend::start("bench"));
    let counter = AtomicUsize::new(0);
    let fresh = || format!("n{}.bench.test", counter.fetch_add(1, Ordering::Relaxed));
    // Each group gets a fresh Pebble: Debian's Pebble 2.4 stalls (its handlers stop answering
    // until clients give up) once it holds a couple of thousand orders.
    let start = || {
        let mut settings = UNLIMITED.to_vec();
        settings.push("log.access_log=false");
        let (pebble, portico) = with_portico(BIN, Options::default(), &settings);
        portico.add_host("**.bench.test", backend.addr, &[]);
        let roots = tls::roots(&runtime.block_on(pebble.root()));
        (pebble, portico, roots)
    };
    let (pebble, portico, roots) = start();

    let mut group = c.benchmark_group("on_demand");
    group.sample_size(20).measurement_time(Duration::from_secs(15)).warm_up_time(Duration::from_secs(1));
    group.bench_function("first_request_to_a_new_name", |b| {
        b.iter_custom(|iters| runtime.block_on(first_requests(portico.https, &roots, (0..iters).map(|_| fresh()))));
    });
    println!("orders placed with pebble: {}", pebble.orders());
    drop((portico, pebble));
    let (pebble, portico, roots) = start();
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("twelve_new_names_at_once", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let names: Vec<String> = (0..12).map(|_| fresh()).collect();
                    let started = Instant::now();
                    let tasks: Vec<_> = names
                        .into_iter()
                        .map(|name| {
                            let client = Proxy::https(portico.https, roots.clone(), false);
                            tokio::spawn(async move {
                                let status = client.try_send("GET", &name, "/", empty()).await.map(|r| r.status());
                                (status, name)
                            })
                        })
                        .collect();
                    for task in tasks {
                        let (status, name) = task.await.unwrap();
                        if !matches!(status, Ok(StatusCode::OK)) {
                            let notes: Vec<String> = portico
                                .logs()
                                .iter()
                                .filter(|l| l["level"] != "INFO" || l.to_string().contains(&name))
                                .map(|l| l.to_string())
                                .collect();
                            panic!("{name} was refused ({status:?}); warnings: {notes:#?}");
                        }
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    });
    group.finish();
    println!("orders placed with pebble: {}", pebble.orders());
    drop((portico, pebble));

    // The peer, in the same run: Caddy against its own Pebble, and Portico again with the
    // same challenge (TLS-ALPN-01).
    let peer_pebble = Pebble::start_anywhere(Options::default());
    let Some(caddy) = Caddy::start(&peer_pebble, backend.addr) else {
        println!("caddy is not installed or did not start: no peer measurement");
        return;
    };
    let peer_roots = tls::roots(&runtime.block_on(peer_pebble.root()));
    let mut group = c.benchmark_group("on_demand_tls_alpn");
    group.sample_size(10).measurement_time(Duration::from_secs(15)).warm_up_time(Duration::from_secs(1));
    group.bench_function("caddy_2_6", |b| {
        b.iter_custom(|iters| runtime.block_on(first_requests(caddy.addr, &peer_roots, (0..iters).map(|_| fresh()))));
    });
    drop(caddy);
    let mut settings = peer_pebble.portico_settings();
    settings.push("tls.challenge=\"tls-alpn-01\"".to_owned());
    settings.extend(UNLIMITED.iter().map(|s| (*s).to_owned()));
    settings.push("log.access_log=false".to_owned());
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let portico = Portico::try_start(BIN, &settings).expect("portico starts on the peer's ports");
    portico.add_host("**.bench.test", backend.addr, &[]);
    group.bench_function("portico", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(first_requests(portico.https, &peer_roots, (0..iters).map(|_| fresh())))
        });
    });
    group.finish();
}

criterion_group!(benches, first_handshake);
criterion_main!(benches);
