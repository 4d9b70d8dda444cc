//! Bodies are streamed both ways: 1 GiB each way with bounded proxy memory.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use portico_test_support::backend::zeros;
use portico_test_support::client::{Proxy, empty, read};
use portico_test_support::{Backend, eventually};

use crate::portico;

const GIB: u64 = 1 << 30;
/// What the proxy's memory may grow by while 1 GiB goes through it: far below the transfer
/// size, so it does not buffer bodies. (Measured from the memory it had before, not as a
/// total: the binary's own pages are not what this is about.)
const MEMORY_BOUND: u64 = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams() {
    let backend = Backend::start("big").await;
    let p = portico(&["log.access_log=true"]);
    p.add_host("big.test", backend.addr, &[]);
    // Warm: a first request sets up what every request uses.
    let warm = Proxy::h1(p.http).send("GET", "big.test", "/download/1024", empty()).await;
    assert_eq!(warm.status(), StatusCode::OK);
    let _ = warm.into_body().collect().await;
    let before = p.rss();
    let response = Proxy::h1(p.http).send("GET", "big.test", &format!("/download/{GIB}"), empty()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, GIB);
    let peak = p.peak_rss();
    let grown = peak.saturating_sub(before);
    eprintln!("proxy RSS {} MiB before, peak {} MiB after 1 GiB: grew {} MiB", before >> 20, peak >> 20, grown >> 20);
    assert!(grown < MEMORY_BOUND, "proxy memory grew by {} MiB while streaming", grown >> 20);
    // The access log counts what was sent.
    let log = portico_test_support::eventually(std::time::Duration::from_secs(5), "access log line", || {
        let entries = p.access_log();
        let path = format!("/download/{GIB}");
        async move { entries.into_iter().find(|e| e["host"] == "big.test" && e["path"] == path.as_str()) }
    })
    .await;
    assert_eq!(log["bytes"], GIB);
    assert_eq!(log["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams() {
    let backend = Backend::start("sink").await;
    let p = portico(&[]);
    p.add_host("sink.test", backend.addr, &[]);
    let warm = read(Proxy::h1(p.http).send("POST", "sink.test", "/upload", zeros(1024)).await).await;
    assert_eq!(warm.text(), "1024");
    let before = p.rss();
    let answer = read(Proxy::h1(p.http).send("POST", "sink.test", "/upload", zeros(GIB)).await).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), GIB.to_string());
    let peak = p.peak_rss();
    let grown = peak.saturating_sub(before);
    eprintln!("proxy RSS {} MiB before, peak {} MiB after 1 GiB: grew {} MiB", before >> 20, peak >> 20, grown >> 20);
    assert!(grown < MEMORY_BOUND, "proxy memory grew by {} MiB while streaming", grown >> 20);
}

/// A client that takes the start of a response and then stops reading is cut off after
/// `proxy.send_timeout`, which releases the target's side too (nginx's `send_timeout`).
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = Backend::start("big").await;
    let p = portico(&["proxy.send_timeout=\"1s\""]);
    p.add_host("big.test", backend.addr, &[]);
    let mut stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    stream.write_all(format!("GET /download/{GIB} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let first = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..first]).starts_with("HTTP/1.1 200"));
    assert_eq!(backend.sending(), 1);
    // The client reads nothing more; the proxy gives up on it and drops the target's response.
    eventually(Duration::from_secs(30), "the target's response to be dropped", || async {
        (backend.sending() == 0).then_some(())
    })
    .await;
    // What the client then reads is what was already on its way, and the end.
    let mut received = first as u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n as u64,
        }
    }
    assert!(received < GIB / 4, "the response went on: {received} bytes");
}
