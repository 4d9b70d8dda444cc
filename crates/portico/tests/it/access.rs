//! Per-host access control against real clients and backends: basic auth, allow/deny with
//! `X-Forwarded-For` from trusted and untrusted peers, the PROXY protocol, forward auth to a
//! small real authentication service, and rate limits under a burst.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use portico_test_support::Backend;
use portico_test_support::client::{ApiClient, Proxy};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{admin, portico};

/// Adds `name` → `backend` with `policy` through the API and waits until it is routed.
async fn host(
    api: &ApiClient,
    token: &str,
    p: &portico_test_support::Portico,
    name: &str,
    backend: &Backend,
    policy: Value,
) -> Value {
    let mut body = json!({"host": name, "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    if let (Value::Object(body), Value::Object(policy)) = (&mut body, policy) {
        body.extend(policy);
    }
    let made = p.routing_after(api.call("POST", "/api/host", Some(token), Some(body))).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    made.json
}

/// `GET /` for `name` with these headers, through the proxy: status, headers, body.
async fn get(
    p: &portico_test_support::Portico,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = Request::get(path).header("host", name);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let (head, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (head.status, head.headers, String::from_utf8_lossy(&body).into_owned())
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn basic_auth_right_wrong_and_missing() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let backend = Backend::start("private").await;
    let made = host(
        &api,
        &token,
        &p,
        "auth.test",
        &backend,
        json!({"basicAuth": [{"username": "ann", "password": "ann-password-1"}]}),
    )
    .await;
    // Never echoed: neither the password nor its hash.
    assert_eq!(made["basicAuth"], json!([{"username": "ann"}]));
    assert!(!made.to_string().contains("ann-password-1") && !made.to_string().contains("argon2"), "{made}");
    let shown = api.call("GET", "/api/host/auth.test", Some(&token), None).await;
    assert!(!shown.raw.contains("argon2") && !shown.raw.contains("ann-password-1"), "{}", shown.raw);

    let (status, headers, _) = get(&p, "auth.test", "/", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm=\"auth.test\""));
    let wrong = basic("ann", "not-her-password");
    assert_eq!(get(&p, "auth.test", "/", &[("authorization", &wrong)]).await.0, StatusCode::UNAUTHORIZED);
    let stranger = basic("bob", "ann-password-1");
    assert_eq!(get(&p, "auth.test", "/", &[("authorization", &stranger)]).await.0, StatusCode::UNAUTHORIZED);
    let hits = backend.hits();
    let right = basic("ann", "ann-password-1");
    let (status, _, body) = get(&p, "auth.test", "/", &[("authorization", &right)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(backend.hits(), hits + 1, "only the right password reached the backend");
    // The user kept without a password, another added: ann's password still works.
    let put = p
        .routing_after(api.call(
            "PUT",
            "/api/host/auth.test",
            Some(&token),
            Some(json!({"basicAuth": [{"username": "ann"}, {"username": "bob", "password": "bob-password-1"}]})),
        ))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.raw);
    let bob = basic("bob", "bob-password-1");
    assert_eq!(get(&p, "auth.test", "/", &[("authorization", &bob)]).await.0, StatusCode::OK, "bob let in");
    assert_eq!(get(&p, "auth.test", "/", &[("authorization", &right)]).await.0, StatusCode::OK);
    // A seed-style bcrypt hash, as the seed's later versions stored basic-auth users.
    let seed_hash = bcrypt::hash("old-password-1", 4).unwrap();
    let put = p
        .routing_after(api.call(
            "PUT",
            "/api/host/auth.test",
            Some(&token),
            Some(json!({"basicAuth": [{"username": "old", "hash": seed_hash}]})),
        ))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.raw);
    assert!(!put.raw.contains("$2b$"), "{}", put.raw);
    let old = basic("old", "old-password-1");
    let status = get(&p, "auth.test", "/", &[("authorization", &old)]).await.0;
    assert_eq!(status, StatusCode::OK, "the bcrypt user let in");
    assert_eq!(
        get(&p, "auth.test", "/", &[("authorization", &right)]).await.0,
        StatusCode::UNAUTHORIZED,
        "ann was replaced"
    );
    let short = api
        .call(
            "PUT",
            "/api/host/auth.test",
            Some(&token),
            Some(json!({"basicAuth": [{"username": "cy", "password": "short"}]})),
        )
        .await;
    assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(short.json["keys"][0]["key"], "basicAuth");
    assert!(!short.raw.contains("short\""), "{}", short.raw);
}

#[tokio::test]
async fn password_guessing_is_limited_per_address_and_costly_hashes_are_refused() {
    // Clients behind a trusted proxy, so the test can speak from many addresses.
    let p = portico(&["proxy.trusted_proxies=[\"127.0.0.1\"]"]);
    let (api, token) = admin(&p).await;
    let backend = Backend::start("guarded").await;
    let policy = json!({"basicAuth": [{"username": "ann", "password": "ann-password-1"}]});
    host(&api, &token, &p, "guess.test", &backend, policy).await;
    let guesser = [("x-forwarded-for", "198.51.100.7")];
    let mut statuses = Vec::new();
    for i in 0..12 {
        let guess = basic(if i % 3 == 0 { "nobody" } else { "ann" }, &format!("guess-{i}"));
        let headers = [guesser[0], ("authorization", guess.as_str())];
        let (status, headers, _) = get(&p, "guess.test", "/", &headers).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=61).contains(&wait), "{wait}");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [[401; 10].as_slice(), &[429, 429]].concat(), "ten guesses a minute, then 429");
    // Another client with the right password is not held up.
    let right = basic("ann", "ann-password-1");
    let other = [("x-forwarded-for", "192.0.2.20"), ("authorization", right.as_str())];
    assert_eq!(get(&p, "guess.test", "/", &other).await.0, StatusCode::OK);

    // A hash that would cost a gigabyte or minutes per request cannot be stored.
    for hash in [
        "$argon2id$v=19$m=1048576,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=300000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$2b$16$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
    ] {
        let body = json!({"basicAuth": [{"username": "eve", "hash": hash}]});
        let refused = api.call("PUT", "/api/host/guess.test", Some(&token), Some(body)).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{hash}: {}", refused.raw);
        assert_eq!(refused.json["keys"][0]["key"], "basicAuth");
    }
}

