//! The load harness's WebSocket peers (`bench/run` builds and runs it; loopback only).
//!
//! - `wsbench echo PORT`: a WebSocket echo server on `127.0.0.1:PORT`, the origin.
//! - `wsbench load ADDR HOST CONNECTIONS SECONDS`: opens CONNECTIONS WebSocket connections to
//!   `ADDR` (a proxy) with `Host: HOST`, and on each sends a 6-byte message and waits for its
//!   echo, again and again, for SECONDS. Prints one JSON line: messages echoed, per second,
//!   and the p50 and p99 round trip in milliseconds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo") => echo(args[2].parse().expect("a port")).await,
        Some("load") => {
            let connections: usize = args[4].parse().expect("a connection count");
            let seconds: u64 = args[5].parse().expect("seconds");
            load(&args[2], &args[3], connections, Duration::from_secs(seconds)).await;
        }
        _ => panic!("usage: wsbench echo PORT | wsbench load ADDR HOST CONNECTIONS SECONDS"),
    }
}

async fn echo(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(addr: &str, host: &str, connections: usize, length: Duration) {
    let until = Instant::now() + length;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (addr, host) = (addr.to_owned(), host.to_owned());
        workers.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
            request.headers_mut().insert("host", host.parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await.expect("the upgrade");
            let mut rounds = Vec::new();
            while Instant::now() < until {
                let sent = Instant::now();
                ws.send(Message::text("hello\n")).await.unwrap();
                let echoed = ws.next().await.expect("an echo").unwrap();
                assert_eq!(echoed.into_text().unwrap().as_str(), "hello\n", "the echo is the message");
                rounds.push(sent.elapsed());
            }
            let _ = ws.close(None).await;
            rounds
        }));
    }
    let mut rounds = Vec::new();
    for worker in workers {
        rounds.extend(worker.await.unwrap());
    }
    rounds.sort();
    let at = |q: f64| rounds.get(((rounds.len() as f64) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "{{\"messages\": {}, \"rps\": {:.0}, \"p50\": {:.3}, \"p99\": {:.3}}}",
        rounds.len(),
        rounds.len() as f64 / length.as_secs_f64(),
        at(0.5),
        at(0.99)
    );
}
