//! Connections to targets, kept open between requests: hyper's connection-level HTTP/1.1
//! client under Portico's own pool.
//!
//! Each connection has a task that drives it. A request takes the most recently parked
//! connection to its target that is ready (or opens one), and its response body parks the
//! connection again once the target has sent all of it. Nothing is spawned per request, and
//! the pool is found by one hash lookup of the target's authority. A connection whose
//! response was not read to the end, or that was upgraded, is not parked: hyper closes it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::client_body::ClientBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use portico_model::Target;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::response::ProxyError;

/// A connection to a target: plain TCP, or TLS over it.
type Io = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Idle connections by target authority; one map for plain HTTP, one for TLS. Hashed with
/// foldhash: the keys are the operator's own targets, not an attacker's, and SipHash cost
/// about 470 instructions per request here.
type Parked = [HashMap<Arc<str>, Vec<Idle>, foldhash::fast::RandomState>; 2];

/// Idle connections kept per target at most; beyond, a connection whose response ended is
/// closed. A burst opens as many connections as it has requests in flight; afterwards this
/// many stay for the next one, and the rest give their file descriptors back at once rather
/// than after the idle timeout.
pub const MAX_IDLE_PER_TARGET: usize = 256;

#[derive(Debug)]
struct Idle {
    sender: SendRequest<ClientBody>,
    since: Instant,
}

/// Portico's own requests that are answered in full (forward-auth questions), with
/// connections kept alive by hyper-util's pooling client.
type AskClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

/// The pool of connections to targets.
pub struct Pool {
    parked: Mutex<Parked>,
    /// Keep-alive connections for forward-auth questions.
    asking: AskClient,
    tls: TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// A connection taken from the pool for one request.
#[derive(Debug)]
pub struct Lease {
    /// Sends the request.
    pub sender: SendRequest<ClientBody>,
    /// Whether the connection had carried requests before (one that failed before the
    /// request was written may have been closed by the target while idle: the request is
    /// worth one more try on a new connection).
    pub reused: bool,
    authority: Arc<str>,
    tls: bool,
    pool: Weak<Pool>,
    /// The request counted in progress at its target until the lease ends.
    pub hold: Option<crate::balance::TargetRequest>,
}

impl Pool {
    /// A pool whose connections take at most `connect_timeout` to open (TCP, and TLS when the
    /// target wants it, with `tls`) and are closed after `idle_timeout` unused.
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        // hyper-rustls sets ALPN itself (HTTP/1.1 here).
        let mut asking_tls = tls.clone();
        asking_tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(asking_tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let asking = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE_PER_TARGET)
            .build(https);
        let pool = Arc::new(Self {
            parked: Mutex::new(Default::default()),
            asking,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            idle_timeout,
        });
        tokio::spawn(reap(Arc::downgrade(&pool)));
        pool
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `target` ready for a request: an idle one when there is one still
    /// open, else a new one.
    pub async fn checkout(self: &Arc<Self>, target: &Target, tls: bool) -> Result<Lease, ProxyError> {
        let mut busy = Vec::new();
        let found = loop {
            let idle = self.parked()[usize::from(tls)].get_mut(target.authority()).and_then(Vec::pop);
            let Some(Idle { mut sender, since }) = idle else { break None };
            if sender.is_closed() || since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Parked at the end of a response, it is ready at once; unless it is still sending
            // the request's body (the target answered before reading it all): then it goes
            // back to wait for its turn, and this request takes another.
            match std::future::poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await {
                Poll::Ready(Ok(())) => break Some(sender),
                Poll::Ready(Err(_)) => {}
                Poll::Pending => busy.push(Idle { sender, since }),
            }
        };
        if !busy.is_empty() {
            let mut parked = self.parked();
            // At the front: the next request looks at the most recently parked ones first.
            if let Some(list) = parked[usize::from(tls)].get_mut(target.authority()) {
                list.splice(0..0, busy);
            }
        }
        match found {
            Some(sender) => Ok(self.lease(sender, target, tls, true)),
            // Boxed: opening a connection (TLS included) is a large future, and rare once the
            // pool is warm; inline, every request's future would carry its room.
            None => Box::pin(self.connect(target, tls)).await,
        }
    }

