//! TLS passthrough: a connection to the HTTPS port whose ClientHello names a passthrough
//! host (by its SNI, through the same pattern table as HTTP routing) is forwarded to one of
//! the host's targets unterminated: the ClientHello as it came, then bytes both ways. The
//! target's certificate is the one the client sees.
//!
//! The host's targets are chosen as a proxy host's are (its balancing policy, passive and
//! active health); a target that refuses the connection is marked failed and the next one
//! tried. Only the host's address lists apply; a PROXY protocol header can name the client
//! to the target.

use std::net::SocketAddr;
use std::sync::Arc;

use portico_model::{Host, HostKind};
use tokio::net::TcpStream;

use crate::handler::Shared;
use crate::stream::{Relay, proxy_v1};

/// A connection for a passthrough host, its ClientHello read.
pub(crate) struct Unterminated {
    /// The pattern that routed it.
    pub pattern: Arc<str>,
    /// The passthrough host.
    pub host: Arc<Host>,
    /// What the client sent so far (its ClientHello, perhaps more), sent on first.
    pub hello: Vec<u8>,
}

/// The passthrough host `sni` routes to, if any.
pub(crate) fn route(shared: &Shared, sni: Option<&str>) -> Option<(Arc<str>, Arc<Host>)> {
    let name = portico_model::Hostname::parse(sni?).ok()?;
    let table = shared.routes.snapshot();
    let (pattern, host) = table.lookup(name.as_str())?;
    host.kind.is_passthrough().then(|| (pattern.shared(), host.clone()))
}

/// Forwards `client` (from `peer`) to a target of the connection's host until either side
/// ends; the tunnels' `stop` closes it.
pub(crate) async fn forward(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    unterminated: Unterminated,
    stop: tokio_util::sync::CancellationToken,
) {
    let Unterminated { pattern, host, hello } = unterminated;
    if !host.access.admits(peer.ip()) {
        tracing::info!(host = %pattern, client = %peer, "a passthrough connection refused by the host's address lists");
        return;
    }
    let name = format!("sni:{pattern}");
    let config = &shared.config;
    let relay = Relay { name: &name, metrics: &shared.state.metrics, idle: config.tunnel_idle_timeout, stop };
    let _open = relay.open();
    let health = shared.upstream.health();
    let mut tried = None;
    // Each target at most once: a failed one is ejected, or excluded as `tried`.
    for _ in 0..host.targets.len() {
        let Ok(choice) = health.choose(&pattern, &host, peer.ip(), tried) else { break };
        let address = choice.target(&host).authority();
        let Some(mut upstream) = relay.connect(address, config.upstream_connect_timeout).await else {
            health.failed(&choice, "unreachable");
            tried = Some(choice.index);
            continue;
        };
        health.succeeded(&choice);
        let _busy = crate::balance::Health::in_flight(&choice);
        let proxy_protocol = matches!(host.kind, HostKind::Passthrough(p) if p.proxy_protocol);
        let header = proxy_protocol.then(|| proxy_v1(peer, client.local_addr().unwrap_or(peer)));
        relay.carry(&mut client, peer, &mut upstream, address, header, &hello).await;
        return;
    }
    tracing::warn!(host = %pattern, client = %peer, "no target of a passthrough host could be reached");
}
