//! Portico's data plane.
//!
//! A request goes: [`listener`] (accept, TLS with a certificate from `portico-certs`, hyper
//! h1/h2 on one socket) → [`handler`] (normalise
//! the host, look it up in the [`Routes`] snapshot, `forcessl` redirect) → [`forward`] (pooled
//! upstream client, forwarded headers, streamed bodies, upgrades tunnelled) → response, with
//! one access-log line when the response body ends ([`response`]).
//!
//! The request path never awaits the store: [`Routes`] is an in-memory snapshot that
//! [`routes::follow_store`] rebuilds and swaps whole when hosts change.

pub mod forward;
pub mod handler;
pub mod listener;
pub mod response;
pub mod routes;

use std::time::Duration;

pub use listener::HttpListener;
pub use routes::Routes;

/// Tunables of the data plane. Defaults follow nginx where it has an equivalent.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Port of the HTTPS listener, used in `forcessl` redirects (omitted when 443).
    pub https_port: u16,
    /// Time a client has to send a request's headers; also how long an idle HTTP/1
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
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
    /// Emit one access-log line per request (tracing target `portico::access`).
    pub access_log: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            https_port: 443,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(90),
            target_tls_verify: false,
            shutdown_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            access_log: true,
        }
    }
}
