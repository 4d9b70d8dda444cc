//! `/healthz` (the process answers) and `/readyz` (store reachable, listeners bound).

use std::sync::atomic::Ordering;

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

/// 200 when the store answers and every listener is bound, 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = doc::Ready, description = "Ready"), (status = 503, body = doc::Ready, description = "Not ready"))
)]
pub async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Value>) {
    let store = api.store.ping().await.is_ok();
    let listeners = api.listeners_ready.load(Ordering::SeqCst);
    let status = if store && listeners { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "store": store, "listeners": listeners })))
}
