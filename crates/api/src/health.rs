//! `/healthz` (the process answers) and `/readyz` (store reachable, listeners bound).

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde_json::{Value, json};

use crate::openapi as doc;
use crate::state::Api;

/// Always 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, body = doc::Alive, description = "The process runs"))
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the store answers and every listener is bound, 503 otherwise; with the bound
/// addresses and the routing table's generation and size.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = doc::Ready, description = "Ready"), (status = 503, body = doc::Ready, description = "Not ready"))
)]
pub async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let store = api.store.ping().await.is_ok();
    let listening = api.listening.get();
    let status = if store && listening.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let routing = api.routes.state();
    (
        status,
        Json(json!({
            "store": store,
            "listeners": listening.is_some(),
            "addresses": listening.cloned().unwrap_or_default(),
            "routing": { "generation": routing.generation, "hosts": routing.hosts },
        })),
    )
}

/// `GET /api/stats`: this process's request count, for the UI's request rate (sample it
/// twice). `requests_total` is `null` unless the process proxies and counts requests (a
/// metrics listener is configured); in a cluster each node counts its own.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "health",
    responses((status = 200, body = doc::Results<doc::Stats>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn stats(State(api): State<Api>, _caller: crate::auth::Caller) -> Json<Value> {
    let requests = api.settings.requests.as_ref().map(|count| (count.0)());
    Json(json!({ "results": { "requests_total": requests, "at": portico_store::now_ms(), "started": api.started } }))
}
