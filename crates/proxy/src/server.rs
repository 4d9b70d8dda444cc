//! Serving connections, the same way on every listener (the proxy's HTTP and HTTPS, and the
//! API's): a cap on open connections, one deadline from accept (or from the end of the TLS
//! handshake) to the first complete request head, an idle timeout once no request is in
//! flight, a send timeout for clients that stop reading, and graceful shutdown with a
//! deadline.
//!
//! Every deadline is the watchdog's in [`drive`], one per connection (hyper's own HTTP/1
//! head timer, re-armed for every request, is off): the wait for the HTTP/2 preface or the
//! first head, and for HTTP/1 the wait for each next head too, and for the target's answer to
//! the request in flight ([`AnswerDeadline`]). The watchdog also parks an
//! HTTP/1 connection that has had no request in flight for a moment: hyper's state and
//! buffers for it are dropped until the client sends again, so an idle connection costs a
//! few KiB.
//!
//! At the cap ([`ConnectionCap`]) the accept loop stops accepting (connections wait in the
//! kernel's backlog), says so in the log at most once a minute, and asks every connection
//! that has had no request in flight for a second to close, so that silent or idle connections cannot keep real
//! clients out.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Buf;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use portico_metrics::Open;
use prometheus_client::metrics::gauge::Gauge;

/// At the cap, connections idle (or silent) for at least this long are closed; younger ones
/// are left to send their request.
const PRESSURE_GRACE: Duration = Duration::from_secs(1);
/// At shutdown, how long an HTTP/1 connection with no request in flight stays open for the
/// client's next one (answered with `Connection: close`) before it is closed.
const LAME_DUCK: Duration = Duration::from_secs(1);

/// The time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept (or the end of the TLS handshake) to the first complete request head;
    /// for HTTP/1, also the time a keep-alive connection waits for the next request's head
    /// (from the end of the last response).
    pub header_read_timeout: Duration,
    /// How long a connection that has served requests stays open with none in flight.
    pub idle_timeout: Duration,
    /// How long a response may wait for the client to take more of it (nginx's
    /// `send_timeout`): a client that stops reading is cut off, and its target released.
    pub send_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

/// A cap on the connections open at once, shared by the listeners that use it.
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    inner: Arc<CapInner>,
}

#[derive(Debug)]
struct CapInner {
    permits: Arc<Semaphore>,
    /// The cap now (a reload may change it).
    max: std::sync::atomic::AtomicUsize,
    /// The configuration key that sets `max`, for the log line.
    key: &'static str,
    /// Woken when the cap is reached: idle connections close.
    pressure: Notify,
    warned: portico_model::limiter::Rarely,
}

