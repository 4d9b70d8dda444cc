//! Upgrade tunnels (WebSocket): bytes copied both ways until both sides close, the tunnel
//! idles out, or the proxy shuts down.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Copies bytes both ways between the client and the target until both sides close, nothing
/// has crossed either way for `idle`, or the proxy shuts down.
pub(super) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    target: hyper::upgrade::OnUpgrade,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let (client, target) = match tokio::try_join!(client, target) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (up, down) = splice(TokioIo::new(client), TokioIo::new(target), idle, shutdown).await;
    tracing::debug!(bytes_to_target = up, bytes_to_client = down, "tunnel closed");
}

/// Copies bytes both ways between `client` and `target` until both sides close, nothing has
/// crossed either way for `idle`, or `shutdown`; the bytes carried from the client and to it.
pub(crate) async fn splice<C, T>(client: C, mut target: T, idle: Duration, shutdown: CancellationToken) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let opened = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Metered { io: client, opened, last: last.clone(), read: 0, written: 0 };
    let quiet = async {
        loop {
            let since = opened + Duration::from_millis(last.load(Ordering::Relaxed));
            if since.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until((since + idle).into()).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut target) => {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "a tunnel ended with an error");
            }
        }
        () = quiet => tracing::debug!(timeout = ?idle, "a tunnel closed: idle"),
        () = shutdown.cancelled() => tracing::debug!("a tunnel closed by shutdown"),
    }
    (client.read, client.written)
}

/// The client's side of a tunnel, noting when bytes last crossed it either way (bytes from
/// the target are written to it, bytes to the target read from it).
struct Metered<T> {
    io: T,
    opened: Instant,
    /// Milliseconds since `opened`.
    last: Arc<AtomicU64>,
    /// Bytes read from it (towards the target) and written to it.
    read: u64,
    written: u64,
}

impl<T> Metered<T> {
    fn crossed(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read += read as u64;
            self.crossed();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.written += n as u64;
            self.crossed();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
