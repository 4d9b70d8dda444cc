//! `GET /api/cert/{host}`: certificate metadata; the private key only by an explicit,
//! logged, admin-only export (`?include_private_key=true`).
//!
//! Certificates are read from the store in lua-resty-auto-ssl's layout (`<name>:latest`), so
//! certificates carried over from a seed deployment show up here too.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use portico_model::HostPattern;
use portico_store::keys;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi as doc;
use crate::state::Api;

/// `GET /api/cert/{host}[?include_private_key=true]`.
#[utoipa::path(
    get,
    path = "/api/cert/{host}",
    tag = "certs",
    params(("host" = String, Path, description = "A host name or pattern"), ("include_private_key" = Option<bool>, Query, description = "Admins only: include the private key (logged)")),
    responses((status = 200, body = doc::Item<doc::Cert>), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(host): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound { kind: "Cert", key: host.clone() };
    let name = HostPattern::parse(&host).map_err(|_| not_found())?;
    let blob = api.store.blob(&keys::cert_latest(name.as_str())).await?.ok_or_else(not_found)?;
    let stored: Value =
        serde_json::from_slice(&blob).map_err(|_| ApiError::Internal("a stored certificate is not JSON"))?;
    let pem = |field: &str| stored.get(field).and_then(Value::as_str).map(str::to_owned);
    let chain = pem("fullchain_pem")
        .or_else(|| pem("cert_pem"))
        .ok_or(ApiError::Internal("a stored certificate has no PEM"))?;
    let mut out = metadata(&chain).ok_or(ApiError::Internal("a stored certificate does not parse"))?;
    out.insert("host".into(), json!(name.as_str()));
    out.insert("cert_pem".into(), json!(pem("cert_pem")));
    out.insert("fullchain_pem".into(), json!(pem("fullchain_pem")));
    out.insert("last_error".into(), stored.get("last_error").cloned().unwrap_or(Value::Null));
    if query.get("include_private_key").is_some_and(|v| v == "true") {
        caller.require_admin()?;
        tracing::warn!(username = %caller.username, host = %name, "private key exported through the API");
        out.insert("privkey_pem".into(), json!(pem("privkey_pem")));
    }
    Ok(Json(json!({ "item": host, "results": out })))
}

/// Names, issuer, validity and status of the first certificate of a PEM chain.
fn metadata(chain: &str) -> Option<serde_json::Map<String, Value>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).ok()?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp() * 1000;
    let not_after = validity.not_after.timestamp() * 1000;
    let now = portico_store::now_ms() as i64;
    let status = if now > not_after {
        "expired"
    } else if now < not_before {
        "not yet valid"
    } else {
        "valid"
    };
    let mut out = serde_json::Map::new();
    out.insert("names".into(), json!(names));
    out.insert("issuer".into(), json!(cert.issuer().to_string()));
    out.insert("not_before".into(), json!(not_before));
    out.insert("not_after".into(), json!(not_after));
    out.insert("status".into(), json!(status));
    Some(out)
}
