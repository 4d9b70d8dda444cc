//! Hosts with several targets: how requests are shared by each policy (counted at each real
//! backend), a target killed mid-run and coming back, active health checks, every target
//! down, and what the API shows of it.

use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::{Backend, Portico, eventually};
use serde_json::{Value, json};

use crate::{admin, portico};

/// A host named `name` over `backends` (weights alongside), through the API.
async fn add(api: &ApiClient, token: &str, name: &str, targets: &[(&Backend, u16)], extra: Value) -> Value {
    let list: Vec<Value> =
        targets.iter().map(|(b, w)| json!({"ip": "127.0.0.1", "port": b.addr.port(), "weight": w})).collect();
    let mut body = json!({"host": name, "targets": list, "forcessl": false});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    let made = api.call("POST", "/api/host", Some(token), Some(body)).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    made.json
}

/// Sends `n` requests for `name` one after the other; each must succeed.
async fn send(p: &Portico, name: &str, n: usize) {
    let proxy = Proxy::h1(p.http);
    for i in 0..n {
        let answer = proxy.get(name, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {}", answer.text());
    }
}

fn hits(backends: &[&Backend]) -> Vec<u64> {
    backends.iter().map(|b| b.hits()).collect()
}

#[tokio::test]
async fn requests_are_shared_by_each_policy() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let shown = add(&api, &token, "rr.test", &[(&a, 1), (&b, 2), (&c, 1)], json!({})).await;
    // The seed's fields are the first target.
    assert_eq!(shown["ip"], "127.0.0.1");
    assert_eq!(shown["targetPort"], a.addr.port());
    assert_eq!(shown["balance"], "round_robin");
    p.wait_routed();
    let before = hits(&[&a, &b, &c]);
    send(&p, "rr.test", 40).await;
    let after: Vec<u64> = hits(&[&a, &b, &c]).iter().zip(&before).map(|(x, y)| x - y).collect();
    assert_eq!(after, [10, 20, 10], "round robin by weight 1:2:1");

    // `first`: the others are standbys.
    let put =
        p.routing_after(api.call("PUT", "/api/host/rr.test", Some(&token), Some(json!({"balance": "first"})))).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.raw);
    let before = hits(&[&a, &b, &c]);
    send(&p, "rr.test", 6).await;
    assert_eq!(hits(&[&a, &b, &c])[0] - before[0], 6, "first: all to the first target");

    // `ip_hash`: one client address, one target.
    p.routing_after(api.call("PUT", "/api/host/rr.test", Some(&token), Some(json!({"balance": "ip_hash"})))).await;
    let before = hits(&[&a, &b, &c]);
    send(&p, "rr.test", 12).await;
    let after: Vec<u64> = hits(&[&a, &b, &c]).iter().zip(&before).map(|(x, y)| x - y).collect();
    assert_eq!(after.iter().filter(|&&n| n > 0).count(), 1, "ip_hash is sticky: {after:?}");

    // `least_conn`: a target busy with a slow request gets none of the quick ones.
    p.routing_after(api.call(
        "PUT",
        "/api/host/rr.test",
        Some(&token),
        Some(json!({"balance": "least_conn", "targets": [
            {"ip": "127.0.0.1", "port": a.addr.port()}, {"ip": "127.0.0.1", "port": b.addr.port()}
        ]})),
    ))
    .await;
    let proxy = Proxy::h1(p.http);
    let before = a.hits() + b.hits();
    let slow = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get("rr.test", "/sleep/1500").await.status })
    };
    // The slow request is at its target.
    eventually(Duration::from_secs(5), "the slow request at its target", || async {
        (a.hits() + b.hits() > before).then_some(())
    })
    .await;
    let busy_a = a.hits();
    let busy_b = b.hits();
    send(&p, "rr.test", 8).await;
    let (quick_a, quick_b) = (a.hits() - busy_a, b.hits() - busy_b);
    assert!(quick_a == 0 || quick_b == 0, "the busy target got quick requests too: a {quick_a}, b {quick_b}");
    assert_eq!(quick_a + quick_b, 8);
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_dead_target_is_ejected_at_once_and_taken_back_when_it_returns() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let b_addr = b.addr;
    add(&api, &token, "pair.test", &[(&a, 1), (&b, 1)], json!({})).await;
    p.wait_routed();
    send(&p, "pair.test", 4).await;
    assert!(b.hits() > 0);

    // b dies: no request fails (a connection that cannot be made goes to the other target),
    // and b is ejected.
    drop(b);
    send(&p, "pair.test", 20).await;
    let host = api.call("GET", "/api/host/pair.test", Some(&token), None).await;
    let targets = host.json["results"]["targets"].as_array().unwrap().clone();
    assert_eq!(targets[0]["health"], "healthy", "{targets:?}");
    assert_eq!(targets[1]["health"], "ejected", "{targets:?}");
    assert!(targets[1]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{targets:?}");

    // b comes back on its address: it is tried again after its back-off (well within 30 s)
    // and takes traffic.
    let b = Backend::start_on("b", b_addr).await;
    eventually(Duration::from_secs(31), "b taken back within 30 s", || async {
        send(&p, "pair.test", 1).await;
        (b.hits() > 0).then_some(())
    })
    .await;
    let host = api.call("GET", "/api/host/pair.test", Some(&token), None).await;
    assert_eq!(host.json["results"]["targets"][1]["health"], "healthy");
}

