//! Routing by every pattern kind, HTTP/1.1 and h2c, forwarded headers, redirects, TLS targets.

use http::StatusCode;
use portico_test_support::Backend;
use portico_test_support::client::{Proxy, empty, read};

use crate::portico;

#[tokio::test]
async fn routes_every_pattern_kind() {
    let names = ["exact", "star", "deep", "mid", "prefix"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Backend::start(name).await);
    }
    let p = portico(&[]);
    p.add_host("app.example.test", backends[0].addr, &[]);
    p.add_host("*.example.test", backends[1].addr, &[]);
    p.add_host("**.deep.test", backends[2].addr, &[]);
    p.add_host("api.*.mid.test", backends[3].addr, &[]);
    p.add_host("payments.**", backends[4].addr, &[]);
    // A literal node that leads nowhere must not hide `*.example.test`.
    p.add_host("a.b.example.test", backends[0].addr, &[]);

    let client = Proxy::h1(p.http);
    let cases = [
        ("app.example.test", Some("exact")),
        ("APP.Example.Test", Some("exact")),
        ("app.example.test.", Some("exact")),
        ("www.example.test", Some("star")),
        ("b.example.test", Some("star")),
        ("x.y.deep.test", Some("deep")),
        ("z.deep.test", Some("deep")),
        ("api.v1.mid.test", Some("mid")),
        ("payments.shop.example.org", Some("prefix")),
        ("example.test", None),
        ("deep.test", None),
        ("web.v1.mid.test", None),
        ("x.www.example.test", None),
    ];
    for (host, want) in cases {
        let answer = client.get(host, "/hello?x=1").await;
        match want {
            Some(backend) => {
                assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.text());
                let echo = answer.json();
                assert_eq!(echo["backend"], backend, "{host}");
                assert_eq!(echo["uri"], "/hello?x=1", "{host}");
            }
            None => {
                assert_eq!(answer.status, StatusCode::NOT_FOUND, "{host}");
                let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
                assert!(answer.text().contains(&id), "the 404 page names the request id");
            }
        }
    }
}

#[tokio::test]
async fn catch_all_takes_what_nothing_else_does() {
    let (specific, fallback) = (Backend::start("specific").await, Backend::start("fallback").await);
    let p = portico(&[]);
    p.add_host("**", fallback.addr, &[]);
    p.add_host("app.example.test", specific.addr, &[]);
    let client = Proxy::h1(p.http);
    assert_eq!(client.get("app.example.test", "/").await.json()["backend"], "specific");
    assert_eq!(client.get("anything.else", "/").await.json()["backend"], "fallback");
    assert_eq!(client.get("localhost", "/").await.json()["backend"], "fallback");
}

#[tokio::test]
async fn h2c_requests_are_routed_by_authority() {
    let backend = Backend::start("h2").await;
    let p = portico(&[]);
    p.add_host("*.example.test", backend.addr, &[]);
    let client = Proxy::h2c(p.http);
    for _ in 0..3 {
        let answer = client.get("www.example.test", "/h2?q=2").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let echo = answer.json();
        assert_eq!(echo["uri"], "/h2?q=2");
        // Forwarded to the target as HTTP/1.1, with a Host header made from :authority.
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(echo["headers"]["host"][0], format!("www.example.test:{}", p.http.port()));
    }
    assert_eq!(client.get("nothing.test", "/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forwarded_headers_and_hop_by_hop() {
    let backend = Backend::start("echo").await;
    let p = portico(&[]);
    p.add_host("app.example.test", backend.addr, &[]);
    let uri = format!("http://{}/headers", p.http);
    let request = http::Request::get(uri)
        .header("host", "App.Example.Test:8080")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(portico_test_support::client::FixedAddr(p.http));
    let answer = read(client.request(request).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let headers = &answer.json()["headers"];
    assert_eq!(headers["host"][0], "App.Example.Test:8080", "the original Host is kept");
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-real-ip"][0], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["x-forwarded-host"][0], "App.Example.Test:8080");
    assert_eq!(headers["x-end-to-end"][0], "kept");
    assert!(headers.get("x-hop").is_none(), "a header named in Connection was forwarded");
    assert!(headers.get("keep-alive").is_none(), "Keep-Alive was forwarded");
    let id = answer.headers["x-request-id"].to_str().unwrap();
    assert_eq!(headers["x-request-id"][0], id, "the target sees the request id the client gets");
    // The backend's own hop-by-hop header does not reach the client.
    assert!(answer.headers.get("keep-alive").is_none());
}

#[tokio::test]
async fn forcessl_redirects_keeping_path_and_query() {
    let backend = Backend::start("secure").await;
    let p = portico(&[]);
    p.add_host("secure.example.test", backend.addr, &["--forcessl"]);
    p.add_host("plain.example.test", backend.addr, &[]);
    let client = Proxy::h1(p.http);
    let answer = client.get("secure.example.test", "/a/b?c=d&e").await;
    assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT);
    // Redirects name the HTTPS listener's actual port (the harness binds port 0).
    let location = format!("https://secure.example.test:{}/a/b?c=d&e", p.https.port());
    assert_eq!(answer.headers["location"], location.as_str());
    assert_eq!(client.get("plain.example.test", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn targetssl_speaks_tls_to_the_target() {
    let backend = Backend::tls("tls-backend").await;
    let p = portico(&[]);
    p.add_host("tls.example.test", backend.addr, &["--targetssl"]);
    p.add_host("plain.example.test", backend.addr, &[]);
    let client = Proxy::h1(p.http);
    let answer = client.get("tls.example.test", "/over-tls").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["backend"], "tls-backend");
    // Plain HTTP to a TLS port fails as a bad gateway, not a hang or a crash.
    assert_eq!(client.get("plain.example.test", "/").await.status, StatusCode::BAD_GATEWAY);
}

/// The target gets the host Portico routed by as `Host`, never another one the client slipped
/// in beside it; a request that names two hosts is refused.
#[tokio::test]
async fn the_routed_authority_is_the_host_the_target_sees() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = Backend::start("public").await;
    let p = portico(&[]);
    p.add_host("public.test", backend.addr, &[]);

    async fn send(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }
    // HTTP/1 absolute form: routed by its authority (RFC 9112 §3.2.2), and so forwarded.
    let answer =
        send(p.http, "GET http://public.test/x HTTP/1.1\r\nHost: internal.corp\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echo: serde_json::Value = serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(echo["headers"]["host"], serde_json::json!(["public.test"]));
    // Two Host headers: 400, and nothing is forwarded.
    let hits = backend.hits();
    let answer =
        send(p.http, "GET / HTTP/1.1\r\nHost: public.test\r\nHost: internal.corp\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(backend.hits(), hits);

    // HTTP/2: a Host that differs from :authority is malformed (RFC 9113 §8.3.1).
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("http://public.test/").header("host", "internal.corp").body(empty()).unwrap();
    let answer = read(sender.send_request(request).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(backend.hits(), hits);
    let request = http::Request::get("http://public.test/").body(empty()).unwrap();
    let answer = read(sender.send_request(request).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["headers"]["host"], serde_json::json!(["public.test"]));
}

/// An HTTP/1.0 target does not make the client's HTTP/1.1 connection an HTTP/1.0 one.
#[tokio::test]
async fn an_http10_target_answers_the_client_in_http11_with_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let old = Backend::raw(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let p = portico(&[]);
    p.add_host("old.test", old.addr, &[]);
    let mut stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    for round in 0..2 {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: old.test\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"\r\n\r\nok") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "round {round}: the connection closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "round {round}: {answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    }
}
