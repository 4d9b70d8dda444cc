//! On-demand issuance latency: the time from a client's first TLS handshake for a new allowed
//! name to its response, against a local Pebble (issue budget: under 250 ms; Caddy 2.6 takes
//! about 530 ms). Also: 12 different new names requested at once, all answered.
//!
//! Run with `cargo bench -p portico --bench first_handshake` (needs `pebble` and
//! `pebble-challtestsrv` on the PATH). Every name is new: `n<i>.bench.test` under a `**`
//! host, so each measurement is a whole ACME order (new order, TLS-ALPN-01 or HTTP-01
//! validation, finalize, download) plus the handshake and one proxied request.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use portico_test_support::client::{Proxy, empty};
use portico_test_support::pebble::{Options, Pebble};
use portico_test_support::{Backend, Portico, tls};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn first_handshake(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let backend = runtime.block_on(Backend::start("bench"));
    let mut attempts = 0;
    let (pebble, portico) = loop {
        let pebble = Pebble::start_anywhere(Options::default());
        let mut settings = pebble.portico_settings();
        settings.push("tls.max_issuances_per_minute=100000".to_owned());
        settings.push("log.access_log=false".to_owned());
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        match Portico::try_start(BIN, &settings) {
            Ok(p) => break (pebble, p),
            Err(e) if attempts > 4 => panic!("{e}"),
            Err(_) => attempts += 1,
        }
    };
    portico.add_host("**.bench.test", backend.addr, &[]);
    let roots = tls::roots(&runtime.block_on(pebble.root()));
    let counter = AtomicUsize::new(0);
    let fresh = || format!("n{}.bench.test", counter.fetch_add(1, Ordering::Relaxed));

    let mut group = c.benchmark_group("on_demand");
    group.sample_size(20).measurement_time(Duration::from_secs(15)).warm_up_time(Duration::from_secs(1));
    group.bench_function("first_request_to_a_new_name", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let name = fresh();
                    let client = Proxy::https(portico.https, roots.clone(), false);
                    let started = Instant::now();
                    let answer = client.get(&name, "/").await;
                    total += started.elapsed();
                    assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.text());
                }
                total
            })
        });
    });
    // Fewer rounds here: Debian's Pebble 2.4 stalls (its handlers stop answering until
    // clients give up) after a few thousand orders placed twelve at a time.
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
}

criterion_group!(benches, first_handshake);
criterion_main!(benches);
