//! Forwarding a request to its target: the pooled upstream client, header rewriting,
//! streamed bodies and upgrade tunnels.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portico_model::Host;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{Choice, Health};
use crate::handler::Client;
use crate::pool::{Lease, Pool, Returning};
use crate::response::{BoxError, ProxyBody, ProxyError, chain};
use crate::{ProxyConfig, ProxyState};

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), besides
/// those the `Connection` header names; and `Upgrade`, which the forwarder sets again for the
/// one upgrade it tunnels (WebSocket). `Connection` comes first.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The request id header, sent to targets and back to clients.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The scheme a request reached the proxy on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the forwarder needs to know about the request beyond the request itself.
#[derive(Debug)]
pub struct Origin<'a> {
    /// The client.
    pub client: &'a Client,
    /// The scheme the client used.
    pub scheme: Scheme,
    /// The authority the client asked for, as sent (`Host` or `:authority`, port included).
    pub authority: &'a str,
    /// This request's id.
    pub request_id: &'a HeaderValue,
    /// The client's address when it is not the peer's (read from a trusted proxy's
    /// `X-Forwarded-For` or a PROXY protocol header): what `X-Real-IP` says.
    pub real_ip: Option<HeaderValue>,
}

/// The client every connection speaks to targets through (its pool, health, tunnels).
#[derive(Debug, Clone)]
pub struct TargetClient {
    pool: Arc<Pool>,
    health: Arc<Health>,
    metrics: Arc<portico_metrics::Metrics>,
    config: Arc<ProxyConfig>,
    tunnels: TaskTracker,
    shutdown: CancellationToken,
}

impl TargetClient {
    /// A client for `config`, reporting to `state`; tunnels it starts are tracked by
    /// `tunnels` and end at `shutdown`.
    pub fn new(
        config: Arc<ProxyConfig>,
        state: &ProxyState,
        tunnels: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let pool = Pool::new(target_tls(&config), config.upstream_connect_timeout, config.upstream_idle_timeout);
        let (health, metrics) = (state.health.clone(), state.metrics.clone());
        Self { pool, health, metrics, config, tunnels, shutdown }
    }

    /// What this process knows of targets' health.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Opens connections to targets (and to forward-auth services).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Sends `request` to `host`'s chosen target and returns its response, streaming both
    /// bodies. When the connection to the target cannot be made (nothing was sent), the
    /// request goes once to another target of the host, if it has one that is up; `target`
    /// names the target the request went to.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        routed: Routed<'_>,
        mut choice: Choice,
        origin: &Origin<'_>,
        target: &mut Option<Arc<str>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = upgrade_protocol(&request);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();

        // Origin form: the connection already goes to the target.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let path = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        add_forwarded(&mut parts.headers, origin);

