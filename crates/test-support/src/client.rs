//! Clients for talking to the proxy: HTTP/1.1 and h2c (prior knowledge), and both over TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Request body type for [`Proxy`] clients.
pub type Body = BoxBody<Bytes, Infallible>;

/// A client that sends every request to the proxy at `addr`, naming the host in the URI, so
/// it travels as `Host: host:port` (HTTP/1.1) or `:authority` (HTTP/2).
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    scheme: &'static str,
    client: Client<HttpsConnector<FixedAddr>, Body>,
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
    /// `h2`: HTTP/2 only (prior knowledge on plain HTTP, ALPN `h2` over TLS); else HTTP/1.1.
    fn build(addr: SocketAddr, scheme: &'static str, tls: Arc<rustls::ClientConfig>, h2: bool) -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone()).https_or_http();
        let connector = if h2 {
            builder.enable_http2().wrap_connector(FixedAddr(addr))
        } else {
            builder.enable_http1().wrap_connector(FixedAddr(addr))
        };
        let client = Client::builder(TokioExecutor::new()).http2_only(h2).build(connector);
        Self { addr, scheme, client }
    }

    /// An HTTP/1.1 client.
    pub fn h1(addr: SocketAddr) -> Self {
        Self::build(addr, "http", crate::tls::client_config(None, &[]), false)
    }

    /// An HTTP/2 client without TLS (prior knowledge).
    pub fn h2c(addr: SocketAddr) -> Self {
        Self::build(addr, "http", crate::tls::client_config(None, &[]), true)
    }

    /// An HTTPS client trusting `roots` (SNI is the request's host), speaking HTTP/2 when
    /// `h2` (through ALPN) and HTTP/1.1 otherwise.
    pub fn https(addr: SocketAddr, roots: rustls::RootCertStore, h2: bool) -> Self {
        Self::build(addr, "https", crate::tls::client_config(Some(roots), &[]), h2)
    }

    /// Sends `method` `path` for `host` with `body`; returns the response or the error.
    pub async fn try_send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: Body,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let uri = format!("{}://{host}:{}{path}", self.scheme, self.addr.port());
        let request = Request::builder().method(method).uri(uri).body(body).unwrap();
        self.client.request(request).await
    }

    /// Sends `method` `path` for `host` with `body`; returns the response unread.
    pub async fn send(&self, method: &str, host: &str, path: &str, body: Body) -> Response<Incoming> {
        self.try_send(method, host, path, body).await.unwrap()
    }

    /// GET `path` on `host`, body read whole.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        read(self.send("GET", host, path, empty()).await).await
    }

    /// `method` `path` on `host` with request `headers`, body read whole.
    pub async fn ask(&self, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let uri = format!("{}://{host}:{}{path}", self.scheme, self.addr.port());
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(self.client.request(request.body(empty()).unwrap()).await.unwrap()).await
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

/// A JSON client for the management API.
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    client: Client<FixedAddr, Body>,
}

/// An API answer: status, headers and the body as JSON (`Null` if empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub json: serde_json::Value,
    pub raw: String,
}

impl ApiClient {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, client: Client::builder(TokioExecutor::new()).build(FixedAddr(addr)) }
    }

    /// Sends `method path` with `token` in the `auth-token` header and `body` as JSON.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<serde_json::Value>) -> Reply {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("auth-token", token.to_owned()));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, path, &headers, body).await
    }

    /// Sends a request with these headers and body text (JSON unless a `content-type` is given).
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, String)], body: String) -> Reply {
        let mut request = Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if !body.is_empty() && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header("content-type", "application/json");
        }
        let body = http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed();
        let response = self.client.request(request.body(body).unwrap()).await.unwrap();
        let answer = read(response).await;
        let raw = answer.text();
        Reply {
            status: answer.status,
            headers: answer.headers,
            json: serde_json::from_str(&raw).unwrap_or_default(),
            raw,
        }
    }

    /// Sends `GET path` with `token` and hands the body's text over as it arrives (for a
    /// stream such as `/api/events`); the status and headers come at once. The stream is
    /// read until the server ends it or the receiver is dropped.
    pub async fn stream(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let mut request = Request::get(format!("http://{}{path}", self.addr));
        if let Some(token) = token {
            request = request.header("auth-token", token);
        }
        let body = http_body_util::Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
        let response = self.client.request(request.body(body).unwrap()).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = response.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data()
                    && tx.send(String::from_utf8_lossy(&data).into_owned()).is_err()
                {
                    return;
                }
            }
        });
        (status, headers, rx)
    }

    /// Logs in; returns the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let reply = self
            .call(
                "POST",
                "/api/auth/login",
                None,
                Some(serde_json::json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "login as {username}: {}", reply.raw);
        reply.json["token"].as_str().unwrap().to_owned()
    }
}