/// A target killed while requests run at it: only the requests it was answering at that
/// moment may fail (one per client here); every request started after that is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_under_load_costs_at_most_the_requests_in_flight() {
    const CLIENTS: usize = 4;
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    add(&api, &token, "load.test", &[(&a, 1), (&b, 1)], json!({})).await;
    p.wait_routed();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (proxy, stop) = (Proxy::h1(p.http), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                // Each request takes 20 ms at its target: some are always in flight.
                let status = proxy.get("load.test", "/sleep/20").await.status;
                seen.push((started, status));
            }
            seen
        }));
    }
    // Both targets busy, then b is killed, connections and all.
    eventually(Duration::from_secs(10), "load at both targets", || async {
        (b.hits() >= 20 && a.hits() >= 20).then_some(())
    })
    .await;
    drop(b);
    let killed = Instant::now();
    let after = a.hits();
    eventually(Duration::from_secs(10), "a taking the load", || async { (a.hits() >= after + 100).then_some(()) })
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed_in_flight = 0;
    let mut total = 0;
    for client in clients {
        for (started, status) in client.await.unwrap() {
            total += 1;
            if status != StatusCode::OK {
                assert!(started < killed, "a request started after the kill failed: {status}");
                failed_in_flight += 1;
            }
        }
    }
    assert!(failed_in_flight <= CLIENTS, "{failed_in_flight} of {total} failed: more than were in flight");
    eprintln!("{total} requests, {failed_in_flight} in flight at the kill failed");
}

#[tokio::test]
async fn active_checks_take_a_failing_target_out_and_put_it_back() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let check = json!({"healthCheck": {"path": "/healthz", "interval": "1s", "unhealthy": 2, "healthy": 1}});
    let shown = add(&api, &token, "checked.test", &[(&a, 1), (&b, 1)], check).await;
    assert_eq!(shown["healthCheck"]["interval"], "1s");
    p.wait_routed();

    b.set_health(503);
    let api_view = |api: ApiClient, token: String| async move {
        api.call("GET", "/api/host/checked.test", Some(&token), None).await.json["results"]["targets"][1].clone()
    };
    let b_view = eventually(Duration::from_secs(6), "b marked down", || async {
        let b_view = api_view(api.clone(), token.clone()).await;
        (b_view["health"] == "down").then_some(b_view)
    })
    .await;
    assert!(b_view["last_error"].as_str().unwrap().contains("503"), "{b_view}");
    let before = b.hits();
    send(&p, "checked.test", 10).await;
    // Only health checks reach b now (at most one or two in the meantime).
    assert!(b.hits() - before <= 2, "b got requests while down: {}", b.hits() - before);

    b.set_health(200);
    eventually(Duration::from_secs(6), "b back", || async {
        (api_view(api.clone(), token.clone()).await["health"] == "healthy").then_some(())
    })
    .await;
    let before = b.hits();
    send(&p, "checked.test", 10).await;
    assert!(b.hits() - before >= 4, "b takes traffic again");
}

#[tokio::test]
async fn every_target_down_is_a_quick_502_with_a_clear_page() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    add(&api, &token, "gone.test", &[(&a, 1), (&b, 1)], json!({})).await;
    p.wait_routed();
    drop((a, b));
    let proxy = Proxy::h1(p.http);
    // The first requests find both dead; after that both are ejected.
    for _ in 0..3 {
        assert_eq!(proxy.get("gone.test", "/").await.status, StatusCode::BAD_GATEWAY);
    }
    let asked = Instant::now();
    let answer = proxy.get("gone.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.text().contains("every target of this host is down"), "{}", answer.text());
    assert!(asked.elapsed() < Duration::from_secs(1), "answered at once: {:?}", asked.elapsed());
}

