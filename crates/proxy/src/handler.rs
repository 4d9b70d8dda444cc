//! One request, from arrival to response: host normalisation, routing, redirect, forward.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;
use portico_certs::challenge::{HTTP01_PREFIX, http01_answer};
use portico_certs::{Certs, Loaded};
use portico_model::Hostname;

use crate::ProxyConfig;
use crate::forward::{Origin, Scheme, Upstream, X_REQUEST_ID};
use crate::response::{ALLOWED_METHODS, AccessEntry, LoggedBody, ProxyBody, ProxyError, chain, redirect, text};
use crate::routes::Routes;

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// Data-plane settings.
    pub config: Arc<ProxyConfig>,
    /// The routing snapshot.
    pub routes: Arc<Routes>,
    /// The upstream client pool.
    pub upstream: Upstream,
    /// Certificates (HTTP-01 answers on plain HTTP), when TLS is managed.
    pub certs: Option<Arc<Certs>>,
}

/// What a request's connection is.
#[derive(Debug, Clone)]
pub enum Conn {
    /// Plain HTTP.
    Plain,
    /// TLS, set up with this certificate (`None`: the fallback, which covers no name).
    Tls(Option<Arc<Loaded>>),
}

impl Conn {
    fn scheme(&self) -> Scheme {
        match self {
            Self::Plain => Scheme::Http,
            Self::Tls(_) => Scheme::Https,
        }
    }
}

/// Answers one request. Never fails: errors become small pages with the request id.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    peer: SocketAddr,
    conn: Arc<Conn>,
) -> Result<Response<LoggedBody>, Infallible> {
    // The client's request id when it sent a usable one (a load balancer in front keeps its
    // id through to the target), else a new one.
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid_request_id(id))
        .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_owned);
    let authority = authority(&request);
    let format = shared.config.access_log;
    let text_header = |name: http::header::HeaderName| {
        let value = request.headers().get(name).filter(|_| format.names_client_headers())?;
        value.to_str().ok().map(str::to_owned)
    };
    let mut entry = AccessEntry {
        agent: text_header(http::header::USER_AGENT),
        referer: text_header(http::header::REFERER),
        version: request.version(),
        request_id: request_id.clone(),
        peer,
        method: request.method().clone(),
        host: authority.as_ref().ok().and_then(Clone::clone).unwrap_or_else(|| "-".to_owned()),
        path: request.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        status: 0,
        target: None,
        started: Instant::now(),
        format,
        pattern: None,
        metrics: shared.config.metrics.clone(),
    };
    let routed = match authority {
        Ok(authority) => route(&shared, request, authority.as_deref(), peer, &conn, &mut entry).await,
        Err(refused) => Err(refused),
    };
    let mut response = routed.unwrap_or_else(|error| {
        let status = error.status();
        if status.is_server_error() {
            tracing::warn!(request_id = %request_id, host = %entry.host, upstream = entry.target.as_deref(),
                error = %chain(&error), "request failed");
        } else {
            tracing::debug!(request_id = %request_id, host = %entry.host, error = %chain(&error), "request refused");
        }
        error.page(&request_id)
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    entry.status = response.status().as_u16();
    Ok(response.map(|body| LoggedBody::new(body, entry)))
}

/// Whether a client's `X-Request-Id` is kept: 1 to 128 characters of letters, digits,
/// `-`, `_`, `.`, `:` (nothing that could break a log line or a header).
fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

async fn route(
    shared: &Shared,
    request: Request<Incoming>,
    authority: Option<&str>,
    peer: SocketAddr,
    conn: &Conn,
    entry: &mut AccessEntry,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Requests about the proxy itself, not for a host: answered here, never forwarded.
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if request.method() == Method::OPTIONS && request.uri().path() == "*" {
        return Ok(options_asterisk());
    }
    let authority = authority.ok_or(ProxyError::MissingHost)?;
    let name = Hostname::from_authority(authority).map_err(ProxyError::InvalidHost)?;
    entry.host = name.to_string();
    let scheme = conn.scheme();
    match conn {
        Conn::Tls(cert) if !cert.as_ref().is_some_and(|c| c.meta.covers(name.as_str())) => {
            return Err(ProxyError::Misdirected);
        }
        Conn::Plain => {
            if let Some(answer) = acme_http01(shared, &name, &entry.path).await {
                return Ok(text(answer));
            }
        }
        Conn::Tls(_) => {}
    }
    let table = shared.routes.snapshot();
    let (pattern, host) = table.lookup(name.as_str()).ok_or(ProxyError::UnknownHost)?;
    entry.pattern = Some(pattern.shared());
    if let Some(length) =
        request.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
    {
        shared.config.metrics.request_bytes.inc_by(length);
    }
    if scheme == Scheme::Http && host.forcessl {
        let port = match shared.config.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        return Ok(redirect(&format!("https://{name}{port}{}", entry.path)));
    }
    entry.target = Some(host.target.shared_authority());
    let origin = Origin { peer, scheme, authority, request_id: &entry.request_id };
    shared.upstream.forward(request, host, &origin).await
}

/// The authority a request is for: the request target's (HTTP/2 `:authority`, or an HTTP/1
/// absolute-form URI, which RFC 9112 §3.2.2 says wins over `Host`), else the `Host` header.
/// Several `Host` headers, or an HTTP/2 `Host` that differs from `:authority` (RFC 9113
/// §8.3.1), make the request ambiguous: a backend could pick another host than the one
/// Portico routed by.
fn authority<B>(request: &Request<B>) -> Result<Option<String>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::AmbiguousHost);
    }
    let host = host.map(|v| v.to_str().map_err(|_| ProxyError::AmbiguousHost)).transpose()?;
    match request.uri().authority() {
        Some(target) => {
            let differs = host.is_some_and(|h| !h.eq_ignore_ascii_case(target.as_str()));
            if request.version() == Version::HTTP_2 && differs {
                return Err(ProxyError::AmbiguousHost);
            }
            Ok(Some(target.as_str().to_owned()))
        }
        None => Ok(host.map(str::to_owned)),
    }
}

/// `OPTIONS *`: what the server supports, answered by the proxy (there is no path to forward).
fn options_asterisk() -> Response<ProxyBody> {
    let mut response = text(String::new());
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    response
}

/// The answer to an ACME HTTP-01 request, when one is pending for this name (any node may
/// have published it). Anything else under the path goes on to the host's target.
async fn acme_http01(shared: &Shared, name: &Hostname, path: &str) -> Option<String> {
    let certs = shared.certs.as_ref()?;
    let token = path.strip_prefix(HTTP01_PREFIX)?;
    match http01_answer(certs.store().as_ref(), name.as_str(), token).await {
        Ok(answer) => {
            if answer.is_some() {
                tracing::info!(name = %name, "answered an ACME HTTP-01 challenge");
            }
            answer
        }
        Err(e) => {
            tracing::warn!(name = %name, error = %e, "cannot read an ACME HTTP-01 answer");
            None
        }
    }
}