impl ConnectionCap {
    /// A cap of `max` connections (at least 1), set by the configuration key `key`.
    pub fn new(max: usize, key: &'static str) -> Self {
        let max = max.max(1);
        let inner = CapInner {
            permits: Arc::new(Semaphore::new(max)),
            max: std::sync::atomic::AtomicUsize::new(max),
            key,
            pressure: Notify::new(),
            warned: portico_model::limiter::Rarely::new(Duration::from_secs(60)),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The cap now.
    pub fn max(&self) -> usize {
        self.inner.max.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Changes the cap to `max` (at least 1), for the connections accepted from now on: a
    /// larger cap admits more at once; a smaller one takes the difference back as open
    /// connections close (none is closed for it).
    pub fn resize(&self, max: usize) {
        use std::sync::atomic::Ordering;
        let max = max.max(1);
        let before = self.inner.max.swap(max, Ordering::SeqCst);
        if max > before {
            self.inner.permits.add_permits(max - before);
        } else if before > max {
            let deficit = before - max;
            let taken = self.inner.permits.forget_permits(deficit);
            if let Ok(rest) = u32::try_from(deficit - taken)
                && rest > 0
            {
                let permits = self.inner.permits.clone();
                tokio::spawn(async move {
                    if let Ok(held) = permits.acquire_many_owned(rest).await {
                        held.forget();
                    }
                });
            }
        }
    }

    /// Room for one more connection now, if there is: at the cap, logs (at most once a
    /// minute), asks idle connections to close, and answers `None` (for a QUIC connection,
    /// refused rather than kept waiting).
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.inner.permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.warn();
            self.inner.pressure.notify_waiters();
        }
        permit
    }

    /// Room for one more connection. At the cap: logs (at most once a minute), asks idle
    /// connections to close, and waits.
    async fn admit(&self) -> OwnedSemaphorePermit {
        match self.inner.permits.clone().try_acquire_owned() {
            Ok(permit) => return permit,
            Err(TryAcquireError::Closed) => unreachable!("the semaphore is never closed"),
            Err(TryAcquireError::NoPermits) => {}
        }
        self.warn();
        self.inner.pressure.notify_waiters();
        loop {
            let acquire = self.inner.permits.clone().acquire_owned();
            // Woken connections may be busy: ask again every second until there is room.
            match tokio::time::timeout(Duration::from_secs(1), acquire).await {
                Ok(permit) => return permit.expect("the semaphore is never closed"),
                Err(_) => self.inner.pressure.notify_waiters(),
            }
        }
    }

    fn warn(&self) {
        if !self.inner.warned.due() {
            return;
        }
        tracing::warn!(
            max = self.max(),
            key = self.inner.key,
            "connection limit reached: new connections wait, idle ones are closed"
        );
    }
}

/// What a connection task gets from the accept loop: its place under the cap and the
/// signals it obeys.
#[derive(Debug)]
pub struct Watch {
    _permit: OwnedSemaphorePermit,
    cap: ConnectionCap,
    /// Stop taking requests, finish those in flight.
    shutdown: CancellationToken,
    /// The shutdown deadline passed: close now.
    cut: CancellationToken,
}

impl Watch {
    /// Cancelled when the shutdown's deadline passes: what the connection still carries
    /// (a passthrough connection's bytes) is closed then.
    pub fn deadline_passed(&self) -> CancellationToken {
        self.cut.clone()
    }

    /// Resolves when the cap is reached and this connection, open since `since` and still
    /// doing nothing useful (waiting for a TLS ClientHello, say), should make room.
    pub async fn evicted(&self, since: Instant) {
        loop {
            self.cap.inner.pressure.notified().await;
            if since.elapsed() >= PRESSURE_GRACE {
                return;
            }
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, each admitted by `cap` and handed to
/// `connection` (which typically ends in [`drive`]). Then waits up to `shutdown_timeout()`
/// (read then: a reload may have changed it) for the connections to finish and closes what
/// is left. Returns the drain's deadline (what outlives the connections, such as upgraded
/// tunnels, may run until then).
pub async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    cap: &ConnectionCap,
    shutdown: &CancellationToken,
    shutdown_timeout: impl Fn() -> Duration,
    mut connection: F,
) -> tokio::time::Instant
where
    F: FnMut(TcpStream, SocketAddr, Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = cap.admit() => permit,
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watch = Watch { _permit: permit, cap: cap.clone(), shutdown: shutdown.clone(), cut: cut.clone() };
        tasks.spawn(connection(stream, peer, watch));
    }
    tracing::info!(in_flight = tasks.len(), "stopped accepting; draining connections");
    let shutdown_timeout = shutdown_timeout();
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    tasks.close();
    if tokio::time::timeout(shutdown_timeout, tasks.wait()).await.is_err() {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown deadline passed; closing remaining connections");
        cut.cancel();
        tasks.wait().await;
    }
    deadline
}

/// How long an HTTP/1 connection waits with no request in flight before it is parked: hyper's
/// state and buffers (some 16 KiB) dropped, the socket watched for the next request alone.
const PARK_AFTER: Duration = Duration::from_millis(200);

/// What a connection speaks, as far as the listener knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (TLS, ALPN `http/1.1` or none).
    Http1,
    /// HTTP/2 (TLS, ALPN `h2`).
    Http2,
    /// Plain TCP: HTTP/2 when it opens with the HTTP/2 preface (prior knowledge), else
    /// HTTP/1.1.
    Detect,
}

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection builders every listener uses: HTTP/1.1 (with upgrades) and HTTP/2, and a
/// limit on the request head. No timer of hyper's for HTTP/1: the wait for a request head is
/// the watchdog's in [`drive`] (one deadline per connection, where hyper's
/// `header_read_timeout` re-arms a timer for every request).
#[derive(Debug)]
pub struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Raised while a connection is parked.
    parked: Option<Gauge>,
}

impl Builders {
    /// Counts the connections parked (see [`drive`]) in `gauge`.
    pub fn count_parked(mut self, gauge: Gauge) -> Self {
        self.parked = Some(gauge);
        self
    }
}

