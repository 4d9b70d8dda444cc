//! One request, from arrival to response: host normalisation, routing, redirect, forward.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use portico_certs::challenge::{HTTP01_PREFIX, http01_answer};
use portico_certs::{Certs, Loaded};
use portico_model::Hostname;

use crate::ProxyConfig;
use crate::forward::{Origin, Scheme, Upstream, X_REQUEST_ID};
use crate::response::{AccessEntry, LoggedBody, ProxyBody, ProxyError, chain, redirect, text};
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
    let request_id = format!("{:016x}", fastrand::u64(..));
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned));
    let mut entry = AccessEntry {
        request_id: request_id.clone(),
        peer,
        method: request.method().clone(),
        host: authority.clone().unwrap_or_else(|| "-".to_owned()),
        path: request.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        status: 0,
        target: None,
        started: Instant::now(),
        enabled: shared.config.access_log,
    };
    let routed = route(&shared, request, authority.as_deref(), peer, &conn, &mut entry).await;
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

async fn route(
    shared: &Shared,
    request: Request<Incoming>,
    authority: Option<&str>,
    peer: SocketAddr,
    conn: &Conn,
    entry: &mut AccessEntry,
) -> Result<Response<ProxyBody>, ProxyError> {
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
    let (_, host) = table.lookup(name.as_str()).ok_or(ProxyError::UnknownHost)?;
    if scheme == Scheme::Http && host.forcessl {
        let port = match shared.config.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        return Ok(redirect(&format!("https://{name}{port}{}", entry.path)));
    }
    entry.target = Some(host.target.authority());
    let origin = Origin { peer, scheme, authority, request_id: &entry.request_id };
    shared.upstream.forward(request, host, &origin).await
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
