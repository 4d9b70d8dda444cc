//! The listeners: accept loop, one hyper connection per client (HTTP/1.1 and HTTP/2 on the
//! same socket: h2c with prior knowledge on plain HTTP, ALPN `h2` over TLS), graceful
//! shutdown.
//!
//! A listener's [`ProxyConfig`] can be replaced while it serves ([`ListenerSettings`], a
//! reload): each request is handled with the settings in force when it arrives; what is set
//! per connection (the head's size limit, the idle and send timeouts, the TLS handshake's)
//! applies to connections accepted from then on.
//!
//! TLS reads the ClientHello first (rustls's `Acceptor`), keeping its bytes: a name a
//! passthrough host routes is forwarded as it came ([`crate::passthrough`]). Otherwise the
//! certificate for its SNI is resolved (which may await an issuance), then the handshake
//! completes, all under one deadline. A ClientHello offering `acme-tls/1` is a TLS-ALPN-01
//! validation and gets the challenge certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use portico_certs::Certs;
use portico_certs::challenge::ACME_TLS_ALPN;
use rustls::ServerConfig;
use rustls::server::{Accepted, Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;

use crate::client_body::ClientBody;
use crate::conn::{Client, Conn};
use crate::forward::TargetClient;
use crate::handler::{Shared, handle};
use crate::passthrough::{self, Unterminated};
use crate::proxy_protocol;
use crate::routes::Routes;
use crate::server::{self, ConnectionCap, Limits, Protocol, Watch};
use crate::{ProxyConfig, ProxyState};

/// A bound listener (plain HTTP or HTTPS), ready to [`serve`](HttpListener::serve).
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    settings: ListenerSettings,
    tls: Option<Arc<Tls>>,
}

/// What a connection is served with: one [`ProxyConfig`] and what is made from it.
struct Generation {
    shared: Arc<Shared>,
    builder: Arc<server::Builders>,
    limits: Limits,
}

/// What every generation of a listener shares, whatever its configuration.
#[derive(Debug)]
struct Parts {
    state: ProxyState,
    routes: Arc<Routes>,
    certs: Option<Arc<Certs>>,
    tunnels: TaskTracker,
    tunnel_shutdown: CancellationToken,
}

/// The configuration a listener serves new connections with, which a reload replaces.
#[derive(Clone)]
pub struct ListenerSettings {
    live: Arc<ArcSwap<Generation>>,
    parts: Arc<Parts>,
}

impl std::fmt::Debug for ListenerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSettings").field("config", &self.current()).finish_non_exhaustive()
    }
}

impl ListenerSettings {
    fn new(config: ProxyConfig, parts: Parts) -> Self {
        let parts = Arc::new(parts);
        let live = Arc::new(ArcSwap::from_pointee(Self::generation(&parts, config)));
        Self { live, parts }
    }

    fn generation(parts: &Parts, config: ProxyConfig) -> Generation {
        let config = Arc::new(config);
        let limits = config.limits();
        let builder = Arc::new(
            server::builder(config.max_header_bytes).count_parked(parts.state.metrics.connections_parked.clone()),
        );
        let upstream =
            TargetClient::new(config.clone(), &parts.state, parts.tunnels.clone(), parts.tunnel_shutdown.clone());
        let shared = Arc::new(Shared {
            config,
            state: parts.state.clone(),
            routes: parts.routes.clone(),
            upstream,
            certs: parts.certs.clone(),
        });
        Generation { shared, builder, limits }
    }

    /// What new requests are handled with (an HTTP/3 request takes it as it arrives).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.live.load().shared.clone()
    }

    /// The configuration new connections are served with.
    pub fn current(&self) -> Arc<ProxyConfig> {
        self.live.load().shared.config.clone()
    }

    /// Serves requests arriving from now on with `config` (and a new pool of target
    /// connections made with it); requests in flight finish with theirs. Returns whether it
    /// differed from the current one.
    pub fn apply(&self, config: ProxyConfig) -> bool {
        if *self.current() == config {
            return false;
        }
        self.live.store(Arc::new(Self::generation(&self.parts, config)));
        true
    }
}