    /// A new TCP connection to `target`, with TLS on it when `tls` (not yet timed: callers
    /// bound it).
    async fn open(&self, target: &Target, tls: bool) -> Result<Io, ProxyError> {
        let tcp = TcpStream::connect((target.ip(), target.port())).await.map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        Ok(if tls {
            let name = ServerName::try_from(target.ip().to_owned()).map_err(unreachable)?;
            Either::Right(self.tls.connect(name, tcp).await.map_err(unreachable)?)
        } else {
            Either::Left(tcp)
        })
    }

    /// Sends one of Portico's own requests (a forward-auth question; its URI absolute) on a
    /// kept-alive connection to that service, so a busy host does not open (and leave in
    /// TIME_WAIT) one connection per request.
    pub async fn ask(
        &self,
        request: http::Request<http_body_util::Empty<Bytes>>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        self.asking.request(request).await.map_err(unreachable)
    }

    /// A connection of its own for one request Portico itself makes (a health check): not
    /// pooled, closed when the sender is dropped.
    pub async fn one_off(
        &self,
        target: &Target,
        tls: bool,
    ) -> Result<SendRequest<http_body_util::Empty<Bytes>>, ProxyError> {
        let io = self.open(target, tls).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(unreachable)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// A new connection to `target`.
    pub async fn connect(self: &Arc<Self>, target: &Target, tls: bool) -> Result<Lease, ProxyError> {
        let open = async {
            let io = self.open(target, tls).await?;
            let (sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(unreachable)?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "target connection ended with an error");
                }
            });
            Ok(sender)
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Err(_) => Err(ProxyError::TargetTimeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(sender)) => Ok(self.lease(sender, target, tls, false)),
        }
    }

    fn lease(self: &Arc<Self>, sender: SendRequest<ClientBody>, target: &Target, tls: bool, reused: bool) -> Lease {
        Lease { sender, reused, authority: target.shared_authority(), tls, pool: Arc::downgrade(self), hold: None }
    }

    fn park(&self, lease: Lease) {
        let idle = Idle { sender: lease.sender, since: Instant::now() };
        let mut parked = self.parked();
        let map = &mut parked[usize::from(lease.tls)];
        match map.get_mut(&lease.authority) {
            Some(list) if list.len() >= MAX_IDLE_PER_TARGET => {}
            Some(list) => list.push(idle),
            None => {
                map.insert(lease.authority, vec![idle]);
            }
        }
    }

    /// Closes connections idle for longer than the idle timeout, and forgets targets with
    /// none left.
    fn sweep(&self) {
        let mut parked = self.parked();
        for map in parked.iter_mut() {
            map.retain(|_, list| {
                list.retain(|idle| !idle.sender.is_closed() && idle.since.elapsed() < self.idle_timeout);
                !list.is_empty()
            });
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parked: usize = self.parked().iter().flat_map(|map| map.values()).map(Vec::len).sum();
        f.debug_struct("Pool").field("parked", &parked).field("idle_timeout", &self.idle_timeout).finish()
    }
}

/// Sweeps the pool every few seconds for as long as it exists.
async fn reap(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

fn unreachable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ProxyError {
    let error = error.into();
    let timed_out = error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
    if timed_out { ProxyError::TargetTimeout } else { ProxyError::TargetUnreachable(error) }
}

/// A target's response body that parks its connection once the target has sent all of it.
#[derive(Debug)]
pub struct Returning {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
}

impl Returning {
    /// `inner`, whose connection goes back to its pool at its end.
    pub fn new(inner: Incoming, lease: Lease) -> Self {
        Self { inner, lease: Some(lease), ended: false }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else { return };
        if !(self.ended || self.inner.is_end_stream()) {
            return;
        }
        if let Some(pool) = lease.pool.upgrade() {
            pool.park(lease);
        }
    }
}
