//! One request, from arrival to response: what is about the proxy itself, the host
//! normalised and looked up, then the routed request's phases (`Phase`: ACME HTTP-01,
//! body size, `forcessl`, client address, access, forward), each one function over the
//! `Exchange`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::client_body::ClientBody;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Version, header};
use portico_certs::Certs;
use portico_certs::challenge::HTTP01_PREFIX;
use portico_model::behaviour::error_page;
use portico_model::{Host, HostKind, Hostname};

use crate::access::{Asking, Verdict};
use crate::compress;
use crate::conn::{Client, Conn};
use crate::forward::{Origin, Routed, Scheme, TargetClient, X_REQUEST_ID};
use crate::response::{
    ALLOWED_METHODS, AccessEntry, LoggedBody, OwnPage, ProxyBody, ProxyError, chain, fixed, own_page, prefers_json,
    redirect, redirect_with, text,
};
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

/// Answers one request. Never fails: errors become small pages with the request id.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<ClientBody>,
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
    // Kept for Portico's own error answers (JSON to a client that prefers it): a reference
    // count, read only if one is given.
    let accept = request.headers().get(header::ACCEPT).cloned();
    let mut dressing = None;
    let routed = match authority {
        Ok(authority) => route(&shared, request, authority.as_deref(), &client, &mut entry, &mut dressing).await,
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
    if response.extensions().get::<OwnPage>().is_some() {
        let host_page =
            dressing.as_ref().and_then(|d: &Dressing| error_page(&d.host.error_pages, response.status().as_u16()));
        let custom = host_page.or(shared.config.error_page.as_deref());
        own_page(&mut response, prefers_json(accept.as_ref()), custom, entry.id());
    }
    if let Some(dressing) = &dressing {
        dressing.dress(&mut response, client.conn.scheme(), &entry);
        if dressing.host.compress {
            response = compress::compress(response, dressing.coding);
        }
    }
    // Never indexed by HTTP/2's header compression: a value that differs in every response
    // only churns the connection's table (and pushes out the headers worth keeping there).
    let mut id = entry.request_id.clone();
    id.set_sensitive(true);
    response.headers_mut().insert(X_REQUEST_ID, id);
    // HTTP/3 advertised on HTTPS answers (`proxy.http3`, `proxy.alt_svc`).
    if let (Some(alt_svc), Conn::Tls(_)) = (&shared.config.alt_svc, &client.conn) {
        response.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
    }
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

/// Routes a request: first what is about the proxy itself (answered here, never
/// forwarded), then the host normalised, the 421 check and the lookup, then the routed
/// request's [`Phase`]s in order. The caller observes the outcome (access log, metrics) from
/// `entry`.
async fn route(
    shared: &Shared,
    request: Request<ClientBody>,
    authority: Option<&str>,
    client: &Client,
    entry: &mut AccessEntry,
    dressing: &mut Option<Dressing>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if request.method() == Method::OPTIONS && request.uri().path() == "*" {
        return Ok(options_asterisk());
    }
    let authority = authority.ok_or(ProxyError::MissingHost)?;
    let name = Hostname::from_authority(authority).map_err(ProxyError::InvalidHost)?;
    entry.host = name.as_str().to_owned();
    if let Conn::Tls(cert) = &client.conn
        && !cert.as_ref().is_some_and(|c| c.meta.covers(name.as_str()))
    {
        return Err(ProxyError::Misdirected);
    }
    let table = shared.routes.snapshot();
    let (pattern, host) = table.lookup(name.as_str()).ok_or(ProxyError::UnknownHost)?;
    let pattern = pattern.shared();
    entry.pattern = Some(pattern.clone());
    let mut x = Exchange {
        shared,
        client,
        request: Some(request),
        entry,
        authority,
        client_ip: client.peer.ip(),
        scheme: client.conn.scheme(),
        name,
        host,
        pattern,
    };
    // The coding to compress the answer with, for a host that compresses (read before the
    // request goes on).
    let coding = match (x.host.compress, &x.request) {
        (true, Some(request)) if request.method() != Method::HEAD && !request.headers().contains_key(header::RANGE) => {
            compress::choose(request.headers().get(header::ACCEPT_ENCODING))
        }
        _ => None,
    };
    let answered = x.phases().await;
    let host = x.host;
    *dressing =
        (!host.headers.response.is_empty() || host.hsts.is_some() || !host.error_pages.is_empty() || host.compress)
            .then(|| Dressing { host: host.clone(), client_ip: x.client_ip, coding });
    answered
}

/// How a routed request's answer is dressed: its host's response header rules and HSTS, and
/// its error pages (only for hosts that have any).
struct Dressing {
    host: Arc<Host>,
    /// The client, as the phases found it.
    client_ip: IpAddr,
    /// For a host that compresses: the coding the client accepts best, if any.
    coding: Option<compress::Coding>,
}

impl Dressing {
    /// The host's response header rules (removals, then values set, then values added) and,
    /// over HTTPS, its `Strict-Transport-Security`.
    fn dress(&self, response: &mut Response<ProxyBody>, scheme: Scheme, entry: &AccessEntry) {
        let headers = response.headers_mut();
        apply_rules(headers, &self.host.headers.response, self.client_ip, entry, scheme);
        if let (Scheme::Https, Some(hsts)) = (scheme, &self.host.hsts)
            && let Ok(value) = HeaderValue::from_str(&hsts.header_value())
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
    }
}

/// Applies header rules to `headers`, placeholders filled: `{client_ip}`, `{request_id}`,
/// `{host}` (the name asked for), `{scheme}`.
fn apply_rules(
    headers: &mut http::HeaderMap,
    rules: &portico_model::behaviour::HeaderOps,
    client_ip: IpAddr,
    entry: &AccessEntry,
    scheme: Scheme,
) {
    if rules.is_empty() {
        return;
    }
    let value = |template: &str| {
        let filled = portico_model::behaviour::fill_template(template, |placeholder| match placeholder {
            "client_ip" => client_ip.to_string(),
            "request_id" => entry.id().to_owned(),
            "host" => entry.host.clone(),
            _ => scheme.as_str().to_owned(),
        });
        HeaderValue::from_str(&filled).ok()
    };
    let name = |n: &str| http::HeaderName::from_bytes(n.as_bytes()).ok();
    for removed in rules.remove.iter().filter_map(|n| name(n)) {
        headers.remove(removed);
    }
    for (n, v) in &rules.set {
        if let (Some(n), Some(v)) = (name(n), value(v)) {
            headers.insert(n, v);
        }
    }
    for (n, v) in &rules.add {
        if let (Some(n), Some(v)) = (name(n), value(v)) {
            headers.append(n, v);
        }
    }
}

impl Exchange<'_> {
    /// The routed request's phases, in order, until one answers.
    async fn phases(&mut self) -> Result<Response<ProxyBody>, ProxyError> {
        let x = self;
        for phase in Phase::ALL {
            // Each phase in place, not through a future per phase: a request's futures are moved
            // whole when made, and one per phase cost six copies of the largest. The two phases
            // that may wait on more than the target are boxed (their futures are large beside the
            // rest of a request's), and only entered when they have work: most requests are
            // neither ACME challenges nor for hosts with an access policy.
            let outcome = match phase {
                Phase::Acme if x.entry.path.as_str().starts_with(HTTP01_PREFIX) => Box::pin(x.acme_http01()).await,
                Phase::Access if !x.host.access.is_open() => Box::pin(x.access()).await,
                Phase::Acme | Phase::Access => Ok(None),
                Phase::Measure => x.measure(),
                Phase::ForceSsl => x.force_ssl(),
                Phase::ClientAddress => x.client_address(),
                Phase::Answer => x.answer(),
                Phase::Forward => x.forward().await,
            };
            if let Some(answer) = outcome? {
                return Ok(answer);
            }
        }
        // The last phase forwards: it always answers.
        Err(ProxyError::AllTargetsDown)
    }
}