#[tokio::test]
async fn targets_are_validated_and_seed_fields_stay_the_first_target() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let t = Some(token.as_str());
    let bad = api
        .call("POST", "/api/host", t, Some(json!({"host": "bad.test", "targets": [{"ip": "127.0.0.1", "port": 0}]})))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json["keys"][0]["key"], "targets", "{}", bad.raw);
    let bad = api
        .call(
            "POST",
            "/api/host",
            t,
            Some(json!({"host": "bad.test", "ip": "127.0.0.1", "targetPort": 80, "balance": "random"})),
        )
        .await;
    assert_eq!(bad.json["keys"][0]["key"], "balance", "{}", bad.raw);
    let bad = api
        .call(
            "POST",
            "/api/host",
            t,
            Some(json!({"host": "bad.test", "ip": "127.0.0.1", "targetPort": 80, "healthCheck": {"path": "x"}})),
        )
        .await;
    assert_eq!(bad.json["keys"][0]["key"], "healthCheck", "{}", bad.raw);

    let two = json!({"host": "two.test", "targets": [{"ip": "10.0.0.1", "port": 80}, {"ip": "10.0.0.2", "port": 81, "weight": 3}]});
    assert_eq!(api.call("POST", "/api/host", t, Some(two)).await.status, StatusCode::OK);
    // A seed client changes `ip`/`targetPort`: the first target changes, the second stays.
    let seed = api.call("PUT", "/api/host/two.test", t, Some(json!({"ip": "10.0.0.9", "targetPort": 90}))).await;
    assert_eq!(seed.status, StatusCode::OK, "{}", seed.raw);
    assert_eq!(
        seed.json["targets"],
        json!([{"ip": "10.0.0.9", "port": 90, "weight": 1}, {"ip": "10.0.0.2", "port": 81, "weight": 3}])
    );
    assert_eq!(seed.json["ip"], "10.0.0.9");
    // A host with only the seed's fields has one target.
    let one = json!({"host": "one.test", "ip": "10.0.0.1", "targetPort": 80});
    let one = api.call("POST", "/api/host", t, Some(one)).await;
    assert_eq!(one.json["targets"], json!([{"ip": "10.0.0.1", "port": 80, "weight": 1}]));
}