/// What the TLS side of a listener shares.
#[derive(Debug)]
struct Tls {
    certs: Arc<Certs>,
    /// Every connection's configuration is this one with the certificate resolved for it, so
    /// session resumption state is shared and rustls never looks the certificate up again.
    base: ServerConfig,
}

impl Tls {
    /// The configuration serving `key`, offering `alpn`.
    fn serving(&self, key: Arc<CertifiedKey>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = self.base.clone();
        config.cert_resolver = Arc::new(Single(key));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl HttpListener {
    /// Binds a plain-HTTP listener on `addr`. Routing follows `routes`, which the caller keeps
    /// up to date; with `certs`, ACME HTTP-01 requests are answered.
    pub async fn bind(
        addr: SocketAddr,
        config: ProxyConfig,
        state: ProxyState,
        routes: Arc<Routes>,
        certs: Option<Arc<Certs>>,
    ) -> std::io::Result<Self> {
        Ok(Self::on(TcpListener::bind(addr).await?, config, state, routes, certs))
    }

    /// A plain-HTTP listener on a socket bound already (inherited from another process).
    pub fn on(
        listener: TcpListener,
        config: ProxyConfig,
        state: ProxyState,
        routes: Arc<Routes>,
        certs: Option<Arc<Certs>>,
    ) -> Self {
        Self::with_parts(listener, config, state, routes, certs, None)
    }

    /// Binds an HTTPS listener on `addr`, serving the certificates `certs` resolves.
    pub async fn bind_tls(
        addr: SocketAddr,
        config: ProxyConfig,
        state: ProxyState,
        routes: Arc<Routes>,
        certs: Arc<Certs>,
    ) -> std::io::Result<Self> {
        Self::on_tls(TcpListener::bind(addr).await?, config, state, routes, certs)
    }

    /// An HTTPS listener on a socket bound already (inherited from another process).
    pub fn on_tls(
        listener: TcpListener,
        config: ProxyConfig,
        state: ProxyState,
        routes: Arc<Routes>,
        certs: Arc<Certs>,
    ) -> std::io::Result<Self> {
        let mut base = ServerConfig::builder_with_provider(Arc::new(portico_certs::server_provider()))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Single(certs.fallback().key.clone())));
        // The suite by the provider's order (AES-128-GCM first), not the client's.
        base.ignore_client_order = true;
        // Stateless session tickets (keys rotated every 6 hours): any number of clients can
        // resume, where the default in-memory session cache keeps 256.
        base.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(std::io::Error::other)?;
        // One TLS 1.3 ticket per handshake, not rustls's two: a client resumes with one
        // (browsers keep one per origin), and each costs an encryption and a record.
        base.send_tls13_tickets = 1;
        let tls = Arc::new(Tls { certs: certs.clone(), base });
        Ok(Self::with_parts(listener, config, state, routes, Some(certs), Some(tls)))
    }

    fn with_parts(
        listener: TcpListener,
        config: ProxyConfig,
        state: ProxyState,
        routes: Arc<Routes>,
        certs: Option<Arc<Certs>>,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        let parts =
            Parts { state, routes, certs, tunnels: TaskTracker::new(), tunnel_shutdown: CancellationToken::new() };
        Self { listener, settings: ListenerSettings::new(config, parts), tls }
    }

    /// The listening socket (to hand it to another process).
    pub fn socket(&self) -> &TcpListener {
        &self.listener
    }

