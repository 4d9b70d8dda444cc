//! What every handler shares.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portico_certs::Certs;
use portico_model::Routes;
use portico_store::{Follower, Store};

use crate::auth::LoginLimiter;

/// Shared state of the API (cheap to clone).
pub type Api = Arc<ApiState>;

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// How long a session token from login lasts.
    pub session_ttl: Duration,
    /// Proxies in front of the API whose `X-Forwarded-For` names the client (for the login
    /// rate limit); from anyone else the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The DNS providers' APIs (credential checks, domain sync).
    pub dns: portico_dns::Endpoints,
    /// This process's count of proxied requests, when it proxies and counts them (a metrics
    /// listener is configured): `GET /api/stats` shows it.
    pub requests: Option<RequestCounter>,
    /// This process's view of a host's targets' health, when it proxies: `GET
    /// /api/host/{item}` shows it.
    pub target_health: Option<HealthReport>,
}

/// Makes the health report of a host's targets.
pub type ReportHealth = dyn Fn(&portico_model::Host) -> Vec<portico_model::host_view::TargetReport> + Send + Sync;

/// Each of a host's targets' health, in their order.
#[derive(Clone)]
pub struct HealthReport(pub Arc<ReportHealth>);

impl std::fmt::Debug for HealthReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthReport")
    }
}

/// Requests a process answered since it started: how many, by status class (1xx to 5xx), and
/// by duration (each bucket's upper bound in milliseconds, `None` for the last, and its count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests answered.
    pub requests: u64,
    /// By status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub statuses: [u64; 5],
    /// By duration.
    pub latency: Vec<(Option<u64>, u64)>,
}

/// Reads this process's [`Traffic`].
#[derive(Clone)]
pub struct RequestCounter(pub Arc<dyn Fn() -> Traffic + Send + Sync>);

impl std::fmt::Debug for RequestCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestCounter({})", (self.0)().requests)
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(24 * 3600),
            trusted_proxies: Vec::new(),
            dns: portico_dns::Endpoints::default(),
            requests: None,
            target_health: None,
        }
    }
}

/// The API's state.
#[derive(Debug)]
pub struct ApiState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The routing table the proxy uses (lookups answer from it).
    pub routes: Arc<Routes>,
    /// Settings; a reload replaces them ([`ApiState::reconfigure`]).
    pub settings: arc_swap::ArcSwap<ApiSettings>,
    /// Failed-login bookkeeping.
    pub limiter: LoginLimiter,
    /// Every listener's bound address, by name, set once all are bound (and again when a
    /// reload binds one elsewhere); `/readyz` reports them.
    pub listening: arc_swap::ArcSwapOption<BTreeMap<String, SocketAddr>>,
    /// Certificates, for renewals asked through the API (`None`: not managed here).
    pub certs: Option<Arc<Certs>>,
    /// The node's one follower of the store's changes.
    pub changes: Arc<Follower>,
    /// Model events for live UIs (from `changes`).
    pub feed: crate::live::Feed,
    /// What socket.io clients (before any token) may hold, per address.
    pub socket_io: crate::live::SocketIoLimits,
    /// When this process started (milliseconds since the epoch).
    pub started: u64,
}

impl ApiState {
    /// New state with the default login limits (5 failures per user name, 20 per address,
    /// per 5 minutes).
    pub fn new(
        store: Arc<dyn Store>,
        changes: Arc<Follower>,
        routes: Arc<Routes>,
        settings: ApiSettings,
        certs: Option<Arc<Certs>>,
    ) -> Api {
        Arc::new(Self {
            store,
            changes,
            routes,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            limiter: LoginLimiter::new(Duration::from_secs(300), 5, 20),
            listening: arc_swap::ArcSwapOption::empty(),
            certs,
            feed: crate::live::Feed::default(),
            socket_io: crate::live::SocketIoLimits::default(),
            started: portico_store::now_ms(),
        })
    }

    /// Answers with `settings` from now on (a reload).
    pub fn reconfigure(&self, settings: ApiSettings) {
        self.settings.store(Arc::new(settings));
    }
}

/// Takes the store lock `key` for `ttl`, waiting up to `wait` for another API node holding
/// it: what two admins do at once on two nodes happens one after the other.
pub(crate) async fn lock(
    api: &Api,
    key: &portico_store::Key,
    ttl: std::time::Duration,
    wait: std::time::Duration,
) -> Result<portico_store::Lease, crate::error::ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(lease) = api.store.acquire(key, ttl).await? {
            return Ok(lease);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(crate::error::ApiError::Internal("a store lock is held too long"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
