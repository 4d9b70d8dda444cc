//! Clients for talking to the proxy: HTTP/1.1 and h2c (prior knowledge).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Request body type for [`Proxy`] clients.
pub type Body = BoxBody<Bytes, Infallible>;

/// A client that sends every request to the proxy at `addr`, naming the host in the URI, so
/// it travels as `Host: host:port` (HTTP/1.1) or `:authority` (HTTP/2).
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    client: Client<FixedAddr, Body>,
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the backend's echo).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl Proxy {
    /// An HTTP/1.1 client.
    pub fn h1(addr: SocketAddr) -> Self {
        Self { addr, client: Client::builder(TokioExecutor::new()).build(FixedAddr(addr)) }
    }

    /// An HTTP/2 client without TLS (prior knowledge).
    pub fn h2c(addr: SocketAddr) -> Self {
        Self { addr, client: Client::builder(TokioExecutor::new()).http2_only(true).build(FixedAddr(addr)) }
    }

    /// Sends `method` `path` for `host` with `body`; returns the response unread.
    pub async fn send(&self, method: &str, host: &str, path: &str, body: Body) -> Response<Incoming> {
        self.try_send(method, host, path, body).await.unwrap()
    }

    /// Like [`Proxy::send`], returning the client error instead of panicking.
    pub async fn try_send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: Body,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let uri = format!("http://{host}:{}{path}", self.addr.port());
        let request = Request::builder().method(method).uri(uri).body(body).unwrap();
        self.client.request(request).await
    }

    /// GET `path` on `host`, body read whole.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        read(self.send("GET", host, path, empty()).await).await
    }
}

/// Reads a response whole.
pub async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Answer { status: parts.status, headers: parts.headers, body }
}

/// An empty request body.
pub fn empty() -> Body {
    Empty::new().boxed()
}

/// A connector that always connects to one address, whatever the URI says.
#[derive(Clone)]
pub struct FixedAddr(pub SocketAddr);

impl tower_service::Service<http::Uri> for FixedAddr {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await?)) })
    }
}
