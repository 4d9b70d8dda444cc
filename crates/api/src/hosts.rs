//! `/api/host`: the seed's host routes, over the same store and routing table as the proxy.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use http::HeaderMap;
use portico_model::host_view::HostView;
use portico_model::{FieldError, Host, HostPattern, Hostname, PatternLabel};
use portico_store::{Kind, Revision, StoreError};
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::conditional::{self, etag};
use crate::error::ApiError;
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;
use crate::users::listing;
use crate::wire::{Item, Listing, Written};

fn not_found(item: &str) -> ApiError {
    ApiError::NotFound { kind: "Host", key: item.to_owned() }
}

/// Reads the stored host for a path item (normalised the way patterns are).
async fn stored(api: &Api, item: &str) -> Result<(String, Host, Revision), ApiError> {
    let key = HostPattern::parse(item).map_err(|_| not_found(item))?.to_string();
    let (fields, revision) = api.store.record_at(Kind::Host, &key).await?.ok_or_else(|| not_found(item))?;
    let host = Host::from_fields(&fields).map_err(|e| StoreError::Corrupt {
        kind: Kind::Host,
        key: key.clone(),
        source: e.into(),
    })?;
    Ok((key, host, revision))
}

/// `GET /api/host[?detail]`.
#[utoipa::path(
    get,
    path = "/api/host",
    tag = "hosts",
    params(("detail" = Option<String>, Query, description = "Present: whole records instead of names")),
    responses((status = 200, body = doc::Listing<doc::Host>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list(
    State(api): State<Api>,
    _caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Listing<HostView>>, ApiError> {
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    let settings = api.settings.load();
    listing(&api, Kind::Host, &query, |_, f| Host::from_fields(f).ok().map(|h| shown(&settings, &zones, &h))).await
}

/// A host as the API shows it: with the DNS zone it is in and, for hosts whose health is
/// followed (several targets, or active checks), each target's health as this process sees
/// it (when it proxies).
fn shown(settings: &crate::state::ApiSettings, zones: &portico_model::dns::Zones, host: &Host) -> HostView {
    let shown = zones.host_with_domain(host);
    match &settings.target_health {
        Some(report) if host.health_followed() => shown.with_health((report.0)(host)),
        _ => shown,
    }
}

/// `POST /api/host {host, ip, targetPort, forcessl?, targetssl?}`.
#[utoipa::path(
    post,
    path = "/api/host",
    tag = "hosts",
    request_body = doc::NewHost,
    responses((status = 200, body = doc::Written<doc::Host>), doc::AuthErrors, doc::InputErrors, doc::Taken),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    mut body: JsonObject,
) -> Result<Json<Written<HostView>>, ApiError> {
    hash_basic_auth(&mut body.0).await?;
    let host =
        Host::from_json(&body.0, &caller.username, portico_store::now_ms() as i64).map_err(ApiError::Validation)?;
    let pattern = host.host.as_str();
    api.store
        .create(Kind::Host, pattern, &host.to_fields())
        .await
        .map_err(|e| ApiError::from_write(e, Kind::Host, pattern, "host"))?;
    Ok(Json(Written::new(HostView::of(&host), format!("\"{pattern}\" added."))))
}

/// `GET /api/host/{item}`.
#[utoipa::path(
    get,
    path = "/api/host/{item}",
    tag = "hosts",
    params(("item" = String, Path, description = "A host pattern")),
    responses((status = 200, body = doc::Item<doc::Host>, headers(("ETag" = String, description = "The host's revision, for `If-Match` on a later update"))), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn get(
    State(api): State<Api>,
    _caller: Caller,
    Path(item): Path<String>,
) -> Result<(HeaderMap, Json<Item<HostView>>), ApiError> {
    let (_, host, revision) = stored(&api, &item).await?;
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    Ok((etag(revision), Json(Item::new(item, shown(&api.settings.load(), &zones, &host)))))
}

/// `PUT /api/host/{item}`: partial update; a new `host` renames it.
#[utoipa::path(
    put,
    path = "/api/host/{item}",
    tag = "hosts",
    request_body = doc::HostUpdate,
    params(
        ("item" = String, Path, description = "A host pattern"),
        ("If-Match" = Option<String>, Header, description = "Update only if the host is still at this `ETag` (else 412)"),
    ),
    responses((status = 200, body = doc::Written<doc::Host>, headers(("ETag" = String, description = "The host's new revision"))), doc::AuthErrors, doc::InputErrors, doc::Missing, doc::Taken, doc::Precondition),
    security(("token" = []), ("bearer" = []))
)]
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(item): Path<String>,
    headers: HeaderMap,
    mut body: JsonObject,
) -> Result<(HeaderMap, Json<Written<HostView>>), ApiError> {
    hash_basic_auth(&mut body.0).await?;
    let (etag, host) = conditional::update(
        api.store.as_ref(),
        Kind::Host,
        &headers,
        || stored(&api, &item),
        |host| {
            host.apply_json(&body.0).map_err(ApiError::Validation)?;
            host.stamps.touch(&caller.username, portico_store::now_ms() as i64);
            Ok((host.host.to_string(), host.to_fields()))
        },
        |e, new_key| match e {
            StoreError::NotFound { .. } => not_found(&item),
            e => ApiError::from_write(e, Kind::Host, new_key, "host"),
        },
    )
    .await?;
    let written = Written::new(HostView::of(&host), format!("\"{item}\" updated."));
    Ok((etag, Json(written.asked_as(item))))
}

