//! The load harness's HTTP/3 client (`bench/run` builds and runs it; loopback only): h2load
//! from Debian speaks no HTTP/3, so this one is made of the libraries Portico serves HTTP/3
//! with on the other side (quinn, h3), as h2load is of nghttp2.
//!
//! `h3bench ADDR HOST PATH CONNECTIONS STREAMS SECONDS`: opens CONNECTIONS QUIC connections
//! to `ADDR` with SNI and `:authority` HOST (the certificate is not checked), and on each
//! keeps STREAMS requests for PATH in flight, one after the other, for SECONDS. Prints one
//! JSON line: requests answered 200, per second, the p50 and p99 time per request in
//! milliseconds, and any other answers or failures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, host, path, connections, streams, seconds] = args.as_slice() else {
        panic!("usage: h3bench ADDR HOST PATH CONNECTIONS STREAMS SECONDS");
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port");
    let (connections, streams): (usize, usize) = (connections.parse().unwrap(), streams.parse().unwrap());
    let until = Instant::now() + Duration::from_secs(seconds.parse().unwrap());

    let mut tls = portico_proxy::forward::insecure::client_config();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC client configuration");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));

    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let connection = endpoint.connect(addr, host).unwrap().await.expect("a QUIC connection");
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection)).await.expect("HTTP/3");
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        for _ in 0..streams {
            let (mut sender, host, path) = (sender.clone(), host.clone(), path.clone());
            workers.push(tokio::spawn(async move {
                let (mut times, mut other) = (Vec::new(), 0u64);
                while Instant::now() < until {
                    let asked = Instant::now();
                    let request = http::Request::get(format!("https://{host}{path}")).body(()).unwrap();
                    let Ok(mut stream) = sender.send_request(request).await else {
                        other += 1;
                        break;
                    };
                    let _ = stream.finish().await;
                    let Ok(response) = stream.recv_response().await else {
                        other += 1;
                        break;
                    };
                    while let Ok(Some(mut chunk)) = stream.recv_data().await {
                        chunk.advance(chunk.remaining());
                    }
                    if response.status() == 200 {
                        times.push(asked.elapsed());
                    } else {
                        other += 1;
                    }
                }
                (times, other)
            }));
        }
    }
    let (mut times, mut other) = (Vec::new(), 0);
    for worker in workers {
        let (t, o) = worker.await.unwrap();
        times.extend(t);
        other += o;
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    let at = |q: f64| times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "{{\"requests\": {}, \"rps\": {:.1}, \"p50\": {:.3}, \"p99\": {:.3}, \"other\": {other}}}",
        times.len(),
        times.len() as f64 / elapsed,
        ms(at(0.5)),
        ms(at(0.99))
    );
    endpoint.close(0u32.into(), b"done");
}