/// The [`Builders`] for request heads of at most `max_header_bytes`.
pub fn builder(max_header_bytes: usize) -> Builders {
    let mut http1 = http1::Builder::new();
    http1.header_read_timeout(None).max_buf_size(max_header_bytes.max(8192));
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(max_header_bytes.try_into().unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    Builders { http1, http2, parked: None }
}

/// A client's connection: a byte stream that can say when the peer has sent something
/// without reading it (to wait for a parked connection's next request holding no buffer).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready once there is something to read, or the peer closed.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl Socket for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    /// The TCP socket's: hyper has read all rustls had decrypted when it waits for more.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

impl<S: Socket> Socket for Box<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

impl<L: Socket, R: Socket> Socket for tokio_util::either::Either<L, R> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            tokio_util::either::Either::Left(l) => l.poll_read_ready(cx),
            tokio_util::either::Either::Right(r) => r.poll_read_ready(cx),
        }
    }
}

/// The socket as hyper gets it: what was read before hyper had it (the protocol sniff's
/// bytes, or what a parked connection had buffered) comes first, and while the connection is
/// being parked hyper's closing does not shut the socket down.
struct Parkable<S> {
    socket: S,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl<S: Socket> AsyncRead for Parkable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.socket).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: Socket> AsyncWrite for Parkable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.activity.parking.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// `front` then `back`, in a buffer of their own.
fn joined(front: &[u8], back: &[u8]) -> Bytes {
    let mut both = bytes::BytesMut::with_capacity(front.len() + back.len());
    both.extend_from_slice(front);
    both.extend_from_slice(back);
    both.freeze()
}

type Http1Connection<S, Svc> = http1::UpgradeableConnection<TokioIo<Parkable<S>>, Svc>;
type Http2Connection<S, Svc> = http2::Connection<TokioIo<Parkable<S>>, Svc, TokioExecutor>;

/// Where a connection is: waiting for bytes with no HTTP state (before its protocol is known,
/// or parked), or served by hyper.
enum Stage<S, Svc: hyper::service::HttpService<Incoming>> {
    /// `_parked`: counted while it waits, after hyper served it.
    Waiting {
        io: Parkable<S>,
        service: Svc,
        detect: bool,
        _parked: Option<Open>,
    },
    Http1 {
        connection: Box<Http1Connection<S, Svc>>,
        served_before: u64,
    },
    Http2(Pin<Box<Http2Connection<S, Svc>>>),
    Gone,
}

