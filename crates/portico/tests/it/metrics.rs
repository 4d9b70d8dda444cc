//! `/metrics` after real traffic, an issuance and a failed renewal, read with a Prometheus
//! text-format parser: the values a user would look at.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::Proxy;
use portico_test_support::pebble::{self, Options};
use portico_test_support::{Backend, Portico, eventually, tls};
use prometheus_parse::{Scrape, Value};

use crate::{BIN, raw_sample};

/// The metrics as parsed: every sample's value, by name and labels (`name{a="1",b="2"}`,
/// labels sorted), histograms as their count.
async fn scrape(p: &Portico) -> BTreeMap<String, f64> {
    let addr = p.listener("metrics").expect("a metrics listener");
    let answer = Proxy::h1(addr).get("localhost", "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = answer.text();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            let value = match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

fn value(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics.get(key).unwrap_or_else(|| panic!("no {key} in {:#?}", metrics.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_an_issuance_and_a_failed_renewal() {
    let backend = Backend::start("metered").await;
    let settings = ["metrics.listen=\"127.0.0.1:0\"", "tls.renew_remaining_ratio=0.9", "tls.renew_interval=\"300ms\""];
    let (mut pebble, p) =
        pebble::with_portico(BIN, Options { validity_secs: Some(30), ..Options::default() }, &settings);
    p.add_host("app.example.test", backend.addr, &[]);
    let plain = Proxy::h1(p.http);
    for _ in 0..3 {
        assert_eq!(plain.get("app.example.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(plain.get("nobody.example.test", "/").await.status, StatusCode::NOT_FOUND);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots, true).get("app.example.test", "/").await.status, StatusCode::OK);
    let issued = tls::peek(p.https, "app.example.test").await;

    let m = scrape(&p).await;
    assert!(
        value(&m, r#"portico_http_requests_total{host="app.example.test",protocol="HTTP/1.1",status="2xx"}"#) >= 3.0
    );
    assert_eq!(value(&m, r#"portico_http_requests_total{host="-",protocol="HTTP/1.1",status="4xx"}"#), 1.0);
    assert_eq!(
        value(&m, r#"portico_http_requests_total{host="app.example.test",protocol="HTTP/2.0",status="2xx"}"#),
        1.0
    );
    assert!(value(&m, r#"portico_http_response_bytes_total{}"#) > 0.0);
    assert!(value(&m, r#"portico_upstream_response_seconds{}"#) >= 4.0, "a histogram's count");
    assert_eq!(value(&m, r#"portico_acme_orders_total{challenge="http-01",result="valid"}"#), 1.0);
    assert_eq!(value(&m, r#"portico_certificate_decisions_total{decision="issued"}"#), 1.0);
    assert!(value(&m, r#"portico_certificate_decisions_total{decision="memory"}"#) >= 1.0);
    assert_eq!(value(&m, r#"portico_certificate_not_after_seconds{name="app.example.test"}"#), issued.not_after as f64);
    // The server counts a TLS 1.3 handshake when the client's Finished arrives, which may be
    // after the client (done first) has moved on: wait for the count, not for the client.
    eventually(Duration::from_secs(5), "two handshakes counted", || async {
        let m = scrape(&p).await;
        (value(&m, r#"portico_tls_handshakes_total{reason="none",result="ok"}"#) >= 2.0).then_some(())
    })
    .await;
    assert_eq!(value(&m, r#"portico_routes_hosts{}"#), 1.0);
    // Adding the host was a change heard from the store and routed by soon after.
    assert!(value(&m, r#"portico_routes_change_delay_seconds{}"#) >= 1.0, "a histogram's count");
    let delay_sum = raw_sample(&p, "portico_routes_change_delay_seconds_sum").await;
    assert!(delay_sum > 0.0 && delay_sum < 5.0, "change-to-routed delays add up to {delay_sum} s");
    assert!(value(&m, r#"portico_store_operation_seconds{op="record"}"#) > 0.0);
    assert!(m.contains_key(r#"portico_connections_open{}"#));

    // The CA goes away: the renewal, due at once, fails, and the metrics say so.
    pebble.stop();
    let failed = eventually(Duration::from_secs(15), "a failed renewal in the metrics", || {
        let p = &p;
        async move {
            let m = scrape(p).await;
            let failures = m.get(r#"portico_certificate_failures{name="app.example.test"}"#).copied().unwrap_or(0.0);
            (failures >= 1.0).then_some(m)
        }
    })
    .await;
    assert!(value(&failed, r#"portico_job_runs_total{job="renewal",result="ok"}"#) >= 1.0);
    assert!(
        value(&failed, r#"portico_certificate_next_renewal_seconds{name="app.example.test"}"#)
            > portico_certs::now_secs() as f64,
        "the next attempt is after a backoff"
    );
}

/// A metrics port already taken stops the start, naming the key.
#[tokio::test]
async fn a_taken_metrics_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let setting = format!("metrics.listen=\"{}\"", taken.local_addr().unwrap());
    let err = Portico::try_start(BIN, &[&setting]).err().expect("it does not start");
    assert!(err.contains("metrics.listen"), "{err}");
}

/// On Redis, the store server's memory is in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memory_is_reported() {
    let redis = portico_test_support::RedisServer::start();
    let store = format!("store.url=\"{}\"", redis.url());
    let p = Portico::start_role(BIN, "serve", &[&store, "metrics.listen=\"127.0.0.1:0\""]);
    let m = scrape(&p).await;
    assert!(value(&m, "portico_store_memory_bytes{}") > 100_000.0, "Redis uses some memory");
}

/// `GET /api/stats` (the UI's request rate): this node's proxied requests when it counts
/// them, `null` without a metrics listener.
#[tokio::test]
async fn the_api_reports_the_request_count_when_metrics_are_on() {
    use portico_test_support::client::ApiClient;
    let backend = Backend::start("counted").await;
    for (settings, counted) in [(&["metrics.listen=\"127.0.0.1:0\""][..], true), (&[][..], false)] {
        let p = Portico::start(BIN, settings);
        p.add_host("counted.test", backend.addr, &[]);
        let api = ApiClient::new(p.api);
        let token = api.login("admin", portico_test_support::portico::ADMIN_PASSWORD).await;
        let proxy = Proxy::h1(p.http);
        for _ in 0..3 {
            assert_eq!(proxy.get("counted.test", "/").await.status, StatusCode::OK);
        }
        // And one the proxy answers itself: no host.
        assert_eq!(proxy.get("nobody.test", "/").await.status, StatusCode::NOT_FOUND);
        let stats = api.call("GET", "/api/stats", Some(&token), None).await;
        assert_eq!(stats.status, StatusCode::OK, "{}", stats.raw);
        if counted {
            let total = eventually(Duration::from_secs(5), "three requests counted", || {
                let (api, token) = (api.clone(), token.clone());
                async move {
                    let stats = api.call("GET", "/api/stats", Some(&token), None).await;
                    stats.json["results"]["requests_total"].as_u64().filter(|n| *n >= 4)
                }
            })
            .await;
            assert_eq!(total, 4, "only proxied requests count");
            // By status class, and by duration: every request in one bucket each.
            let stats = api.call("GET", "/api/stats", Some(&token), None).await;
            let results = &stats.json["results"];
            assert_eq!(results["statuses"], serde_json::json!({"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 0}));
            let buckets = results["latency"].as_array().unwrap();
            assert_eq!(buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(), 4, "{}", stats.raw);
            assert_eq!(buckets.first().unwrap()["le_ms"], 1);
            assert_eq!(buckets.last().unwrap()["le_ms"], serde_json::Value::Null, "the last bucket takes the rest");
        } else {
            for field in ["requests_total", "statuses", "latency"] {
                assert_eq!(stats.json["results"][field], serde_json::Value::Null, "{}", stats.raw);
            }
        }
        assert!(stats.json["results"]["at"].as_u64() >= stats.json["results"]["started"].as_u64());
    }
}
