//! `portico serve|proxy|api`: build the node's parts from the configuration ([`Node::build`]:
//! the store, the routes, the change follower, certificates), start the listeners and jobs
//! of the role ([`Node::spawn`]), and drain on SIGTERM/SIGINT ([`Node::stop`]).
//!
//! `serve` runs every role in one process. `proxy` runs the data plane alone and `api` the
//! control plane alone; any number of each share one store.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use portico_api::{Api, ApiSettings, ApiState, lookup};
use portico_certs::acme::{AcmeIssuer, AcmeSettings, Eab};
use portico_certs::internal::InternalCa;
use portico_certs::{CertSettings, Certs, Issuer};
use portico_metrics::{Exposition, Jobs, Registry};
use portico_proxy::server::{self, ConnectionCap, Limits};
use portico_proxy::{HttpListener, ProxyState, Routes, routes};
use portico_store::MeteredStore;
use portico_store::{Follower, IdentifiedStore, Kind, Store, Subscription};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::notify::Notifier;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything (`portico serve`).
    All,
    /// The data plane: the proxy's listeners (`portico proxy`).
    Proxy,
    /// The control plane: the API (`portico api`).
    Api,
}

impl Role {
    fn proxy(self) -> bool {
        self != Self::Api
    }

    fn api(self) -> bool {
        self != Self::Proxy
    }
}

/// Runs `role` until a shutdown signal, then drains and returns.
pub async fn run(mut config: Config, role: Role) -> anyhow::Result<()> {
    // A file-size limit (`ulimit -f`) reached by the store is an I/O error to recover from, as
    // a full disk is, not a signal that kills the process (PostgreSQL ignores it too).
    // The handler stays installed for the life of the process; the stream is not needed.
    let _ignored =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()))
            .context("cannot watch SIGXFSZ")?;
    let fd_limit = raise_fd_limit();
    config.proxy.max_connections = config.max_connections.unwrap_or_else(|| default_max_connections(fd_limit));
    tracing::info!(fd_limit, max_connections = config.proxy.max_connections, "connection limits");
    let node = Node::build(&config).await?;
    node.spawn(role).await?;
    wait_for_signal().await?;
    node.stop().await;
    Ok(())
}

/// One process's runtime parts, built from a [`Config`]: each component's metrics and the
/// registry they are registered in, the store
/// (metered, its identity watched), the routing table, the one change follower, the
/// certificates and the data plane's state. [`Node::spawn`] starts a role's listeners and
/// jobs on them; [`Node::stop`] drains. The configuration is kept, so a new one can be
/// compared with it part by part.
pub struct Node {
    config: Config,
    /// The data plane's metrics (requests, connections, routing).
    metrics: Arc<portico_proxy::metrics::Metrics>,
    store_metrics: Arc<portico_store::metered::Metrics>,
    jobs: Jobs,
    /// Every component's metrics, for `GET /metrics`.
    exposition: Arc<Exposition>,
    store: Arc<dyn Store>,
    identified: Arc<IdentifiedStore>,
    routes: Arc<Routes>,
    changes: Arc<Follower>,
    /// Routing's subscription, made before the first read of the hosts; taken by `spawn`.
    routing_changes: std::sync::Mutex<Option<Subscription>>,
    certs: Arc<Certs>,
    proxy: ProxyState,
    notifier: Option<Arc<Notifier>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Each component's metrics: no global registry.
struct NodeMetrics {
    proxy: Arc<portico_proxy::metrics::Metrics>,
    certs: Arc<portico_certs::metrics::Metrics>,
    store: Arc<portico_store::metered::Metrics>,
    jobs: Jobs,
}

impl NodeMetrics {
    /// Every component's metrics at zero; requests counted only when `counting` (a metrics
    /// listener can read them).
    fn new(counting: bool) -> Self {
        Self {
            proxy: Arc::new(portico_proxy::metrics::Metrics::default().counting_requests(counting)),
            certs: Arc::default(),
            store: Arc::default(),
            jobs: Jobs::default(),
        }
    }

    /// One registry with each component's metrics registered by the component.
    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.proxy.register(&mut registry);
        self.certs.register(&mut registry);
        self.store.register(&mut registry);
        self.jobs.register(&mut registry);
        registry
    }
}