impl<S, Svc> Stage<S, Svc>
where
    S: Socket,
    Svc: hyper::service::HttpService<Incoming> + Unpin + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::ResBody: Body<Data = Bytes> + Send + 'static,
    <Svc::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// hyper serving `io`: HTTP/2, or HTTP/1 (with upgrades) counting requests from now.
    fn serve(builders: &Builders, io: Parkable<S>, service: Svc, http2: bool, activity: &Activity) -> Self {
        if http2 {
            activity.multiplexed.store(true, Ordering::Release);
            Stage::Http2(Box::pin(builders.http2.serve_connection(TokioIo::new(io), service)))
        } else {
            let connection = builders.http1.serve_connection(TokioIo::new(io), service).with_upgrades();
            Stage::Http1 { connection: Box::new(connection), served_before: activity.served() }
        }
    }

    /// Moves a connection on: polls hyper's connection (`Some` when it ended, for good), or, when
    /// waiting, the socket, and starts hyper when a request arrives (`Ready(None)`). A parked
    /// HTTP/1 connection (see [`drive`]) goes back to waiting.
    fn advance(
        &mut self,
        builders: &Builders,
        activity: &Arc<Activity>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<hyper::Result<()>>> {
        match self {
            Stage::Gone => Poll::Ready(Some(Ok(()))),
            Stage::Http2(connection) => connection.as_mut().poll(cx).map(Some),
            Stage::Http1 { connection, .. } => {
                let ended = std::task::ready!(Pin::new(&mut **connection).poll(cx));
                if ended.is_err() || !activity.parking.swap(false, Ordering::AcqRel) {
                    *self = Stage::Gone;
                    return Poll::Ready(Some(ended));
                }
                let Stage::Http1 { connection, .. } = std::mem::replace(self, Stage::Gone) else { unreachable!() };
                // `None` after an upgrade: the socket is the tunnel's.
                let Some(parts) = connection.into_parts() else { return Poll::Ready(Some(Ok(()))) };
                let mut io = parts.io.into_inner();
                if !parts.read_buf.is_empty() {
                    // What hyper had read and not parsed (a head begun) comes first next time,
                    // copied: hyper's buffer goes.
                    io.unread = joined(&parts.read_buf, &io.unread);
                }
                let parked = builders.parked.as_ref().map(Open::new);
                *self = Stage::Waiting { io, service: parts.service, detect: false, _parked: parked };
                Poll::Ready(None)
            }
            Stage::Waiting { io, detect, .. } => {
                if *detect {
                    let mut buf = [0u8; PREFACE.len()];
                    let want = PREFACE.len() - io.unread.len();
                    let mut read = ReadBuf::new(&mut buf[..want]);
                    if let Err(e) = std::task::ready!(Pin::new(&mut io.socket).poll_read(cx, &mut read)) {
                        tracing::debug!(error = %e, "a connection failed before its first request");
                        return Poll::Ready(Some(Ok(())));
                    }
                    if read.filled().is_empty() {
                        // The client went away before saying anything.
                        return Poll::Ready(Some(Ok(())));
                    }
                    io.unread = joined(&io.unread, read.filled());
                    if io.unread.len() < PREFACE.len() && PREFACE.starts_with(&io.unread) {
                        // Perhaps the HTTP/2 preface: more is needed to tell.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                } else if let Err(e) = std::task::ready!(io.socket.poll_read_ready(cx)) {
                    // Parked with a head begun, too: only the client's next bytes can finish
                    // it (a complete one would be in flight).
                    tracing::debug!(error = %e, "a parked connection failed");
                    return Poll::Ready(Some(Ok(())));
                }
                let Stage::Waiting { io, service, detect, .. } = std::mem::replace(self, Stage::Gone) else {
                    unreachable!()
                };
                let http2 = detect && io.unread.as_ref() == PREFACE;
                *self = Stage::serve(builders, io, service, http2, activity);
                Poll::Ready(None)
            }
        }
    }

    /// Whether hyper's HTTP/1 state is at rest between requests (it has served one since it
    /// was started, and none is in flight), so that closing it hands the socket back.
    fn at_rest(&self, activity: &Activity) -> bool {
        matches!(self, Stage::Http1 { served_before, .. } if activity.served() > *served_before)
            && activity.in_flight() == 0
    }

    /// Begins closing a connection gracefully; `false` when it is better closed at once (waiting,
    /// or its HTTP/1 state has served nothing since it was started).
    fn wind_down(&mut self, activity: &Activity) -> bool {
        match self {
            Stage::Http1 { connection, served_before } if activity.served() > *served_before => {
                Pin::new(&mut **connection).graceful_shutdown();
                true
            }
            Stage::Http2(connection) => {
                connection.as_mut().graceful_shutdown();
                true
            }
            _ => false,
        }
    }
}

/// Serves one connection with `service` until it ends, closing it when it sends no complete
/// request head within `header_read_timeout`, when it has had no request in flight for
/// `idle_timeout` (HTTP/1: or `header_read_timeout`, waiting for its next head), when the cap
/// is reached and it is idle, or at shutdown. An HTTP/1 connection with no request in flight
/// for `PARK_AFTER` (200 ms) is parked: hyper's state for it is dropped and the socket alone waits
/// for the next request. `answers`, when given, is the deadline its HTTP/1 requests' wait for
/// their targets' answers is bounded by (see [`within`]): the watchdog looks when it is due.
pub async fn drive<I, S, B>(
    builders: &Builders,
    io: I,
    protocol: Protocol,
    service: S,
    limits: &Limits,
    watch: Watch,
    answers: Option<&AnswerDeadline>,
) where
    I: Socket,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    if let Some(answers) = answers {
        answers.watched.store(true, Ordering::Relaxed);
    }
    let service = Arc::new(service);
    let counted = {
        let activity = activity.clone();
        service_fn(move |request: Request<Incoming>| {
            // (HTTP/2 was marked when hyper's HTTP/2 connection was made: `Stage::serve`.)
            let http1 = request.version() < http::Version::HTTP_2;
            let guard = activity.begin();
            // `map`, not an async block: the block would hold the handler's future twice.
            service.call(request).map(move |response| {
                response.map(|mut r| {
                    let draining = guard.0.draining.load(Ordering::Acquire);
                    if http1 && draining && r.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    r.map(|body| Tracked { inner: body, guard, handed: false })
                })
            })
        })
    };
    let io = Parkable { socket: io, unread: Bytes::new(), activity: activity.clone() };
    let mut stage = match protocol {
        Protocol::Detect => Stage::Waiting { io, service: counted, detect: true, _parked: None },
        // At once, not waiting for the socket: TLS may hold the request already (rustls reads
        // it with the client's last handshake message).
        Protocol::Http1 => Stage::serve(builders, io, counted, false, &activity),
        Protocol::Http2 => Stage::serve(builders, io, counted, true, &activity),
    };
    let gate = Arc::new(Gate::default());
    let gate_waker = Waker::from(gate.clone());
    let mut closing = false;
    // When shutdown began, for an HTTP/1 connection left open for the client's next request.
    let mut lame_duck: Option<Instant> = None;
    loop {
        let mut wake = activity.next_check(limits);
        if let Some(since) = lame_duck {
            let quiet_from = if activity.in_flight() == 0 { activity.idle_since().max(since) } else { Instant::now() };
            wake = wake.min(quiet_from + LAME_DUCK);
        }
        let open = !closing && lame_duck.is_none();
        if matches!(stage, Stage::Http1 { .. }) && open {
            // Requests come and go without waking the watchdog, but while one is in flight
            // (or none has been served yet) the end of the next wakes it, to park the
            // connection once quiet: no wake-ups while a long request runs. Asked first, then
            // looked: a request ending in between is seen one way or the other.
            activity.quiet_watch.store(true, Ordering::SeqCst);
            if stage.at_rest(&activity) {
                activity.quiet_watch.store(false, Ordering::SeqCst);
                wake = wake.min(activity.idle_since() + PARK_AFTER);
            }
        }
        if let Some(answers) = answers {
            if let Some(due) = answers.due() {
                wake = wake.min(due);
            }
            answers.armed(wake);
        }
        let signals = async {
            tokio::select! {
                () = watch.cut.cancelled() => Signal::Cut,
                () = watch.shutdown.cancelled(), if open => Signal::Shutdown,
                () = watch.cap.inner.pressure.notified(), if open => Signal::Pressure,
                () = tokio::time::sleep_until(wake.into()) => Signal::Timer,
            }
        };
        let mut signals = pin!(signals);
        // The connection is polled at every wake-up; the watchdog's futures only when one of
        // them woke the task (and once to start), not at each of the connection's.
        gate.fired.store(true, Ordering::Release);
        let mut first = true;
        let event = std::future::poll_fn(|cx| {
            if std::mem::take(&mut first) {
                activity.quiet_waker.register(cx.waker());
            }
            if activity.quieted.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Ok(Signal::Staged));
            }
            match stage.advance(builders, &activity, cx) {
                Poll::Ready(Some(ended)) => return Poll::Ready(Err(ended)),
                // Waiting became serving, or serving parked: the watchdog's times change.
                Poll::Ready(None) => return Poll::Ready(Ok(Signal::Staged)),
                Poll::Pending => {}
            }
            // A request began waiting for an answer due before the watchdog's next look.
            if answers.is_some_and(AnswerDeadline::take_rearm) {
                return Poll::Ready(Ok(Signal::Staged));
            }
            gate.parent.register(cx.waker());
            if gate.fired.swap(false, Ordering::AcqRel)
                && let Poll::Ready(signal) = signals.as_mut().poll(&mut Context::from_waker(&gate_waker))
            {
                return Poll::Ready(Ok(signal));
            }
            Poll::Pending
        })
        .await;
        match event {
            Err(ended) => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            Ok(Signal::Cut) => return,
            Ok(Signal::Staged) => {}
            Ok(Signal::Shutdown) => {
                activity.draining.store(true, Ordering::Release);
                if let Stage::Http2(connection) = &mut stage {
                    // HTTP/2: GOAWAY tells the client which streams were not taken, so it
                    // sends them again elsewhere.
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    // HTTP/1 has no such word: closing a connection at rest could cut off a
                    // request already on its way. The next request is answered with
                    // `Connection: close`; a connection quiet for `LAME_DUCK` is closed.
                    lame_duck = Some(Instant::now());
                }
            }
            Ok(Signal::Pressure) => {
                if activity.in_flight() == 0 && activity.idle_since().elapsed() >= PRESSURE_GRACE {
                    tracing::debug!("closing an idle connection: the connection limit is reached");
                    return;
                }
            }
            Ok(Signal::Timer) => {
                if let Some(answers) = answers {
                    // An overdue answer ends its request's wait when hyper polls it next.
                    answers.look();
                }
                if activity.write_stalled(limits) {
                    tracing::debug!(timeout = ?limits.send_timeout, "closing a connection whose client stopped reading");
                    return;
                }
                if let Some(since) = lame_duck
                    && !closing
                    && activity.in_flight() == 0
                    && activity.idle_since().max(since).elapsed() >= LAME_DUCK
                {
                    if !stage.wind_down(&activity) {
                        return;
                    }
                    closing = true;
                }
                if !closing && activity.expired(limits) {
                    if activity.served() == 0 {
                        tracing::debug!("closing a connection that sent no request in time");
                        return;
                    }
                    if !stage.wind_down(&activity) {
                        return;
                    }
                    closing = true;
                }
                if !closing
                    && lame_duck.is_none()
                    && stage.at_rest(&activity)
                    && activity.idle_since().elapsed() >= PARK_AFTER
                {
                    // Quiet for a while: hyper's closing hands the socket back.
                    activity.parking.store(true, Ordering::Release);
                    stage.wind_down(&activity);
                }
            }
        }
    }
}

