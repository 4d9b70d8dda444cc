//! Fake upstream servers on loopback.
//!
//! [`Backend::start`] serves HTTP/1.1 with a few behaviours chosen by path:
//! - `/download/<bytes>`: streams that many zero bytes;
//! - `/upload`: reads the whole body as a stream and answers how many bytes came;
//! - `/sleep/<ms>`: answers after that long;
//! - `/html/<bytes>`: a compressible HTML page of that many bytes ([`html`]);
//! - anything else: a JSON echo of the request (method, uri, headers, body length) with the
//!   backend's name.
//!
//! [`Backend::websocket_echo`] accepts WebSocket connections and echoes every message.
//! [`Backend::tls`] serves the same routes over TLS with a self-signed certificate.
//! [`Backend::silent`] accepts connections and never answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// A loopback port that refuses connections: bound (so no other test can take it) but not
/// listening. Dropping it frees the port.
pub struct Refusing {
    /// The address that refuses.
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl Refusing {
    /// Reserves a port and refuses connections on it.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self { addr: socket.local_addr().unwrap(), _socket: socket }
    }
}

impl Default for Refusing {
    fn default() -> Self {
        Self::new()
    }
}

/// A fake upstream; its tasks stop when it is dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    counters: Counters,
}

/// What a backend counts.
#[derive(Clone, Default)]
struct Counters {
    /// Requests received.
    hits: Arc<AtomicU64>,
    /// `/download/` responses being sent now.
    sending: Arc<AtomicU64>,
    /// The status `/healthz` answers (0: 200).
    health: Arc<std::sync::atomic::AtomicU16>,
}

/// What every connection of an HTTP backend shares.
struct State {
    name: Box<str>,
    counters: Counters,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl Backend {
    /// An HTTP backend named `name` (the name comes back in echo responses).
    pub async fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1").await
    }

    /// Like [`Backend::start`], on the address `ip` (a test's own network namespace link,
    /// see [`crate::netns`]).
    pub async fn start_at(name: &str, ip: &str) -> Self {
        Self::start_on(name, SocketAddr::from(((ip.parse::<std::net::IpAddr>().unwrap()), 0))).await
    }

    /// Like [`Backend::start`], on exactly `addr` (a backend started again where one was
    /// dropped).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let counters = Counters::default();
        let state = Arc::new(State { name: name.into(), counters: counters.clone() });
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let socket = socket.unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        Self::serving(listener, counters, move |stream| serve_http(state.clone(), TokioIo::new(stream)))
    }

    /// Makes `/healthz` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.counters.health.store(status, Ordering::SeqCst);
    }

    /// How many requests have reached this backend (HTTP backends only).
    pub fn hits(&self) -> u64 {
        self.counters.hits.load(Ordering::SeqCst)
    }

    /// How many `/download/` responses are being sent now: a response ends when it is sent
    /// whole or its connection is closed.
    pub fn sending(&self) -> u64 {
        self.counters.sending.load(Ordering::SeqCst)
    }

    /// The same routes over TLS, with a self-signed certificate for `localhost`.
    pub async fn tls(name: &str) -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let counters = Counters::default();
        let state = Arc::new(State { name: name.into(), counters: counters.clone() });
        Self::accepting(counters, move |stream| {
            let (state, acceptor) = (state.clone(), acceptor.clone());
            async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_http(state, TokioIo::new(tls)).await;
                }
            }
        })
        .await
    }

    /// A WebSocket echo server.
    pub async fn websocket_echo() -> Self {
        Self::accepting(Counters::default(), |stream| async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    break;
                }
            }
        })
        .await
    }

    /// Answers the first request of every connection with `reply`, byte for byte (a target
    /// that speaks old or odd HTTP), then waits for the other side to close.
    pub async fn raw(reply: &'static [u8]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        Self::accepting(Counters::default(), move |mut stream| async move {
            let mut buf = vec![0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(reply).await;
            let _ = stream.read(&mut buf).await;
        })
        .await
    }

    /// Accepts connections, reads nothing, answers nothing.
    pub async fn silent() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { addr, task, counters: Counters::default() }
    }

    /// Binds loopback and runs `handle` on a task per accepted connection; `counters` are
    /// what [`Backend::hits`] and [`Backend::sending`] report.
    async fn accepting<F, Fut>(counters: Counters, handle: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serving(listener, counters, handle)
    }

    fn serving<F, Fut>(listener: TcpListener, counters: Counters, handle: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        // Connections are this task's: dropping the backend ends them too, as a killed
        // process would.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        connections.spawn(handle(stream));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Self { addr, task, counters }
    }
}