impl Node {
    /// Opens the store, loads the routing table, and makes the parts every role uses. Starts
    /// nothing that listens.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let node_metrics = NodeMetrics::new(config.metrics_listen.is_some());
        let registry = node_metrics.registry();
        let NodeMetrics { proxy: metrics, certs: cert_metrics, store: store_metrics, jobs } = node_metrics;
        let store = portico_store::open(&config.store_url).await.context("cannot open the store")?;
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, store_metrics.clone()));
        // A store that lost its identity (wiped, replaced) is not followed: see `identity`.
        let identified = Arc::new(
            IdentifiedStore::establish(store, Some(&config.data_dir))
                .await
                .context("cannot read or write the store's identity")?,
        );
        store_metrics.store_identity_lost.set(i64::from(identified.is_lost()));
        let store: Arc<dyn Store> = identified.clone();
        let shutdown = CancellationToken::new();
        // One follower of the store's changes for the node: each changed record is read once.
        // Routing subscribes before it reads the hosts, so no change falls in between.
        let changes = Follower::start(store.clone(), shutdown.clone().cancelled_owned());
        let routing_changes = changes.subscribe(&[Kind::Host]);
        let routes = Arc::new(Routes::new());
        if !identified.is_lost() {
            let hosts =
                routes::reload(&routes, store.as_ref()).await.context("cannot read hosts from the store")?.hosts;
            metrics.routes_hosts.set(hosts as i64);
        }
        tracing::info!(hosts = routes.snapshot().len(), store = %portico_store::redact(&config.store_url), "store opened");
        // A service manager (systemd's `Type=notify`, a test) hears of readiness and of each
        // new routing table.
        let notifier = Notifier::from_env().map(Arc::new);
        if let Some(notifier) = &notifier {
            let notifier = notifier.clone();
            routes.observe(move |state| notifier.routing(state));
        }
        let certs = Certs::new(
            store.clone(),
            issuer(config, store.clone(), &cert_metrics)?,
            routes.clone(),
            cert_settings(config),
            cert_metrics.clone(),
        )
        .await
        .context("cannot set up certificates")?;
        Ok(Self {
            config: config.clone(),
            proxy: ProxyState::new(metrics.clone()),
            metrics,
            store_metrics,
            jobs,
            exposition: Arc::new(Exposition::new(registry)),
            store,
            identified,
            routes,
            changes,
            routing_changes: std::sync::Mutex::new(Some(routing_changes)),
            certs,
            notifier,
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    /// Starts `role`: the jobs every node runs, then the role's listeners (a port taken stops
    /// the start, naming its key). Once every socket is bound, the node is ready and says so.
    pub async fn spawn(&self, role: Role) -> anyhow::Result<()> {
        let (tasks, shutdown, metrics) = (&self.tasks, &self.shutdown, &self.metrics);
        tasks.spawn(watch_identity(self.identified.clone(), self.store_metrics.clone(), shutdown.clone()));
        let taken = self.routing_changes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let routing_changes = taken.context("a node is spawned once")?;
        let routing = routes::follow_store(
            self.store.clone(),
            routing_changes,
            self.routes.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(routing);
        tasks.spawn(watch_store_memory(self.store.clone(), self.store_metrics.clone(), shutdown.clone()));
        tasks.spawn(self.certs.clone().follow_store(self.changes.subscribe(&[Kind::Host]), shutdown.clone()));
        let mut ready = Vec::new();
        if let Some(addr) = self.config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
            ready.push(("metrics", listener.local_addr()?));
            tasks.spawn(serve_metrics(listener, self.exposition.clone(), shutdown.clone()));
        }
        if role.proxy() {
            self.spawn_proxy(&mut ready).await?;
        }
        let api = if role.api() { Some(self.spawn_api(role, &mut ready).await?) } else { None };
        // Every socket is bound (connections queue from here on): ready, before anyone is
        // told.
        if let Some(api) = &api {
            let _ = api.listening.set(ready.iter().map(|(name, addr)| ((*name).to_owned(), *addr)).collect());
        }
        for (listener, addr) in &ready {
            tracing::info!(listener, addr = %addr, "listening");
        }
        if let Some(notifier) = &self.notifier {
            notifier.ready(&ready, self.routes.state());
        }
        Ok(())
    }

    /// The data plane: the HTTPS and HTTP listeners, and hosts' active health checks.
    async fn spawn_proxy(&self, ready: &mut Vec<(&'static str, SocketAddr)>) -> anyhow::Result<()> {
        let config = &self.config;
        // One cap for both listeners: they draw on the same file descriptors.
        let cap = ConnectionCap::new(config.proxy.max_connections, "proxy.max_connections");
        let (routes, certs, state) = (&self.routes, &self.certs, &self.proxy);
        let https =
            HttpListener::bind_tls(config.https, config.proxy.clone(), state.clone(), routes.clone(), certs.clone())
                .await
                .with_context(|| format!("cannot listen on {} (proxy.https)", config.https))?;
        let https_addr = https.local_addr()?;
        self.tasks.spawn(https.serve(cap.clone(), self.shutdown.clone()));
        // Redirects to HTTPS name the port actually bound.
        let plain = portico_proxy::ProxyConfig { https_port: https_addr.port(), ..config.proxy.clone() };
        let http = HttpListener::bind(config.http, plain, state.clone(), routes.clone(), Some(certs.clone()))
            .await
            .with_context(|| format!("cannot listen on {} (proxy.http)", config.http))?;
        ready.push(("http", http.local_addr()?));
        ready.push(("https", https_addr));
        self.tasks.spawn(http.serve(cap, self.shutdown.clone()));
        let checks =
            portico_proxy::checks::run(routes.clone(), config.proxy.clone(), state.clone(), self.shutdown.clone());
        self.tasks.spawn(checks);
        Ok(())
    }

    /// The control plane: the first admin, the API, renewals, DNS domain syncs and the
    /// lookup service.
    async fn spawn_api(&self, role: Role, ready: &mut Vec<(&'static str, SocketAddr)>) -> anyhow::Result<Api> {
        let (config, store, routes, tasks, shutdown) =
            (&self.config, &self.store, &self.routes, &self.tasks, &self.shutdown);
        let admin_password = std::env::var("PORTICO_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
        // Never a new admin in a store that was wiped: its old admin comes back with a backup.
        if !self.identified.is_lost() {
            portico_api::auth::bootstrap_admin(store.as_ref(), &config.data_dir, admin_password)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the first admin: {e}"))?;
        }
        let settings = ApiSettings {
            session_ttl: config.session_ttl,
            trusted_proxies: config.trusted_proxies.clone(),
            dns: config.tls.dns.endpoints.clone(),
            // The overview's request rate: this process's own requests, when it proxies and
            // counts them.
            requests: (role.proxy() && self.metrics.counts_requests()).then(|| {
                let metrics = self.metrics.clone();
                portico_api::RequestCounter(Arc::new(move || metrics.requests_served()))
            }),
            target_health: role.proxy().then(|| {
                let health = self.proxy.health.clone();
                portico_api::HealthReport(Arc::new(move |host| health.report(host)))
            }),
        };
        let certs = Some(self.certs.clone());
        let state = ApiState::new(store.clone(), self.changes.clone(), routes.clone(), settings, certs);
        let renewals = portico_certs::renew::run(
            self.certs.clone(),
            config.tls.renew_interval,
            self.jobs.clone(),
            shutdown.clone(),
        );
        tasks.spawn(renewals);
        let endpoints = config.tls.dns.endpoints.clone();
        tasks.spawn(sync_dns_domains(store.clone(), endpoints, self.jobs.clone(), shutdown.clone()));
        let listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("cannot listen on {} (api.listen)", config.api_listen))?;
        ready.push(("api", listener.local_addr()?));
        tasks.spawn(serve_api(listener, state.clone(), config.proxy.limits(), shutdown.clone()));
        // The seed's lookup service, from the same routing snapshot.
        if let Some(path) = &config.lookup_socket {
            let listener = lookup::bind_unix(path, config.lookup_socket_mode)
                .with_context(|| format!("cannot listen on {} (api.lookup_socket)", path.display()))?;
            tracing::info!(path = %path.display(), "lookup service listening on its socket");
            let endpoint = lookup::Endpoint::Unix(listener, path.clone());
            tasks.spawn(lookup::serve(endpoint, routes.clone(), shutdown.clone()));
        }
        if let Some(addr) = config.lookup_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (api.lookup_listen)"))?;
            ready.push(("lookup", listener.local_addr()?));
            tasks.spawn(lookup::serve(lookup::Endpoint::Tcp(listener), routes.clone(), shutdown.clone()));
        }
        Ok(state)
    }

    /// Stops accepting, lets what is in flight finish (each listener's drain), and returns
    /// when every task has ended.
    pub async fn stop(&self) {
        tracing::info!("shutting down");
        if let Some(notifier) = &self.notifier {
            notifier.stopping();
        }
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("stopped");
    }
}

/// Connections the API accepts at once (it shares the process's file descriptors with the
/// proxy, so it has a cap of its own: a flood on the proxy's ports leaves it reachable).
const API_MAX_CONNECTIONS: usize = 256;
/// File descriptors kept for everything but client and target connections: the API's, the
/// store, the ACME client, listeners.
const FD_RESERVE: u64 = API_MAX_CONNECTIONS as u64 + 256;

/// Serves the API with the proxy's connection limits: the same header-read deadline and idle
/// timeout, its own connection cap.
async fn serve_api(
    listener: tokio::net::TcpListener,
    api: portico_api::Api,
    limits: Limits,
    shutdown: CancellationToken,
) {
    use tower_service::Service as _;
    let router = portico_api::router(api);
    let builder = Arc::new(server::builder(&limits, 64 * 1024));
    let cap = ConnectionCap::new(API_MAX_CONNECTIONS, "the API's connection cap");
    server::accept_loop(&listener, &cap, &shutdown, limits.shutdown_timeout, move |stream, peer, watch| {
        let (router, builder) = (router.clone(), builder.clone());
        async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(request)
            });
            server::drive(&builder, TokioIo::new(stream), service, &limits, watch).await;
        }
    })
    .await;
}

