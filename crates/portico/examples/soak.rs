//! Soak: minutes of mixed load on one `portico serve`, bounded in time, loopback only.
//!
//! - Stable hosts (plain HTTP and HTTPS, HTTP/1.1 and HTTP/2) get requests without pause from
//!   several workers: not one may fail.
//! - Host churn: hosts are added through the API, requested, and removed.
//! - Certificate issuance: new names under a wildcard pattern are asked for over TLS; their
//!   one-minute certificates, unused after that, expire and are removed.
//! - Store restarts: every minute the store hits a file-size limit (a full disk) for a few
//!   seconds, fails its writes, and is reopened once the limit is lifted.
//! - Memory: the process's RSS, sampled; after two minutes of warm-up it must stay flat.
//!
//! Run it with `./scripts/soak [SECONDS]`; it prints its figures and exits non-zero when a
//! request to a stable host failed or memory kept growing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, tls};
use serde_json::json;

#[derive(Default)]
struct Counts {
    stable_ok: AtomicU64,
    stable_failed: AtomicU64,
    churned: AtomicU64,
    churn_refused: AtomicU64,
    issued: AtomicU64,
    store_outages: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = std::env::var("SOAK_BINARY")
        .expect("SOAK_BINARY names the portico binary (not PORTICO_*: those are configuration)");
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(600);
    let until = Instant::now() + Duration::from_secs(seconds);

    let backend = Backend::start("stable").await;
    let settings = [
        "log.access_log=false",
        "tls.max_pattern_issuances_per_minute=600",
        "tls.max_certs_per_pattern=100000",
        "tls.max_certs_per_domain=100000",
        // Each new name is asked for once: unused, its certificate is not renewed, expires
        // after a minute and is removed, so what is held levels off after a few minutes.
        "tls.internal_lifetime=\"60s\"",
        "tls.renew_interval=\"10s\"",
    ];
    let p = Arc::new(Portico::start(&bin, &settings));
    p.add_host("stable.soak.test", backend.addr, &[]);
    p.add_host("**.certs.soak.test", backend.addr, &[]);
    let roots = tls::roots(&String::from_utf8(p.cli("ca", &["export"], "").stdout).unwrap());
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let counts = Arc::new(Counts::default());
    let done = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    // Stable traffic: four kinds of client, one worker each.
    let clients = [
        Proxy::h1(p.http),
        Proxy::h2c(p.http),
        Proxy::https(p.https, roots.clone(), false),
        Proxy::https(p.https, roots.clone(), true),
    ];
    for client in clients {
        let (counts, done) = (counts.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let sent = client.try_send("GET", "stable.soak.test", "/soak", portico_test_support::client::empty());
                match tokio::time::timeout(Duration::from_secs(10), sent).await {
                    Ok(Ok(response)) if response.status() == StatusCode::OK => {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                        counts.stable_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        counts.stable_failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("stable request failed: {:?}", other.map(|r| r.map(|r| r.status())));
                    }
                }
            }
        }));
    }
    // Host churn through the API.
    {
        let (counts, done, api, token, target) =
            (counts.clone(), done.clone(), api.clone(), token.clone(), backend.addr);
        let http = p.http;
        tasks.push(tokio::spawn(async move {
            let client = Proxy::h1(http);
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("churn{i}.soak.test");
                let host = json!({"host": name, "ip": target.ip().to_string(), "targetPort": target.port(), "forcessl": false});
                if api.call("POST", "/api/host", Some(&token), Some(host)).await.status != StatusCode::OK {
                    counts.churn_refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                // Routed within a second (hosts propagate through the change feed).
                let deadline = Instant::now() + Duration::from_secs(5);
                while client.get(&name, "/").await.status != StatusCode::OK && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = api.call("DELETE", &format!("/api/host/{name}"), Some(&token), None).await;
                counts.churned.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Certificate issuance for new names.
    {
        let (counts, done, https) = (counts.clone(), done.clone(), p.https);
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("n{i}.certs.soak.test");
                if tls::peek(https, &name).await.names == vec![name.clone()] {
                    counts.issued.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    // Store outages: a file-size limit the store reaches, then lifted.
    {
        let (counts, done, p) = (counts.clone(), done.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let file = p.data_dir().join("portico.redb");
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(60)).await;
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                // Below the file's size: writes to its upper pages fail, as on a full disk.
                p.set_limit(&format!("--fsize={}:unlimited", size / 2));
                tokio::time::sleep(Duration::from_secs(5)).await;
                p.set_limit("--fsize=unlimited:unlimited");
                counts.store_outages.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Memory samples every 10 s.
    let mut rss = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10).min(until.saturating_duration_since(Instant::now()))).await;
        rss.push(current_rss(p.pid()));
        let c = &counts;
        eprintln!(
            "t={:>4}s rss={:>6} KiB stable ok={} failed={} churned={} refused={} issued={} outages={}",
            rss.len() * 10,
            rss.last().unwrap() / 1024,
            c.stable_ok.load(Ordering::Relaxed),
            c.stable_failed.load(Ordering::Relaxed),
            c.churned.load(Ordering::Relaxed),
            c.churn_refused.load(Ordering::Relaxed),
            c.issued.load(Ordering::Relaxed),
            c.store_outages.load(Ordering::Relaxed),
        );
    }
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(70), task).await;
    }

    let failed = counts.stable_failed.load(Ordering::Relaxed);
    // Flat memory: after two minutes of warm-up (certificates issued and removed reach a
    // steady state), the last third of the run is within a tenth of the level then.
    let warm = rss.get(12).or(rss.last()).copied().unwrap_or(0);
    let tail: Vec<u64> = rss.iter().skip(rss.len() * 2 / 3).copied().collect();
    let peak_tail = tail.iter().copied().max().unwrap_or(0);
    let flat = peak_tail <= warm + warm / 10;
    println!(
        "soak {seconds}s: stable requests {} ok, {failed} failed; hosts churned {} ({} writes refused during store outages); \
         certificates issued {}; store outages {}; RSS at 2 min {} KiB, peak in the last third {} KiB ({})",
        counts.stable_ok.load(Ordering::Relaxed),
        counts.churned.load(Ordering::Relaxed),
        counts.churn_refused.load(Ordering::Relaxed),
        counts.issued.load(Ordering::Relaxed),
        counts.store_outages.load(Ordering::Relaxed),
        warm / 1024,
        peak_tail / 1024,
        if flat { "flat" } else { "GROWING" },
    );
    if failed > 0 || !flat {
        std::process::exit(1);
    }
}

/// Resident memory of `pid` now, in bytes.
fn current_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) * 1024
}