        let asked = self.metrics.counts_requests().then(std::time::Instant::now);
        // Built inside the call, not bound first: a future held in a variable and then moved
        // into `timeout` takes room twice in this one's state.
        let (mut response, lease) = match tokio::time::timeout(
            self.config.upstream_timeout,
            self.send(Request::from_parts(parts, body), routed, &mut choice, origin.client.peer.ip(), target),
        )
        .await
        {
            Err(_) => {
                self.health.failed(&choice, "no answer in time");
                return Err(ProxyError::TargetTimeout);
            }
            Ok(result) => result?,
        };
        self.health.succeeded(&choice);
        if let Some(asked) = asked {
            self.metrics.upstream(asked.elapsed().as_secs_f64());
        }

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A switch nobody asked for would hand the connection to the target unseen.
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::TargetFailed("101 Switching Protocols without a WebSocket request".into()));
            };
            let target_upgrade = hyper::upgrade::on(&mut response);
            let shutdown = self.shutdown.clone();
            let idle = self.config.tunnel_idle_timeout;
            let open = portico_metrics::Open::new(&self.metrics.tunnels_open);
            self.tunnels.spawn(async move {
                tunnel(client_upgrade, target_upgrade, idle, shutdown).await;
                drop(open);
            });
            // The connection is the tunnel's now: `lease` is dropped, never parked.
            drop(lease);
            return Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()));
        }
        strip_hop_by_hop(response.headers_mut());
        // The client's connection is ours, not the target's: an HTTP/1.0 target must not turn
        // it into an HTTP/1.0 one that closes after every response.
        *response.version_mut() = Version::HTTP_11;
        Ok(response.map(|b| Returning::new(b, lease).map_err(BoxError::from).boxed_unsync()))
    }

    /// Sends `request` on a pooled connection to the chosen target, or on a new one when a
    /// reused connection turns out closed before the request was written (the target may
    /// close an idle connection just as it is taken). A connection that cannot be opened,
    /// the first or that new one, ejects the target and, when the host has another one up,
    /// the request goes there.
    async fn send(
        &self,
        mut request: Request<Incoming>,
        routed: Routed<'_>,
        choice: &mut Choice,
        client: std::net::IpAddr,
        target: &mut Option<Arc<str>>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let host = routed.host;
        let tls = host.targetssl;
        // Nothing of the request reached a target until it is written, whatever the method:
        // a connection that cannot be opened sends it once to another target of the host, and
        // a kept connection found closed sends it once on a new connection.
        let (mut moved, mut fresh) = (false, false);
        loop {
            let opened = if fresh {
                Box::pin(self.pool.connect(choice.target(host), tls)).await
            } else {
                self.pool.checkout(choice.target(host), tls).await
            };
            let mut lease = match opened {
                Ok(lease) => lease,
                Err(e) => {
                    // Coarse for the API (a host's owner reads it); the error itself to the log.
                    tracing::debug!(target = %choice.target(host), error = %chain(&e), "cannot connect to a target");
                    self.health.failed(choice, "unreachable");
                    let other = (!moved && choice.has_alternative())
                        .then(|| self.health.choose(routed.pattern, host, client, Some(choice.index)).ok())
                        .flatten();
                    let Some(other) = other else { return Err(e) };
                    *choice = other;
                    *target = Some(choice.target(host).shared_authority());
                    (moved, fresh) = (true, false);
                    continue;
                }
            };
            lease.hold = Health::in_flight(choice);
            match lease.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, lease)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if lease.reused => {
                        request = unsent;
                        fresh = true;
                    }
                    _ => {
                        let error = classify(e.into_error());
                        self.health.failed(choice, "the connection failed");
                        return Err(error);
                    }
                },
            }
        }
    }
}

/// The TLS client configuration for targets (`targetssl` hosts): verified or not, as
/// `proxy.target_tls_verify` says; HTTP/1.1 only.
pub(crate) fn target_tls(config: &ProxyConfig) -> rustls::ClientConfig {
    let mut tls = if config.target_tls_verify {
        portico_certs::client_tls(rustls::RootCertStore::empty())
    } else {
        insecure::client_config()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls
}

/// A request's host and the pattern that routed it.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// The pattern, as shared text (the balancer is kept per pattern).
    pub pattern: &'a Arc<str>,
    /// The host.
    pub host: &'a Host,
}

/// The `Upgrade` protocol of an HTTP/1.1 WebSocket upgrade request (`Connection: upgrade` +
/// `Upgrade: websocket`).
fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let wants = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = request.headers().get(header::UPGRADE).filter(|_| wants)?;
    // Only WebSocket is tunnelled: any other upgrade (`h2c`, say) would carry traffic past
    // routing and header rewriting, so it is forwarded as a plain request.
    protocol.to_str().is_ok_and(|p| p.trim().eq_ignore_ascii_case("websocket")).then(|| protocol.clone())
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which fixed names are present: one pass over the names, no lookups (most requests
    // carry none of them; most responses only `Connection`).
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str()) {
            present[i] = true;
        }
    }
    if present[0] {
        let listed: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
        let tokens = listed.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim);
        for token in tokens {
            // A fixed name goes below; a token that is no header name matches nothing.
            let lower;
            let token = if token.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = token.to_ascii_lowercase();
                lower.as_str()
            } else {
                token
            };
            if hop_index(token).is_none() {
                headers.remove(token);
            }
        }
    }
    for (hop, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(hop);
        }
    }
}