/// Raises the soft limit on open files to the hard limit (as nginx's
/// `worker_rlimit_nofile` would be set by hand) and returns the limit now in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if let Some(hard) = limit.maximum
        && hard > soft
    {
        match setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) }) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    soft
}

/// `proxy.max_connections` when not configured: half of what the fd limit leaves after the
/// reserve (a proxied connection may hold a target connection too), at least 64.
fn default_max_connections(fd_limit: u64) -> usize {
    let half = fd_limit.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(64)
}

/// Serves `GET /metrics` (Prometheus' text format) until `shutdown`.
async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Exposition>, shutdown: CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.encode())
            }
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

/// How often the store's identity marker is read.
const IDENTITY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the store's identity marker every [`IDENTITY_EVERY`] and keeps the metric in step.
/// (When the identity comes back, the store announces a resync to every follower.)
async fn watch_identity(
    store: Arc<IdentifiedStore>,
    metrics: Arc<portico_store::metered::Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(IDENTITY_EVERY) => {}
        }
        match store.verify().await {
            Ok(intact) => {
                metrics.store_identity_lost.set(i64::from(!intact));
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the store's identity"),
        }
    }
}

/// Reads the store server's memory (Redis) into `portico_store_memory_bytes` every 15 s;
/// returns at once for a store that has none to report.
async fn watch_store_memory(
    store: Arc<dyn Store>,
    metrics: Arc<portico_store::metered::Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        match store.memory_used().await {
            Ok(Some(bytes)) => {
                metrics.store_memory.set(bytes as i64);
            }
            Ok(None) => return,
            Err(e) => tracing::debug!(error = %e, "cannot read the store's memory use"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
        }
    }
}

