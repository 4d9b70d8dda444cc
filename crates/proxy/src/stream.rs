//! Streams (NPM's): listening ports whose TCP connections (or UDP datagrams, a session per
//! client address) are forwarded, bytes as they are, to a stream's targets; a target that
//! fails is passed over for a back-off (1 s, doubling, at most 30 s). Each stream is a task
//! that follows the store: a new stream is bound, a changed one rebound (its open connections
//! go on), a removed one closed. A port that cannot be bound is logged and the others go on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portico_model::Upstream;
use portico_model::stream::{Protocol, Stream};
use portico_store::{Followed, Kind, Store, Subscription};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, StreamLabels, StreamName, StreamTarget};

/// How streams treat their connections.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Time to connect to a target.
    pub connect_timeout: Duration,
    /// A connection that carries nothing either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once per stream; more are closed at once.
    pub max_connections: usize,
}

/// One running stream: what it is now (its accept loop reads it for each connection), and
/// the accept loop's token.
struct Running {
    stream: Arc<ArcSwap<Stream>>,
    stop: CancellationToken,
}

/// Runs every stream in the store, following changes, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    mut changes: Subscription,
    settings: StreamSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let start = |id: &str, stream: Stream, running: &mut HashMap<String, Running>| {
        // The same port: the listener stays, and its next connections follow the new settings.
        if let Some(old) = running.get(id)
            && old.stream.load().listen == stream.listen
            && old.stream.load().protocol == stream.protocol
        {
            old.stream.store(Arc::new(stream));
            return;
        }
        if let Some(old) = running.remove(id) {
            old.stop.cancel();
        }
        let stop = shutdown.child_token();
        let current = Arc::new(ArcSwap::from_pointee(stream));
        tokio::spawn(serve(current.clone(), settings, metrics.clone(), stop.clone(), shutdown.clone()));
        running.insert(id.to_owned(), Running { stream: current, stop });
    };
    let mut resync = true;
    loop {
        if resync {
            resync = false;
            match store.records(Kind::Stream).await {
                Ok(records) => {
                    let mut seen = std::collections::HashSet::new();
                    for (id, fields) in records {
                        seen.insert(id.clone());
                        match Stream::from_fields(&fields) {
                            Ok(stream) if running.get(&id).is_some_and(|r| **r.stream.load() == stream) => {}
                            Ok(stream) => start(&id, stream, &mut running),
                            Err(e) => {
                                tracing::warn!(stream = %id, error = %e, "skipping a stream record that does not parse")
                            }
                        }
                    }
                    running.retain(|id, r| {
                        let keep = seen.contains(id);
                        if !keep {
                            r.stop.cancel();
                        }
                        keep
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the streams; trying again at the next change"),
            }
        }
        let change = tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.next() => change,
        };
        match change {
            Some(Followed::Record { kind: Kind::Stream, key, now }) => {
                match now.map(|fields| Stream::from_fields(&fields)) {
                    Some(Ok(stream)) if running.get(&key).is_some_and(|r| **r.stream.load() == stream) => {}
                    Some(Ok(stream)) => start(&key, stream, &mut running),
                    Some(Err(e)) => tracing::warn!(stream = %key, error = %e, "a stream record does not parse"),
                    None => {
                        if let Some(old) = running.remove(&key) {
                            old.stop.cancel();
                        }
                    }
                }
            }
            Some(Followed::Resync) => resync = true,
            Some(_) => {}
            None => return,
        }
    }
}

/// Serves `stream`'s port until `stop` (connections and sessions already open go on).
async fn serve(
    current: Arc<ArcSwap<Stream>>,
    settings: StreamSettings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let (listen, protocol) = {
        let stream = current.load();
        (stream.listen, stream.protocol)
    };
    let name = match protocol {
        Protocol::Tcp => listen.to_string(),
        Protocol::Udp => format!("udp:{listen}"),
    };
    // Connections go on when the stream is changed (only its listener stops), not at shutdown.
    let shared = Arc::new(Shared {
        current,
        settings,
        metrics,
        name,
        next: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        down: Mutex::default(),
        checked_down: Mutex::default(),
        stop: shutdown,
    });
    match protocol {
        Protocol::Tcp => {
            let Some(listener) = bind(listen, TcpListener::bind).await else { return };
            tracing::info!(listen = %listen, "stream listening (TCP)");
            tokio::spawn(shared.clone().check(stop.clone()));
            shared.accept(listener, stop).await;
        }
        Protocol::Udp => {
            let Some(socket) = bind(listen, UdpSocket::bind).await else { return };
            tracing::info!(listen = %listen, "stream listening (UDP)");
            shared.receive(Arc::new(socket), stop).await;
        }
    }
}

/// Binds `listen`. A stream moved to another port releases its old one as its loop sees the
/// cancellation: a stream moved onto it waits a moment for it. `None` (logged) when it
/// cannot be bound.
async fn bind<T, F, Fut>(listen: SocketAddr, bind: F) -> Option<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let mut tries = 0;
    loop {
        match bind(listen).await {
            Ok(bound) => return Some(bound),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                tracing::error!(listen = %listen, error = %e, "cannot listen for a stream; it is not served");
                return None;
            }
        }
    }
}