/// A routed request on its way through the phases, and what the earlier ones found.
struct Exchange<'a> {
    shared: &'a Shared,
    client: &'a Client,
    /// The request, until the last phase sends it on.
    request: Option<Request<ClientBody>>,
    entry: &'a mut AccessEntry,
    /// The authority it was routed by, as sent.
    authority: &'a str,
    /// Its normalised host name.
    name: Hostname,
    scheme: Scheme,
    /// The host it routed to, and by which pattern.
    host: &'a Arc<Host>,
    pattern: Arc<str>,
    /// The client's address: the peer's, or whom a trusted proxy says it forwards.
    client_ip: IpAddr,
}

/// What a phase does with a request: answers it (`Some`), lets it go on (`None`), or fails
/// it.
type Outcome = Result<Option<Response<ProxyBody>>, ProxyError>;

/// A routed request's phases, in the order they run; each is one function taking the
/// [`Exchange`] and giving an [`Outcome`].
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// An ACME HTTP-01 request for a name a host matches (only those get certificates).
    Acme,
    /// The request body's declared size, counted.
    Measure,
    /// `forcessl`: plain HTTP redirected to HTTPS.
    ForceSsl,
    /// The client's address, from the peer or a trusted proxy's `X-Forwarded-For`.
    ClientAddress,
    /// The host's access policy: address lists, rate limit, basic auth, forward auth.
    Access,
    /// A redirect or static host's answer.
    Answer,
    /// A target chosen by the host's policy, and the request forwarded to it.
    Forward,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Acme,
        Phase::Measure,
        Phase::ForceSsl,
        Phase::ClientAddress,
        Phase::Access,
        Phase::Answer,
        Phase::Forward,
    ];
}