/// How often every DNS provider's zones are synced to `Domain` records.
const DNS_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Syncs every DNS provider's domains every [`DNS_SYNC_EVERY`] (the first time a minute after
/// start), until `shutdown`.
async fn sync_dns_domains(
    store: Arc<dyn Store>,
    endpoints: portico_certs::DnsEndpoints,
    jobs: Jobs,
    shutdown: CancellationToken,
) {
    let mut next = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let synced = jobs.run_job("dns_sync", portico_api::sync_dns_domains(store.as_ref(), &endpoints)).await;
        if let Err(e) = synced {
            tracing::warn!(error = %e, "cannot sync DNS providers' domains; trying again later");
        }
        next = tokio::time::Instant::now() + DNS_SYNC_EVERY;
    }
}

/// The issuer `tls.issuer` names.
fn issuer(
    config: &Config,
    store: Arc<dyn Store>,
    metrics: &Arc<portico_certs::metrics::Metrics>,
) -> anyhow::Result<Arc<dyn Issuer>> {
    let tls = &config.tls;
    Ok(match tls.issuer {
        config::IssuerKind::Internal => Arc::new(InternalCa::new(store, tls.internal_lifetime)),
        config::IssuerKind::Acme => {
            let settings = AcmeSettings {
                directory: tls.acme_directory.clone(),
                email: tls.acme_email.clone(),
                eab: tls.acme_eab.as_ref().map(|(kid, hmac_key)| Eab { kid: kid.clone(), hmac_key: hmac_key.clone() }),
                ca_roots: tls.acme_ca_roots.clone(),
                challenge: tls.challenge,
                dns: tls.dns.clone(),
            };
            Arc::new(AcmeIssuer::new(store, settings, metrics.clone()).context("invalid [tls] settings")?)
        }
    })
}

