//! Many nodes on one Redis: `portico serve`, `portico proxy` and `portico api` processes
//! sharing a real `redis-server`.

use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, RedisServer};
use serde_json::json;

use crate::BIN;

/// The `--set` option that puts a node on `url`.
fn on(url: &str) -> String {
    format!("store.url=\"{url}\"")
}

/// A host created through node A's API is routed by node C within a second of the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_created_on_one_node_is_routed_by_another_within_a_second() {
    let redis = RedisServer::start();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "serve", &[&store]);
    let b = Portico::start_role(BIN, "proxy", &[&store]);
    let c = Portico::start_role(BIN, "proxy", &[&store]);
    let backend = Backend::start("one").await;
    let api = ApiClient::new(a.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let proxy_c = Proxy::h1(c.http);
    assert_eq!(proxy_c.get("new.example", "/").await.status, StatusCode::NOT_FOUND);

    let body = json!({"host": "new.example", "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    let created = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    let written = Instant::now();
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json);
    loop {
        if proxy_c.get("new.example", "/").await.status == StatusCode::OK {
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(1), "node C did not route the new host within a second");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let routed_after = written.elapsed();
    assert_eq!(Proxy::h1(b.http).get("new.example", "/").await.status, StatusCode::OK);
    eprintln!("routed by another node {routed_after:?} after the write");
}
