//! Connections that never send a request, idle HTTP/2 connections, and the connection cap.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::{Backend, Portico, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{BIN, portico};

/// Silent connections to every listener, more than the fd limit allows at once: each is
/// closed at the header-read deadline, and requests to the proxy and the API keep being
/// answered meanwhile.
#[tokio::test]
async fn silent_connections_are_closed_and_never_lock_out_real_clients() {
    let backend = Backend::start("live").await;
    // 1,024 open files, a common default: the proxy derives its connection cap from it.
    let p = Portico::start_with_fd_limit(BIN, 1024, &["proxy.header_read_timeout=\"3s\""]);
    p.add_host("live.test", backend.addr, &[]);

    let flood = Instant::now();
    // A TLS connection that goes quiet after its handshake, and a partial HTTP/2 preface.
    let tls_quiet = tls::connect(p.https, "live.test", tls::client_config(None, &["h2"])).await.unwrap();
    let mut preface = TcpStream::connect(p.http).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut silent = Vec::new();
    for i in 0..1100 {
        let addr = match i % 10 {
            0 => p.api,
            1 | 2 => p.https,
            _ => p.http,
        };
        silent.push(TcpStream::connect(addr).await.unwrap());
    }

    let api = ApiClient::new(p.api);
    for round in 0..5 {
        let client = Proxy::h1(p.http);
        let probe = tokio::time::timeout(Duration::from_secs(30), client.get("live.test", "/probe"));
        let answer = probe.await.unwrap_or_else(|_| panic!("probe {round} was not answered"));
        assert_eq!(answer.status, StatusCode::OK, "probe {round}: {}", answer.text());
        let health = tokio::time::timeout(Duration::from_secs(30), api.call("GET", "/healthz", None, None));
        assert_eq!(health.await.expect("/healthz answered").status, StatusCode::OK);
    }

    // Every silent connection is closed: at the deadline, or earlier to make room at the cap.
    let deadline = tokio::time::Instant::from_std(flood + Duration::from_secs(3 + 30));
    let mut open = 0;
    for mut stream in silent.into_iter().chain([preface]) {
        if tokio::time::timeout_at(deadline, read_to_end(&mut stream)).await.is_err() {
            open += 1;
        }
    }
    let (mut tls_tcp, _) = tls_quiet.into_inner();
    // (The TLS record layer is gone; what is left is the TCP connection under it.)
    assert!(
        tokio::time::timeout_at(deadline, read_to_end(&mut tls_tcp)).await.is_ok(),
        "the quiet TLS connection stayed"
    );
    assert_eq!(open, 0, "silent connections still open after the deadline");

    let reached = p.logs().iter().any(|l| {
        l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("connection limit reached"))
            && l["fields"]["key"] == "proxy.max_connections"
    });
    assert!(reached, "the cap was reached and said so");
    assert_eq!(Proxy::h1(p.http).get("live.test", "/after").await.status, StatusCode::OK);
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let backend = Backend::start("b").await;
    let p = portico(&["proxy.idle_timeout=\"1s\""]);
    p.add_host("h2idle.test", backend.addr, &[]);
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(connection);
    let request = Request::get("http://h2idle.test/").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    // Left idle, the proxy sends GOAWAY and closes it, which ends the client's connection.
    let ended = tokio::time::timeout(Duration::from_secs(15), driver).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
}

/// Reads until the peer closes the connection.
async fn read_to_end(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// The soft open-file limit is raised to the hard one at start, and the connection cap is
/// derived from it unless configured.
#[tokio::test]
async fn the_fd_limit_is_raised_and_sets_the_default_cap() {
    let limits = |p: &Portico| {
        let line = p.logs().into_iter().find(|l| l["fields"]["message"] == "connection limits").expect("logged");
        (line["fields"]["fd_limit"].as_u64().unwrap(), line["fields"]["max_connections"].as_u64().unwrap())
    };
    let dir = tempfile::TempDir::new().unwrap();
    let p = Portico::start_limited(BIN, dir, &["--nofile=256:4096"], &[]);
    assert_eq!(limits(&p), (4096, (4096 - 512) / 2));
    let p = Portico::start_limited(
        BIN,
        tempfile::TempDir::new().unwrap(),
        &["--nofile=256:4096"],
        &["proxy.max_connections=77"],
    );
    assert_eq!(limits(&p).1, 77);
}