/// Where a (lower-case) header name is in [`HOP_BY_HOP`]: a match, cheaper than comparing
/// with each.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP`,
/// `X-Request-Id`, and `Host`: the routed authority.
fn add_forwarded(headers: &mut HeaderMap, origin: &Origin<'_>) {
    let ip = &origin.client.ip;
    let prior: Vec<&str> = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let chain = if prior.is_empty() {
        Some(ip.clone())
    } else {
        HeaderValue::from_str(&format!("{}, {}", prior.join(", "), ip.to_str().unwrap_or("-"))).ok()
    };
    // The authority the request was routed by, whatever `Host` the client sent beside it:
    // usually that `Host`, shared rather than copied.
    let host = match headers.get(header::HOST) {
        Some(host) if host.as_bytes() == origin.authority.as_bytes() => Some(host.clone()),
        _ => HeaderValue::from_str(origin.authority).ok(),
    };
    if let Some(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(origin.scheme.as_str()));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(header::HOST, host);
    }
    headers.insert(X_REAL_IP, origin.real_ip.clone().unwrap_or_else(|| ip.clone()));
    headers.insert(X_REQUEST_ID, origin.request_id.clone());
}

/// A failure once the request was handed to the target's connection: 502, or 504 when an
/// I/O operation timed out. A failure to read the client's own request body (bad chunked
/// encoding, cut short) is the client's: 400.
fn classify(error: hyper::Error) -> ProxyError {
    let chain = || std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| e.source());
    let timed_out =
        chain().filter_map(|e| e.downcast_ref::<std::io::Error>()).any(|io| io.kind() == std::io::ErrorKind::TimedOut);
    // The client's body is hyper's `Incoming`: its read error is the source of the client's
    // "user body" error, and another `hyper::Error`.
    let client_body = error.is_user() && std::error::Error::source(&error).is_some_and(|s| s.is::<hyper::Error>());
    if client_body {
        ProxyError::BadRequestBody(error.into())
    } else if timed_out {
        ProxyError::TargetTimeout
    } else {
        ProxyError::TargetFailed(error.into())
    }
}

/// Copies bytes both ways between the client and the target until both sides close, nothing
/// has crossed either way for `idle`, or the proxy shuts down.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    target: hyper::upgrade::OnUpgrade,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let (client, target) = match tokio::try_join!(client, target) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let opened = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Metered { io: TokioIo::new(client), opened, last: last.clone() };
    let mut target = TokioIo::new(target);
    let quiet = async {
        loop {
            let since = opened + Duration::from_millis(last.load(Ordering::Relaxed));
            if since.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until((since + idle).into()).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut target) => match copied {
            Ok((up, down)) => tracing::debug!(bytes_to_target = up, bytes_to_client = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        },
        () = quiet => tracing::debug!(timeout = ?idle, "tunnel closed: idle"),
        () = shutdown.cancelled() => tracing::debug!("tunnel closed by shutdown"),
    }
}

/// The client's side of a tunnel, noting when bytes last crossed it either way (bytes from
/// the target are written to it, bytes to the target read from it).
struct Metered<T> {
    io: T,
    opened: Instant,
    /// Milliseconds since `opened`.
    last: Arc<AtomicU64>,
}

impl<T> Metered<T> {
    fn crossed(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.crossed();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.crossed();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// TLS to targets without certificate verification, as nginx's default
/// `proxy_ssl_verify off`: the handshake's signatures are still checked, the chain is not.
pub mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

    /// A client configuration that checks the server's signatures but not its chain or name.
    pub fn client_config() -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(SkipChainVerification(provider.clone()));
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
            // The ring provider supports the default versions.
            .expect("ring supports TLS 1.2 and 1.3")
    }

    #[derive(Debug)]
    struct SkipChainVerification(Arc<CryptoProvider>);

    impl ServerCertVerifier for SkipChainVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_index_names_each_hop_by_hop_header() {
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(hop.as_str()), Some(i));
        }
        assert_eq!(hop_index("x-keep"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-keep"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        let client = Client::new("[::ffff:192.0.2.7]:5555".parse().unwrap(), crate::handler::Conn::Plain);
        let id = HeaderValue::from_static("abc");
        let origin = Origin {
            client: &client,
            scheme: Scheme::Http,
            authority: "app.example:8080",
            request_id: &id,
            real_ip: None,
        };
        add_forwarded(&mut h, &origin);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.1, 198.51.100.2, 192.0.2.7");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example:8080");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[header::HOST], "app.example:8080");
    }
}
