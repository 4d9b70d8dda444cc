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
use portico_api::{Api, ApiSettings, ApiState, lookup};
use portico_certs::acme::{AcmeIssuer, AcmeSettings};
use portico_certs::internal::InternalCa;
use portico_certs::{CertSettings, Certs, Issuer};
use portico_metrics::{Exposition, Jobs, Registry};
use portico_proxy::listener::ListenerSettings;
use portico_proxy::quic::QuicListener;
use portico_proxy::server::{self, ConnectionCap, Limits};
use portico_proxy::{HttpListener, ProxyState, Routes, routes};
use portico_store::MeteredStore;
use portico_store::{Follower, IdentifiedStore, Kind, Store, Subscription};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::logging::Logging;
use crate::notify::Notifier;
use crate::upgrade;

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

/// Runs `role` until a shutdown signal, then drains and returns. `SIGHUP` reloads the
/// configuration through `load` ([`Node::reload`]).
pub async fn run(
    mut config: Config,
    role: Role,
    logging: Logging,
    load: impl Fn() -> anyhow::Result<Config>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // A file-size limit (`ulimit -f`) reached by the store is an I/O error to recover from, as
    // a full disk is, not a signal that kills the process (PostgreSQL ignores it too).
    // The handler stays installed for the life of the process; the stream is not needed.
    let _ignored =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()))
            .context("cannot watch SIGXFSZ")?;
    let fd_limit = raise_fd_limit();
    derive_limits(&mut config, fd_limit);
    tracing::info!(fd_limit, max_connections = config.proxy.max_connections, "connection limits");
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
    // The binary an upgrade starts by default: this one, by the path it was started from
    // (which a package upgrade replaces). Unknown without /proc: `--binary` is needed then.
    let started_from = std::env::current_exe().ok();
    let node = Node::build(&config).await?;
    node.spawn(role).await?;
    let pid_file = PidFile::write(&config.data_dir);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "signal received"); break }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "signal received"); break }
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "signal received: reloading the configuration");
                let loaded = load().map(|mut config| { derive_limits(&mut config, fd_limit); config });
                node.reload(loaded, &logging).await;
            }
            _ = usr2.recv() => {
                let failed = config.data_dir.join(upgrade::FAILED_FILE);
                let upgraded = match upgrade::binary(&config.data_dir, started_from.as_deref()) {
                    Ok(binary) => {
                        tracing::info!(signal = "SIGUSR2", binary = %binary.display(), "signal received: upgrading to a new process");
                        node.upgrade(&binary).await
                    }
                    Err(e) => Err(e),
                };
                match upgraded {
                    Ok(pid) => {
                        tracing::info!(new_pid = pid, "the new process is ready and serves: this one drains and exits");
                        break;
                    }
                    Err(e) => {
                        tracing::error!("the upgrade failed, this process keeps serving: {e:#}");
                        let _ = std::fs::write(&failed, format!("{e:#}\n"));
                    }
                }
            }
        }
    }
    node.stop().await;
    drop(pid_file);
    Ok(())
}

/// What the configuration leaves to the machine: `proxy.max_connections` from the open-file
/// limit when not set.
fn derive_limits(config: &mut Config, fd_limit: u64) {
    config.proxy.max_connections = config.max_connections.unwrap_or_else(|| default_max_connections(fd_limit));
}

/// `<data_dir>/portico.pid`, which `portico reload` and `portico upgrade` find the process
/// by; removed when the process stops, if it is still this process's.
struct PidFile(Option<std::path::PathBuf>);

impl PidFile {
    /// The file name in the data directory.
    const NAME: &'static str = "portico.pid";

