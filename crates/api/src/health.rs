//! `/healthz` (the process answers) and `/readyz` (store reachable, listeners bound).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::openapi as doc;
use crate::state::Api;
use crate::wire::Results;

/// Always 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, body = doc::Alive, description = "The process runs"))
)]
pub async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// `{status: "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    status: &'static str,
}

/// 200 when the store answers and every listener is bound, 503 otherwise; with the bound
/// addresses and the routing table's generation and size.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = doc::Ready, description = "Ready"), (status = 503, body = doc::Ready, description = "Not ready"))
)]
pub async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Ready>) {
    let store = api.store.ping().await.is_ok();
    let listening = api.listening.load_full();
    let status = if store && listening.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let routing = api.routes.state();
    let ready = Ready {
        store,
        listeners: listening.is_some(),
        addresses: listening.as_deref().cloned().unwrap_or_default(),
        routing: Routing { generation: routing.generation, hosts: routing.hosts as u64 },
    };
    (status, Json(ready))
}

/// Readiness: whether the store answers and every listener is bound (503 unless both), the
/// bound addresses by listener (`http`, `https`, `api`, `metrics`, `lookup`), and the
/// routing table this process routes by.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    store: bool,
    listeners: bool,
    #[schema(value_type = BTreeMap<String, String>)]
    addresses: BTreeMap<String, SocketAddr>,
    routing: Routing,
}

/// A routing table: its generation (one more with every change) and its host patterns.
#[derive(Debug, Serialize, ToSchema)]
pub struct Routing {
    generation: u64,
    hosts: u64,
}

/// `GET /api/stats`: this process's traffic, for the UI's overview (sample it twice for
/// rates): requests answered, by status class and by duration. Each is `null` unless the
/// process proxies and counts requests (a metrics listener is configured); in a cluster each
/// node counts its own.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "health",
    responses((status = 200, body = doc::Results<doc::Stats>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn stats(State(api): State<Api>, _caller: crate::auth::Caller) -> Json<Results<Stats>> {
    let traffic = api.settings.load().requests.as_ref().map(|count| (count.0)());
    let statuses = traffic.as_ref().map(|t| {
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .into_iter()
            .zip(t.statuses)
            .map(|(class, n)| (class.to_owned(), n))
            .collect()
    });
    let latency =
        traffic.as_ref().map(|t| t.latency.iter().map(|&(le_ms, count)| LatencyBucket { le_ms, count }).collect());
    Json(Results::new(Stats {
        requests_total: traffic.map(|t| t.requests),
        statuses,
        latency,
        at: portico_store::now_ms(),
        started: api.started,
    }))
}

/// This process's traffic (`GET /api/stats`); times in milliseconds since the epoch.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Requests proxied by this process since it started; `null` unless it proxies and
    /// counts them (a metrics listener is configured).
    requests_total: Option<u64>,
    /// Of them, by status class (`1xx` to `5xx`).
    statuses: Option<BTreeMap<String, u64>>,
    /// Of them, by duration: buckets in order, each with its upper bound in milliseconds
    /// (`null` for the last: longer) and how many took that long at most (not cumulative).
    latency: Option<Vec<LatencyBucket>>,
    /// When this answer was made.
    at: u64,
    /// When the process started.
    started: u64,
}

/// A duration bucket of [`Stats`].
#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyBucket {
    /// Upper bound, milliseconds (`null`: none).
    le_ms: Option<u64>,
    /// Requests in it.
    count: u64,
}