impl Exchange<'_> {
    /// The answer to an ACME HTTP-01 request, when one is pending for this name (any node
    /// may have published it): no store read for any other path or on HTTPS. Anything else
    /// under the path goes on to the host's target.
    async fn acme_http01(&mut self) -> Outcome {
        let token = self.entry.path.as_str().strip_prefix(HTTP01_PREFIX);
        let (Conn::Plain, Some(certs), Some(token)) = (&self.client.conn, &self.shared.certs, token) else {
            return Ok(None);
        };
        match certs.http01_answer(self.name.as_str(), token).await {
            Ok(Some(answer)) => {
                tracing::info!(name = %self.name, "answered an ACME HTTP-01 challenge");
                Ok(Some(text(answer)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(name = %self.name, error = %e, "cannot read an ACME HTTP-01 answer");
                Ok(None)
            }
        }
    }

    /// The size of the request's body, when it says (`Content-Length`), into the metrics.
    fn measure(&mut self) -> Outcome {
        let declared = self.request.as_ref().and_then(|r| r.headers().get(http::header::CONTENT_LENGTH));
        if let Some(length) = declared.and_then(|v| v.to_str().ok()?.parse().ok()) {
            self.shared.state.metrics.request_body(length);
        }
        Ok(None)
    }

    /// `forcessl`: a plain request is redirected to the same URL on HTTPS (always for a
    /// passthrough host, whose targets speak TLS only).
    fn force_ssl(&mut self) -> Outcome {
        if self.scheme != Scheme::Http || !(self.host.forcessl || self.host.kind.is_passthrough()) {
            return Ok(None);
        }
        let port = match self.shared.config.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        Ok(Some(redirect(&format!("https://{}{port}{}", self.name, self.entry.path))))
    }

    /// The client: the peer, or whom a trusted proxy in front says it forwards.
    fn client_address(&mut self) -> Outcome {
        let (trusted, request) = (&self.shared.config.trusted_proxies, &self.request);
        if let (false, Some(request)) = (trusted.is_empty(), request) {
            self.client_ip = portico_model::access::client_address(self.client.peer.ip(), request.headers(), trusted)
                .map_err(ProxyError::UnreadableForwardedFor)?;
        }
        Ok(None)
    }

    /// The host's access policy (hosts that have one): a refusal or a challenge answers;
    /// a pass may set headers the service vouches for, replacing whatever the client sent.
    async fn access(&mut self) -> Outcome {
        let (Some(request), false) = (&mut self.request, self.host.access.is_open()) else { return Ok(None) };
        let asking = Asking {
            pattern: &self.pattern,
            client: self.client_ip,
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            scheme: self.scheme,
            authority: self.authority,
            pool: self.shared.upstream.pool(),
            timeout: self.shared.config.upstream_timeout,
            request_id: self.entry.request_id.to_str().unwrap_or("-"),
        };
        match self.shared.state.access.check(self.host, &asking).await {
            Verdict::Answer(answer) => Ok(Some(answer)),
            Verdict::Pass(headers) => {
                for (name, value) in headers {
                    match value {
                        Some(value) => request.headers_mut().insert(name, value),
                        None => request.headers_mut().remove(name),
                    };
                }
                Ok(None)
            }
        }
    }

    /// A redirect host's redirect, a static host's answer; nothing for a proxy host.
    fn answer(&mut self) -> Outcome {
        match &self.host.kind {
            HostKind::Proxy => Ok(None),
            HostKind::Redirect(redirect) => {
                let location = redirect.location(self.scheme.as_str(), self.entry.path.as_str());
                let status = http::StatusCode::from_u16(redirect.code).unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
                Ok(Some(redirect_with(status, &location)))
            }
            HostKind::Static(answer) => Ok(Some(fixed(answer.status, &answer.content_type, &answer.body))),
            // Reached over a TLS connection made for another name (whose certificate covers
            // this one too): the passthrough host's own TLS goes to its targets.
            HostKind::Passthrough(_) => Err(ProxyError::Misdirected),
        }
    }

    /// Chooses a target (the host's only one, or by its policy among those up) and forwards
    /// the request to it, with the host's request header rules applied first.
    async fn forward(&mut self) -> Outcome {
        let Some(mut request) = self.request.take() else { return Ok(None) };
        apply_rules(request.headers_mut(), &self.host.headers.request, self.client_ip, self.entry, self.scheme);
        let (shared, host, client) = (self.shared, self.host, self.client);
        let choice = shared
            .upstream
            .health()
            .choose(&self.pattern, host, self.client_ip, None)
            .map_err(|_| ProxyError::AllTargetsDown)?;
        self.entry.target = Some(choice.target(host).shared_authority());
        let real_ip = (self.client_ip != client.peer.ip())
            .then(|| HeaderValue::from_str(&self.client_ip.to_string()).ok())
            .flatten();
        let origin = Origin {
            client,
            scheme: self.scheme,
            authority: self.authority,
            request_id: &self.entry.request_id,
            real_ip,
        };
        let routed = Routed { pattern: &self.pattern, host };
        shared.upstream.forward(request, routed, choice, &origin, &mut self.entry.target).await.map(Some)
    }
}

/// The authority a request is for: the request target's (HTTP/2 `:authority`, or an HTTP/1
/// absolute-form URI, which RFC 9112 §3.2.2 says wins over `Host`), else the `Host` header.
/// Several `Host` headers, or an HTTP/2 or HTTP/3 `Host` that differs from `:authority` (RFC 9113
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
            if matches!(request.version(), Version::HTTP_2 | Version::HTTP_3) && differs {
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