/// What woke a connection's watchdog.
enum Signal {
    /// The shutdown deadline passed.
    Cut,
    /// Shutdown began.
    Shutdown,
    /// The connection cap was reached.
    Pressure,
    /// A limit may have run out.
    Timer,
    /// The connection began or stopped being served by hyper (not the watchdog's: it looks
    /// again).
    Staged,
}

/// Wakes the connection task for the watchdog's futures and notes that it was them.
#[derive(Debug, Default)]
struct Gate {
    fired: AtomicBool,
    parent: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.parent.wake();
    }
}

/// What a connection's requests tell its watchdog.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// When the last request ended, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
    /// Response frames handed to hyper whose bodies hyper has not asked for more since.
    handed: AtomicUsize,
    /// When a response frame was last handed to hyper (it had asked for it), in milliseconds
    /// since `opened`.
    written_ms: AtomicU64,
    /// Set at shutdown: HTTP/1 responses say `Connection: close` from then on.
    draining: AtomicBool,
    /// Whether the connection speaks HTTP/2 (it has carried an HTTP/2 request).
    multiplexed: AtomicBool,
    /// Set while an idle HTTP/1 connection is parked: hyper closes its state for it, and
    /// the socket stays open.
    parking: AtomicBool,
    /// Set by the watchdog when the end of the request in flight should wake it (to park the
    /// connection once quiet); the request's end sets `quieted` and wakes `quiet_waker`.
    quiet_watch: AtomicBool,
    quieted: AtomicBool,
    quiet_waker: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: 0.into(),
            handed: AtomicUsize::new(0),
            written_ms: 0.into(),
            draining: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            quiet_watch: AtomicBool::new(false),
            quieted: AtomicBool::new(false),
            quiet_waker: AtomicWaker::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a response has waited for the client to take it for longer than allowed:
    /// frames were handed to hyper and it has asked no body for more since.
    fn write_stalled(&self, limits: &Limits) -> bool {
        self.handed.load(Ordering::Acquire) > 0 && self.written().elapsed() >= limits.send_timeout
    }

    fn written(&self) -> Instant {
        self.opened + Duration::from_millis(self.written_ms.load(Ordering::Acquire))
    }

    fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }

    /// How long this connection may stay as it is: until the first request's head; idle, for
    /// HTTP/2; for HTTP/1, idle and waiting for the next request's head, so the shorter of
    /// the two (a head begun and never finished, slowloris, is cut off then too).
    fn allowance(&self, limits: &Limits) -> Duration {
        if self.served() == 0 {
            limits.header_read_timeout
        } else if self.multiplexed.load(Ordering::Acquire) {
            limits.idle_timeout
        } else {
            limits.idle_timeout.min(limits.header_read_timeout)
        }
    }

    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// Whether it has been idle (or silent) for longer than allowed.
    fn expired(&self, limits: &Limits) -> bool {
        self.in_flight() == 0 && self.idle_since().elapsed() >= self.allowance(limits)
    }

    /// When to look again: when the allowance runs out if idle now, but no later than the
    /// shorter limit from now. Requests come and go without waking the watchdog, and each of
    /// them moves `idle_since` later and may switch the allowance: a wake-up at most the
    /// shorter limit away still catches the earliest moment the connection can expire.
    fn next_check(&self, limits: &Limits) -> Instant {
        let soonest = Instant::now() + limits.idle_timeout.min(limits.header_read_timeout).min(limits.send_timeout);
        if self.in_flight() == 0 {
            (self.idle_since() + self.allowance(limits)).min(soonest)
        } else if self.handed.load(Ordering::Acquire) > 0 {
            (self.written() + limits.send_timeout).min(soonest)
        } else {
            soonest
        }
    }
}

