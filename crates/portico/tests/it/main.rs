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
mod https;
mod lifecycle;
mod live;
mod logs;
mod lookup;
mod metrics;
mod partition;
mod routing;
mod seed;
mod seed_ui;
mod streaming;
mod ui;
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
    let addr = p.listener("metrics").expect("a metrics listener");
    let text = portico_test_support::client::Proxy::h1(addr).get("localhost", "/metrics").await.text();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
    line[name.len()..].trim().parse().unwrap()
}

/// A fresh `portico serve` with extra `--set` settings.
pub fn portico(settings: &[&str]) -> Portico {
    Portico::start(BIN, settings)
}
