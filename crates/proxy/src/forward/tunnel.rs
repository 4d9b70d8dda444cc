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
    let opened = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Metered { io: TokioIo::new(client), opened, last: last.clone() };
    let mut target = TokioIo::new(target);
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
        copied = tokio::io::copy_bidirectional(&mut client, &mut target) => match copied {
            Ok((up, down)) => tracing::debug!(bytes_to_target = up, bytes_to_client = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        },
        () = quiet => tracing::debug!(timeout = ?idle, "tunnel closed: idle"),
        () = shutdown.cancelled() => tracing::debug!("tunnel closed by shutdown"),
    }
}

/// The client's side of a tunnel, noting when bytes last crossed it either way (bytes from
/// the target are written to it, bytes to the target read from it).
struct Metered<T> {
    io: T,
    opened: Instant,
    /// Milliseconds since `opened`.
    last: Arc<AtomicU64>,
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
        if buf.filled().len() > before {
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