/// The deadline for the target's answer to the request an HTTP/1 connection is serving (one at
/// a time), kept by the connection's watchdog in [`drive`]: no timer of its own per request.
/// A connection's [`Client`](crate::conn::Client) holds it; HTTP/2 streams run as tasks of
/// their own, so their requests keep a timer each (see [`within`]).
#[derive(Debug)]
pub struct AnswerDeadline {
    epoch: Instant,
    /// When the answer is due, in milliseconds since `epoch`; 0: no request is waiting for one.
    due_ms: AtomicU64,
    /// When the watchdog looks next, in milliseconds since `epoch`.
    armed_ms: AtomicU64,
    /// Set when an answer is due before the watchdog looks next: it looks again.
    rearm: AtomicBool,
    /// Set by the watchdog when the answer is overdue.
    overdue: AtomicBool,
    /// Whether a watchdog keeps this deadline (a connection served by [`drive`] with it);
    /// without one, [`within`] keeps a timer instead.
    watched: AtomicBool,
}

impl Default for AnswerDeadline {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            due_ms: 0.into(),
            armed_ms: u64::MAX.into(),
            rearm: false.into(),
            overdue: false.into(),
            watched: false.into(),
        }
    }
}

impl AnswerDeadline {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// When the answer waited for is due, unless it is overdue already.
    fn due(&self) -> Option<Instant> {
        let due = self.due_ms.load(Ordering::Acquire);
        (due != 0 && !self.overdue.load(Ordering::Acquire)).then(|| self.epoch + Duration::from_millis(due))
    }