#[tokio::test]
async fn allow_and_deny_by_the_address_a_trusted_proxy_names() {
    let backend = Backend::start("lists").await;
    let policy = json!({"allow": ["192.0.2.0/24"], "deny": ["192.0.2.66"]});
    // Portico behind a proxy on 127.0.0.1, which it trusts.
    let p = portico(&["proxy.trusted_proxies=[\"127.0.0.1\"]"]);
    let (api, token) = admin(&p).await;
    host(&api, &token, &p, "lists.test", &backend, policy.clone()).await;
    let (status, _, body) = get(&p, "lists.test", "/", &[("x-forwarded-for", "192.0.2.10")]).await;
    assert_eq!(status, StatusCode::OK);
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-real-ip"][0], "192.0.2.10", "the target is told the client's address");
    assert_eq!(
        get(&p, "lists.test", "/", &[("x-forwarded-for", "192.0.2.66")]).await.0,
        StatusCode::FORBIDDEN,
        "deny wins"
    );
    assert_eq!(get(&p, "lists.test", "/", &[("x-forwarded-for", "198.51.100.1")]).await.0, StatusCode::FORBIDDEN);
    // A client that forged an allowed address in front of its own: read from the right.
    let forged = get(&p, "lists.test", "/", &[("x-forwarded-for", "192.0.2.10, 198.51.100.1")]).await;
    assert_eq!(forged.0, StatusCode::FORBIDDEN);
    assert_eq!(get(&p, "lists.test", "/", &[]).await.0, StatusCode::FORBIDDEN, "the proxy itself is not allowed");

    // Without trust, the header is the client's own claim and is ignored.
    let q = portico(&[]);
    let (api, token) = admin(&q).await;
    host(&api, &token, &q, "lists.test", &backend, policy).await;
    assert_eq!(get(&q, "lists.test", "/", &[("x-forwarded-for", "192.0.2.10")]).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_unreadable_forwarded_for_never_makes_the_trusted_proxy_the_client() {
    let backend = Backend::start("forged").await;
    let p = portico(&["proxy.trusted_proxies=[\"127.0.0.1\"]"]);
    let (api, token) = admin(&p).await;
    // An allow list for the proxy's own network, a deny list for an outside one.
    host(&api, &token, &p, "inside.test", &backend, json!({"allow": ["127.0.0.0/8"]})).await;
    host(&api, &token, &p, "outside.test", &backend, json!({"deny": ["203.0.113.0/24"]})).await;
    host(&api, &token, &p, "open.test", &backend, json!({})).await;
    for forged in ["garbage, 203.0.113.9", "1.2.3.4:80, 203.0.113.9"] {
        let headers = [("x-forwarded-for", forged)];
        // The client is the address the trusted proxy appended, whatever is left of it.
        assert_eq!(get(&p, "inside.test", "/", &headers).await.0, StatusCode::FORBIDDEN, "{forged}: allow bypassed");
        assert_eq!(get(&p, "outside.test", "/", &headers).await.0, StatusCode::FORBIDDEN, "{forged}: deny bypassed");
        let (status, _, body) = get(&p, "open.test", "/", &headers).await;
        assert_eq!(status, StatusCode::OK);
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["headers"]["x-real-ip"][0], "203.0.113.9", "{forged}");
    }
    // Bytes that are not ASCII (a raw request: no client library sends them).
    let mut stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: inside.test\r\nX-Forwarded-For: \xc3\xa9t\xc3\xa9, 203.0.113.9\r\nConnection: close\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "non-ASCII left of the client: {answer}");
    // Where the trusted proxy's own entry should be there is none to believe: 400.
    for unreadable in ["garbage", "1.2.3.4:80", "203.0.113.9, nonsense"] {
        let headers = [("x-forwarded-for", unreadable)];
        assert_eq!(get(&p, "inside.test", "/", &headers).await.0, StatusCode::BAD_REQUEST, "{unreadable}");
        assert_eq!(get(&p, "open.test", "/", &headers).await.0, StatusCode::BAD_REQUEST, "{unreadable}");
    }
}

