//! Who a request's connection is from and how it is secured: made once per connection, read
//! by every phase of its requests.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use portico_certs::Loaded;

use crate::forward::Scheme;
use crate::server::AnswerDeadline;

/// Who a request's connection is from and how it is secured: made once per connection.
#[derive(Debug)]
pub struct Client {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer's IP address as the forwarded headers write it.
    pub ip: HeaderValue,
    /// Plain or TLS.
    pub conn: Conn,
    /// The deadline of the answer its HTTP/1 request waits for, kept by the connection's
    /// watchdog.
    pub answer: AnswerDeadline,
}

impl Client {
    /// The client at `peer` on `conn`.
    pub fn new(peer: SocketAddr, conn: Conn) -> Self {
        let ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string());
        // An IP address is always a valid header value.
        Self { peer, ip: ip.unwrap_or(HeaderValue::from_static("-")), conn, answer: AnswerDeadline::default() }
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
    /// The scheme requests on it use.
    pub fn scheme(&self) -> Scheme {
        match self {
            Self::Plain => Scheme::Http,
            Self::Tls(_) => Scheme::Https,
        }
    }
}
