//! HTTP/3 over QUIC (quinn, h3) on the HTTPS listener's address, UDP. Its requests go
//! through the same handler as HTTP/1.1 and HTTP/2 (routing, phases, policies, access log,
//! metrics), with the HTTPS listener's settings (a reload applies to both), and are forwarded
//! to targets over HTTP/1.1 as theirs are.
//!
//! Limits as on TCP: the connection cap is shared with the TCP listeners (a QUIC connection
//! over the cap is refused at once, and idle TCP connections are asked to close); each
//! connection takes at most [`MAX_STREAMS`] requests at once; request heads are at most
//! `proxy.max_header_bytes`; the handshake has `proxy.handshake_timeout`, a request head
//! `proxy.header_read_timeout`; a connection with nothing in flight closes after
//! `proxy.idle_timeout`. quinn keeps to QUIC's anti-amplification limit (three times what an
//! unvalidated address sent). 0-RTT is off unless `proxy.http3_0rtt`; then a request that came
//! in 0-RTT with a safe method (GET, HEAD, OPTIONS) is answered at once, and any other waits
//! until the handshake completes, which a replayed first flight never does.
//!
//! Certificates: a QUIC handshake cannot wait for an issuance (rustls asks for the
//! certificate from within quinn's packet processing), so it is served the certificate this
//! process holds for the SNI. A client's first Initial packets are read before quinn sees
//! them ([`crate::quic_peek`]): for a name whose certificate is not held yet, they wait
//! while it is loaded or issued, so a first QUIC handshake gets the name's certificate as a
//! first TCP one does. A ClientHello whose SNI is not in its first packet gets the fallback
//! certificate for that handshake while the name's is got for the next.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use portico_certs::Certs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client_body::{ClientBody, QuicBody};
use crate::conn::{Client, Conn};
use crate::handler::handle;
use crate::listener::ListenerSettings;
use crate::quic_peek::Peeking;
use crate::server::ConnectionCap;

/// Requests one connection may have in flight at once (HTTP/2's `max_concurrent_streams`).
pub const MAX_STREAMS: u32 = 100;

/// The HTTP/3 endpoint.
#[derive(Debug)]
pub struct QuicListener {
    /// The endpoint, with what it serves with.
    control: QuicControl,
    /// A copy of the endpoint's socket, to hand over to another process (an upgrade).
    socket: std::net::UdpSocket,
}

impl QuicListener {
    /// Binds UDP `addr` (the HTTPS listener's address), serving requests with `settings`
    /// (the HTTPS listener's) and certificates from `certs`.
    pub fn bind(addr: SocketAddr, settings: ListenerSettings, certs: Arc<Certs>) -> std::io::Result<Self> {
        Self::on(std::net::UdpSocket::bind(addr)?, settings, certs)
    }

    /// The endpoint on a socket bound already (inherited from another process).
    pub fn on(socket: std::net::UdpSocket, settings: ListenerSettings, certs: Arc<Certs>) -> std::io::Result<Self> {
        let config = server_config(&certs, &settings)?;
        let copy = socket.try_clone()?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| std::io::Error::other("HTTP/3 needs the Tokio runtime"))?;
        // Each client's first packets are read for their SNI before quinn sees them.
        let deadline = settings.current().handshake_timeout;
        let peeking = Peeking::new(runtime.wrap_udp_socket(socket)?, certs.clone(), deadline);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(config),
            Arc::new(peeking),
            runtime,
        )?;
        Ok(Self { control: QuicControl { endpoint, settings, certs }, socket: copy })
    }

    /// What a reload changes the endpoint through.
    pub fn control(&self) -> QuicControl {
        self.control.clone()
    }

    /// The UDP socket (to hand it to another process).
    pub fn socket(&self) -> &std::net::UdpSocket {
        &self.socket
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.control.endpoint.local_addr()
    }

    /// Serves until `shutdown`, then asks each connection to finish (GOAWAY), waits for the
    /// requests in flight up to the shutdown timeout, and closes.
    pub async fn serve(self, cap: ConnectionCap, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => break,
                incoming = self.control.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Some(permit) = cap.try_admit() else {
                incoming.refuse();
                continue;
            };
            let control = &self.control;
            let (settings, certs, shutdown) = (control.settings.clone(), control.certs.clone(), shutdown.clone());
            connections.spawn(async move {
                serve_connection(incoming, settings, certs, shutdown).await;
                drop(permit);
            });
        }
        connections.close();
        let grace = self.control.settings.current().shutdown_timeout;
        if tokio::time::timeout(grace, connections.wait()).await.is_err() {
            tracing::warn!(timeout = ?grace, "shutdown deadline passed; closing the remaining HTTP/3 connections");
        }
        self.control.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.control.endpoint.wait_idle()).await;
    }
}

