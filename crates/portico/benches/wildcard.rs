//! One wildcard certificate through DNS-01, timed per provider, against a local Pebble: from
//! sending the `*.zone` host to the API until a client verifying against Pebble's root gets
//! an answer for a name under it. Every round is a new zone, so a whole order: both TXT
//! records created through the provider's API (in-process fakes of Cloudflare, DigitalOcean
//! and Porkbun publishing to pebble-challtestsrv; a real Knot DNS for RFC 2136), waited for,
//! validated, finalized, downloaded, the records removed.
//!
//! Run with `cargo bench -p portico --bench wildcard` (needs `pebble`, `pebble-challtestsrv`,
//! `knotd`). `WILDCARD_BENCH_ROUNDS` sets the rounds per provider (5).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::dns_fake::{FakeDns, Provider};
use portico_test_support::knot::Knot;
use portico_test_support::pebble::{self, Options};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, tls};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// Where the provider's records live for one run.
enum Dns {
    Fake(FakeDns),
    Knot(Knot),
}

async fn run(label: &str, provider: Option<Provider>, rounds: usize) {
    let zones: Vec<String> = (0..rounds).map(|i| format!("z{i}.bench.test")).collect();
    let zone_refs: Vec<&str> = zones.iter().map(String::as_str).collect();
    let dns = match provider {
        Some(p) => Dns::Fake(FakeDns::start(p, &zone_refs).await),
        None => Dns::Knot(Knot::start(&zone_refs)),
    };
    let backend = Backend::start("bench").await;
    let options = match &dns {
        Dns::Knot(knot) => Options { dns_server: Some(knot.addr), ..Options::default() },
        Dns::Fake(_) => Options::default(),
    };
    let (pebble, p) = pebble::with_portico_for(BIN, options, |pebble| {
        let mut settings = vec!["log.access_log=false".to_owned()];
        match &dns {
            Dns::Fake(fake) => {
                fake.publish_to(pebble.ports.chall);
                let key = match fake.provider {
                    Provider::Cloudflare => "cloudflare_api",
                    Provider::DigitalOcean => "digitalocean_api",
                    Provider::Porkbun => "porkbun_api",
                };
                settings.push(format!("dns.{key}=\"{}\"", fake.base()));
                settings.push(format!("tls.dns_resolvers=[\"127.0.0.1:{}\"]", pebble.ports.dns));
            }
            Dns::Knot(knot) => settings.push(format!("tls.dns_resolvers=[\"{}\"]", knot.addr)),
        }
        settings
    });
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let mut body = match &dns {
        Dns::Fake(fake) => {
            let mut body = json!({"name": "bench", "dnsProvider": fake.provider.kind()});
            for (field, value) in fake.provider.credentials() {
                body[field] = value.into();
            }
            body
        }
        Dns::Knot(knot) => {
            let mut body = json!({"name": "bench", "dnsProvider": "RFC2136"});
            for (field, value) in knot.provider_fields(&zones.join(",")) {
                body[field] = value.into();
            }
            body
        }
    };
    body["name"] = label.into();
    assert_eq!(api.call("POST", "/api/dns", Some(&token), Some(body)).await.status, StatusCode::OK);
    let roots = tls::roots(&pebble.root().await);
    let mut times = Vec::new();
    for zone in &zones {
        let host = json!({"host": format!("*.{zone}"), "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
        let sent = Instant::now();
        assert_eq!(api.call("POST", "/api/host", Some(&token), Some(host)).await.status, StatusCode::OK);
        let name = format!("x.{zone}");
        let client = Proxy::https(p.https, roots.clone(), false);
        loop {
            if client
                .try_send("GET", &name, "/", portico_test_support::client::empty())
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
            {
                break;
            }
            assert!(sent.elapsed() < Duration::from_secs(60), "no certificate for {name}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(sent.elapsed());
    }
    times.sort_unstable();
    println!(
        "{label:>13}: median {:?}  min {:?}  max {:?}  ({rounds} wildcard orders; {} orders at Pebble)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        pebble.orders()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = std::env::var("WILDCARD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!(
        "one wildcard certificate (*.zone + zone) through DNS-01 against a local Pebble, host write to first verified HTTPS answer:"
    );
    run("Cloudflare", Some(Provider::Cloudflare), rounds).await;
    run("DigitalOcean", Some(Provider::DigitalOcean), rounds).await;
    run("Porkbun", Some(Provider::Porkbun), rounds).await;
    run("RFC 2136/Knot", None, rounds).await;
}
