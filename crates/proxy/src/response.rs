//! What the proxy sends back itself: error pages and redirects, and the body wrapper that
//! writes the access-log line when a response ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The request names no host.
    #[error("the request has no host")]
    MissingHost,
    /// The request names its host more than once, differently (several `Host` headers, or an
    /// HTTP/2 `Host` that is not its `:authority`).
    #[error("the request names its host ambiguously")]
    AmbiguousHost,
    /// A method the proxy does not forward (`CONNECT`: Portico is no forward proxy).
    #[error("this method is not supported")]
    MethodNotAllowed,
    /// The client sent a request body that is not valid HTTP (bad chunked encoding, a body
    /// shorter than its `Content-Length`).
    #[error("the request body is malformed or incomplete")]
    BadRequestBody(#[source] BoxError),
    /// A trusted proxy's `X-Forwarded-For` has an entry that is not an address where the
    /// client's should be: whom the request is from cannot be known.
    #[error("the X-Forwarded-For header cannot be read")]
    UnreadableForwardedFor(#[source] portico_model::access::UnreadableForwardedFor),
    /// The host is not a valid name.
    #[error("invalid host name")]
    InvalidHost(#[source] portico_model::NameError),
    /// No host pattern matches the name.
    #[error("no host is configured for this name")]
    UnknownHost,
    /// The target refused the connection or could not be reached.
    #[error("the target could not be reached")]
    TargetUnreachable(#[source] BoxError),
    /// The target failed mid-request (closed the connection, spoke bad HTTP).
    #[error("the target failed")]
    TargetFailed(#[source] BoxError),
    /// The target did not answer in time.
    #[error("the target did not answer in time")]
    TargetTimeout,
    /// Every target of the host is down (ejected after failures, or failing its health
    /// checks): answered at once, nothing is tried.
    #[error("every target of this host is down; try again shortly")]
    AllTargetsDown,
    /// The host is not covered by the certificate this TLS connection was set up with (the
    /// client reused a connection for another name, or sent no or another SNI).
    #[error("this connection's certificate does not cover the requested host")]
    Misdirected,
}

impl ProxyError {
    /// The status this error maps to: the one place errors meet the wire.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost
            | Self::InvalidHost(_)
            | Self::AmbiguousHost
            | Self::BadRequestBody(_)
            | Self::UnreadableForwardedFor(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnknownHost => StatusCode::NOT_FOUND,
            Self::TargetUnreachable(_) | Self::TargetFailed(_) | Self::AllTargetsDown => StatusCode::BAD_GATEWAY,
            Self::TargetTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// A small HTML page for the client; internals stay in the log.
    pub fn page(&self, request_id: &str) -> Response<ProxyBody> {
        let status = self.status();
        let mut response = page(status, &self.to_string(), request_id);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        response
    }
}

/// Marks an answer as Portico's own error page (not a target's): what happened, so that it
/// can be given as a host's error page, the default one, or JSON.
#[derive(Debug, Clone)]
pub struct OwnPage(pub String);

/// A small HTML page for the client: the status, what happened, the request id.
pub fn page(status: StatusCode, what: &str, request_id: &str) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<!doctype html>\n<html><head><title>{code} {reason}</title></head>\n<body>\n<h1>{code} {reason}</h1>\n\
         <p>{what}.</p>\n<hr><p>portico &middot; request id {request_id}</p>\n</body></html>\n",
        code = status.as_u16(),
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(OwnPage(what.to_owned()));
    response
}

/// Gives Portico's own error answer `response` as the client asks: JSON
/// (`{status, message, request_id}`) to a client that prefers it, else `custom` (a host's or
/// the default error page, placeholders filled) when there is one, else as it is.
pub fn own_page(response: &mut Response<ProxyBody>, json: bool, custom: Option<&str>, request_id: &str) {
    let Some(OwnPage(what)) = response.extensions().get::<OwnPage>() else { return };
    let status = response.status().as_u16();
    let (body, kind) = if json {
        let body = serde_json::json!({"status": status, "message": what, "request_id": request_id});
        (body.to_string(), "application/json")
    } else if let Some(custom) = custom {
        (portico_model::behaviour::fill_page(custom, status, request_id), "text/html; charset=utf-8")
    } else {
        return;
    };
    *response.body_mut() = full(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response.headers_mut().remove(header::CONTENT_LENGTH);
}

/// Whether an `Accept` header prefers JSON to HTML: the best quality it gives
/// `application/json` (or `application/*`) above the best it gives `text/html` (or
/// `text/*`); `*/*` counts for both.
pub fn prefers_json(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else { return false };
    let (mut json, mut html) = (0.0_f32, 0.0_f32);
    for (media, q) in crate::compress::qualities(accept) {
        match media.as_str() {
            "application/json" | "application/*" => json = json.max(q),
            "text/html" | "text/*" => html = html.max(q),
            "*/*" => {
                json = json.max(q);
                html = html.max(q);
            }
            _ => {}
        }
    }
    json > html
}

/// A static answer: `status`, `content_type`, `body`.
pub fn fixed(status: u16, content_type: &str, body: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body.to_owned()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(kind) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, kind);
    }
    response
}

/// The methods the proxy forwards (any other but `CONNECT` is forwarded too; this is what
/// `Allow` lists).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

pub use portico_model::report::chain;

/// A 308 to `location`.
pub fn redirect(location: &str) -> Response<ProxyBody> {
    redirect_with(StatusCode::PERMANENT_REDIRECT, location)
}

/// A redirect with `status` to `location`.
pub fn redirect_with(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(String::new()));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A plain-text 200 (ACME HTTP-01 answers).
pub fn text(body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

pub(crate) fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync()
}

/// What the access-log line says about a request; filled in as the request goes.
#[derive(Debug)]
pub struct AccessEntry {
    /// Request id, also sent as `X-Request-Id` (visible ASCII: the client's only when valid).
    pub request_id: HeaderValue,
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// Request method.
    pub method: Method,
    /// Host as normalised, or as sent if it did not normalise.
    pub host: String,
    /// Path and query.
    pub path: http::uri::PathAndQuery,
    /// Response status.
    pub status: u16,
    /// The target (`ip:port`) if the request was forwarded.
    pub target: Option<std::sync::Arc<str>>,
    /// When the request arrived.
    pub started: Instant,
    /// The request's `User-Agent` and `Referer`, for the combined format.
    pub agent: Option<String>,
    /// See [`AccessEntry::agent`].
    pub referer: Option<String>,
    /// The protocol (`HTTP/1.1`, `HTTP/2.0`).
    pub version: http::Version,
    /// How to write the line.
    pub format: crate::AccessLog,
    /// The host pattern that routed the request, for the metrics (`-` when none did).
    pub pattern: Option<std::sync::Arc<str>>,
    /// Where the outcome is counted, from the same record the access log writes.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl AccessEntry {
    /// The request id as text.
    pub fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// A response body that counts what it sends and logs the request once it ends or is
/// dropped (client gone).
pub struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    /// Boxed: a response is moved several times on its way to the client, and the entry is
    /// most of its size.
    entry: Option<Box<AccessEntry>>,
}

impl LoggedBody {
    /// Wraps `inner`, logging `entry` when it ends.
    pub fn new(inner: ProxyBody, entry: AccessEntry) -> Self {
        Self { inner, bytes: 0, entry: Some(Box::new(entry)) }
    }

    fn finish(&mut self) {
        let Some(e) = self.entry.take() else { return };
        // Nothing reads the outcome: neither metrics nor a log line (no clock read either).
        if e.format == crate::AccessLog::Off && !e.metrics.counts_requests() {
            return;
        }
        let elapsed = e.started.elapsed().as_secs_f64();
        let protocol = protocol(e.version);
        e.metrics.request(e.pattern.as_ref(), e.status, protocol, elapsed, self.bytes);
        // Milliseconds to the microsecond: `0.413`, not `0.41329700000000004`.
        let duration_ms = (elapsed * 1_000_000.0).round() / 1000.0;
        match e.format {
            crate::AccessLog::Off => {}
            crate::AccessLog::Log => tracing::info!(
                target: "portico::access",
                request_id = %e.id(),
                peer = %e.peer,
                method = %e.method,
                host = %e.host,
                path = %e.path,
                status = e.status,
                bytes = self.bytes,
                duration_ms,
                target = e.target.as_deref().unwrap_or("-"),
                "request"
            ),
            crate::AccessLog::Common => {
                // host peer - - [time] "METHOD path VERSION" status bytes "referer" "agent"
                let quoted = |s: &Option<String>| s.as_deref().unwrap_or("-").replace(['"', '\\', '\n'], "_");
                println!(
                    "{} {} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
                    e.host,
                    e.peer.ip(),
                    clf_time(std::time::SystemTime::now()),
                    e.method,
                    e.path.as_str().replace(['"', '\n'], "_"),
                    protocol,
                    e.status,
                    self.bytes,
                    quoted(&e.referer),
                    quoted(&e.agent),
                );
            }
            crate::AccessLog::Json => {
                let line = serde_json::json!({
                    "time": clf_time(std::time::SystemTime::now()),
                    "request_id": e.id(),
                    "peer": e.peer.to_string(),
                    "method": e.method.as_str(),
                    "host": e.host,
                    "path": e.path.as_str(),
                    "protocol": protocol,
                    "status": e.status,
                    "bytes": self.bytes,
                    "duration_ms": duration_ms,
                    "target": e.target.as_deref(),
                    "referer": e.referer,
                    "user_agent": e.agent,
                });
                println!("{line}");
            }
        }
    }
}

/// An HTTP version as logs and metrics name it.
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

/// A time as the combined log format writes it: `10/Oct/2000:13:55:36 +0000` (UTC).
fn clf_time(at: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let month = t.month().to_string();
    format!("{:02}/{}/{}:{:02}:{:02}:{:02} +0000", t.day(), &month[..3], t.year(), t.hour(), t.minute(), t.second())
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod own_page_tests {
    use super::*;

    #[test]
    fn json_only_when_preferred() {
        let pick = |accept: &str| prefers_json(Some(&HeaderValue::from_str(accept).unwrap()));
        assert!(pick("application/json"));
        assert!(pick("text/html;q=0.5, application/json"));
        assert!(pick("application/*"));
        assert!(!pick("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"), "a browser");
        assert!(!pick("*/*"));
        assert!(!pick("application/json;q=0.4, text/html"));
        assert!(!prefers_json(None));
    }
}