/// The handle a reload applies new settings to an HTTP/3 endpoint through.
#[derive(Debug, Clone)]
pub struct QuicControl {
    endpoint: quinn::Endpoint,
    settings: ListenerSettings,
    certs: Arc<Certs>,
}

impl QuicControl {
    /// New connections from now on are made with the HTTPS listener's settings as they are
    /// now (its idle timeout, `proxy.http3_0rtt`); connections open keep theirs.
    pub fn apply(&self) {
        match server_config(&self.certs, &self.settings) {
            Ok(config) => self.endpoint.set_server_config(Some(config)),
            Err(e) => tracing::error!(error = %e, "the HTTP/3 endpoint keeps its settings"),
        }
    }
}

/// The QUIC server configuration: TLS 1.3 with ALPN `h3`, the certificates held for each
/// SNI, session tickets (0-RTT when `proxy.http3_0rtt`), the connection limits.
fn server_config(certs: &Arc<Certs>, settings: &ListenerSettings) -> std::io::Result<quinn::ServerConfig> {
    let config = settings.current();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(portico_certs::server_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Held(certs.clone())));
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.ignore_client_order = true;
    tls.send_tls13_tickets = 1;
    if config.http3_0rtt {
        // rustls takes 0-RTT only on a session it holds (each used once: a replayed
        // ClientHello finds it gone), not a stateless ticket; quinn only with the largest limit.
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
        tls.max_early_data_size = u32::MAX;
    } else {
        tls.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(std::io::Error::other)?;
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// One QUIC connection: its handshake, then its requests, each a task of its own.
async fn serve_connection(
    incoming: quinn::Incoming,
    settings: ListenerSettings,
    certs: Arc<Certs>,
    shutdown: CancellationToken,
) {
    let peer = incoming.remote_address();
    let config = settings.current();
    let metrics = settings.shared().state.metrics.clone();
    let _open = portico_metrics::Open::new(&metrics.connections_open);
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "a QUIC connection was not accepted");
            return;
        }
    };
    // 0-RTT: the connection is used at once, and unsafe requests wait for `confirmed`.
    let (connection, confirmed) = if config.http3_0rtt {
        // A server's connection is usable at once (quinn: always, for incoming ones);
        // `confirmed` says when the handshake completed, and the deadline is kept here.
        let Ok((connection, accepted)) = connecting.into_0rtt() else { return };
        let confirmed = futures_util::FutureExt::shared(accepted);
        let (watched, deadline, metrics, done) =
            (connection.clone(), config.handshake_timeout, metrics.clone(), confirmed.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(deadline, done).await {
                Ok(true) => metrics.handshake(None),
                Ok(false) => metrics.handshake(Some("error")),
                Err(_) => {
                    metrics.handshake(Some("timeout"));
                    watched.close(0u32.into(), b"handshake deadline");
                }
            }
        });
        (connection, Some(confirmed))
    } else {
        match tokio::time::timeout(config.handshake_timeout, connecting).await {
            Ok(Ok(connection)) => {
                metrics.handshake(None);
                (connection, None)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "QUIC handshake failed");
                metrics.handshake(Some("error"));
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "QUIC handshake deadline passed");
                metrics.handshake(Some("timeout"));
                return;
            }
        }
    };
    let sni = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.server_name);
    let held = sni.as_deref().and_then(|name| certs.resolve_held(name));
    let client = Arc::new(Client::new(peer, Conn::Tls(held)));
    // No GREASE: a reserved frame after a request's last DATA frame leaves some clients
    // (aioquic) waiting for an end of stream they do not see.
    let built = h3::server::builder()
        .send_grease(false)
        .max_field_section_size(u64::try_from(config.max_header_bytes).unwrap_or(u64::MAX))
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let requests = TaskTracker::new();
    let mut going_away = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled(), if !going_away => {
                // GOAWAY: no new requests; those in flight finish.
                going_away = true;
                let _ = h3.shutdown(0).await;
                continue;
            }
            accepted = h3.accept() => accepted,
        };
        match accepted {
            Ok(Some(resolver)) => {
                let (settings, client, confirmed) = (settings.clone(), client.clone(), confirmed.clone());
                let header_read_timeout = config.header_read_timeout;
                requests.spawn(async move {
                    let resolved = tokio::time::timeout(header_read_timeout, resolver.resolve_request()).await;
                    match resolved {
                        Ok(Ok((request, stream))) => {
                            // Possibly sent in 0-RTT, which an attacker can replay: only a safe
                            // method is acted on before the handshake completes.
                            if let Some(confirmed) = confirmed
                                && !request.method().is_safe()
                                && !confirmed.await
                            {
                                tracing::debug!(peer = %client.peer, "an unsafe request's 0-RTT data was rejected");
                            }
                            serve_request(request, stream, settings, client).await
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %client.peer, error = %e, "an unreadable HTTP/3 request"),
                        Err(_) => tracing::debug!(peer = %client.peer, "an HTTP/3 request head not in time"),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(peer = %peer, error = %e, "HTTP/3 connection ended");
                }
                break;
            }
        }
    }
    requests.close();
    requests.wait().await;
}

