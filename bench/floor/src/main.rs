//! The load harness's floor contestant (`bench/run` builds and runs it; loopback only):
//! what a proxy costs when it is nothing but Portico's libraries. Every request goes to one
//! origin over HTTP/1.1 connections (hyper's client connections in the least pool there is:
//! a list of idle ones, a new one when none is ready); a request for the WebSocket host is
//! tunnelled to the WebSocket origin. HTTP/1.1 and HTTP/2 on one socket (`auto`), TLS with rustls and
//! aws-lc-rs (AES-128-GCM first, stateless tickets, as Portico), mimalloc, one worker thread.
//! No routing, no policies, no metrics, no timeouts: the distance from it to Portico is
//! Portico's own cost.
//!
//! `portico-floor HTTP_PORT HTTPS_PORT ORIGIN_PORT WS_HOST WS_PORT CERT_PEM KEY_PEM`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;

/// What every request shares.
struct Floor {
    origin: SocketAddr,
    ws_host: String,
    ws_origin: SocketAddr,
    /// Connections to the origin, ready or about to be (a response's body still going).
    pool: std::sync::Mutex<Vec<SendRequest<Incoming>>>,
}

/// Connections the pool keeps at most.
const POOL: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, http, https, origin, ws_host, ws_port, cert, key] = &args[..] else {
        eprintln!("usage: portico-floor HTTP_PORT HTTPS_PORT ORIGIN_PORT WS_HOST WS_PORT CERT_PEM KEY_PEM");
        std::process::exit(2);
    };
    let port = |text: &str| -> u16 { text.parse().unwrap_or_else(|_| panic!("{text} is not a port")) };
    let floor = Arc::new(Floor {
        origin: SocketAddr::from(([127, 0, 0, 1], port(origin))),
        pool: std::sync::Mutex::default(),
        ws_host: ws_host.clone(),
        ws_origin: SocketAddr::from(([127, 0, 0, 1], port(ws_port))),
    });
    let tls = tls_config(cert, key);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let plain = TcpListener::bind(("127.0.0.1", port(http))).await.expect("the HTTP port");
        let secure = TcpListener::bind(("127.0.0.1", port(https))).await.expect("the HTTPS port");
        tokio::spawn(serve(plain, None, floor.clone()));
        serve(secure, Some(tokio_rustls::TlsAcceptor::from(tls)), floor).await;
    });
}

/// Portico's TLS choices: aws-lc-rs with AES-128-GCM first, the server's order, stateless
/// tickets, ALPN `h2` and `http/1.1`.
fn tls_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("the certificate").map(|c| c.expect("a certificate")).collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("the key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the certificate and key");
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("a ticketer");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, floor: Arc<Floor>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (builder, floor, tls) = (builder.clone(), floor.clone(), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| forward(floor.clone(), request));
            match tls {
                None => {
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                }
                Some(tls) => {
                    let Ok(stream) = tls.accept(stream).await else { return };
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn forward(floor: Arc<Floor>, mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let host = request.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if host.split(':').next() == Some(floor.ws_host.as_str()) {
        return Ok(tunnel(&floor, request).await.unwrap_or_else(|| status(StatusCode::BAD_GATEWAY)));
    }
    // HTTP/2's pseudo-headers become a Host header and a path for the origin.
    if request.version() == hyper::Version::HTTP_2
        && let Some(authority) = request.uri().authority().and_then(|a| a.as_str().parse().ok())
    {
        request.headers_mut().insert(hyper::header::HOST, authority);
    }
    if let Some(path) = request.uri().path_and_query().and_then(|p| p.as_str().parse().ok()) {
        *request.uri_mut() = path;
    }
    *request.version_mut() = hyper::Version::HTTP_11;
    // Hop by hop: a client's `Connection: close` must not close the origin's connection.
    request.headers_mut().remove(hyper::header::CONNECTION);
    let idle = {
        let mut pool = floor.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|sender| !sender.is_closed());
        pool.iter().position(SendRequest::is_ready).map(|i| pool.swap_remove(i))
    };
    let mut sender = match idle {
        Some(sender) => sender,
        None => match connect(floor.origin).await {
            Some(sender) => sender,
            None => return Ok(status(StatusCode::BAD_GATEWAY)),
        },
    };
    let answered = sender.send_request(request).await;
    // Ready again once this response's body is read: a later request finds it then.
    let mut pool = floor.pool.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL {
        pool.push(sender);
    }
    drop(pool);
    Ok(match answered {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

/// A new HTTP/1.1 connection to the origin.
async fn connect(origin: SocketAddr) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(origin).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// An upgrade: the request to the WebSocket origin on a connection of its own, then both
/// upgraded connections copied into each other.
async fn tunnel(floor: &Floor, mut request: Request<Incoming>) -> Option<Response<Body>> {
    let stream = TcpStream::connect(floor.ws_origin).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection.with_upgrades());
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (parts, _) = request.into_parts();
    let upstream = Request::from_parts(parts, Empty::<Bytes>::new());
    let mut response = sender.send_request(upstream).await.ok()?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let origin_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(origin)) = (client_upgrade.await, origin_upgrade.await) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(origin)).await;
        });
    }
    Some(response.map(BodyExt::boxed))
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = code;
    response
}
