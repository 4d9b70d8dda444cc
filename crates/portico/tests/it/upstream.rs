//! Connections to targets: kept open and reused between requests, closed when idle or
//! beyond the number kept per target, and a target that closes them costs no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::Proxy;
use portico_test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::portico;

/// A target that counts the connections it accepts and those the proxy closed, and answers
/// every `GET` with `ok` after `delay`, and every `POST` at once with `413` without reading
/// its body (and, when `one_per_connection`, closes the connection
/// after the first answer without saying so, as a target with a short keep-alive timeout
/// does).
struct Counting {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections that ended (the proxy closed them, or this target did).
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start(one_per_connection: bool, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counters = (accepted.clone(), ended.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counters.0.fetch_add(1, Ordering::SeqCst);
                let ended = counters.1.clone();
                tokio::spawn(async move {
                    serve(stream, one_per_connection, delay).await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, accepted, ended, task }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers request heads (no bodies) until the other side closes.
async fn serve(mut stream: TcpStream, one_per_connection: bool, delay: Duration) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let post = buf.starts_with(b"POST");
            buf.drain(..end + 4);
            let answer: &[u8] = if post {
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"
            } else {
                tokio::time::sleep(delay).await;
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
            if one_per_connection {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn target_connections_are_reused_and_closed_when_idle() {
    let target = Counting::start(false, Duration::ZERO).await;
    let p = portico(&["proxy.upstream_idle_timeout=\"1s\""]);
    p.add_host("pooled.test", target.addr, &[]);
    let client = Proxy::h1(p.http);
    for i in 0..20 {
        let answer = client.get("pooled.test", &format!("/{i}")).await;
        assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "ok"), "request {i}");
    }
    let last = Instant::now();
    assert_eq!(target.accepted.load(Ordering::SeqCst), 1, "twenty requests one after another share one connection");
    // Closed once idle for a second (the pool is swept twice per idle timeout).
    eventually(Duration::from_secs(5), "the idle target connection is closed", || async {
        (target.ended.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(last.elapsed() >= Duration::from_secs(1), "closed before it was idle for the timeout");
    // A request after that opens a new one.
    assert_eq!(client.get("pooled.test", "/again").await.status, StatusCode::OK);
    assert_eq!(target.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_target_that_closes_kept_connections_costs_no_request() {
    let target = Counting::start(true, Duration::ZERO).await;
    let p = portico(&[]);
    p.add_host("closing.test", target.addr, &[]);
    let client = Proxy::h1(p.http);
    for i in 0..30 {
        let answer = client.get("closing.test", &format!("/{i}")).await;
        assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "ok"), "request {i}");
        // The target has closed the connection the proxy kept: the next request finds it
        // closed, or fails to send on it and goes on a new one.
        eventually(Duration::from_secs(5), "the target closed its connection", || async {
            (target.ended.load(Ordering::SeqCst) == i + 1).then_some(())
        })
        .await;
    }
    assert_eq!(target.accepted.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn after_a_burst_only_so_many_target_connections_stay_open() {
    let target = Counting::start(false, Duration::from_millis(1500)).await;
    let p = portico(&[]);
    p.add_host("burst.test", target.addr, &[]);
    let burst = 300;
    let requests = (0..burst).map(|i| {
        let client = Proxy::h1(p.http);
        async move { client.get("burst.test", &format!("/{i}")).await.status }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    // Each request held its connection for 1.5 s: nearly all were in flight together.
    let kept = portico_proxy::pool::MAX_IDLE_PER_TARGET;
    let opened = target.accepted.load(Ordering::SeqCst);
    assert!(opened > kept, "{opened} connections in flight together, not more than the {kept} kept");
    // Those beyond the number kept are closed now, not after the 90 s idle timeout.
    eventually(Duration::from_secs(5), "connections beyond those kept are closed", || async {
        (target.ended.load(Ordering::SeqCst) >= opened - kept).then_some(())
    })
    .await;
    assert_eq!(opened - target.ended.load(Ordering::SeqCst), kept, "the kept ones stay open");
}

#[tokio::test]
async fn a_connection_still_sending_an_early_answered_upload_is_not_waited_for() {
    let target = Counting::start(false, Duration::ZERO).await;
    let p = portico(&["proxy.upstream_timeout=\"3s\""]);
    p.add_host("early.test", target.addr, &[]);
    // An upload the target refuses before reading it; the client goes on sending, slowly.
    let mut upload = TcpStream::connect(p.http).await.unwrap();
    upload.write_all(b"POST /up HTTP/1.1\r\nHost: early.test\r\nContent-Length: 1000000\r\n\r\nxxxx").await.unwrap();
    let mut head = [0u8; 12];
    upload.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // The target connection is still carrying that body; the next request takes another.
    let answer = Proxy::h1(p.http).get("early.test", "/next").await;
    assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(target.accepted.load(Ordering::SeqCst), 2);
    drop(upload);
}
