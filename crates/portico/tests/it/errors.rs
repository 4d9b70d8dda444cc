//! What the proxy answers itself: 400, 431, 502, 504, and the header-read timeout.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::Backend;
use portico_test_support::client::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::portico;

/// Sends raw bytes and reads the status code of the answer (0 if the connection closed).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn invalid_or_missing_host_is_400() {
    let p = portico(&[]);
    assert_eq!(raw(p.http, b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n").await, 400);
    assert_eq!(raw(p.http, b"GET / HTTP/1.1\r\nHost: exa_mple!.test\r\n\r\n").await, 400);
    assert_eq!(raw(p.http, b"GET / HTTP/1.1\r\nHost: app.test:99999\r\n\r\n").await, 400);
    assert_eq!(raw(p.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await, 400);
    let long = format!("GET / HTTP/1.1\r\nHost: {}.test\r\n\r\n", "a".repeat(64));
    assert_eq!(raw(p.http, long.as_bytes()).await, 400);
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let backend = Backend::start("b").await;
    let p = portico(&["proxy.max_header_bytes=16384"]);
    p.add_host("app.example.test", backend.addr, &[]);
    let small = "GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: x\r\nConnection: close\r\n\r\n".to_string();
    assert_eq!(raw(p.http, small.as_bytes()).await, 200);
    let big = format!("GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Pad: {}\r\n\r\n", "x".repeat(20_000));
    assert_eq!(raw(p.http, big.as_bytes()).await, 431);
}

#[tokio::test]
async fn refused_target_is_502_and_silent_target_is_504() {
    // Bound but not listening, so no other test's server can take the port meanwhile.
    let refusing = portico_test_support::backend::Refusing::new();
    let closed = refusing.addr;
    let silent = Backend::silent().await;
    let p = portico(&["proxy.upstream_timeout=\"1s\""]);
    p.add_host("refused.test", closed, &[]);
    p.add_host("silent.test", silent.addr, &[]);
    let client = Proxy::h1(p.http);
    let answer = client.get("refused.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.text().contains(answer.headers["x-request-id"].to_str().unwrap()));
    let answer = client.get("silent.test", "/").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    // The error is logged with the target, and internals stay out of the page.
    assert!(!answer.text().contains("os error"));
    let logged = p.logs();
    assert!(
        logged
            .iter()
            .any(|l| l["fields"]["message"] == "request failed" && l["fields"]["upstream"] == closed.to_string()),
        "{logged:?}"
    );
}

#[tokio::test]
async fn the_target_answer_deadline_holds_on_http1_and_http2_whatever_the_other_timeouts() {
    let silent = Backend::silent().await;
    let slow = Backend::start("slow").await;
    // An answer allowed longer than the wait for a request head, and one allowed less than
    // it: the deadline is the connection watchdog's for HTTP/1 (it looks at whichever comes
    // first), a timer's for HTTP/2 streams.
    for (upstream, header_read, sleep) in [("1s", "30s", "/sleep/600"), ("2s", "1s", "/sleep/1500")] {
        let p = portico(&[
            &format!("proxy.upstream_timeout=\"{upstream}\""),
            &format!("proxy.header_read_timeout=\"{header_read}\""),
        ]);
        p.add_host("silent.test", silent.addr, &[]);
        p.add_host("slow.test", slow.addr, &[]);
        let allowed = Duration::from_secs(upstream[..1].parse().unwrap());
        for client in [Proxy::h1(p.http), Proxy::h2c(p.http)] {
            let asked = std::time::Instant::now();
            let answer = client.get("silent.test", "/").await;
            let waited = asked.elapsed();
            assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "upstream {upstream}, header read {header_read}");
            assert!(
                waited >= allowed && waited < allowed + Duration::from_secs(2),
                "504 after {waited:?}: the deadline is {upstream}"
            );
            // The same connection goes on: an answer inside the deadline (longer than the
            // head wait in the second case) is the target's.
            let answer = client.get("slow.test", sleep).await;
            assert_eq!(answer.status, StatusCode::OK, "upstream {upstream}, header read {header_read}");
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let p = portico(&["proxy.header_read_timeout=\"1s\""]);
    let mut stream = TcpStream::connect(p.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: slow").await.unwrap();
    // A slowloris client never finishes its headers; the proxy closes the connection.
    assert!(closed_within(&mut stream, Duration::from_secs(10)).await, "the connection stayed open");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let backend = Backend::start("b").await;
    let p = portico(&["proxy.header_read_timeout=\"1s\""]);
    p.add_host("idle.test", backend.addr, &[]);
    let mut stream = TcpStream::connect(p.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The response is complete and the connection is kept alive; left idle, it is closed.
    assert!(closed_within(&mut stream, Duration::from_secs(10)).await, "the idle connection stayed open");
}

/// Reads (and drops) whatever arrives until the server closes the connection.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(deadline, read_to_end).await.is_ok()
}

/// Sends raw bytes and reads the whole answer (the connection is closed by the request's
/// `Connection: close`, or by the proxy).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    read.expect("the proxy answered and closed").unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn requests_about_the_proxy_itself_are_answered_here_and_never_forwarded() {
    let backend = Backend::start("b").await;
    let p = portico(&[]);
    p.add_host("app.test", backend.addr, &[]);
    p.add_host("secure.test", backend.addr, &["--forcessl"]);

    // `OPTIONS *` has no path to forward (it used to reach `ip:port*`, on port 80).
    for host in ["app.test", "secure.test"] {
        let answer =
            exchange(p.http, format!("OPTIONS * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nallow: get, head, post"), "{answer}");
    }
    // CONNECT: Portico is no forward proxy.
    assert_eq!(raw(p.http, b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n").await, 405);
    assert_eq!(backend.hits(), 0, "nothing reached the target");

    // A malformed chunked body is the client's fault: 400, not a 502 blamed on the target.
    let bad_chunk =
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    assert_eq!(raw(p.http, bad_chunk).await, 400);
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled() {
    let backend = Backend::start("b").await;
    // A target that switches protocols whatever it is asked.
    let switching =
        Backend::raw(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n").await;
    let p = portico(&[]);
    p.add_host("app.test", backend.addr, &[]);
    p.add_host("switch.test", switching.addr, &[]);

    // An h2c upgrade goes to the target as a plain request, without its Upgrade header.
    let h2c = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let mut stream = TcpStream::connect(p.http).await.unwrap();
    stream.write_all(h2c.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(echo["headers"].get("upgrade").is_none(), "{echo}");
    assert!(echo["headers"].get("http2-settings").is_none(), "{echo}");

    // A target that switches protocols unasked is not tunnelled to: 502.
    let plain = "GET / HTTP/1.1\r\nHost: switch.test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(p.http, plain.as_bytes()).await, 502);
    let asked = "GET / HTTP/1.1\r\nHost: switch.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    assert_eq!(raw(p.http, asked.as_bytes()).await, 502);
}