/// What a stream's connections share.
struct Shared {
    /// The stream as it is now.
    current: Arc<ArcSwap<Stream>>,
    settings: StreamSettings,
    metrics: Arc<Metrics>,
    /// The stream's name in logs and metrics: its listening address (`udp:` first for UDP).
    name: String,
    /// The round-robin position.
    next: AtomicUsize,
    /// Connections (or UDP sessions) open now.
    open: AtomicUsize,
    /// Targets that failed lately, by address: passed over until their back-off ends.
    down: Mutex<HashMap<String, Ejected>>,
    /// Targets the stream's health checks mark down, by address: passed over until they
    /// pass again.
    checked_down: Mutex<std::collections::HashSet<String>>,
    /// The proxy's shutdown: open connections end with it.
    stop: CancellationToken,
}

/// A target passed over after failures in a row.
#[derive(Debug, Clone, Copy)]
struct Ejected {
    failures: u32,
    until: Instant,
}

impl Shared {
    /// Accepts TCP connections until `stop`.
    async fn accept(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "a stream's accept failed");
                    continue;
                }
            };
            if !self.current.load().admits(peer.ip()) {
                tracing::debug!(listen = %self.name, client = %peer, "stream connection refused by the access lists");
                continue;
            }
            if self.open.load(Ordering::Relaxed) >= self.settings.max_connections {
                tracing::warn!(listen = %self.name, "a stream is at its connection limit: a connection is closed");
                continue;
            }
            tokio::spawn(self.clone().carry(client, peer));
        }
    }

    /// The order to try `stream`'s targets in for `client`: by its policy, then the others;
    /// targets that failed lately last (tried only when the others fail too).
    fn order<'a>(&self, stream: &'a Stream, client: SocketAddr) -> Vec<&'a Upstream> {
        let targets = &stream.targets;
        // Round robin by weight or the client's place (least_conn without per-target counts
        // is round robin too), as a host's balancer starts.
        let first = crate::balance::start(stream.balance, targets, client.ip(), &self.next);
        let mut order: Vec<&Upstream> = targets[first..].iter().chain(&targets[..first]).collect();
        let now = Instant::now();
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let checked_down = self.checked_down.lock().unwrap_or_else(|e| e.into_inner());
        order.sort_by_key(|u| {
            let address = u.target.authority();
            (checked_down.contains(address), down.get(address).is_some_and(|e| e.until > now))
        });
        order
    }

    /// Checks the stream's targets while it has a `healthCheck` (as the stream is now, read
    /// at each round), until `stop`: a connection made within the connect timeout is a pass.
    async fn check(self: Arc<Self>, stop: CancellationToken) {
        // Checks in a row, by target.
        let mut streaks: HashMap<String, portico_model::Streak> = HashMap::new();
        loop {
            let stream = self.current.load_full();
            let wait = match stream.health_check {
                None => {
                    self.checked_down.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    streaks.clear();
                    Duration::from_secs(1)
                }
                Some(timing) => {
                    let timeout = self.settings.connect_timeout;
                    let probes = stream.targets.iter().map(|u| {
                        let address = u.target.authority().to_owned();
                        async move {
                            let made = tokio::time::timeout(timeout, TcpStream::connect(&address)).await;
                            (address, matches!(made, Ok(Ok(_))))
                        }
                    });
                    let results = futures_util::future::join_all(probes).await;
                    let listed = |a: &String| stream.targets.iter().any(|u| u.target.authority() == a);
                    streaks.retain(|a, _| listed(a));
                    let mut down = self.checked_down.lock().unwrap_or_else(|e| e.into_inner());
                    down.retain(|a| listed(a));
                    for (address, passed) in results {
                        match streaks.entry(address.clone()).or_default().record(
                            passed,
                            timing.unhealthy,
                            timing.healthy,
                        ) {
                            Some(false) => {
                                down.remove(&address);
                                tracing::info!(listen = %self.name, target = %address, "a stream's target passes its checks again");
                            }
                            Some(true) => {
                                down.insert(address.clone());
                                tracing::warn!(listen = %self.name, target = %address, "a stream's target fails its checks: passed over");
                            }
                            None => {}
                        }
                        let labels = StreamTarget { stream: self.name.clone(), target: address.clone() };
                        self.metrics.stream_target_up.get_or_create(&labels).set(i64::from(!down.contains(&address)));
                    }
                    timing.interval
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A target did not take a connection (or refused a datagram): passed over for a while.
    fn failed(&self, address: &str) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let failures = down.get(address).map_or(0, |e| e.failures).saturating_add(1);
        let until = Instant::now() + crate::balance::backoff(failures);
        down.insert(address.to_owned(), Ejected { failures, until });
    }

    /// A target took a connection: no longer passed over.
    fn succeeded(&self, address: &str) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if !down.is_empty() {
            down.remove(address);
        }
    }

    /// How this stream's connections are carried, counted and logged.
    fn relay(&self) -> Relay<'_> {
        Relay { name: &self.name, metrics: &self.metrics, idle: self.settings.idle_timeout, stop: self.stop.clone() }
    }

    /// Connects `client` to the first target that answers, and carries bytes both ways.
    async fn carry(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        self.open.fetch_add(1, Ordering::Relaxed);
        let stream = self.current.load_full();
        let relay = self.relay();
        let _open = relay.open();
        let mut target = None;
        for upstream in self.order(&stream, peer) {
            let address = upstream.target.authority();
            if let Some(connected) = relay.connect(address, self.settings.connect_timeout).await {
                self.succeeded(address);
                target = Some((connected, address));
                break;
            }
            self.failed(address);
        }
        match target {
            Some((mut upstream, address)) => {
                let header =
                    stream.proxy_protocol.then(|| proxy_v1(peer, client.local_addr().unwrap_or(stream.listen)));
                relay.carry(&mut client, peer, &mut upstream, address, header, &[]).await;
            }
            None => tracing::warn!(listen = %self.name, client = %peer, "no target of a stream could be reached"),
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Carries a connection's bytes, unread, to a target: a stream's, or a passthrough host's.
pub(crate) struct Relay<'a> {
    /// Its name in metrics and logs: a stream's listening address, or `sni:` and a
    /// passthrough host's pattern.
    pub name: &'a str,
    pub metrics: &'a Metrics,
    /// Nothing either way for this long closes the connection.
    pub idle: Duration,
    /// Closes the connection (the proxy's shutdown).
    pub stop: CancellationToken,
}

impl Relay<'_> {
    /// Counts a connection as open (`portico_stream_connections_open`) until dropped.
    pub(crate) fn open(&self) -> portico_metrics::Open {
        let labels = StreamName { stream: self.name.to_owned() };
        portico_metrics::Open::new(&self.metrics.stream_connections.get_or_create(&labels))
    }

    /// Connects to `address` within `timeout`; `None` (logged) when it refuses or is silent.
    pub(crate) async fn connect(&self, address: &str, timeout: Duration) -> Option<TcpStream> {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(connected)) => Some(connected),
            Ok(Err(e)) => {
                tracing::warn!(name = %self.name, target = %address, error = %e, "a target refused a forwarded connection");
                None
            }
            Err(_) => {
                tracing::warn!(name = %self.name, target = %address, "a target did not answer a forwarded connection in time");
                None
            }
        }
    }

    /// Sends `header` (a PROXY protocol header) and `replay` (what was read of the client
    /// already: a ClientHello) to `upstream`, then carries bytes both ways until either side
    /// ends, the connection idles or the proxy stops; counts the bytes each way (`replay`
    /// among the client's) and logs the connection.
    pub(crate) async fn carry(
        &self,
        client: &mut TcpStream,
        peer: SocketAddr,
        upstream: &mut TcpStream,
        address: &str,
        header: Option<String>,
        replay: &[u8],
    ) {
        let mut first = header.map(String::into_bytes).unwrap_or_default();
        first.extend_from_slice(replay);
        if let Err(e) = upstream.write_all(&first).await {
            tracing::debug!(name = %self.name, target = %address, error = %e, "a target closed a forwarded connection at once");
            return;
        }
        let (inbound, outbound) = crate::forward::splice(client, upstream, self.idle, self.stop.clone()).await;
        let inbound = inbound + replay.len() as u64;
        let count = |direction, n| {
            self.metrics
                .stream_bytes
                .get_or_create(&StreamLabels { stream: self.name.to_owned(), direction })
                .inc_by(n);
        };
        count("in", inbound);
        count("out", outbound);
        tracing::info!(target: "portico::access", name = %self.name, client = %peer, target = %address,
            bytes_in = inbound, bytes_out = outbound, "forwarded connection closed");
    }
}

