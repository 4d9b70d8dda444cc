//! End to end: real clients → `portico serve` (the real binary) → real backends on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod access;
mod acme;
mod api;
mod balance;
mod cluster;
mod connections;
mod dns01;
mod errors;
mod http3;
mod https;
mod issuers;
mod kinds;
mod lifecycle;
mod live;
mod logs;
mod lookup;
mod metrics;
mod operator;
mod partition;
mod passthrough;
mod reload;
mod routing;
mod seed;
mod seed_ui;
mod service;
mod streaming;
mod streams;
mod ui;
mod upgrade;
mod uploaded;
mod upstream;
mod websocket;

use portico_test_support::Portico;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portico");

/// An API client for `p`, and the admin's token.
pub async fn admin(p: &Portico) -> (portico_test_support::client::ApiClient, String) {
    let api = portico_test_support::client::ApiClient::new(p.api);
    let token = api.login("admin", portico_test_support::portico::ADMIN_PASSWORD).await;
    (api, token)
}

/// The embedded store of a running `p` (opened beside it, as `portico host add` does).
pub async fn store_of(p: &Portico) -> portico_store::EmbeddedStore {
    portico_store::EmbeddedStore::open(p.data_dir().join("portico.redb")).await.unwrap()
}

/// One unlabelled sample on `p`'s metrics listener, as the text says it (a histogram's
/// `_sum` and `_count` too, which parsers fold away).
pub async fn raw_sample(p: &Portico, name: &str) -> f64 {
    sample(p, name).await.unwrap_or_else(|| panic!("no {name}"))
}

/// One sample on `p`'s metrics listener, `name` with its labels as the text writes them
/// (`portico_x_total{a="1"}`); `None` if there is none (a counter not yet counted).
async fn sample(p: &Portico, name: &str) -> Option<f64> {
    let addr = p.listener("metrics").expect("a metrics listener");
    let text = portico_test_support::client::Proxy::h1(addr).get("localhost", "/metrics").await.text();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    Some(line[name.len()..].trim().parse().unwrap())
}

/// The setting that gives a test instance a metrics listener.
pub const METRICS: &str = "metrics.listen=\"127.0.0.1:0\"";

/// Certificate issuances `p` has started with `issuer` (`acme`, `internal`), as its
/// `portico_certificate_attempts_total` counts them (it needs [`METRICS`]).
pub async fn issuances(p: &Portico, issuer: &str) -> f64 {
    sample(p, &format!("portico_certificate_attempts_total{{issuer=\"{issuer}\",kind=\"issue\"}}")).await.unwrap_or(0.0)
}

/// A fresh `portico serve` with extra `--set` settings.
pub fn portico(settings: &[&str]) -> Portico {
    Portico::start(BIN, settings)
}
