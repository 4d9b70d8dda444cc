//! A node cut off from Redis by a network partition (its own network namespace, its link to
//! Redis taken down) behaves as if Redis were down for it alone, and catches up when the
//! partition heals. Needs root (network namespaces); CI runs as root.

use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::netns::Netns;
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, RedisServer, eventually};
use serde_json::json;

use crate::BIN;

async fn routes(proxy: &Proxy, host: &str) -> bool {
    proxy.get(host, "/").await.status == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_serves_from_memory_and_catches_up() {
    if !rustix::process::geteuid().is_root() {
        panic!("this test makes network namespaces and needs root (CI runs as root)");
    }
    let net = Netns::new().unwrap();
    let redis = RedisServer::start_bound(&[&net.store_here()]);
    let backend = Backend::start_at("partition", &net.client_here()).await;
    let a = Portico::start_role(BIN, "serve", &[&format!("store.url=\"{}\"", redis.url())]);
    let there = net.client_there();
    let p = Portico::start_wrapped(
        BIN,
        "serve",
        &net.exec(),
        &[
            &format!("store.url=\"redis://{}:{}\"", net.store_here(), redis.port()),
            &format!("proxy.http=\"{there}:0\""),
            &format!("proxy.https=\"{there}:0\""),
            &format!("api.listen=\"{there}:0\""),
        ],
    );
    let api_a = ApiClient::new(a.api);
    let token = api_a.login("admin", ADMIN_PASSWORD).await;
    let host = |name: &str| json!({"host": name, "ip": backend.addr.ip().to_string(), "targetPort": backend.addr.port(), "forcessl": false});
    assert_eq!(api_a.call("POST", "/api/host", Some(&token), Some(host("known.example"))).await.status, StatusCode::OK);
    let (proxy_a, proxy_p) = (Proxy::h1(a.http), Proxy::h1(p.http));
    eventually(Duration::from_secs(5), "the cut-off node to route the known host", || async {
        routes(&proxy_p, "known.example").await.then_some(())
    })
    .await;

    net.cut();
    // The cut-off node routes what it knows; its API, which needs the store, says so
    // within two seconds (a partition: requests time out rather than being refused).
    assert!(routes(&proxy_p, "known.example").await);
    let api_p = ApiClient::new(p.api);
    let asked = Instant::now();
    let reply = api_p.call("GET", "/api/host", Some(&token), None).await;
    assert!(asked.elapsed() < Duration::from_secs(2), "took {:?}", asked.elapsed());
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.raw);
    assert_eq!(reply.json["name"], "StoreUnavailable");
    // The rest of the cluster goes on: a write through node A is routed by A.
    assert_eq!(
        api_a.call("POST", "/api/host", Some(&token), Some(host("meanwhile.example"))).await.status,
        StatusCode::OK
    );
    eventually(Duration::from_secs(2), "node A to route the new host", || async {
        routes(&proxy_a, "meanwhile.example").await.then_some(())
    })
    .await;
    assert!(!routes(&proxy_p, "meanwhile.example").await, "the cut-off node cannot know it");
    assert!(routes(&proxy_p, "known.example").await);

    net.heal();
    let healed = Instant::now();
    eventually(Duration::from_secs(15), "the healed node to catch up", || async {
        routes(&proxy_p, "meanwhile.example").await.then_some(())
    })
    .await;
    eprintln!("caught up {:?} after the partition healed", healed.elapsed());
    assert_eq!(api_p.call("GET", "/api/host", Some(&token), None).await.status, StatusCode::OK);
}
