//! The plain-HTTP listener: accept loop, one hyper connection per client (HTTP/1.1, and
//! HTTP/2 with prior knowledge, on the same socket), graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ProxyConfig;
use crate::forward::{Scheme, Upstream};
use crate::handler::{Shared, handle};
use crate::routes::Routes;

/// A bound HTTP listener, ready to [`serve`](HttpListener::serve).
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    shared: Arc<Shared>,
    tunnels: TaskTracker,
    tunnel_shutdown: CancellationToken,
}

impl HttpListener {
    /// Binds `addr`. Routing follows `routes`, which the caller keeps up to date.
    pub async fn bind(addr: SocketAddr, config: ProxyConfig, routes: Arc<Routes>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let config = Arc::new(config);
        let tunnels = TaskTracker::new();
        let tunnel_shutdown = CancellationToken::new();
        let upstream = Upstream::new(config.clone(), tunnels.clone(), tunnel_shutdown.clone());
        let shared = Arc::new(Shared { config, routes, upstream });
        Ok(Self { listener, shared, tunnels, tunnel_shutdown })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then stops accepting, lets in-flight requests finish for up to
    /// the configured shutdown timeout, closes what is left, and returns.
    pub async fn serve(self, shutdown: CancellationToken) {
        let config = self.shared.config.clone();
        let builder = connection_builder(&config);
        let graceful = GracefulShutdown::new();
        let connections = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
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
            let shared = self.shared.clone();
            let service = service_fn(move |request| handle(shared.clone(), request, peer, Scheme::Http));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            let connection = graceful.watch(connection);
            connections.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!(in_flight = connections.len(), "stopped accepting; draining connections");
        let drained = tokio::time::timeout(config.shutdown_timeout, graceful.shutdown()).await;
        if drained.is_err() {
            tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown deadline passed; closing remaining connections");
        }
        self.tunnel_shutdown.cancel();
        self.tunnels.close();
        self.tunnels.wait().await;
    }
}

fn connection_builder(config: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(config.max_header_bytes.try_into().unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}