/// One HTTP/3 request: handled as any, its answer streamed back (headers, data, trailers).
async fn serve_request(
    request: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    settings: ListenerSettings,
    client: Arc<Client>,
) {
    let (mut send, receive) = stream.split();
    let length = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let request = request.map(|()| ClientBody::Quic(Box::new(QuicBody::new(receive, length))));
    let Ok(response) = handle(settings.shared(), request, client.clone()).await;
    let (mut head, body) = response.into_parts();
    // Connection-specific headers have no place in HTTP/3 (RFC 9114 §4.2).
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE] {
        head.headers.remove(name);
    }
    head.headers.remove("keep-alive");
    head.headers.remove("proxy-connection");
    head.version = http::Version::HTTP_3;
    if let Err(e) = send.send_response(Response::from_parts(head, ())).await {
        tracing::debug!(peer = %client.peer, error = %e, "an HTTP/3 answer could not be sent");
        return;
    }
    let send_timeout = settings.current().send_timeout;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let sent = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => tokio::time::timeout(send_timeout, send.send_data(data)).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => tokio::time::timeout(send_timeout, send.send_trailers(trailers)).await,
                    Err(_) => continue,
                },
            },
            Err(e) => {
                tracing::debug!(peer = %client.peer, error = %e, "an HTTP/3 answer's body failed");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %client.peer, error = %e, "an HTTP/3 answer could not be sent");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %client.peer, "an HTTP/3 client stopped reading: its answer is cut off");
                send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                return;
            }
        }
    }
    let _ = send.finish().await;
}

/// The certificate held for the ClientHello's SNI; else the fallback certificate, while the
/// name's own is loaded (or issued) for the next handshake.
#[derive(Debug)]
struct Held(Arc<Certs>);

impl ResolvesServerCert for Held {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else { return Some(self.0.fallback().key.clone()) };
        if let Some(held) = self.0.resolve_held(name) {
            return Some(held.key.clone());
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (certs, name) = (self.0.clone(), name.to_owned());
            runtime.spawn(async move { certs.resolve(Some(&name)).await });
        }
        Some(self.0.fallback().key.clone())
    }
}
