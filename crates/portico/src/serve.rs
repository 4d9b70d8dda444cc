//! `portico serve`: open the store, load the routes, start the listeners, follow the store,
//! and drain on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use portico_proxy::{HttpListener, Routes, routes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Runs until a shutdown signal, then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = portico_store::open(&config.store_url).await.context("cannot open the store")?;
    let routes = Arc::new(Routes::new());
    let hosts = routes.reload(store.as_ref()).await.context("cannot read hosts from the store")?;
    tracing::info!(hosts, store = %config.store_url, "store opened");

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(routes::follow_store(store.clone(), routes.clone(), shutdown.clone()));

    let http = HttpListener::bind(config.http, config.proxy.clone(), routes.clone())
        .await
        .with_context(|| format!("cannot listen on {} (proxy.http)", config.http))?;
    let addr = http.local_addr()?;
    tracing::info!(listener = "http", addr = %addr, "listening");
    tasks.spawn(http.serve(shutdown.clone()));
    tasks.close();

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
    Ok(())
}
