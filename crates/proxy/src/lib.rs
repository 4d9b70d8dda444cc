//! Portico's data plane.
//!
//! A request goes: [`listener`] (accept, the PROXY protocol header when trusted, TLS with a
//! certificate from `portico-certs`, hyper h1/h2 on one socket; who the connection is from
//! in [`conn`]) → [`handler`] (what is about the proxy itself, the host normalised and
//! looked up in the [`Routes`] snapshot, then the routed request's phases in order: ACME
//! HTTP-01 answer, body size, `forcessl` redirect, client address, [`access`], choose a
//! target ([`balance`]) and forward) → [`forward`] (pooled upstream client, forwarded
//! headers, streamed bodies, upgrades tunnelled) → response, with one access-log line when
//! the response body ends ([`response`]).
//!
//! The request path never awaits the store, but for one case: an ACME HTTP-01 request
//! (plain HTTP, under `/.well-known/acme-challenge/`, for a name a host matches) reads the
//! pending answer. [`Routes`] is an in-memory snapshot that [`routes::follow_store`]
//! patches (or rebuilds and swaps whole) when the node's change follower
//! ([`portico_store::Follower`]) hands it changed hosts. Configuration ([`ProxyConfig`]) is
//! data; what outlives it (counters, targets' health, access state) is [`ProxyState`].

pub mod access;
pub mod balance;
pub mod checks;
pub mod client_body;
pub mod compress;
pub mod conn;
pub mod forward;
pub mod handler;
pub mod listener;
pub mod metrics;
pub mod passthrough;
pub mod pool;
pub mod proxy_protocol;
pub mod quic;
pub mod quic_peek;
pub mod response;
pub mod routes;
pub mod server;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

pub use listener::HttpListener;
pub use routes::Routes;

/// What the data plane of one process keeps whatever its configuration: made once by the
/// node and shared by its listeners, its active health checks and the API, so a new
/// [`ProxyConfig`] (a reload) keeps counters, targets' health and rate-limit buckets.
#[derive(Debug, Clone)]
pub struct ProxyState {
    /// Where requests, connections, handshakes and tunnels are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// What the process knows of targets' health.
    pub health: std::sync::Arc<balance::Health>,
    /// Hosts' access policies' state (rate-limit buckets, verified passwords).
    pub access: std::sync::Arc<access::Guard>,
}

impl ProxyState {
    /// New state, counting into `metrics`.
    pub fn new(metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Self { metrics, health: std::sync::Arc::default(), access: std::sync::Arc::default() }
    }
}

/// Tunables of the data plane: data only. Defaults follow nginx where it has an
/// equivalent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Port of the HTTPS listener, used in `forcessl` redirects (omitted when 443).
    pub https_port: u16,
    /// Time from accept (or the end of the TLS handshake) to the first complete request head;
    /// also how long an idle HTTP/1 keep-alive connection waits for the next request's head.
    pub header_read_timeout: Duration,
    /// How long a connection (HTTP/1 or HTTP/2) with no request in flight stays open.
    pub idle_timeout: Duration,
    /// Connections open at once on the proxy's listeners together; more wait.
    pub max_connections: usize,
    /// How long a response may wait for the client to read more of it before the connection
    /// is closed (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// How long a WebSocket tunnel may carry nothing either way before it is closed.
    pub tunnel_idle_timeout: Duration,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Time to connect to a target.
    pub upstream_connect_timeout: Duration,
    /// Time a target has to start its response once the request is sent.
    pub upstream_timeout: Duration,
    /// How long idle pooled upstream connections are kept.
    pub upstream_idle_timeout: Duration,
    /// Verify targets' TLS certificates for `targetssl` hosts (off by default, as nginx's
    /// `proxy_ssl_verify`: targets are usually internal services with their own certificates).
    pub target_tls_verify: bool,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// One deadline for a whole TLS handshake, certificate issuance included.
    pub handshake_timeout: Duration,
    /// The access log: one line per request, in this format.
    pub access_log: AccessLog,
    /// Proxies in front of Portico (addresses or networks): from them, the client's address
    /// is read from `X-Forwarded-For` (for access lists, rate limits and `ip_hash`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections from `proxy_protocol_from` start with a PROXY protocol header (v1 or v2),
    /// which gives the client's address (a load balancer in front that speaks it).
    pub proxy_protocol: bool,
    /// The balancers a PROXY protocol header is accepted from; anyone else's connection is
    /// served as it is, and closed if it starts with such a header.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// The default page of Portico's own error answers (`proxy.error_page`'s text, with
    /// `{status}` and `{request_id}`), where a host has none of its own.
    pub error_page: Option<Arc<str>>,
    /// The `Alt-Svc` header advertising HTTP/3 on HTTPS answers (`proxy.http3` with
    /// `proxy.alt_svc`): `h3=":443"; ma=86400`.
    pub alt_svc: Option<http::HeaderValue>,
    /// HTTP/3 takes requests in 0-RTT (`proxy.http3_0rtt`): a safe method's is answered at
    /// once, any other waits for the handshake to complete (a replayed first flight never
    /// completes one).
    pub http3_0rtt: bool,
}

/// How requests are logged (`log.access_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// Not at all.
    Off,
    /// Through the application log (tracing target `portico::access`, in `log.format`).
    Log,
    /// The combined log format (Apache and nginx's), one line per request on standard output.
    Common,
    /// One JSON object per request on standard output.
    Json,
}

impl AccessLog {
    /// Whether a line names the client's `User-Agent` and `Referer` (only these formats do,
    /// so only they copy them out of each request).
    pub fn names_client_headers(self) -> bool {
        matches!(self, Self::Common | Self::Json)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            https_port: 443,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            send_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            max_header_bytes: 64 * 1024,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(90),
            target_tls_verify: false,
            shutdown_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            access_log: AccessLog::Log,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            proxy_protocol_from: Vec::new(),
            error_page: None,
            alt_svc: None,
            http3_0rtt: false,
        }
    }
}

impl ProxyConfig {
    /// The time limits every connection of the proxy's listeners gets.
    pub fn limits(&self) -> server::Limits {
        server::Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}