/// The largest UDP payload.
const DATAGRAM: usize = 65_536;

/// A UDP client's session: its own socket connected to one target, whose answers go back to
/// the client from the stream's port.
struct Session {
    upstream: UdpSocket,
    /// The target's address.
    target: String,
    opened: Instant,
    /// When a datagram last crossed either way (milliseconds since `opened`).
    last: AtomicU64,
    /// The session is over (idle, the target refused, the stream removed).
    ended: CancellationToken,
    /// Bytes from the client.
    inbound: Counter,
    received: AtomicU64,
}

impl Session {
    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// When it has been quiet for `idle`, if nothing crosses meanwhile.
    fn quiet_at(&self, idle: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle
    }
}

impl Shared {
    /// Takes datagrams on `socket` until `stop`: each client address is a session, sent on
    /// to its target; sessions end when idle for the idle timeout (or their target refuses),
    /// and at most `max_connections` are open at once.
    async fn receive(self: Arc<Self>, socket: Arc<UdpSocket>, stop: CancellationToken) {
        let mut sessions: HashMap<SocketAddr, Arc<Session>> = HashMap::new();
        let mut buf = vec![0u8; DATAGRAM];
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => break,
                received = socket.recv_from(&mut buf) => received,
            };
            let Ok((n, peer)) = received else { continue };
            if !self.current.load().admits(peer.ip()) {
                tracing::debug!(listen = %self.name, client = %peer, "a datagram refused by the stream's access lists");
                continue;
            }
            let session = match sessions.get(&peer).filter(|s| !s.ended.is_cancelled()) {
                Some(session) => session.clone(),
                None => {
                    sessions.retain(|_, s| !s.ended.is_cancelled());
                    if sessions.len() >= self.settings.max_connections {
                        tracing::warn!(listen = %self.name, "a UDP stream is at its session limit: a datagram is dropped");
                        continue;
                    }
                    let Some(session) = self.clone().open_session(socket.clone(), peer).await else { continue };
                    sessions.insert(peer, session.clone());
                    session
                }
            };
            session.touch();
            match session.upstream.send(&buf[..n]).await {
                Ok(sent) => {
                    session.inbound.inc_by(sent as u64);
                    session.received.fetch_add(sent as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(listen = %self.name, target = %session.target, error = %e, "a datagram not sent on");
                    self.failed(&session.target);
                    session.ended.cancel();
                }
            }
        }
        // The stream changed port or was removed: its sessions end with its socket.
        for session in sessions.values() {
            session.ended.cancel();
        }
    }

    /// A session for `peer` with the first target in order whose address can be connected to;
    /// its answers are sent back from `socket` by a task of its own.
    async fn open_session(self: Arc<Self>, socket: Arc<UdpSocket>, peer: SocketAddr) -> Option<Arc<Session>> {
        let stream = self.current.load_full();
        let mut chosen = None;
        for upstream in self.order(&stream, peer) {
            let address = upstream.target.authority().to_owned();
            match connect_udp(&address).await {
                Ok(connected) => {
                    chosen = Some((connected, address));
                    break;
                }
                Err(e) => {
                    tracing::warn!(listen = %self.name, target = %address, error = %e, "a UDP target cannot be reached");
                    self.failed(&address);
                }
            }
        }
        let Some((upstream, target)) = chosen else {
            tracing::warn!(listen = %self.name, client = %peer, "no target of a UDP stream could be reached");
            return None;
        };
        let labels = |direction| StreamLabels { stream: self.name.clone(), direction };
        let session = Arc::new(Session {
            upstream,
            target,
            opened: Instant::now(),
            last: AtomicU64::new(0),
            ended: CancellationToken::new(),
            inbound: self.metrics.stream_bytes.get_or_create(&labels("in")).clone(),
            received: AtomicU64::new(0),
        });
        let outbound = self.metrics.stream_bytes.get_or_create(&labels("out")).clone();
        let answering = session.clone();
        tokio::spawn(async move { self.answer(answering, socket, peer, outbound).await });
        Some(session)
    }

    /// Sends `session`'s answers from its target back to `peer` until it ends.
    async fn answer(
        self: Arc<Self>,
        session: Arc<Session>,
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        outbound: Counter,
    ) {
        self.open.fetch_add(1, Ordering::Relaxed);
        let relay = self.relay();
        let _open = relay.open();
        let idle = self.settings.idle_timeout;
        let mut sent = 0u64;
        loop {
            let mut buf = Vec::with_capacity(DATAGRAM);
            tokio::select! {
                () = session.ended.cancelled() => break,
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep_until(session.quiet_at(idle).into()) => {
                    if Instant::now() >= session.quiet_at(idle) {
                        break;
                    }
                }
                received = session.upstream.recv_buf(&mut buf) => match received {
                    Ok(n) => {
                        session.touch();
                        if socket.send_to(&buf[..n], peer).await.is_ok() {
                            outbound.inc_by(n as u64);
                            sent += n as u64;
                        }
                    }
                    // The target's port is closed (an ICMP answer): the next datagram
                    // opens a session with another target.
                    Err(e) => {
                        tracing::debug!(listen = %self.name, target = %session.target, error = %e, "a UDP target refused");
                        self.failed(&session.target);
                        break;
                    }
                },
            }
        }
        session.ended.cancel();
        tracing::info!(target: "portico::access", name = %self.name, client = %peer, target = %session.target,
            bytes_in = session.received.load(Ordering::Relaxed), bytes_out = sent, "UDP session closed");
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A UDP socket connected to `address` (bound to the unspecified address of its family).
async fn connect_udp(address: &str) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let local: SocketAddr =
        if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// The PROXY protocol v1 header naming `client` as the source and `local` as the
/// destination.
pub(crate) fn proxy_v1(client: SocketAddr, local: SocketAddr) -> String {
    let family = if client.is_ipv4() && local.is_ipv4() { "TCP4" } else { "TCP6" };
    let ip = |a: SocketAddr| match (a, family) {
        (SocketAddr::V4(v4), "TCP6") => v4.ip().to_ipv6_mapped().to_string(),
        (a, _) => a.ip().to_string(),
    };
    format!("PROXY {family} {} {} {} {}\r\n", ip(client), ip(local), client.port(), local.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_name_the_client() {
        let v4 = proxy_v1("10.0.0.1:5000".parse().unwrap(), "127.0.0.1:5432".parse().unwrap());
        assert_eq!(v4, "PROXY TCP4 10.0.0.1 127.0.0.1 5000 5432\r\n");
        let v6 = proxy_v1("[::1]:5000".parse().unwrap(), "127.0.0.1:5432".parse().unwrap());
        assert_eq!(v6, "PROXY TCP6 ::1 ::ffff:127.0.0.1 5000 5432\r\n");
    }
}
