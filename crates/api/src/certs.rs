//! `GET /api/cert/{host}`: certificate metadata, and the stored PEMs at the top level as the
//! seed answers them; the private key to admins only, every export logged.
//!
//! Certificates are read from the store in lua-resty-auto-ssl's layout (`<name>:latest`), so
//! certificates carried over from a seed deployment show up here too.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use portico_certs::status::CertState;
use portico_certs::upload::{UPLOADED, UploadError};
use portico_certs::{CertSettings, Meta};
use portico_model::{FieldError, HostPattern, body};
use portico_store::{Kind, keys};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;
use crate::wire::{Results, Written};

/// `GET /api/cert/{host}[?include_private_key=true|false]`: the stored certificate's metadata and
/// Portico's state for the name (attempts, backoff, last error). A name whose issuance keeps
/// failing has state but no certificate; it is shown with `status: "none"`.
#[utoipa::path(
    get,
    path = "/api/cert/{host}",
    tag = "certs",
    params(("host" = String, Path, description = "A host name"), ("include_private_key" = Option<bool>, Query, description = "`true`: the private key (admins only, else 403); `false`: never. Unset: for admins (as the seed's UI asks). Every export is logged")),
    responses((status = 200, body = CertAnswer), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(host): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<CertAnswer>, ApiError> {
    let export = match query.get("include_private_key").map(String::as_str) {
        Some("true") => {
            caller.require_admin()?;
            Export::Asked
        }
        Some(_) => Export::Never,
        // A plain request, as the seed's UI makes: the key for admins only.
        None if caller.is_admin() => Export::IfAny,
        None => Export::Never,
    };
    answer(&api, &caller, host, export).await.map(Json)
}

/// Whether an answer carries the private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    /// No.
    Never,
    /// Yes, but for an uploaded certificate's (never shown again), which is left out.
    IfAny,
    /// Yes; refused for an uploaded certificate's.
    Asked,
}

/// The answer of `GET /api/cert/{host}`: the certificate of `host`, else of the wildcard
/// covering it.
async fn answer(api: &Api, caller: &Caller, host: String, export: Export) -> Result<CertAnswer, ApiError> {
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
    let (mut results, stored) = view(name.clone(), blob.as_deref(), state.as_ref())?;
    let uploaded = results.source == Some(UPLOADED);
    if uploaded && export == Export::Asked {
        return Err(ApiError::Forbidden("the private key of an uploaded certificate is never shown again"));
    }
    // The seed answers the stored JSON itself (`cert_pem`, `fullchain_pem`, `privkey_pem`,
    // `expiry`), and its UI downloads those fields: they are at the top level too.
    let mut privkey_pem = None;
    if export != Export::Never && !uploaded {
        let key = stored.get("privkey_pem").and_then(Value::as_str).map(str::to_owned);
        if key.is_some() {
            tracing::warn!(username = %caller.username, host = %name, "private key exported through the API");
        }
        results.privkey_pem = Some(key.clone());
        privkey_pem = Some(key);
    }
    let stored = stored.into_iter().filter(|(field, _)| field != "privkey_pem").collect();
    Ok(CertAnswer { item: host, results, stored, privkey_pem })
}

