//! `portico serve`: open the store, load the routes, start the listeners, follow the store,
//! and drain on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use portico_api::{ApiSettings, ApiState};
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

    let admin_password = std::env::var("PORTICO_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
    portico_api::auth::bootstrap_admin(store.as_ref(), &config.data_dir, admin_password)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the first admin: {e}"))?;
    let api = ApiState::new(store.clone(), routes.clone(), ApiSettings { session_ttl: config.session_ttl });

    let http = HttpListener::bind(config.http, config.proxy.clone(), routes.clone())
        .await
        .with_context(|| format!("cannot listen on {} (proxy.http)", config.http))?;
    let api_listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (api.listen)", config.api_listen))?;
    // Both sockets are bound (connections queue from here on): ready, before anyone is told.
    api.listeners_ready.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(listener = "http", addr = %http.local_addr()?, "listening");
    tracing::info!(listener = "api", addr = %api_listener.local_addr()?, "listening");
    tasks.spawn(http.serve(shutdown.clone()));
    let stop_api = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = portico_api::serve(api_listener, api, stop_api.cancelled_owned()).await {
            tracing::error!(error = %e, "the API server failed");
        }
    });
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