fn cert_settings(config: &Config) -> CertSettings {
    CertSettings {
        renew_remaining_ratio: config.tls.renew_remaining_ratio,
        issue_timeout: config.tls.issue_timeout,
        max_issuances_per_minute: config.tls.max_issuances_per_minute,
        max_pattern_issuances_per_minute: config.tls.max_pattern_issuances_per_minute,
        max_certs_per_pattern: config.tls.max_certs_per_pattern,
        max_certs_per_domain: config.tls.max_certs_per_domain,
        ..CertSettings::default()
    }
}

/// The internal CA's root (`portico ca export`).
pub async fn internal_root(config: &Config) -> anyhow::Result<String> {
    // Exporting from a mistyped path must not make a store and a root nobody uses.
    let store = portico_store::open_existing(&config.store_url).await.context("cannot open the store")?;
    // Never a new root in a store that lost its identity: clients trust the old one.
    let store = IdentifiedStore::establish(store, Some(&config.data_dir)).await?;
    if store.is_lost() {
        anyhow::bail!(portico_store::StoreError::IdentityLost);
    }
    let ca = InternalCa::new(Arc::new(store), config.tls.internal_lifetime);
    Ok(ca.root_pem().await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_target_connections_and_the_api() {
        assert_eq!(default_max_connections(1024), 256);
        assert_eq!(default_max_connections(65_536), 32_512);
        assert_eq!(default_max_connections(256), 64, "a floor even on tiny limits");
    }
}

#[cfg(test)]
mod deploy {
    use std::collections::BTreeSet;

    use super::NodeMetrics;

    /// Every sample name the registry can produce: each family's, and a histogram's
    /// `_bucket`, `_sum` and `_count`.
    fn known() -> BTreeSet<String> {
        // A family shows only once it has a sample: give each one.
        let m = NodeMetrics::new(true);
        let exposition = portico_metrics::Exposition::new(m.registry());
        m.proxy.request(Some(&std::sync::Arc::from("a.test")), 200, "HTTP/1.1", 0.1, 1);
        m.proxy.handshake(None);
        m.certs.certificate("a.test", 1, 2, 3, 0);
        m.certs.order(true, "http-01");
        m.certs.decision("memory");
        m.jobs.job("renewal", true, 0.1);
        let op = portico_store::metered::OpLabels { op: "record" };
        m.store.store_seconds.get_or_create(&op).observe(0.001);
        m.store.store_errors.get_or_create(&op).inc();
        let text = exposition.encode();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            let mut words = line.split(' ');
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                names.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                if kind == "counter" && !name.ends_with("_total") {
                    names.insert(format!("{name}_total"));
                }
            }
        }
        names
    }

    /// The `portico_…` names a text uses.
    fn used(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("portico_") {
            let start = i + at;
            let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            names.insert(text[start..end].to_owned());
            i = end;
        }
        names
    }

    #[test]
    fn the_dashboard_and_the_alert_rules_use_only_metrics_that_exist() {
        let known = known();
        assert!(known.contains("portico_http_requests_total"), "{known:?}");
        for (file, text) in [
            ("deploy/grafana-dashboard.json", include_str!("../../../deploy/grafana-dashboard.json")),
            ("deploy/prometheus-rules.yml", include_str!("../../../deploy/prometheus-rules.yml")),
        ] {
            let used = used(text);
            assert!(used.len() >= 4, "{file} uses hardly any metric: {used:?}");
            let unknown: Vec<&String> = used.difference(&known).collect();
            assert!(unknown.is_empty(), "{file} names metrics that do not exist: {unknown:?}");
        }
        // The dashboard is JSON Grafana can import: a title and panels with queries.
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana-dashboard.json")).expect("JSON");
        assert_eq!(dashboard["title"], "Portico");
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| p.len() >= 10 && p.iter().all(|p| p["targets"][0]["expr"].is_string()))
        );
    }
}