/// A PROXY protocol v1 or v2 header, then an HTTP request, on one raw connection.
async fn raw(addr: SocketAddr, header: &[u8], name: &str) -> String {
    raw_from([127, 0, 0, 1], addr, header, name).await
}

/// The same from a chosen loopback address.
async fn raw_from(from: [u8; 4], addr: SocketAddr, header: &[u8], name: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes());
    // One write; a server that closes on seeing the header may reset the connection.
    if stream.write_all(&bytes).await.is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
    answer
}

fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client() {
    let backend = Backend::start("pp").await;
    // Only the balancer on 127.0.0.1 may send the header.
    let p = portico(&["proxy.proxy_protocol=true", "proxy.proxy_protocol_from=[\"127.0.0.1\"]"]);
    let (api, token) = admin(&p).await;
    host(&api, &token, &p, "pp.test", &backend, json!({"allow": ["192.0.2.0/24"]})).await;
    let v1 = raw(p.http, b"PROXY TCP4 192.0.2.5 127.0.0.1 5000 80\r\n", "pp.test").await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert!(v1.contains("\"x-real-ip\":[\"192.0.2.5\"]"), "{v1}");
    let v2 = raw(p.http, &v2_header([192, 0, 2, 9], 5001), "pp.test").await;
    assert!(v2.starts_with("HTTP/1.1 200"), "{v2}");
    assert!(v2.contains("\"x-real-ip\":[\"192.0.2.9\"]"), "{v2}");
    // A v1 header that arrives in two pieces.
    let mut stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    stream.write_all(b"PROXY TCP4 192.0.2.").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"77 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut split = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut split)).await;
    assert!(split.starts_with("HTTP/1.1 200"), "{split}");
    assert!(split.contains("\"x-real-ip\":[\"192.0.2.77\"]"), "{split}");
    let outside = raw(p.http, b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 80\r\n", "pp.test").await;
    assert!(outside.starts_with("HTTP/1.1 403"), "{outside}");
    // A connection without the header is closed unanswered.
    let bare = raw(p.http, b"", "pp.test").await;
    assert_eq!(bare, "", "no PROXY header: nothing is answered");

    // Anyone else may not name a client: its header closes the connection unanswered, and
    // without one it is served as the address it is.
    let forged = raw_from([127, 0, 0, 2], p.http, b"PROXY TCP4 192.0.2.5 127.0.0.1 5000 80\r\n", "pp.test").await;
    assert_eq!(forged, "", "a v1 header from a peer not listed is not believed");
    let forged = raw_from([127, 0, 0, 2], p.http, &v2_header([192, 0, 2, 9], 5001), "pp.test").await;
    assert_eq!(forged, "", "a v2 header from a peer not listed is not believed");
    let direct = raw_from([127, 0, 0, 2], p.http, b"", "pp.test").await;
    assert!(direct.starts_with("HTTP/1.1 403"), "served as 127.0.0.2, outside the allow list: {direct}");
}

/// A small authentication service, as Authelia's: `Cookie: session=good` passes with
/// `Remote-User`; anything else is sent to the login page with where it wanted to go. Also
/// counts the connections it accepted.
async fn auth_service()
-> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<http::request::Parts>, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let (parts, _) = request.into_parts();
                let good = parts.headers.get("cookie").is_some_and(|c| c == "session=good");
                let uri = parts.headers.get("x-forwarded-uri").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let _ = tx.send(parts);
                async move {
                    let response = if good {
                        Response::builder().status(200).header("remote-user", "ann").header("remote-groups", "admins")
                    } else {
                        Response::builder().status(302).header("location", format!("https://login.test/?rd={uri}"))
                    };
                    Ok::<_, Infallible>(response.body(Full::new(Bytes::from_static(b"log in first"))).unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx, connections)
}

#[tokio::test]
async fn forward_auth_lets_through_what_the_service_allows() {
    let backend = Backend::start("app").await;
    let (auth, mut asked, connections) = auth_service().await;
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let policy = json!({"forwardAuth": {"url": format!("http://{auth}/api/verify?x=1"), "copyHeaders": ["Remote-User", "Remote-Groups"]}});
    let made = host(&api, &token, &p, "fa.test", &backend, policy).await;
    assert_eq!(made["forwardAuth"]["copyHeaders"], json!(["Remote-User", "Remote-Groups"]));

    let (status, headers, body) = get(&p, "fa.test", "/private?page=2", &[]).await;
    assert_eq!(status, StatusCode::FOUND, "{body}");
    assert_eq!(headers["location"], "https://login.test/?rd=/private?page=2");
    assert_eq!(body, "log in first", "the service's answer goes back as it was");
    let seen = asked.recv().await.unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/api/verify?x=1");
    assert_eq!(seen.headers["x-forwarded-method"], "GET");
    assert_eq!(seen.headers["x-forwarded-uri"], "/private?page=2");
    assert_eq!(seen.headers["x-forwarded-host"], "fa.test");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let hits = backend.hits();

    let (status, _, body) = get(&p, "fa.test", "/private", &[("cookie", "session=good")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["remote-user"][0], "ann", "copied from the service's answer");
    assert_eq!(echo["headers"]["remote-groups"][0], "admins");
    assert_eq!(backend.hits(), hits + 1);
    let seen = asked.recv().await.unwrap();
    assert_eq!(seen.headers["cookie"], "session=good", "the original headers go to the service");
    // A forged Remote-User from the client does not survive a pass.
    let (_, _, body) = get(&p, "fa.test", "/", &[("cookie", "session=good"), ("remote-user", "mallory")]).await;
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["remote-user"], json!(["ann"]));
    // The service's connection is kept alive between questions: 20 more requests, no more
    // connections (one per request filled the ephemeral ports with TIME_WAIT).
    let before = connections.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get(&p, "fa.test", "/", &[("cookie", "session=good")]).await.0, StatusCode::OK);
    }
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(opened <= 1, "{opened} new connections to the auth service for 20 sequential requests");

    // The service down: 502, nothing reaches the backend.
    let down = portico(&[]);
    let (api, token) = admin(&down).await;
    let gone = json!({"forwardAuth": {"url": "http://127.0.0.1:9/verify"}});
    host(&api, &token, &down, "fa.test", &backend, gone).await;
    let hits = backend.hits();
    assert_eq!(get(&down, "fa.test", "/", &[]).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(backend.hits(), hits);

    // A service answering 101 does not switch the client's connection: 502.
    let switching =
        Backend::raw(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n").await;
    let odd = json!({"forwardAuth": {"url": format!("http://{}/verify", switching.addr)}});
    host(&api, &token, &down, "switch.test", &backend, odd).await;
    let (status, headers, _) = get(&down, "switch.test", "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(!headers.contains_key("upgrade"), "{headers:?}");
    assert_eq!(backend.hits(), hits);
    // Headers that frame the request or belong to one connection cannot be copied.
    let smuggling = json!({"forwardAuth": {"url": "http://127.0.0.1:9/v", "copyHeaders": ["Transfer-Encoding"]}});
    let body =
        json!({"host": "fa2.test", "ip": "127.0.0.1", "targetPort": 80, "forwardAuth": smuggling["forwardAuth"]});
    let refused = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
}

#[tokio::test]
async fn the_rate_limit_holds_under_a_burst() {
    let backend = Backend::start("limited").await;
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    host(&api, &token, &p, "rl.test", &backend, json!({"rateLimit": {"perSecond": 1, "burst": 5}})).await;
    let proxy = Proxy::h1(p.http);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..12 {
        let answer = proxy.get("rl.test", "/").await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = answer.headers.get("retry-after").cloned();
        }
        statuses.push(answer.status.as_u16());
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=6).contains(&passed), "a burst of 5 (and at most one refilled): {statuses:?}");
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses.contains(&429));
    let wait: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // A second later one more goes through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(proxy.get("rl.test", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_command_line_sets_access_policies() {
    let backend = Backend::start("cli").await;
    let p = portico(&[]);
    let port = backend.addr.port().to_string();
    let added = p.host(&[
        "add",
        "cli-access.test",
        "--ip",
        "127.0.0.1",
        "--port",
        &port,
        "--basic-auth",
        "ann:ann-password-1",
        "--allow",
        "127.0.0.0/8",
        "--deny",
        "192.0.2.0/24",
        "--rate-limit",
        "50:100",
        "--forward-auth",
        "http://127.0.0.1:9091/verify",
        "--forward-auth-header",
        "Remote-User",
    ]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let listed = p.host(&["ls", "--json"]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!text.contains("ann-password-1") && !text.contains("argon2"), "{text}");
    let host: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(host["basicAuth"], json!([{"username": "ann"}]));
    assert_eq!(host["allow"], json!(["127.0.0.0/8"]));
    assert_eq!(host["deny"], json!(["192.0.2.0/24"]));
    assert_eq!(host["rateLimit"], json!({"perSecond": 50.0, "burst": 100}));
    assert_eq!(host["forwardAuth"]["copyHeaders"], json!(["Remote-User"]));
    // Refusals name the field.
    let short = p.host(&["update", "cli-access.test", "--basic-auth", "bob:short"]);
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("basicAuth"), "{}", String::from_utf8_lossy(&short.stderr));
    let bad = p.host(&["update", "cli-access.test", "--allow", "10.0.0.0/33"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("allow"));
}
