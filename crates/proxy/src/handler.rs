//! One request, from arrival to response: host normalisation, routing, redirect, forward.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;
use portico_certs::challenge::HTTP01_PREFIX;
use portico_certs::{Certs, Loaded};
use portico_model::Hostname;

use crate::access::{Asking, Verdict};
use crate::forward::{Origin, Routed, Scheme, TargetClient, X_REQUEST_ID};
use crate::response::{ALLOWED_METHODS, AccessEntry, LoggedBody, ProxyBody, ProxyError, chain, redirect, text};
use crate::routes::Routes;
use crate::{ProxyConfig, ProxyState};

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// Data-plane settings.
    pub config: Arc<ProxyConfig>,
    /// What outlives the settings: counters, targets' health, access state.
    pub state: ProxyState,
    /// The routing snapshot.
    pub routes: Arc<Routes>,
    /// The upstream client pool.
    pub upstream: TargetClient,
    /// Certificates (HTTP-01 answers on plain HTTP), when TLS is managed.
    pub certs: Option<Arc<Certs>>,
}

/// Who a request's connection is from and how it is secured: made once per connection.
#[derive(Debug)]
pub struct Client {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer's IP address as the forwarded headers write it.
    pub ip: HeaderValue,
    /// Plain or TLS.
    pub conn: Conn,
}

impl Client {
    /// The client at `peer` on `conn`.
    pub fn new(peer: SocketAddr, conn: Conn) -> Self {
        let ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string());
        // An IP address is always a valid header value.
        Self { peer, ip: ip.unwrap_or(HeaderValue::from_static("-")), conn }
    }
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
    client: Arc<Client>,
) -> Result<Response<LoggedBody>, Infallible> {
    // The client's request id when it sent a usable one (a load balancer in front keeps its
    // id through to the target), else a new one.
    let request_id = request
        .headers()
        .get(X_REQUEST_ID)
        .filter(|id| valid_request_id(id.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id);
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
        request_id,
        peer: client.peer,
        method: request.method().clone(),
        host: authority.as_ref().ok().and_then(Clone::clone).unwrap_or_else(|| "-".to_owned()),
        path: request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
        status: 0,
        target: None,
        started: Instant::now(),
        format,
        pattern: None,
        metrics: shared.state.metrics.clone(),
    };
    let routed = match authority {
        Ok(authority) => route(&shared, request, authority.as_deref(), &client, &mut entry).await,
        Err(refused) => Err(refused),
    };
    let mut response = routed.unwrap_or_else(|error| {
        let status = error.status();
        let id = entry.id();
        if status.is_server_error() {
            tracing::warn!(request_id = %id, host = %entry.host, upstream = entry.target.as_deref(),
                error = %chain(&error), "request failed");
        } else {
            tracing::debug!(request_id = %id, host = %entry.host, error = %chain(&error), "request refused");
        }
        error.page(id)
    });
    response.headers_mut().insert(X_REQUEST_ID, entry.request_id.clone());
    entry.status = response.status().as_u16();
    Ok(response.map(|body| LoggedBody::new(body, entry)))
}

/// A new request id: 16 hexadecimal digits.
fn new_request_id() -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u64(..);
    let mut id = [0u8; 16];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = DIGITS[usize::try_from((n >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
    }
    // Hexadecimal digits are always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// Whether a client's `X-Request-Id` is kept: 1 to 128 characters of letters, digits,
/// `-`, `_`, `.`, `:` (nothing that could break a log line or a header).
fn valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id.iter().copied().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The request's phases, in order: normalise the host → look up → ACME HTTP-01 answer →
/// `forcessl` redirect → the client's address → access (hosts with a policy) → choose a
/// target → forward. The caller observes the outcome (access log, metrics) from `entry`.
async fn route(
    shared: &Shared,
    mut request: Request<Incoming>,
    authority: Option<&str>,
    client: &Client,
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
    let scheme = client.conn.scheme();
    if let Conn::Tls(cert) = &client.conn
        && !cert.as_ref().is_some_and(|c| c.meta.covers(name.as_str()))
    {
        return Err(ProxyError::Misdirected);
    }
    let table = shared.routes.snapshot();
    let (pattern, host) = table.lookup(name.as_str()).ok_or(ProxyError::UnknownHost)?;
    entry.pattern = Some(pattern.shared());
    // An ACME HTTP-01 request, for a name a host matches (only those get certificates): no
    // store read for any other name. Boxed: a store read, rare, and large beside the rest of
    // a request's future.
    if matches!(client.conn, Conn::Plain)
        && let Some(answer) = Box::pin(acme_http01(shared, &name, entry.path.as_str())).await
    {
        return Ok(text(answer));
    }
    if let Some(length) =
        request.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
    {
        shared.state.metrics.request_body(length);
    }
    if scheme == Scheme::Http && host.forcessl {
        let port = match shared.config.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        return Ok(redirect(&format!("https://{name}{port}{}", entry.path)));
    }
    let pattern = entry.pattern.clone().unwrap_or_else(|| pattern.shared());
    // The client: the peer, or whom a trusted proxy in front says it forwards.
    let config = &shared.config;
    let client_ip = if config.trusted_proxies.is_empty() {
        client.peer.ip()
    } else {
        portico_model::access::client_address(client.peer.ip(), request.headers(), &config.trusted_proxies)
            .map_err(ProxyError::UnreadableForwardedFor)?
    };
    // Access: the host's address lists, rate limit, basic auth and forward auth.
    if !host.access.is_open() {
        let (mut parts, body) = request.into_parts();
        let asking = Asking {
            pattern: &pattern,
            client: client_ip,
            parts: &parts,
            scheme,
            authority,
            pool: shared.upstream.pool(),
            timeout: config.upstream_timeout,
            request_id: entry.request_id.to_str().unwrap_or("-"),
        };
        match Box::pin(shared.state.access.check(host, &asking)).await {
            Verdict::Answer(answer) => return Ok(answer),
            Verdict::Pass(headers) => {
                // What the service vouches for replaces whatever the client sent.
                for (name, value) in headers {
                    match value {
                        Some(value) => parts.headers.insert(name, value),
                        None => parts.headers.remove(name),
                    };
                }
            }
        }
        request = Request::from_parts(parts, body);
    }
    // Choose a target: the host's only one, or by its policy among those up.
    let choice =
        shared.upstream.health().choose(&pattern, host, client_ip, None).map_err(|_| ProxyError::AllTargetsDown)?;
    entry.target = Some(choice.target(host).shared_authority());
    let real_ip = (client_ip != client.peer.ip()).then(|| HeaderValue::from_str(&client_ip.to_string()).ok()).flatten();
    let origin = Origin { client, scheme, authority, request_id: &entry.request_id, real_ip };
    let routed = Routed { pattern: &pattern, host };
    shared.upstream.forward(request, routed, choice, &origin, &mut entry.target).await
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
    match certs.http01_answer(name.as_str(), token).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_sixteen_hex_digits_and_differ() {
        let ids: Vec<String> = (0..100).map(|_| new_request_id().to_str().unwrap().to_owned()).collect();
        for id in &ids {
            assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
            assert!(valid_request_id(id.as_bytes()), "a new id is one a client may send back");
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