    /// Notes when the watchdog looks next.
    fn armed(&self, wake: Instant) {
        self.armed_ms.store(self.ms(wake), Ordering::Release);
    }

    /// Whether an answer became due before the watchdog looks next (it must look again).
    fn take_rearm(&self) -> bool {
        self.rearm.load(Ordering::Relaxed) && self.rearm.swap(false, Ordering::AcqRel)
    }

    /// The watchdog's look: marks the answer overdue when it is.
    fn look(&self) {
        if self.due().is_some_and(|due| due <= Instant::now()) {
            self.overdue.store(true, Ordering::Release);
        }
    }

    fn start(&self, timeout: Duration) {
        let due = self.ms(Instant::now() + timeout).max(1);
        self.overdue.store(false, Ordering::Release);
        self.due_ms.store(due, Ordering::Release);
        if due < self.armed_ms.load(Ordering::Acquire) {
            self.rearm.store(true, Ordering::Release);
        }
    }
}

/// Ends an answer's deadline when the wait for it ends (answered, failed or dropped).
#[derive(Debug)]
struct Waited<'a>(&'a AnswerDeadline);

impl Drop for Waited<'_> {
    fn drop(&mut self) {
        self.0.due_ms.store(0, Ordering::Release);
        self.0.overdue.store(false, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by a deadline: its output, or `None` when it did not finish in time.
    #[project = WithinProjection]
    enum Within<'a, F> {
        /// The connection's watchdog keeps the deadline.
        Watched { #[pin] inner: F, waited: Waited<'a> },
        /// A timer of its own.
        Timed { #[pin] inner: F, #[pin] timer: tokio::time::Sleep },
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WithinProjection::Watched { inner, waited } => match inner.poll(cx) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending if waited.0.overdue.load(Ordering::Acquire) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            WithinProjection::Timed { inner, timer } => match inner.poll(cx) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending => timer.poll(cx).map(|()| None),
            },
        }
    }
}