#[tokio::test]
async fn the_command_line_sets_targets_balance_and_checks() {
    let p = portico(&[]);
    let added = p.host(&[
        "add",
        "multi.test",
        "--target",
        "127.0.0.1:8001",
        "--target",
        "[::1]:8002@3",
        "--balance",
        "least_conn",
        "--health-check",
        "/healthz",
        "--health-interval",
        "2s",
    ]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(String::from_utf8_lossy(&added.stdout).contains("127.0.0.1:8001, [::1]:8002@3 (least_conn)"));
    let listed = p.host(&["ls", "--json"]);
    let host: Value = serde_json::from_str(String::from_utf8_lossy(&listed.stdout).trim()).unwrap();
    assert_eq!(
        host["targets"],
        json!([{"ip": "127.0.0.1", "port": 8001, "weight": 1}, {"ip": "::1", "port": 8002, "weight": 3}])
    );
    assert_eq!(host["balance"], "least_conn");
    assert_eq!(host["healthCheck"]["path"], "/healthz");
    assert_eq!(host["healthCheck"]["interval"], "2s");
    // The API shows the same host.
    let (api, token) = admin(&p).await;
    let shown = api.call("GET", "/api/host/multi.test", Some(&token), None).await;
    assert_eq!(shown.json["results"]["balance"], "least_conn");

    // `update`: the first target's port, the policy, no more checks.
    let updated = p.host(&["update", "multi.test", "--port", "8009", "--balance", "first", "--no-health-check"]);
    assert!(updated.status.success(), "{}", String::from_utf8_lossy(&updated.stderr));
    let listed = p.host(&["ls", "--json"]);
    let host: Value = serde_json::from_str(String::from_utf8_lossy(&listed.stdout).trim()).unwrap();
    assert_eq!(host["targets"][0]["port"], 8009);
    assert_eq!(host["targets"][1]["port"], 8002);
    assert_eq!(host["balance"], "first");
    assert_eq!(host.get("healthCheck"), None);

    // Refusals name the field, and change nothing.
    let refused = p.host(&["update", "multi.test", "--balance", "random"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("balance"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let refused = p.host(&["add", "other.test", "--target", "127.0.0.1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("IP:PORT"));
    let refused = p.host(&["add", "other.test", "--target", "127.0.0.1:80@0"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("targets"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let missing = p.host(&["add", "other.test"]);
    assert!(!missing.status.success(), "a host needs a target");
    let listed = p.host(&["ls", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);
}

/// WebSocket upgrades and HTTP/2 requests go through every policy.
#[tokio::test]
async fn websockets_and_http2_work_through_every_policy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let (one, two) = (Backend::websocket_echo().await, Backend::websocket_echo().await);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    add(&api, &token, "ws.test", &[(&one, 1), (&two, 1)], json!({})).await;
    add(&api, &token, "h2.test", &[(&a, 1), (&b, 1)], json!({})).await;
    p.wait_routed();
    for balance in ["round_robin", "least_conn", "ip_hash", "first"] {
        for name in ["ws.test", "h2.test"] {
            let body = Some(json!({"balance": balance}));
            let put = p.routing_after(api.call("PUT", &format!("/api/host/{name}"), Some(&token), body)).await;
            assert_eq!(put.status, StatusCode::OK, "{}", put.raw);
        }
        for i in 0..4 {
            let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
            let url = format!("ws://ws.test:{}/socket", p.http.port());
            let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade through the proxy");
            ws.send(Message::text(format!("{balance} {i}"))).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("{balance} {i}")));
            ws.close(None).await.unwrap();
        }
        let h2 = Proxy::h2c(p.http);
        for _ in 0..4 {
            let answer = h2.get("h2.test", "/").await;
            assert_eq!(answer.status, StatusCode::OK, "{balance} over HTTP/2");
            assert_eq!(answer.json()["version"], "HTTP/1.1", "targets are spoken to in HTTP/1.1");
        }
    }
    assert!(a.hits() > 0 && b.hits() > 0, "both HTTP targets were used");
}

/// The state of a host's first target as the API shows it.
async fn first_target(api: &ApiClient, token: &str, name: &str) -> Value {
    api.call("GET", &format!("/api/host/{name}"), Some(token), None).await.json["results"]["targets"][0].clone()
}

/// Two hosts on one target: one whose check always fails (`expect: 599`) does not take the
/// target from the other, whose check passes. A check of a closed port says "unreachable",
/// not the operating system's error.
#[tokio::test]
async fn another_hosts_failing_check_cannot_take_a_shared_target_away() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let a = Backend::start("a").await;
    let passing = json!({"healthCheck": {"path": "/healthz", "interval": "1s", "unhealthy": 1, "healthy": 1}});
    add(&api, &token, "admins.test", &[(&a, 1)], passing).await;
    let failing = json!({"healthCheck": {"path": "/healthz", "interval": "1s", "expect": 599, "unhealthy": 1}});
    add(&api, &token, "users.test", &[(&a, 1)], failing).await;
    p.wait_routed();
    eventually(Duration::from_secs(6), "the failing check marking its host's target down", || async {
        (first_target(&api, &token, "users.test").await["health"] == "down").then_some(())
    })
    .await;
    // Past another interval of both checks: the passing host keeps its target.
    let down_at = Instant::now();
    while down_at.elapsed() < Duration::from_millis(2500) {
        assert_eq!(Proxy::h1(p.http).get("admins.test", "/").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first_target(&api, &token, "admins.test").await["health"], "healthy");
    assert_eq!(Proxy::h1(p.http).get("users.test", "/").await.status, StatusCode::BAD_GATEWAY);

    // A closed port: "unreachable", nothing more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let body = json!({"host": "scan.test", "targets": [{"ip": "127.0.0.1", "port": port}], "forcessl": false,
        "healthCheck": {"path": "/", "interval": "1s", "unhealthy": 1}});
    assert_eq!(api.call("POST", "/api/host", Some(&token), Some(body)).await.status, StatusCode::OK);
    let view = eventually(Duration::from_secs(6), "the closed port's target down", || async {
        let view = first_target(&api, &token, "scan.test").await;
        (view["health"] == "down").then_some(view)
    })
    .await;
    assert_eq!(view["last_error"], "health check: unreachable", "{view}");
}