    /// The handle a reload applies a new configuration through.
    pub fn settings(&self) -> ListenerSettings {
        self.settings.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` with at most `cap`'s connections open (shared with the
    /// listeners given the same cap), then stops accepting, lets in-flight requests finish
    /// for up to the configured shutdown timeout, closes what is left, and returns.
    pub async fn serve(self, cap: ConnectionCap, shutdown: CancellationToken) {
        let live = self.settings.live.clone();
        let tls = self.tls.clone();
        let deadline = server::accept_loop(
            &self.listener,
            &cap,
            &shutdown,
            || live.load().limits.shutdown_timeout,
            |mut stream, peer, watch| {
                let generation = live.load();
                let (shared, builder, limits) =
                    (generation.shared.clone(), generation.builder.clone(), generation.limits);
                let (tls, live) = (tls.clone(), live.clone());
                async move {
                    let _open = portico_metrics::Open::new(&shared.state.metrics.connections_open);
                    // Behind a balancer that speaks the PROXY protocol, the client is the one
                    // its header names (within the header-read deadline).
                    // Only the balancers listed may name the client; anyone else sending a
                    // header is cut off rather than believed or parsed as HTTP.
                    let peer = if !shared.config.proxy_protocol {
                        peer
                    } else if shared.config.proxy_protocol_from.iter().any(|net| net.contains(&peer.ip())) {
                        let read = tokio::time::timeout(limits.header_read_timeout, proxy_protocol::read(&mut stream));
                        match read.await {
                            Ok(Ok(client)) => client.unwrap_or(peer),
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "no PROXY protocol header");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %peer, "no PROXY protocol header in time");
                                return;
                            }
                        }
                    } else {
                        let sent = tokio::time::timeout(limits.header_read_timeout, proxy_protocol::starts_with_header(&stream));
                        if !matches!(sent.await, Ok(Ok(false))) {
                            tracing::debug!(peer = %peer, "a PROXY protocol header from a peer not allowed to send one");
                            return;
                        }
                        peer
                    };
                    let (io, conn, protocol) = match tls {
                        None => (Either::Left(stream), Conn::Plain, Protocol::Detect),
                        Some(tls) => {
                            // Boxed: the handshake's future is large, and the connection's
                            // task would otherwise keep its room for as long as it is open.
                            let hello = Box::pin(handshake(&tls, stream, peer, &shared, &watch));
                            let (stream, conn) = match hello.await {
                                Some(Opened::Terminated(stream, conn)) => (stream, conn),
                                Some(Opened::Unterminated(stream, unterminated)) => {
                                    // Carried on through a drain until its deadline.
                                    let stop = watch.deadline_passed();
                                    passthrough::forward(&shared, stream, peer, unterminated, stop).await;
                                    return;
                                }
                                None => return,
                            };
                            // The protocol ALPN chose: hyper's HTTP/1 or HTTP/2 directly.
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            (Either::Right(stream), conn, if h2 { Protocol::Http2 } else { Protocol::Http1 })
                        }
                    };
                    let client = Arc::new(Client::new(peer, conn));
                    // Each request with the settings in force when it arrives (a kept-alive
                    // connection gets a reload's timeouts at its next request).
                    // The request's future boxed at once: hyper and the watchdog move it
                    // several times, and it is some 4 KiB.
                    let watched = client.clone();
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            Box::pin(handle(live.load().shared.clone(), request.map(ClientBody::Hyper), client.clone()))
                        });
                    server::drive(&builder, io, protocol, service, &limits, watch, Some(&watched.answer)).await;
                }
            },
        )
        .await;
        drop(self.listener);
        // Tunnels (WebSockets) carry on until the drain's deadline, then are closed.
        let parts = &self.settings.parts;
        parts.tunnels.close();
        if tokio::time::timeout_at(deadline, parts.tunnels.wait()).await.is_err() {
            parts.tunnel_shutdown.cancel();
            parts.tunnels.wait().await;
        }
    }
}

/// A TLS connection after its ClientHello.
enum Opened {
    /// Its handshake done with Portico's certificate for the name.
    Terminated(Box<tokio_rustls::server::TlsStream<TcpStream>>, Conn),
    /// For a passthrough host: forwarded as it is.
    Unterminated(TcpStream, Unterminated),
}

/// Reads the ClientHello (within `proxy.header_read_timeout`: a client sends it at once); a
/// passthrough host's connection is handed back as it is, with what was read. Otherwise
/// resolves the certificate (awaiting an issuance if need be) and completes the handshake, all
/// within `proxy.handshake_timeout`. `None` when the client goes away, is too
/// slow, speaks no TLS, or sends no ClientHello while the connection cap is reached.
async fn handshake(tls: &Tls, stream: TcpStream, peer: SocketAddr, shared: &Shared, watch: &Watch) -> Option<Opened> {
    let accepted = std::time::Instant::now();
    let (config, metrics) = (&shared.config, &shared.state.metrics);
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let hello_by = tokio::time::Instant::now() + config.header_read_timeout.min(config.handshake_timeout);
    let mut stream = stream;
    let hello = tokio::time::timeout_at(hello_by, read_hello(&mut stream));
    let (accepted, seen) = tokio::select! {
        read = hello => match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "no TLS ClientHello");
                metrics.handshake(Some("no_client_hello"));
                return None;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "no TLS ClientHello in time");
                metrics.handshake(Some("timeout"));
                return None;
            }
        },
        () = watch.evicted(accepted) => {
            tracing::debug!(peer = %peer, "closing a connection with no ClientHello: the connection limit is reached");
            return None;
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    // A passthrough host's connection goes to its target as it came, ALPN validations too
    // (the target gets its own certificates).
    if let Some((pattern, host)) = passthrough::route(shared, sni.as_deref()) {
        return Some(Opened::Unterminated(stream, Unterminated { pattern, host, hello: seen }));
    }
    drop(seen);
    let validation = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
    let (config, conn) = if validation {
        let name = sni.as_deref().unwrap_or_default();
        match tls.certs.tls_alpn01_cert(name).await {
            Ok(Some(key)) => {
                tracing::info!(name, "answering an ACME TLS-ALPN-01 validation");
                // RFC 8737: the validation certificate, with ALPN `acme-tls/1` only.
                (tls.serving(key, &[ACME_TLS_ALPN]), Conn::Tls(None))
            }
            _ => {
                tracing::debug!(name, "a TLS-ALPN-01 validation for a name with no pending challenge");
                return None;
            }
        }
    } else {
        // Without SNI (a client asking for an address), the address it reached.
        let resolve = async {
            match (sni.as_deref(), stream.local_addr()) {
                (None, Ok(local)) => tls.certs.resolve_address(local.ip().to_canonical()).await,
                (sni, _) => tls.certs.resolve(sni).await,
            }
        };
        let Ok(resolved) = tokio::time::timeout_at(deadline, resolve).await else {
            tracing::info!(peer = %peer, sni = sni.as_deref(), "TLS handshake deadline passed while getting a certificate");
            metrics.handshake(Some("timeout"));
            return None;
        };
        let key = resolved.as_ref().unwrap_or_else(|| tls.certs.fallback()).key.clone();
        (tls.serving(key, &[b"h2", b"http/1.1"]), Conn::Tls(resolved))
    };
    let start = StartHandshake::from_parts(accepted, stream);
    match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(stream)) => {
            metrics.handshake(None);
            Some(Opened::Terminated(Box::new(stream), conn))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, sni = sni.as_deref(), error = %e, "TLS handshake failed");
            metrics.handshake(Some("error"));
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, sni = sni.as_deref(), "TLS handshake deadline passed");
            metrics.handshake(Some("timeout"));
            None
        }
    }
}

/// Reads a ClientHello as rustls's `Acceptor` parses it, keeping every byte read (what a
/// passthrough host's target is sent first). An unreadable one is answered with rustls's
/// alert.
async fn read_hello(stream: &mut TcpStream) -> std::io::Result<(Accepted, Vec<u8>)> {
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::with_capacity(2048);
    loop {
        let from = seen.len();
        seen.reserve(2048);
        if stream.read_buf(&mut seen).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut fresh = &seen[from..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted, seen)),
            Ok(None) => {}
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                if alert.write_all(&mut out).is_ok() {
                    let _ = stream.write_all(&out).await;
                }
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Always the same certificate.
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl ResolvesServerCert for Single {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
