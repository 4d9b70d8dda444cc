//! Forwarding a request to its target over the pooled client: the request rewritten
//! (`headers`), bodies streamed, upgrades tunnelled (`tunnel`), TLS to targets
//! (`target_tls`).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::client_body::{BodyReadError, ClientBody};
use portico_model::Host;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{Choice, Health};
use crate::pool::{Lease, Pool, Returning};
use crate::response::{BoxError, ProxyBody, ProxyError, chain};
use crate::server::within;
use crate::{ProxyConfig, ProxyState};

mod headers;
mod target_tls;
mod tunnel;

pub(crate) use headers::strip_hop_by_hop;
pub use headers::{Origin, Scheme, X_REQUEST_ID};
use headers::{add_forwarded, upgrade_protocol};
pub use target_tls::insecure;
pub(crate) use target_tls::target_tls;
pub(crate) use tunnel::splice;
use tunnel::tunnel;

/// The client every connection speaks to targets through (its pool, health, tunnels).
#[derive(Debug, Clone)]
pub struct TargetClient {
    pool: Arc<Pool>,
    health: Arc<Health>,
    metrics: Arc<crate::metrics::Metrics>,
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
        mut request: Request<ClientBody>,
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
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        add_forwarded(&mut parts.headers, origin);

        let asked = self.metrics.counts_requests().then(std::time::Instant::now);
        // An HTTP/1 request runs in its connection's task: the connection's watchdog keeps
        // its deadline. An HTTP/2 stream is a task of its own, with a timer.
        let watched = (parts.version < Version::HTTP_2).then_some(&origin.client.answer);
        parts.version = Version::HTTP_11;
        // Built inside the call, not bound first: a future held in a variable and then moved
        // into `within` takes room twice in this one's state.
        let (mut response, lease) = match within(
            watched,
            self.config.upstream_timeout,
            Box::pin(self.send(Request::from_parts(parts, body), routed, &mut choice, origin.client.peer.ip(), target)),
        )
        .await
        {
            None => {
                self.health.failed(&choice, "no answer in time");
                return Err(ProxyError::TargetTimeout);
            }
            Some(result) => result?,
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
        mut request: Request<ClientBody>,
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

/// A request's host and the pattern that routed it.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// The pattern, as shared text (the balancer is kept per pattern).
    pub pattern: &'a Arc<str>,
    /// The host.
    pub host: &'a Host,
}

/// A failure once the request was handed to the target's connection: 502, or 504 when an
/// I/O operation timed out. A failure to read the client's own request body (bad chunked
/// encoding, cut short) is the client's: 400.
fn classify(error: hyper::Error) -> ProxyError {
    let chain = || std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| e.source());
    let timed_out =
        chain().filter_map(|e| e.downcast_ref::<std::io::Error>()).any(|io| io.kind() == std::io::ErrorKind::TimedOut);
    // The client's body failed to read: the source of hyper's "user body" error is that
    // body's own error, another `hyper::Error` (HTTP/1.1, HTTP/2) or a `BodyReadError` (HTTP/3).
    let client_body = error.is_user()
        && std::error::Error::source(&error).is_some_and(|s| s.is::<hyper::Error>() || s.is::<BodyReadError>());
    if client_body {
        ProxyError::BadRequestBody(error.into())
    } else if timed_out {
        ProxyError::TargetTimeout
    } else {
        ProxyError::TargetFailed(error.into())
    }
}
