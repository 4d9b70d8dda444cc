//! `GET /api/cert/{host}`: certificate metadata, and the stored PEMs at the top level as the
//! seed answers them; the private key to admins only, every export logged.
//!
//! Certificates are read from the store in lua-resty-auto-ssl's layout (`<name>:latest`), so
//! certificates carried over from a seed deployment show up here too.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use portico_certs::Meta;
use portico_certs::status::CertState;
use portico_model::HostPattern;
use portico_store::{Kind, keys};
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi as doc;
use crate::state::Api;

/// `GET /api/cert/{host}[?include_private_key=true|false]`: the stored certificate's metadata and
/// Portico's state for the name (attempts, backoff, last error). A name whose issuance keeps
/// failing has state but no certificate; it is shown with `status: "none"`.
#[utoipa::path(
    get,
    path = "/api/cert/{host}",
    tag = "certs",
    params(("host" = String, Path, description = "A host name"), ("include_private_key" = Option<bool>, Query, description = "`true`: the private key (admins only, else 403); `false`: never. Unset: for admins (as the seed's UI asks). Every export is logged")),
    responses((status = 200, body = doc::CertAnswer), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(host): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound { kind: "Cert", key: host.clone() };
    let asked = HostPattern::parse(&host).map_err(|_| not_found())?;
    let mut name = asked.as_str().to_owned();
    let mut blob = api.store.blob(&keys::cert_latest(&name)).await?;
    let mut state = api.store.record(Kind::Cert, &name).await?.map(|f| CertState::from_fields(&f));
    // A name under a wildcard certificate (`*.zone`): that certificate's status.
    if blob.is_none()
        && state.is_none()
        && let Some(wildcard) = portico_certs::covering_wildcard(&name)
    {
        blob = api.store.blob(&keys::cert_latest(&wildcard)).await?;
        state = api.store.record(Kind::Cert, &wildcard).await?.map(|f| CertState::from_fields(&f));
        name = wildcard;
    }
    if blob.is_none() && state.is_none() {
        return Err(not_found());
    }
    let mut out = Map::new();
    out.insert("host".into(), json!(name));
    let stored = match &blob {
        Some(bytes) => {
            let stored: Value =
                serde_json::from_slice(bytes).map_err(|_| ApiError::Internal("a stored certificate is not JSON"))?;
            let pem = |field: &str| stored.get(field).and_then(Value::as_str).map(str::to_owned);
            let chain = pem("fullchain_pem")
                .or_else(|| pem("cert_pem"))
                .ok_or(ApiError::Internal("a stored certificate has no PEM"))?;
            out.extend(metadata(&chain).ok_or(ApiError::Internal("a stored certificate does not parse"))?);
            out.insert("cert_pem".into(), json!(pem("cert_pem")));
            out.insert("fullchain_pem".into(), json!(pem("fullchain_pem")));
            out.insert("last_error".into(), stored.get("last_error").cloned().unwrap_or(Value::Null));
            Some(stored)
        }
        None => {
            out.insert("status".into(), json!("none"));
            None
        }
    };
    if let Some(state) = &state {
        let millis = |secs: i64| if secs > 0 { json!(secs * 1000) } else { Value::Null };
        let text = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
        out.insert("issued_by".into(), text(&state.issuer));
        out.insert("last_attempt".into(), millis(state.last_attempt));
        out.insert("next_attempt".into(), millis(state.next_attempt));
        out.insert("failures".into(), json!(state.failures));
        out.insert("last_error".into(), text(&state.last_error));
        out.insert("last_error_type".into(), text(&state.last_error_type));
        // Where an issuance is: planned, ordered, records published, waiting for DNS,
        // validating, finalizing; issued or failed (with the step it failed at).
        out.insert("step".into(), text(&state.step));
        out.insert("failed_step".into(), text(&state.failed_step));
    }
    // The seed answers the stored JSON itself (`cert_pem`, `fullchain_pem`, `privkey_pem`,
    // `expiry`), and its UI downloads those fields: they are at the top level too.
    let export_key = match query.get("include_private_key").map(String::as_str) {
        Some("true") => {
            caller.require_admin()?;
            true
        }
        Some(_) => false,
        // A plain request, as the seed's UI makes: the key for admins only.
        None => caller.is_admin(),
    };
    let mut answer = Map::new();
    if let Some(Value::Object(stored)) = &stored {
        for (field, value) in stored {
            if field != "privkey_pem" {
                answer.insert(field.clone(), value.clone());
            }
        }
    }
    if export_key {
        let key = stored.as_ref().and_then(|s| s.get("privkey_pem")).cloned().unwrap_or(Value::Null);
        if !key.is_null() {
            tracing::warn!(username = %caller.username, host = %name, "private key exported through the API");
        }
        out.insert("privkey_pem".into(), key.clone());
        answer.insert("privkey_pem".into(), key);
    }
    answer.insert("item".into(), json!(host));
    answer.insert("results".into(), Value::Object(out));
    Ok(Json(Value::Object(answer)))
}

/// Names, issuer, validity (milliseconds) and status of the first certificate of a PEM chain.
fn metadata(chain: &str) -> Option<Map<String, Value>> {
    let meta = Meta::of_chain(chain).ok()?;
    let now = portico_certs::now_secs();
    let status = if now > meta.not_after {
        "expired"
    } else if now < meta.not_before {
        "not yet valid"
    } else {
        "valid"
    };
    let mut out = Map::new();
    out.insert("names".into(), json!(meta.names));
    out.insert("issuer".into(), json!(meta.issuer));
    out.insert("key".into(), json!(meta.key));
    out.insert("not_before".into(), json!(meta.not_before * 1000));
    out.insert("not_after".into(), json!(meta.not_after * 1000));
    out.insert("status".into(), json!(status));
    Some(out)
}