/// `answer` bounded by `timeout`: by the watchdog's `deadline` when the future runs in the
/// connection's own task (an HTTP/1 request's does) and a watchdog keeps it, else by a timer
/// of its own.
pub fn within<'a, F: Future>(
    deadline: Option<&'a AnswerDeadline>,
    timeout: Duration,
    answer: F,
) -> impl Future<Output = Option<F::Output>> + use<'a, F> {
    match deadline.filter(|d| d.watched.load(Ordering::Relaxed)) {
        Some(deadline) => {
            deadline.start(timeout);
            Within::Watched { inner: answer, waited: Waited(deadline) }
        }
        None => Within::Timed { inner: answer, timer: tokio::time::sleep(timeout) },
    }
}

/// A request in flight; its end makes the connection idle.
#[derive(Debug)]
struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since_ms.fetch_max(activity.now_ms(), Ordering::AcqRel);
        let last = activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && activity.quiet_watch.load(Ordering::Relaxed) && activity.quiet_watch.swap(false, Ordering::SeqCst) {
            activity.quieted.store(true, Ordering::Release);
            activity.quiet_waker.wake();
        }
    }
}

/// A response body that holds its request's [`ActiveRequest`] until it is sent or dropped, and
/// tells the watchdog whether hyper keeps taking it (see [`Activity::write_stalled`]).
struct Tracked<B> {
    inner: B,
    guard: ActiveRequest,
    /// A frame was handed to hyper, and hyper has not asked for the next one yet.
    handed: bool,
}

impl<B> Tracked<B> {
    fn taken(&mut self) {
        if std::mem::take(&mut self.handed) {
            self.guard.0.handed.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        // hyper asks for more only once it has room to write: the client is reading.
        self.taken();
        let this = &mut *self;
        let activity = &this.guard.0;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            // Handed now, when hyper asked: a stall counts from here (the clock is read only
            // for frames handed, not for every ask).
            activity.written_ms.fetch_max(activity.now_ms(), Ordering::AcqRel);
            this.handed = true;
            activity.handed.fetch_add(1, Ordering::AcqRel);
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

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.taken();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_deadline_no_watchdog_keeps_falls_back_to_a_timer() {
        // A deadline no connection's watchdog keeps: a timer ends the wait all the same.
        let deadline = AnswerDeadline::default();
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            within(Some(&deadline), Duration::from_millis(20), std::future::pending::<()>()),
        );
        assert_eq!(waited.await, Ok(None), "the wait ends unanswered");
        // And an answer in time is the answer.
        assert_eq!(within(Some(&deadline), Duration::from_secs(5), async { 7 }).await, Some(7));
    }

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_silent_connection_expires_after_the_header_timeout_and_a_busy_one_never() {
        let activity = Arc::new(Activity::new());
        let limits = limits();
        assert!(!activity.expired(&limits));
        assert_eq!(activity.next_check(&limits), activity.opened + limits.header_read_timeout);
        let short_idle = Limits { idle_timeout: Duration::from_secs(1), ..limits };
        assert!(activity.next_check(&short_idle) <= Instant::now() + short_idle.idle_timeout, "a request may come");
        let guard = activity.begin();
        let zero = Limits { header_read_timeout: Duration::ZERO, idle_timeout: Duration::ZERO, ..limits };
        assert!(!activity.expired(&zero), "a request is in flight");
        drop(guard);
        assert!(activity.expired(&zero));
        assert!(!activity.expired(&limits));
    }

    #[test]
    fn a_kept_alive_http1_connection_waits_for_its_next_head_no_longer_than_the_header_timeout() {
        let limits = Limits { header_read_timeout: Duration::ZERO, ..limits() };
        let http1 = Arc::new(Activity::new());
        drop(http1.begin());
        // HTTP/1 waits for the next request's head: the header timeout bounds it.
        assert!(http1.expired(&limits));
        let http2 = Arc::new(Activity::new());
        http2.multiplexed.store(true, Ordering::Release);
        drop(http2.begin());
        // HTTP/2 is idle between streams: only the idle timeout applies.
        assert!(!http2.expired(&limits));
        assert!(http2.expired(&Limits { idle_timeout: Duration::ZERO, ..limits }));
    }
}