/// `PUT /api/cert/{host} {fullchain_pem, privkey_pem}` (admins): serves this certificate for
/// `host` (a host name or a `*.zone` pattern) from every node's next handshake, instead of
/// automatic ones. Checked first: the chain parses and runs leaf first, each certificate
/// issued by the next; the key is the leaf's; the leaf covers the name and is valid now.
/// Never renewed: `portico_certificate_renewal_failing` and the certificate's `last_error`
/// say so when a third of its life is left. The key is never shown again.
#[utoipa::path(
    put,
    path = "/api/cert/{host}",
    tag = "certs",
    params(("host" = String, Path, description = "A host name or a `*.zone` pattern")),
    request_body = doc::CertUpload,
    responses((status = 200, body = CertAnswer, description = "Stored; `results.source` is `uploaded`"), doc::AuthErrors, doc::InputErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn upload(
    State(api): State<Api>,
    caller: Caller,
    Path(host): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<CertAnswer>, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    let chain = body::required(&body, "fullchain_pem", &mut errors);
    let key = body::required(&body, "privkey_pem", &mut errors);
    let (Some(chain), Some(key)) = (chain, key) else {
        return Err(ApiError::Validation(errors));
    };
    let ratio = api.certs.as_ref().map_or(CertSettings::default().renew_remaining_ratio, |c| c.renew_remaining_ratio());
    let uploaded =
        portico_certs::upload::upload(api.store.as_ref(), &host, &chain, &key, ratio).await.map_err(|e| match e {
            UploadError::Invalid(errors) => ApiError::Validation(errors),
            UploadError::Store(e) => ApiError::Store(e),
        })?;
    if let Some(certs) = &api.certs {
        certs.reload(&uploaded.name).await;
    }
    tracing::info!(username = %caller.username, name = %uploaded.name, names = ?uploaded.meta.names, "certificate uploaded");
    answer(&api, &caller, uploaded.name, Export::Never).await.map(Json)
}

/// `DELETE /api/cert/{host}` (admins): removes the certificate uploaded for `host`, which
/// returns to automatic certificates (the next handshake gets one). An automatic
/// certificate is not removed (renew it instead).
#[utoipa::path(
    delete,
    path = "/api/cert/{host}",
    tag = "certs",
    params(("host" = String, Path, description = "A host name or a `*.zone` pattern")),
    responses((status = 200, body = doc::Message, description = "Removed"), doc::AuthErrors, doc::InputErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn remove(
    State(api): State<Api>,
    caller: Caller,
    Path(host): Path<String>,
) -> Result<Json<Written<Value>>, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::NotFound { kind: "Cert", key: host.clone() };
    let name = HostPattern::parse(&host).map_err(|_| not_found())?.as_str().to_owned();
    let Some(fields) = api.store.record(Kind::Cert, &name).await? else {
        return Err(not_found());
    };
    if CertState::from_fields(&fields).issuer != UPLOADED {
        return Err(ApiError::Validation(vec![FieldError::refused(
            "host",
            format!(
                "the certificate of {name} is automatic, not uploaded: nothing to remove (to replace it now, renew its host)"
            ),
        )]));
    }
    let removed = match &api.certs {
        Some(certs) => certs.remove_uploaded(&name).await.map_err(|e| match e {
            portico_certs::CertError::Store(e) => ApiError::Store(e),
            _ => ApiError::Internal("removing a certificate"),
        })?,
        None => portico_certs::upload::remove(api.store.as_ref(), &name).await?,
    };
    if !removed {
        return Err(not_found());
    }
    tracing::info!(username = %caller.username, name, "uploaded certificate removed");
    let message = format!("The uploaded certificate of {name} is removed: {name} gets automatic certificates again.");
    Ok(Json(Written::new(serde_json::json!({ "host": name }), message)))
}

/// Portico's view of the certificate `name` from its stored blob and its state (either may be
/// missing, not both), and the blob's own fields.
fn view(
    name: String,
    blob: Option<&[u8]>,
    state: Option<&CertState>,
) -> Result<(CertView, Map<String, Value>), ApiError> {
    let mut results = CertView { host: name, ..CertView::default() };
    let stored = match blob {
        Some(bytes) => {
            let stored: Map<String, Value> =
                serde_json::from_slice(bytes).map_err(|_| ApiError::Internal("a stored certificate is not JSON"))?;
            let pem = |field: &str| stored.get(field).and_then(Value::as_str).map(str::to_owned);
            let chain = pem("fullchain_pem")
                .or_else(|| pem("cert_pem"))
                .ok_or(ApiError::Internal("a stored certificate has no PEM"))?;
            results.meta = Some(metadata(&chain).ok_or(ApiError::Internal("a stored certificate does not parse"))?);
            results.cert_pem = Some(pem("cert_pem"));
            results.fullchain_pem = Some(pem("fullchain_pem"));
            results.last_error = Some(pem("last_error"));
            stored
        }
        None => {
            results.status = Some("none");
            Map::new()
        }
    };
    results.source = Some(match state.map(|s| s.issuer.as_str()) {
        Some(UPLOADED) => UPLOADED,
        Some("internal") => "internal",
        _ if results.host.starts_with("*.") => "dns01",
        _ => "acme",
    });
    if let Some(state) = state {
        let millis = |secs: i64| (secs > 0).then_some(secs * 1000);
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        results.progress = Some(Progress {
            issued_by: text(&state.issuer),
            ca: text(&state.ca),
            last_attempt: millis(state.last_attempt),
            next_attempt: millis(state.next_attempt),
            failures: state.failures,
            renewal_failing: state.renewal_failing(portico_store::now_ms() as i64 / 1000),
            last_error_type: text(&state.last_error_type),
            step: text(&state.step),
            failed_step: text(&state.failed_step),
            history: state
                .history
                .iter()
                .rev()
                .map(|e| HistoryEntry { at: e.at * 1000, event: e.what.clone() })
                .collect(),
        });
        results.last_error = Some(text(&state.last_error));
    }
    Ok((results, stored))
}

/// `GET /api/cert`: every certificate Portico manages (on-demand, wildcard, internal, taken
/// over from the seed once renewed), with its state, by name; no PEMs. A name whose issuance
/// keeps failing is listed with `status: "none"`. A host without a certificate yet is not an
/// error here: it is simply not listed.
#[utoipa::path(
    get,
    path = "/api/cert",
    tag = "certs",
    responses((status = 200, body = doc::Results<Vec<CertView>>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list(State(api): State<Api>, _caller: Caller) -> Result<Json<Results<Vec<CertView>>>, ApiError> {
    let mut certs = Vec::new();
    for (name, fields) in api.store.records(Kind::Cert).await? {
        let state = CertState::from_fields(&fields);
        let blob = api.store.blob(&keys::cert_latest(&name)).await?;
        let (mut cert, _) = view(name, blob.as_deref(), Some(&state))?;
        cert.cert_pem = None;
        cert.fullchain_pem = None;
        certs.push(cert);
    }
    certs.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(Json(Results::new(certs)))
}

/// `GET /api/cert/{host}`: Portico's view under `results`, and the stored certificate's own
/// fields at the top level, as the seed answers them (its UI downloads them from there).
#[derive(Debug, Serialize, ToSchema)]
pub struct CertAnswer {
    /// The name asked for.
    item: String,
    results: CertView,
    /// The stored certificate's own fields (`cert_pem`, `fullchain_pem`, `expiry`, ...), but
    /// the private key.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    stored: Map<String, Value>,
    /// For admins, unless `include_private_key=false`; every export is logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    privkey_pem: Option<Option<String>>,
}

/// A certificate's metadata and Portico's state for the name (times in milliseconds since
/// the epoch). A field is absent when nothing says it: the certificate's fields while there
/// is none (`status: "none"`), the state's while there is none.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct CertView {
    /// The certificate's name (a covering wildcard's when the name has none of its own).
    host: String,
    #[serde(flatten)]
    meta: Option<CertMeta>,
    /// `none` while issuance keeps failing (no certificate yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    /// Where the certificate comes from: `acme` (HTTP-01 or TLS-ALPN-01, and the seed's),
    /// `dns01` (a wildcard through a DNS provider), `internal` (Portico's own CA) or
    /// `uploaded` (an admin's, never renewed).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_pem: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fullchain_pem: Option<Option<String>>,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<Option<String>>,
    #[serde(flatten)]
    progress: Option<Progress>,
    /// Admins only (see `CertAnswer`); every export is logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    privkey_pem: Option<Option<String>>,
}

/// What the stored certificate says of itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertMeta {
    names: Vec<String>,
    /// The certificate's issuer (distinguished name).
    issuer: String,
    /// The public key: `ECDSA P-256`, `RSA 2048`, ...
    key: String,
    not_before: i64,
    not_after: i64,
    /// `valid`, `expired` or `not yet valid`.
    status: &'static str,
}

/// Where the name's issuance is: Portico's state for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    /// `acme` or `internal`: who issued the current certificate.
    issued_by: Option<String>,
    /// The CA that issued it: its ACME directory URL, or `internal` (renewals ask it first).
    ca: Option<String>,
    /// The last issuance or renewal attempt.
    last_attempt: Option<i64>,
    /// When the next attempt is due: the renewal time, or the end of a failure backoff.
    next_attempt: Option<i64>,
    /// Consecutive failures.
    failures: u32,
    /// Whether the certificate is not being renewed with a third of its life left (half, for
    /// one of ten days or less): its renewals keep failing, or it was uploaded. The metric
    /// `portico_certificate_renewal_failing` says the same.
    renewal_failing: bool,
    /// The last failure's ACME problem type (`urn:ietf:params:acme:error:…`).
    last_error_type: Option<String>,
    /// Where an issuance is: planned, ordered, records published, waiting for DNS,
    /// validating, finalizing; issued or failed.
    step: Option<String>,
    /// The step a failed issuance failed at.
    failed_step: Option<String>,
    /// What happened to the certificate, newest first (the last 20 events): issued, renewed,
    /// the first failure of a run, uploaded, taken on from the seed, an expiry alert.
    history: Vec<HistoryEntry>,
}

/// One event of a certificate's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// When: milliseconds since the epoch.
    at: i64,
    /// What: `issued by acme`, `renewed by internal`, `failed at validating: …`, `uploaded, …`.
    event: String,
}

/// Names, issuer, validity (milliseconds) and status of the first certificate of a PEM chain.
fn metadata(chain: &str) -> Option<CertMeta> {
    let meta = Meta::of_chain(chain).ok()?;
    let now = portico_certs::now_secs();
    let status = if now > meta.not_after {
        "expired"
    } else if now < meta.not_before {
        "not yet valid"
    } else {
        "valid"
    };
    Some(CertMeta {
        names: meta.names,
        issuer: meta.issuer,
        key: meta.key,
        not_before: meta.not_before * 1000,
        not_after: meta.not_after * 1000,
        status,
    })
}
