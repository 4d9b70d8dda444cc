//! Connections that never send a request, idle HTTP/1 connections parked, idle HTTP/2
//! connections, and the connection cap.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::{Backend, Portico, eventually, tls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{BIN, METRICS, portico, raw_sample};

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

/// One HTTP/1.1 response read whole (its head and a `Content-Length` body), as text.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.expect("a response").unwrap();
        assert!(n > 0, "the connection closed after {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let length = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
            })
            .expect("a Content-Length");
        if data.len() >= end + 4 + length {
            return text;
        }
    }
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// A keep-alive connection left idle is parked (hyper's state and buffers dropped, the socket
/// watched alone) and serves its next request on the same connection, kept alive; a request
/// head begun before the connection was parked is finished after it.
#[tokio::test]
async fn idle_keep_alive_connections_are_parked_and_serve_their_next_request() {
    let backend = Backend::start("parked").await;
    let p = portico(&[METRICS]);
    p.add_host("parked.test", backend.addr, &[]);
    let mut whole = TcpStream::connect(p.http).await.unwrap();
    whole.write_all(get("/one", "parked.test").as_bytes()).await.unwrap();
    let mut begun = TcpStream::connect(p.http).await.unwrap();
    let first_and_a_half = format!("{}GET /two HTTP/1.1\r\nHo", get("/one", "parked.test"));
    begun.write_all(first_and_a_half.as_bytes()).await.unwrap();
    for stream in [&mut whole, &mut begun] {
        let answer = read_response(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"uri\":\"/one\""), "{answer}");
    }
    eventually(Duration::from_secs(10), "both connections parked", || async {
        (raw_sample(&p, "portico_connections_parked").await == 2.0).then_some(())
    })
    .await;
    whole.write_all(get("/two", "parked.test").as_bytes()).await.unwrap();
    begun.write_all(b"st: parked.test\r\n\r\n").await.unwrap();
    for stream in [&mut whole, &mut begun] {
        let answer = read_response(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"uri\":\"/two\""), "{answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    }
    assert_eq!(backend.hits(), 4);
}

/// Parked connections hold a few KiB each, not hyper's buffers (16 KiB and the allocator's
/// share): RSS with 1,000 idle keep-alive connections, each after one request, plain HTTP and
/// HTTP over TLS. (`bench/run` measures the figure itself, with 10,000 in a release build.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_a_few_kib_each() {
    const CONNECTIONS: usize = 1000;
    let backend = Backend::start("idle").await;
    let p = portico(&[METRICS]);
    p.add_host("idle.test", backend.addr, &[]);
    let tls_config = tls::client_config(None, &["http/1.1"]);
    let parked = |n: usize| {
        let p = &p;
        eventually(Duration::from_secs(30), "every connection parked", move || async move {
            (raw_sample(p, "portico_connections_parked").await == n as f64).then_some(())
        })
    };
    // A first round grows the allocator's pools, and is closed.
    let plain_connect = || async { TcpStream::connect(p.http).await.unwrap() };
    drop(opened(100, plain_connect).await);
    parked(0).await;
    // RSS moves by a few MiB as the allocator returns freed pages (the buffers of connections
    // not yet parked, more of them at once on a slow machine): the bounds leave room for that
    // and are still half of what a connection holding hyper's buffers costs (35 KiB).
    let before = p.rss();
    let mut plain = opened(CONNECTIONS, plain_connect).await;
    parked(CONNECTIONS).await;
    let per_plain = p.rss().saturating_sub(before) / CONNECTIONS as u64;

    let tls_connect = || {
        let config = tls_config.clone();
        async move { tls::connect(p.https, "idle.test", config).await.unwrap() }
    };
    let before = p.rss();
    let mut secure = opened(CONNECTIONS, tls_connect).await;
    parked(2 * CONNECTIONS).await;
    let per_tls = p.rss().saturating_sub(before) / CONNECTIONS as u64;
    eprintln!("idle connection: {per_plain} bytes plain, {per_tls} bytes over TLS");
    assert!(per_plain <= 16 * 1024, "{per_plain} bytes per idle plain connection");
    assert!(per_tls <= 16 * 1024, "{per_tls} bytes per idle TLS connection");
    // Parked, they still answer.
    for stream in plain.iter_mut().take(3) {
        stream.write_all(get("/", "idle.test").as_bytes()).await.unwrap();
        assert!(read_response(stream).await.starts_with("HTTP/1.1 200"));
    }
    for stream in secure.iter_mut().take(3) {
        stream.write_all(get("/", "idle.test").as_bytes()).await.unwrap();
        assert!(read_response(stream).await.starts_with("HTTP/1.1 200"));
    }
}

/// `n` connections made by `connect` to the host `idle.test`, each after one request answered.
async fn opened<S, F, Fut>(n: usize, mut connect: F) -> Vec<S>
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = connect().await;
        stream.write_all(get("/", "idle.test").as_bytes()).await.unwrap();
        read_response(&mut stream).await;
        streams.push(stream);
    }
    streams
}
