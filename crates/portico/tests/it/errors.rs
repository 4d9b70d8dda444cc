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