/// Hashes the passwords of `basicAuth` entries
/// ([`hash_basic_auth`](portico_model::host_json::hash_basic_auth)) off the async threads.
async fn hash_basic_auth(fields: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    if !fields.contains_key("basicAuth") {
        return Ok(());
    }
    let mut taken = std::mem::take(fields);
    let (taken, result) = tokio::task::spawn_blocking(move || {
        let result = portico_model::host_json::hash_basic_auth(&mut taken);
        (taken, result)
    })
    .await
    .map_err(|_| ApiError::Internal("password hashing task failed"))?;
    *fields = taken;
    result.map_err(|e| ApiError::Validation(vec![e]))
}

/// `DELETE /api/host/{item}`.
#[utoipa::path(
    delete,
    path = "/api/host/{item}",
    tag = "hosts",
    params(("item" = String, Path, description = "A host pattern")),
    responses((status = 200, body = doc::Written<doc::Host>), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn delete(
    State(api): State<Api>,
    _caller: Caller,
    Path(item): Path<String>,
) -> Result<Json<Written<Value>>, ApiError> {
    // A host that cannot be used (a seed's access fields, a damaged record) can be deleted.
    let key = HostPattern::parse(&item).map_err(|_| not_found(&item))?.to_string();
    let host = match api.store.record(Kind::Host, &key).await {
        Ok(None) => return Err(not_found(&item)),
        Ok(Some(fields)) => Host::from_fields(&fields).ok(),
        Err(StoreError::Corrupt { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    // An unusable host is shown by its name alone.
    let shown = match host {
        Some(host) => serde_json::to_value(HostView::of(&host)).map_err(|_| ApiError::Internal("a host view"))?,
        None => serde_json::json!({ "host": key }),
    };
    if !api.store.delete(Kind::Host, &key).await? {
        return Err(not_found(&item));
    }
    Ok(Json(Written::new(shown, format!("{item} deleted"))))
}

/// `GET /api/host/lookup/{item}` → `{string, results?}`, from the proxy's own table.
#[utoipa::path(
    get,
    path = "/api/host/lookup/{item}",
    tag = "hosts",
    params(("item" = String, Path, description = "A host name")),
    responses((status = 200, body = doc::Lookup, description = "`results` is absent when no host matches"), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn lookup(State(api): State<Api>, _caller: Caller, Path(item): Path<String>) -> Json<Lookup> {
    let table = api.routes.snapshot();
    let results =
        Hostname::parse(&item).ok().and_then(|name| table.lookup(name.as_str()).map(|(_, h)| HostView::of(h)));
    Json(Lookup { string: item, results })
}

/// The host a name routes to, if any.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Lookup {
    /// The name asked for, as given.
    string: String,
    /// The host it routes to; absent when none matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<HostView>,
}

/// `GET /api/host/lookupobj` (admin): the lookup tree as the seed showed it, nested from the
/// TLD, `#record` at each pattern's end.
#[utoipa::path(
    get,
    path = "/api/host/lookupobj",
    tag = "hosts",
    responses((status = 200, body = doc::LookupTree), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn lookup_tree(State(api): State<Api>, caller: Caller) -> Result<Json<LookupTree>, ApiError> {
    caller.require_admin()?;
    let table = api.routes.snapshot();
    let mut root = Map::new();
    for (pattern, host) in table.iter() {
        let mut node = &mut root;
        for label in pattern.labels().rev() {
            let key = match label {
                PatternLabel::Literal(l) => l.to_owned(),
                PatternLabel::One => "*".to_owned(),
                PatternLabel::Many => "**".to_owned(),
            };
            let child = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(map) = child else { return Err(ApiError::Internal("lookup tree shape")) };
            node = map;
        }
        let record = serde_json::to_value(HostView::of(host)).map_err(|_| ApiError::Internal("a host view"))?;
        node.insert("#record".into(), record);
    }
    Ok(Json(LookupTree { results: root }))
}

/// The lookup tree, nested from the TLD; `#record` marks a pattern's end.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LookupTree {
    #[schema(value_type = Object)]
    results: Map<String, Value>,
}

/// `PUT /api/host/{item}/renew`: issues new certificates now for the host's names: the name
/// itself for an exact pattern; the wildcard certificate for a `*.zone` pattern whose zone a
/// DNS provider manages; else every name already holding a certificate under the pattern
/// (the others get theirs on their first HTTPS request).
#[utoipa::path(
    put,
    path = "/api/host/{item}/renew",
    tag = "hosts",
    params(("item" = String, Path, description = "A host pattern")),
    responses(
        (status = 200, body = doc::Renewed, description = "Every certificate of the host was renewed"),
        (status = 502, body = doc::ErrorBody, description = "The CA refused or failed (UpstreamError; the message has its problem)"),
        doc::AuthErrors, doc::Missing, doc::NotYet
    ),
    security(("token" = []), ("bearer" = []))
)]
pub async fn renew(
    State(api): State<Api>,
    _caller: Caller,
    Path(item): Path<String>,
) -> Result<Json<Renewed>, ApiError> {
    let (_, host, _) = stored(&api, &item).await?;
    if host.kind.is_passthrough() {
        return Err(ApiError::Validation(vec![FieldError::refused(
            "kind",
            "a passthrough host's certificates are its targets': Portico forwards its TLS and holds none",
        )]));
    }
    let Some(certs) = &api.certs else {
        return Err(ApiError::Unavailable("this process does not manage certificates"));
    };
    let names = certs.certificates_of(&host.host).await.map_err(|e| match e {
        portico_certs::CertError::Store(e) => ApiError::Store(e),
        other => ApiError::Upstream(portico_model::report::chain(&other)),
    })?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for name in names {
        match certs.renew_now(&name).await {
            Ok(loaded) => results.push(RenewedCert { not_after: loaded.meta.not_after * 1000, name }),
            Err(e) => failures.push(format!("{name}: {}", portico_model::report::chain(&e))),
        }
    }
    if !failures.is_empty() {
        return Err(ApiError::Upstream(format!("renewal failed for {}", failures.join("; "))));
    }
    let message = if results.is_empty() {
        format!("No certificates under {item} yet: each name gets one on its first HTTPS request.")
    } else {
        format!("Renewed {} certificate(s) for {item}.", results.len())
    };
    Ok(Json(Renewed { message, results }))
}

/// Certificates renewed by `PUT /api/host/{item}/renew`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Renewed {
    /// How many, for which host.
    message: String,
    /// Each renewed certificate.
    results: Vec<RenewedCert>,
}

/// One renewed certificate.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RenewedCert {
    /// Its name.
    name: String,
    /// When it expires: milliseconds since the epoch.
    not_after: i64,
}