/// Serves the backend's routes on one connection (HTTP/1.1 with upgrades, or HTTP/2).
async fn serve_http<I>(state: Arc<State>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| respond(state.clone(), req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await;
}

async fn respond(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.counters.hits.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap_or(0);
        let sending = Sending::start(state.counters.sending.clone());
        // The body owns the guard: it ends when the body is sent whole or dropped.
        return Ok(Response::new(
            zeros(total)
                .map_frame(move |frame| {
                    let _ = &sending;
                    frame
                })
                .boxed(),
        ));
    }
    if let Some(n) = path.strip_prefix("/html/") {
        // A compressible page of that many bytes ([`html`]), with a strong ETag; the query may
        // ask for `Cache-Control: no-transform` or a `Content-Encoding` of its own.
        let body = html(n.parse().unwrap_or(0));
        let mut response = Response::new(text(body));
        let headers = response.headers_mut();
        headers.insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        headers.insert("etag", "\"page-v1\"".parse().unwrap());
        let query = request.uri().query().unwrap_or_default();
        if query.contains("no-transform") {
            headers.insert("cache-control", "public, no-transform".parse().unwrap());
        }
        if query.contains("encoded") {
            headers.insert("content-encoding", "br".parse().unwrap());
        }
        return Ok(response);
    }
    if path == "/healthz" {
        let status = match state.counters.health.load(Ordering::SeqCst) {
            0 => 200,
            status => status,
        };
        let mut response = Response::new(text(format!("health {status}")));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        return Ok(response);
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Ok(Response::new(text(format!("slept {ms}ms"))));
    }
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let version = format!("{:?}", request.version());
    let mut headers = serde_json::Map::new();
    for (k, v) in request.headers() {
        let entry = headers.entry(k.as_str()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(serde_json::Value::String(v.to_str().unwrap_or("<binary>").to_owned()));
        }
    }
    let mut body = request.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    if path == "/upload" {
        return Ok(Response::new(text(received.to_string())));
    }
    let echo = serde_json::json!({
        "backend": &*state.name, "method": method, "uri": uri, "version": version,
        "headers": headers, "body_len": received,
    });
    let mut response = Response::new(text(echo.to_string()));
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    // What many application servers say of themselves (a header rule may strip it).
    response.headers_mut().insert("x-powered-by", "portico-test-backend".parse().unwrap());
    Ok(response)
}

/// One response being sent, counted in [`Backend::sending`] while it lives.
struct Sending(Arc<AtomicU64>);

impl Sending {
    fn start(count: Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn text(s: String) -> Body {
    Full::new(Bytes::from(s)).boxed()
}

/// `total` zero bytes in 64 KiB chunks, produced as they are sent.
pub fn zeros(total: u64) -> Body {
    const CHUNK: usize = 64 * 1024;
    static ZERO: [u8; CHUNK] = [0; CHUNK];
    let stream = futures_util::stream::unfold(total, |left| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK as u64);
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZERO[..n as usize]))), left - n))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// The page `/html/<bytes>` serves: that many bytes of HTML that compresses well, as real
/// pages do (repeated markup, varying text).
pub fn html(bytes: usize) -> String {
    let mut page = String::from("<!doctype html><html><head><title>A page</title></head><body>\n");
    let mut i = 0;
    while page.len() < bytes {
        page.push_str(&format!(
            "<div class=\"row\"><span class=\"n\">{i}</span> <a href=\"/item/{i}\">Item number {i}</a></div>\n"
        ));
        i += 1;
    }
    page.truncate(bytes);
    page
}