    fn write(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join(Self::NAME);
        match std::fs::write(&path, format!("{}\n", std::process::id())) {
            Ok(()) => Self(Some(path)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the pid file: `portico reload` will not find this process");
                Self(None)
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0
            && std::fs::read_to_string(path).is_ok_and(|pid| pid.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The process `<data_dir>/portico.pid` names (`portico reload`, `portico upgrade`).
pub fn running_pid(data_dir: &std::path::Path) -> anyhow::Result<rustix::process::Pid> {
    let path = data_dir.join(PidFile::NAME);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {}: is Portico running with this data directory (--data-dir)?", path.display())
    })?;
    let number: i32 = text.trim().parse().with_context(|| format!("{} does not hold a process id", path.display()))?;
    let pid = rustix::process::Pid::from_raw(number)
        .with_context(|| format!("{} does not hold a process id", path.display()))?;
    // Signal 0: whether the process exists (and may be signalled by us).
    match rustix::process::test_kill_process(pid) {
        Ok(()) => Ok(pid),
        Err(rustix::io::Errno::SRCH) => {
            anyhow::bail!("{} names process {number}, which is not running (a stale file)", path.display())
        }
        Err(rustix::io::Errno::PERM) => anyhow::bail!(
            "process {number} ({}) belongs to another user: run this as that user (`sudo -u portico …`) or as root",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot signal process {number}")),
    }
}

/// The listeners a role has, in the order they are bound (HTTPS before HTTP/3 and HTTP:
/// HTTP/3 is served beside it, and redirects to HTTPS name its port).
const LISTENERS: [Listener; 7] = [
    Listener::Metrics,
    Listener::Https,
    Listener::Http3,
    Listener::Http,
    Listener::Api,
    Listener::Lookup,
    Listener::LookupSocket,
];

/// One of a node's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Listener {
    Metrics,
    Https,
    /// HTTP/3: QUIC on the HTTPS listener's address, UDP.
    Http3,
    Http,
    Api,
    Lookup,
    LookupSocket,
}

impl Listener {
    /// Its name in `/readyz` and the notifications.
    fn name(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Https => "https",
            Self::Http3 => "http3",
            Self::Http => "http",
            Self::Api => "api",
            Self::Lookup => "lookup",
            Self::LookupSocket => "lookup_socket",
        }
    }

    /// Its configuration key.
    fn key(self) -> &'static str {
        match self {
            Self::Metrics => "metrics.listen",
            Self::Https => "proxy.https",
            Self::Http3 => "proxy.http3",
            Self::Http => "proxy.http",
            Self::Api => "api.listen",
            Self::Lookup => "api.lookup_listen",
            Self::LookupSocket => "api.lookup_socket",
        }
    }

    fn in_role(self, role: Role) -> bool {
        match self {
            Self::Metrics => true,
            Self::Https | Self::Http3 | Self::Http => role.proxy(),
            Self::Api | Self::Lookup | Self::LookupSocket => role.api(),
        }
    }

    /// Where `config` asks it to listen, if anywhere.
    fn asked(self, config: &Config) -> Option<String> {
        match self {
            Self::Metrics => config.metrics_listen.map(|a| a.to_string()),
            Self::Https => Some(config.https.to_string()),
            Self::Http3 => config.http3.then(|| format!("{} (UDP)", config.https)),
            Self::Http => Some(config.http.to_string()),
            Self::Api => Some(config.api_listen.to_string()),
            Self::Lookup => config.lookup_listen.map(|a| a.to_string()),
            Self::LookupSocket => {
                config.lookup_socket.as_ref().map(|p| format!("{}:{:o}", p.display(), config.lookup_socket_mode))
            }
        }
    }
}

/// The HTTPS port bound (being bound among `pending`, or serving), else the configured one.
fn bound_https_port(pending: &[(Listener, String, Pending)], running: &Running, config: &Config) -> u16 {
    pending
        .iter()
        .find_map(|(_, _, p)| match p {
            Pending::Https(https) => https.local_addr().ok(),
            _ => None,
        })
        .or_else(|| running.listeners.get(&Listener::Https).and_then(|b| b.addr))
        .map_or(config.https.port(), |addr| addr.port())
}

/// The HTTPS listener's settings: `[proxy]`'s, with `Alt-Svc` advertising HTTP/3 on `port`
/// when `proxy.alt_svc` says so.
fn https_proxy(config: &Config, port: u16) -> portico_proxy::ProxyConfig {
    let alt_svc = config.alt_svc.then(|| hyper::http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok());
    portico_proxy::ProxyConfig { alt_svc: alt_svc.flatten(), ..config.proxy.clone() }
}

/// A listener bound and not yet serving.
enum Pending {
    Metrics(tokio::net::TcpListener),
    Https(HttpListener),
    Http3(QuicListener),
    Http(HttpListener),
    Api(tokio::net::TcpListener),
    Lookup(tokio::net::TcpListener),
    LookupSocket(tokio::net::UnixListener, std::path::PathBuf),
}

impl Bound {
    /// Removes a Unix socket's file (the listener stopped for good).
    fn remove_file(&self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A listener serving.
struct Bound {
    /// Where the configuration asked it to listen ([`Listener::asked`]).
    asked: String,
    /// The address bound (a TCP listener's).
    addr: Option<SocketAddr>,
    /// Stops this listener alone (its connections drain).
    stop: CancellationToken,
    /// A copy of the listening socket, to hand to a new process (an upgrade).
    socket: std::os::fd::OwnedFd,
    /// A Unix socket's file, removed when the process stops (unless handed over).
    path: Option<std::path::PathBuf>,
}

/// What a reload may replace: the listeners, the settings their connections are served with,
/// and the jobs made from the configuration. Set by [`Node::spawn`].
#[derive(Default)]
struct Running {
    role: Option<Role>,
    listeners: std::collections::BTreeMap<Listener, Bound>,
    http: Option<ListenerSettings>,
    https: Option<ListenerSettings>,
    /// The HTTP/3 endpoint's handle, while it serves.
    http3: Option<portico_proxy::quic::QuicControl>,
    /// The proxy listeners' one connection cap.
    cap: Option<ConnectionCap>,
    api: Option<Api>,
    /// The API listener's connection limits.
    api_limits: Option<Arc<arc_swap::ArcSwap<Limits>>>,
    /// Jobs made from the configuration, each with the token that stops it alone.
    jobs: std::collections::BTreeMap<&'static str, CancellationToken>,
}

impl Running {
    /// Every TCP listener's bound address, by name.
    fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.iter().filter_map(|(listener, bound)| Some((listener.name(), bound.addr?))).collect()
    }

    /// [`Running::addresses`], also given to the API for `/readyz`.
    fn publish_addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        let addresses = self.addresses();
        if let Some(api) = &self.api {
            api.listening
                .store(Some(Arc::new(addresses.iter().map(|(name, addr)| ((*name).to_owned(), *addr)).collect())));
        }
        addresses
    }
}

/// One process's runtime parts, built from a [`Config`]: each component's metrics and the
/// registry they are registered in, the store
/// (metered, its identity watched), the routing table, the one change follower, the
/// certificates and the data plane's state. [`Node::spawn`] starts a role's listeners and
/// jobs on them; [`Node::stop`] drains. The configuration is kept, so a new one can be
/// compared with it part by part.
pub struct Node {
    /// The configuration in force (a reload replaces it).
    config: std::sync::Mutex<Config>,
    /// The data plane's metrics (requests, connections, routing).
    metrics: Arc<portico_proxy::metrics::Metrics>,
    store_metrics: Arc<portico_store::metered::Metrics>,
    cert_metrics: Arc<portico_certs::metrics::Metrics>,
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
    /// The listeners and jobs of the role, which a reload replaces.
    running: tokio::sync::Mutex<Running>,
    /// Reloads done (applied or refused).
    reloads: std::sync::atomic::AtomicU64,
    /// Listening sockets handed to this process (an upgrade, systemd's socket activation).
    inherited: upgrade::Inherited,
    /// Set once the listeners are handed to a new process: the lookup socket's file is
    /// then left in place.
    handed_over: std::sync::atomic::AtomicBool,
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
        let store = crate::store_cmd::open(config, true).await?;
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
            config: std::sync::Mutex::new(config.clone()),
            proxy: ProxyState::new(metrics.clone()),
            metrics,
            store_metrics,
            cert_metrics,
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
            running: tokio::sync::Mutex::default(),
            reloads: std::sync::atomic::AtomicU64::new(0),
            inherited: upgrade::Inherited::from_env()?,
            handed_over: std::sync::atomic::AtomicBool::new(false),
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
        let config = self.config();
        let mut running = self.running.lock().await;
        running.role = Some(role);
        if role.proxy() {
            running.cap = Some(ConnectionCap::new(config.proxy.max_connections, "proxy.max_connections"));
            self.start_job(&mut running, "checks", &config);
            let settings = portico_proxy::stream::StreamSettings {
                connect_timeout: config.proxy.upstream_connect_timeout,
                idle_timeout: config.proxy.tunnel_idle_timeout,
                max_connections: config.proxy.max_connections,
            };
            let changes = self.changes.subscribe(&[Kind::Stream]);
            tasks.spawn(portico_proxy::stream::run(
                self.store.clone(),
                changes,
                settings,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        if role.api() {
            // Never a new admin in a store that was wiped: its old admin comes back with a backup.
            if !self.identified.is_lost() {
                let admin_password = std::env::var("PORTICO_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty());
                portico_api::auth::bootstrap_admin(self.store.as_ref(), &config.data_dir, admin_password)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot create the first admin: {e}"))?;
            }
            running.api = Some(ApiState::new(
                self.store.clone(),
                self.changes.clone(),
                self.routes.clone(),
                self.api_settings(&config, role),
                Some(self.certs.clone()),
            ));
            running.api_limits = Some(Arc::new(arc_swap::ArcSwap::from_pointee(config.proxy.limits())));
            self.start_job(&mut running, "renewals", &config);
            self.start_job(&mut running, "dns_sync", &config);
        }
        let wanted: Vec<Listener> = LISTENERS.into_iter().filter(|l| l.in_role(role)).collect();
        let pending = self.bind_or_explain(&running, &config, &wanted).await?;
        for (listener, asked, pending) in pending {
            self.start(&mut running, listener, asked, pending)?;
        }
        // Every socket is bound (connections queue from here on): ready, before anyone is
        // told.
        let ready = running.publish_addresses();
        for (listener, addr) in &ready {
            tracing::info!(listener, addr = %addr, "listening");
        }
        if let Some(notifier) = &self.notifier {
            notifier.ready(&ready, self.routes.state());
        }
        // The process this one replaces (an upgrade) drains from here on.
        self.inherited.ready();
        if let (Some(notifier), Some(interval)) = (&self.notifier, crate::notify::watchdog_interval()) {
            self.tasks.spawn(watchdog(notifier.clone(), interval, self.shutdown.clone()));
        }
        Ok(())
    }

    /// The configuration in force.
    fn config(&self) -> Config {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The API's settings from `config`.
    fn api_settings(&self, config: &Config, role: Role) -> ApiSettings {
        ApiSettings {
            session_ttl: config.session_ttl,
            trusted_proxies: config.trusted_proxies.clone(),
            dns: config.tls.dns.endpoints.clone(),
            // The overview's request rate: this process's own requests, when it proxies and
            // counts them.
            requests: (role.proxy() && self.metrics.counts_requests()).then(|| {
                let metrics = self.metrics.clone();
                portico_api::RequestCounter(Arc::new(move || {
                    let traffic = metrics.traffic();
                    let bounds = portico_proxy::metrics::LATENCY_BOUNDS_MS.iter().map(|&b| Some(b)).chain([None]);
                    portico_api::Traffic {
                        requests: traffic.requests,
                        statuses: traffic.statuses,
                        latency: bounds.zip(traffic.latency).collect(),
                    }
                }))
            }),
            target_health: role.proxy().then(|| {
                let health = self.proxy.health.clone();
                portico_api::HealthReport(Arc::new(move |host| health.report(host)))
            }),
        }
    }

    /// Binds each of `listeners` where `config` asks (those it asks for), all or none: the
    /// first that cannot be bound is the error, naming its key.
    async fn bind(
        &self,
        running: &Running,
        config: &Config,
        listeners: &[Listener],
    ) -> anyhow::Result<Vec<(Listener, String, Pending)>> {
        let mut pending = Vec::new();
        for &listener in listeners {
            let Some(asked) = listener.asked(config) else { continue };
            let failed = || format!("cannot listen on {asked} ({})", listener.key());
            // A socket handed over (an upgrade, systemd) is used as it is; else one is bound.
            let tcp = |addr: Option<SocketAddr>| async move {
                match self.inherited.tcp(listener.name())? {
                    Some(socket) => Ok(socket),
                    None => bind_tcp(addr).await,
                }
            };
            let bound = match listener {
                Listener::Metrics => Pending::Metrics(tcp(config.metrics_listen).await.with_context(failed)?),
                Listener::Api => Pending::Api(tcp(Some(config.api_listen)).await.with_context(failed)?),
                Listener::Lookup => Pending::Lookup(tcp(config.lookup_listen).await.with_context(failed)?),
                Listener::LookupSocket => {
                    let path = config.lookup_socket.clone().context("no socket asked for")?;
                    let socket = match self.inherited.unix(listener.name()).with_context(failed)? {
                        Some(socket) => socket,
                        None => lookup::bind_unix(&path, config.lookup_socket_mode).with_context(failed)?,
                    };
                    // The file is this node's to remove when it stops ([`Node::stop`]).
                    Pending::LookupSocket(socket, path)
                }
                Listener::Https => {
                    let socket = tcp(Some(config.https)).await.with_context(failed)?;
                    let port = socket.local_addr().with_context(failed)?.port();
                    Pending::Https(
                        HttpListener::on_tls(
                            socket,
                            https_proxy(config, port),
                            self.proxy.clone(),
                            self.routes.clone(),
                            self.certs.clone(),
                        )
                        .with_context(failed)?,
                    )
                }
                Listener::Http3 => {
                    // The HTTPS listener's address and port (the one being bound now, or
                    // the one serving), and its settings: a reload applies to both.
                    let settings = pending
                        .iter()
                        .find_map(|(_, _, p)| match p {
                            Pending::Https(https) => Some(https.settings()),
                            _ => None,
                        })
                        .or_else(|| running.https.clone())
                        .context("HTTP/3 is served beside the HTTPS listener, which is not bound")?;
                    let addr = SocketAddr::new(config.https.ip(), bound_https_port(&pending, running, config));
                    let socket = match self.inherited.udp(listener.name()).with_context(failed)? {
                        Some(socket) => socket,
                        None => std::net::UdpSocket::bind(addr).with_context(failed)?,
                    };
                    Pending::Http3(QuicListener::on(socket, settings, self.certs.clone()).with_context(failed)?)
                }
                Listener::Http => {
                    // Redirects to HTTPS name the port actually bound.
                    let https_port = bound_https_port(&pending, running, config);
                    let plain = portico_proxy::ProxyConfig { https_port, ..config.proxy.clone() };
                    let socket = tcp(Some(config.http)).await.with_context(failed)?;
                    let http = HttpListener::on(
                        socket,
                        plain,
                        self.proxy.clone(),
                        self.routes.clone(),
                        Some(self.certs.clone()),
                    );
                    Pending::Http(http)
                }
            };
            pending.push((listener, asked, bound));
        }
        Ok(pending)
    }

    /// [`Node::bind`], with what to do when a port below 1024 is refused.
    async fn bind_or_explain(
        &self,
        running: &Running,
        config: &Config,
        listeners: &[Listener],
    ) -> anyhow::Result<Vec<(Listener, String, Pending)>> {
        self.bind(running, config, listeners).await.map_err(|e| {
            let refused = e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            });
            if refused {
                anyhow::anyhow!(
                    "{e:#}; ports below 1024 need root or CAP_NET_BIND_SERVICE: run Portico as its systemd unit \
                     (which grants it), or `sudo setcap cap_net_bind_service=+ep /usr/bin/portico`, or use a port \
                     above 1023 (--http 0.0.0.0:8080)"
                )
            } else {
                e
            }
        })
    }

    /// Serves a bound listener until its own token (or the node's shutdown) stops it.
    fn start(&self, running: &mut Running, listener: Listener, asked: String, pending: Pending) -> anyhow::Result<()> {
        let stop = self.shutdown.child_token();
        let (tasks, routes) = (&self.tasks, &self.routes);
        let (addr, socket, path) = match pending {
            Pending::Metrics(socket) => {
                let (addr, kept) = (socket.local_addr()?, upgrade::keep(&socket)?);
                tasks.spawn(serve_metrics(socket, self.exposition.clone(), stop.clone()));
                (Some(addr), kept, None)
            }
            Pending::Api(socket) => {
                let (addr, kept) = (socket.local_addr()?, upgrade::keep(&socket)?);
                let api = running.api.clone().context("the API's state is made before its listener")?;
                let limits = running.api_limits.clone().context("the API's limits are set before its listener")?;
                tasks.spawn(serve_api(socket, api, limits, stop.clone()));
                (Some(addr), kept, None)
            }
            Pending::Lookup(socket) => {
                let (addr, kept) = (socket.local_addr()?, upgrade::keep(&socket)?);
                tasks.spawn(lookup::serve(lookup::Endpoint::Tcp(socket), routes.clone(), stop.clone()));
                (Some(addr), kept, None)
            }
            Pending::LookupSocket(socket, path) => {
                tracing::info!(path = %path.display(), "lookup service listening on its socket");
                let kept = upgrade::keep(&socket)?;
                tasks.spawn(lookup::serve(lookup::Endpoint::Unix(socket), routes.clone(), stop.clone()));
                (None, kept, Some(path))
            }
            Pending::Http3(quic) => {
                let (addr, kept) = (quic.local_addr()?, upgrade::keep(quic.socket())?);
                running.http3 = Some(quic.control());
                let cap = running.cap.clone().context("the proxy's cap is made before its listeners")?;
                tasks.spawn(quic.serve(cap, stop.clone()));
                (Some(addr), kept, None)
            }
            Pending::Https(http) | Pending::Http(http) => {
                let (addr, kept) = (http.local_addr()?, upgrade::keep(http.socket())?);
                let settings = Some(http.settings());
                if listener == Listener::Https {
                    running.https = settings
                } else {
                    running.http = settings
                }
                let cap = running.cap.clone().context("the proxy's cap is made before its listeners")?;
                tasks.spawn(http.serve(cap, stop.clone()));
                (Some(addr), kept, None)
            }
        };
        if let Some(old) = running.listeners.insert(listener, Bound { asked, addr, stop, socket, path }) {
            tracing::info!(listener = listener.name(), from = ?old.addr, to = ?addr, "listening elsewhere; the old listener drains");
            old.stop.cancel();
            old.remove_file();
        }
        Ok(())
    }

    /// Starts `binary` with the same arguments, hands it every listening socket, and
    /// returns once it is ready (its process id), telling the service manager it is the main
    /// process now. The caller then drains this one ([`Node::stop`]). On error this process
    /// has changed nothing and keeps serving.
    pub async fn upgrade(&self, binary: &std::path::Path) -> anyhow::Result<u32> {
        // Copies of the sockets, so the lock is not held while the new process starts.
        let sockets = {
            let running = self.running.lock().await;
            let copies =
                running.listeners.iter().map(|(listener, bound)| Ok((listener.name(), upgrade::keep(&bound.socket)?)));
            copies.collect::<std::io::Result<Vec<_>>>().context("cannot copy the listening sockets")?
        };
        let data_dir = self.config().data_dir;
        let pid = upgrade::hand_over(&data_dir, binary, sockets).await?;
        self.handed_over.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(notifier) = &self.notifier {
            notifier.main_pid(pid);
        }
        Ok(pid)
    }

    /// Starts (or starts again, stopping the one running) the job `name`, made from `config`.
    fn start_job(&self, running: &mut Running, name: &'static str, config: &Config) {
        let stop = self.shutdown.child_token();
        match name {
            "checks" => {
                let checks = portico_proxy::checks::run(
                    self.routes.clone(),
                    config.proxy.clone(),
                    self.proxy.clone(),
                    stop.clone(),
                );
                self.tasks.spawn(checks);
            }
            "renewals" => {
                let renewals = portico_certs::renew::run(
                    self.certs.clone(),
                    config.tls.renew_interval,
                    self.jobs.clone(),
                    stop.clone(),
                );
                self.tasks.spawn(renewals);
            }
            _ => {
                let endpoints = config.tls.dns.endpoints.clone();
                self.tasks.spawn(sync_dns_domains(self.store.clone(), endpoints, self.jobs.clone(), stop.clone()));
            }
        }
        if let Some(old) = running.jobs.insert(name, stop) {
            old.cancel();
        }
    }

    /// Applies a configuration read again (`SIGHUP`): everything that can change live,
    /// without dropping a connection; what cannot (the data directory, the store, the
    /// worker threads) is named in one line and stays as it was. A configuration that does
    /// not load, or one part of which cannot be applied (a level that is no level, an
    /// address that cannot be bound, invalid `[tls]` settings), changes nothing and is
    /// reported. Returns whether it was applied.
    pub async fn reload(&self, loaded: anyhow::Result<Config>, logging: &Logging) -> bool {
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        let applied = match loaded {
            Ok(new) => self.apply(new, logging).await,
            Err(e) => Err(e),
        };
        let outcome = match &applied {
            Ok(changed) if changed.is_empty() => {
                tracing::info!("configuration reloaded: nothing changed");
                true
            }
            Ok(changed) => {
                tracing::info!(changed = %changed.join(","), "configuration reloaded");
                true
            }
            Err(e) => {
                tracing::error!("the configuration was not reloaded, the running one stays: {e:#}");
                false
            }
        };
        let count = self.reloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if let Some(notifier) = &self.notifier {
            let addresses = self.running.lock().await.addresses();
            notifier.reloaded(&addresses, self.routes.state(), count, outcome);
        }
        outcome
    }

    /// [`Node::reload`]'s work: checks what can fail, then applies; the sections changed.
    async fn apply(&self, mut new: Config, logging: &Logging) -> anyhow::Result<Vec<&'static str>> {
        let old = self.config();
        let fixed = fixed_keys(&old, &mut new);
        if !fixed.is_empty() {
            tracing::warn!(keys = %fixed.join(","), "these settings cannot change while Portico runs: they stay as they were until a restart");
        }
        let changed = changed_sections(&old, &new);
        if changed.is_empty() {
            return Ok(changed);
        }
        // First what can fail, so that a failure changes nothing.
        Logging::check(&new)?;
        let issuer =
            if new.tls != old.tls { Some(issuer(&new, self.store.clone(), &self.cert_metrics)?) } else { None };
        let mut running = self.running.lock().await;
        let role = running.role.context("the node is not running")?;
        let moved: Vec<Listener> = LISTENERS
            .into_iter()
            .filter(|l| l.in_role(role) && l.asked(&new) != running.listeners.get(l).map(|b| b.asked.clone()))
            .collect();
        let pending = self.bind_or_explain(&running, &new, &moved).await?;

        // Then apply.
        if (&new.log_level, new.log_format) != (&old.log_level, old.log_format) {
            logging.apply(&new)?;
        }
        for listener in &moved {
            if listener.asked(&new).is_none()
                && let Some(old) = running.listeners.remove(listener)
            {
                tracing::info!(listener = listener.name(), "listener closed: the configuration no longer asks for it");
                old.stop.cancel();
                old.remove_file();
            }
        }
        for (listener, asked, pending) in pending {
            self.start(&mut running, listener, asked, pending)?;
        }
        if let Some(cap) = &running.cap {
            cap.resize(new.proxy.max_connections);
        }
        if let Some(https) = &running.https {
            let port =
                running.listeners.get(&Listener::Https).and_then(|b| b.addr).map_or(new.https.port(), |a| a.port());
            https.apply(https_proxy(&new, port));
            // HTTP/3 connections from now on with them too (`proxy.http3_0rtt`, timeouts).
            if let Some(http3) = &running.http3 {
                http3.apply();
            }
        }
        if let Some(http) = &running.http {
            let https_port =
                running.listeners.get(&Listener::Https).and_then(|b| b.addr).map_or(new.https.port(), |a| a.port());
            http.apply(portico_proxy::ProxyConfig { https_port, ..new.proxy.clone() });
        }
        if let Some(limits) = &running.api_limits {
            limits.store(Arc::new(new.proxy.limits()));
        }
        if role.proxy() && new.proxy != old.proxy {
            self.start_job(&mut running, "checks", &new);
        }
        if let Some(issuer) = issuer {
            self.certs.reconfigure(issuer, cert_settings(&new));
        }
        if let Some(api) = running.api.clone() {
            api.reconfigure(self.api_settings(&new, role));
            if new.tls.renew_interval != old.tls.renew_interval {
                self.start_job(&mut running, "renewals", &new);
            }
            if new.tls.dns.endpoints != old.tls.dns.endpoints {
                self.start_job(&mut running, "dns_sync", &new);
            }
        }
        running.publish_addresses();
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(changed)
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
        // A socket handed to a new process stays where its clients find it.
        if !self.handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            for bound in self.running.lock().await.listeners.values() {
                bound.remove_file();
            }
        }
        tracing::info!("stopped");
    }
}

/// Binds a TCP listener on `addr`.
async fn bind_tcp(addr: Option<SocketAddr>) -> std::io::Result<tokio::net::TcpListener> {
    let addr = addr.ok_or_else(|| std::io::Error::other("no address"))?;
    tokio::net::TcpListener::bind(addr).await
}

/// Puts back in `new` what cannot change while the process runs (the data directory, the
/// store, the worker threads), and names the keys that asked to.
fn fixed_keys(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let [data_dir, store_url, workers] = config::RESTART_KEYS;
    let mut fixed = Vec::new();
    if new.data_dir != old.data_dir {
        fixed.push(data_dir);
        new.data_dir = old.data_dir.clone();
    }
    if new.store_url != old.store_url {
        fixed.push(store_url);
        new.store_url = old.store_url.clone();
    }
    if new.workers != old.workers {
        fixed.push(workers);
        new.workers = old.workers;
    }
    fixed
}

/// The sections of the configuration that differ (for the log line: names, never values).
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut differs = |name, differ: bool| {
        if differ {
            changed.push(name);
        }
    };
    differs("proxy", old.proxy != new.proxy || old.max_connections != new.max_connections);
    differs("proxy.http", old.http != new.http);
    differs("proxy.https", old.https != new.https);
    differs("proxy.http3", old.http3 != new.http3 || old.alt_svc != new.alt_svc);
    differs(
        "api",
        old.api_listen != new.api_listen
            || old.lookup_socket != new.lookup_socket
            || old.lookup_socket_mode != new.lookup_socket_mode
            || old.lookup_listen != new.lookup_listen
            || old.session_ttl != new.session_ttl
            || old.trusted_proxies != new.trusted_proxies,
    );
    differs("tls", old.tls != new.tls);
    differs("metrics", old.metrics_listen != new.metrics_listen);
    differs("log", old.log_level != new.log_level || old.log_format != new.log_format);
    // A key added to the configuration and not to the list above is still a change.
    if changed.is_empty() && old != new {
        changed.push("other");
    }
    changed
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
    limits: Arc<arc_swap::ArcSwap<Limits>>,
    shutdown: CancellationToken,
) {
    use tower_service::Service as _;
    let router = portico_api::router(api);
    let cap = ConnectionCap::new(API_MAX_CONNECTIONS, "the API's connection cap");
    let drain = || limits.load().shutdown_timeout;
    server::accept_loop(&listener, &cap, &shutdown, drain, |stream, peer, watch| {
        // The limits in force when the connection is accepted.
        let limits = **limits.load();
        let router = router.clone();
        async move {
            let builder = server::builder(64 * 1024);
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(request)
            });
            server::drive(&builder, stream, server::Protocol::Detect, service, &limits, watch, None).await;
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

/// Tells the service manager every half `interval` that the runtime still runs tasks (a
/// process whose workers are all stuck stops saying so, and systemd restarts it).
async fn watchdog(notifier: Arc<Notifier>, interval: std::time::Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => notifier.watchdog(),
        }
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

/// The issuers `[[tls.issuers]]` lists (or `tls.issuer` and `tls.acme_*` describe): one
/// alone, or several tried in order.
fn issuer(
    config: &Config,
    store: Arc<dyn Store>,
    metrics: &Arc<portico_certs::metrics::Metrics>,
) -> anyhow::Result<Arc<dyn Issuer>> {
    let tls = &config.tls;
    let mut list: Vec<Arc<dyn Issuer>> = Vec::new();
    for spec in &tls.issuers {
        list.push(match spec {
            config::IssuerSpec::Internal => Arc::new(InternalCa::new(store.clone(), tls.internal_lifetime)),
            config::IssuerSpec::Acme { directory, eab, profile, contact, ca_roots } => {
                let settings = AcmeSettings {
                    directory: directory.clone(),
                    email: contact.clone(),
                    eab: eab.clone(),
                    ca_roots: ca_roots.clone(),
                    profile: profile.clone(),
                    challenge: tls.challenge,
                    dns: tls.dns.clone(),
                };
                Arc::new(
                    AcmeIssuer::new(store.clone(), settings, metrics.clone())
                        .with_context(|| format!("invalid [tls] settings for the issuer {directory}"))?,
                )
            }
        });
    }
    Ok(if list.len() == 1 { list.swap_remove(0) } else { Arc::new(portico_certs::issuers::Issuers::new(list)) })
}

fn cert_settings(config: &Config) -> CertSettings {
    CertSettings {
        renew_remaining_ratio: config.tls.renew_remaining_ratio,
        issue_timeout: config.tls.issue_timeout,
        max_issuances_per_minute: config.tls.max_issuances_per_minute,
        max_pattern_issuances_per_minute: config.tls.max_pattern_issuances_per_minute,
        max_certs_per_pattern: config.tls.max_certs_per_pattern,
        max_certs_per_domain: config.tls.max_certs_per_domain,
        notify_url: config.tls.notify_url.clone(),
        ..CertSettings::default()
    }
}

/// The internal CA's root (`portico ca export`).
pub async fn internal_root(config: &Config) -> anyhow::Result<String> {
    // Exporting from a mistyped path must not make a store and a root nobody uses.
    let store = crate::store_cmd::open(config, false).await?;
    // Never a new root in a store that lost its identity: clients trust the old one.
    let store = IdentifiedStore::establish(store, Some(&config.data_dir)).await?;
    if store.is_lost() {
        anyhow::bail!(portico_store::StoreError::IdentityLost);
    }
    let ca = InternalCa::new(Arc::new(store), config.tls.internal_lifetime);
    Ok(ca.root_pem().await?)
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
        let state = portico_certs::status::CertState { issued: 1, not_after: 2, next_attempt: 3, ..Default::default() };
        m.certs.certificate("a.test", &state, 0);
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
