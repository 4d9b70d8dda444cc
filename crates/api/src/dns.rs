//! `/api/dns` and `/api/dns/domain`: DNS provider accounts and the zones they manage.
//!
//! Credentials are checked with the provider before they are stored, on creation and on
//! change (a refusal is a 422 with
//! the provider's complaint; nothing is stored), and never returned, logged or echoed in
//! errors. A provider's zones become `Domain` records when it is added, when asked
//! (`POST /api/dns/domain/refresh/{id}`), and periodically ([`sync_all`]).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use http::HeaderMap;
use portico_dns::{DnsError, DnsProvider};
use portico_model::dns::{PROVIDERS, ProviderType, display, provider_json, provider_type};
use portico_model::record::public_json;
use portico_model::{HostPattern, Hostname};
use portico_store::{Fields, Kind, Revision, Store, StoreError};
use serde_json::{Value, json};

use crate::auth::{self, Caller};
use crate::conditional::{self, etag};
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::json::{new_record, with_message};
use crate::openapi as doc;
use crate::state::Api;
use crate::users::listing;

fn info(p: &ProviderType) -> Value {
    let mut out = display(p);
    out.insert("name".into(), json!(p.name));
    Value::Object(out)
}

/// `OPTIONS /api/dns`: the provider types and their credential fields.
#[utoipa::path(
    options,
    path = "/api/dns",
    tag = "dns",
    responses((status = 200, body = doc::Results<Vec<doc::DnsProviderType>>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn types(_caller: Caller) -> Json<Value> {
    Json(json!({ "results": PROVIDERS.iter().map(info).collect::<Vec<_>>() }))
}

/// `GET /api/dns[?detail]`.
#[utoipa::path(
    get,
    path = "/api/dns",
    tag = "dns",
    params(("detail" = Option<String>, Query, description = "Present: whole records instead of names")),
    responses((status = 200, body = doc::Listing<doc::DnsProvider>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list(
    State(api): State<Api>,
    _caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    listing(&api, Kind::DnsProvider, &query, |f| {
        let id = f.get("id")?;
        Some(Value::Object(zones.provider(id, f)))
    })
    .await
}

/// `POST /api/dns {name, dnsProvider, token | apiKey + secretApiKey}` (admin).
#[utoipa::path(
    post,
    path = "/api/dns",
    tag = "dns",
    request_body = doc::NewDnsProvider,
    responses((status = 200, body = doc::Written<doc::DnsProvider>), doc::AuthErrors, doc::InputErrors, doc::Taken),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create(State(api): State<Api>, caller: Caller, body: JsonObject) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    let name = body.required("name", &mut errors);
    let kind = body.required("dnsProvider", &mut errors);
    let provider = kind.as_deref().and_then(|k| {
        let found = provider_type(k);
        if found.is_none() {
            let names: Vec<&str> = PROVIDERS.iter().map(|p| p.name).collect();
            errors.push(FieldError::new("dnsProvider", format!("dnsProvider must be one of {}.", names.join(", "))));
        }
        found
    });
    let mut credentials = Vec::new();
    let global_key = provider.is_some_and(|p| p.name == "Cloudflare") && !body.0.contains_key("token");
    if global_key {
        // Cloudflare's legacy alternative to an API token: the account e-mail and the
        // Global API Key.
        for key in ["email", "apiKey"] {
            if let Some(value) = body.string(key, &mut errors) {
                credentials.push((key, value));
            }
        }
        if credentials.len() < 2 && !errors.iter().any(|e| e.key == "email" || e.key == "apiKey") {
            errors.push(FieldError::new("token", "token is required (or email and apiKey, the Global API Key)."));
        }
    } else if let Some(p) = provider {
        for (key, _) in p.credentials {
            if let Some(value) = body.required(key, &mut errors) {
                credentials.push((*key, value));
            }
        }
    }
    let propagation = propagation_timeout(&body, &mut errors);
    let (Some(name), Some(provider), true) = (name, provider, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let id = auth::new_token()?[..16].to_owned();
    let mut fields =
        new_record(&caller.username, [("id", id.clone()), ("name", name), ("dnsProvider", provider.name.to_owned())]);
    let first_credential = credentials.first().map(|(key, _)| *key).unwrap_or("dnsProvider");
    for (key, value) in credentials {
        fields.insert(key.to_owned(), value);
    }
    if let Some(seconds) = propagation {
        fields.insert(PROPAGATION.into(), seconds.to_string());
    }
    let dns = client(&api, &fields, first_credential)?;
    dns.verify().await.map_err(|e| dns_error(e, first_credential))?;
    api.store.create(Kind::DnsProvider, &id, &fields).await?;
    let mut out = provider_json(&fields);
    match sync(api.store.as_ref(), &id, dns.as_ref(), &caller.username).await {
        Ok(synced) => {
            out.insert("domains".into(), json!(synced.domains));
        }
        // The provider is stored; its domains come at the next sync.
        Err(e) => tracing::warn!(provider = %id, error = %e, "cannot list the new provider's domains yet"),
    }
    Ok(with_message(format!("\"{id}\" added."), out))
}

/// A client for a provider record; a record that cannot make one is a 422 on `field`.
fn client(api: &Api, fields: &Fields, field: &'static str) -> Result<Box<dyn DnsProvider>, ApiError> {
    portico_dns::client(fields, &api.settings.dns).map_err(|e| dns_error(e, field))
}

/// A provider's error for the API: refused credentials are the caller's to fix (422 on the
/// credential field, with the provider's words); anything else is the provider's (424).
fn dns_error(e: DnsError, field: &'static str) -> ApiError {
    match e {
        DnsError::Unauthorized { .. } | DnsError::Config(_) => {
            ApiError::Validation(vec![FieldError::new(field, e.to_string())])
        }
        other => ApiError::DnsApi(other.to_string()),
    }
}

/// What a domain sync did.
#[derive(Debug, Default)]
pub struct Synced {
    /// The provider's zones now linked to it.
    pub domains: Vec<String>,
    /// Zones linked now that were not.
    pub added: Vec<String>,
    /// Zones no longer at the provider, unlinked.
    pub removed: Vec<String>,
    /// Zones another provider manages already (left with it).
    pub taken: Vec<String>,
}

/// Links the provider's zones as `Domain` records (those another provider has stay with
/// it) and unlinks its domains the provider no longer has.
pub async fn sync(store: &dyn Store, id: &str, dns: &dyn DnsProvider, by: &str) -> Result<Synced, ApiError> {
    let zones = dns.zones().await.map_err(|e| ApiError::DnsApi(e.to_string()))?;
    let existing = store.records(Kind::Domain).await?;
    let mut synced = Synced::default();
    for zone in &zones {
        match existing.iter().find(|(d, _)| *d == zone.name) {
            Some((_, record)) if record.get("dnsProvider_id").map(String::as_str) != Some(id) => {
                synced.taken.push(zone.name.clone());
                continue;
            }
            Some(_) => {}
            None => {
                let fields = new_record(
                    by,
                    [("domain", zone.name.clone()), ("dnsProvider_id", id.to_owned()), ("zoneId", zone.id.clone())],
                );
                match store.create(Kind::Domain, &zone.name, &fields).await {
                    Ok(()) => synced.added.push(zone.name.clone()),
                    // Linked meanwhile by another sync.
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        synced.domains.push(zone.name.clone());
    }
    for (domain, record) in &existing {
        if record.get("dnsProvider_id").map(String::as_str) == Some(id) && !zones.iter().any(|z| z.name == *domain) {
            store.delete(Kind::Domain, domain).await?;
            synced.removed.push(domain.clone());
        }
    }
    if !synced.added.is_empty() || !synced.removed.is_empty() {
        tracing::info!(provider = id, added = ?synced.added, removed = ?synced.removed, "DNS provider's domains synced");
    }
    Ok(synced)
}

/// Syncs every provider's domains (the API role runs it periodically). A provider that
/// fails is logged and skipped.
pub async fn sync_all(store: &dyn Store, endpoints: &portico_dns::Endpoints) -> Result<(), StoreError> {
    for (id, fields) in store.records(Kind::DnsProvider).await? {
        let synced = match portico_dns::client(&fields, endpoints) {
            Ok(dns) => sync(store, &id, dns.as_ref(), "portico").await.map(|_| ()),
            Err(e) => Err(ApiError::DnsApi(e.to_string())),
        };
        match synced {
            Ok(()) => {}
            Err(ApiError::Store(e)) => return Err(e),
            Err(e) => tracing::warn!(provider = %id, error = %e, "cannot sync a DNS provider's domains"),
        }
    }
    Ok(())
}

async fn stored_provider(api: &Api, id: &str) -> Result<Fields, ApiError> {
    stored_provider_at(api, id).await.map(|(fields, _)| fields)
}

async fn stored_provider_at(api: &Api, id: &str) -> Result<(Fields, Revision), ApiError> {
    api.store
        .record_at(Kind::DnsProvider, id)
        .await?
        .ok_or_else(|| ApiError::NotFound { kind: "DnsProvider", key: id.to_owned() })
}

/// `GET /api/dns/{id}`.
#[utoipa::path(
    get,
    path = "/api/dns/{id}",
    tag = "dns",
    params(("id" = String, Path)),
    responses((status = 200, body = doc::Item<doc::DnsProvider>, headers(("ETag" = String, description = "The provider's revision, for `If-Match` on a later update"))), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn get(
    State(api): State<Api>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let (fields, revision) = stored_provider_at(&api, &id).await?;
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    Ok((etag(revision), Json(json!({ "item": id, "results": zones.provider(&id, &fields) }))))
}

/// `PUT /api/dns/{id} {name?, credentials?}` (admin).
#[utoipa::path(
    put,
    path = "/api/dns/{id}",
    tag = "dns",
    request_body = doc::NewDnsProvider,
    params(
        ("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "Update only if the provider is still at this `ETag` (else 412)"),
    ),
    responses((status = 200, body = doc::Written<doc::DnsProvider>, headers(("ETag" = String, description = "The provider's new revision"))), doc::AuthErrors, doc::InputErrors, doc::Missing, doc::Taken, doc::Precondition),
    security(("token" = []), ("bearer" = []))
)]
pub async fn update(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    caller.require_admin()?;
    // New credentials are checked with the provider before anything is written.
    let current = stored_provider(&api, &id).await?;
    let kind = current.get("dnsProvider").and_then(|k| provider_type(k));
    let changed: Vec<&'static str> =
        kind.map_or(&[][..], |p| p.credentials).iter().map(|(k, _)| *k).filter(|k| body.0.contains_key(*k)).collect();
    if let Some(first) = changed.first() {
        let mut candidate = current.clone();
        apply(&body, &mut candidate)?;
        client(&api, &candidate, first)?.verify().await.map_err(|e| dns_error(e, first))?;
    }
    let (etag, fields) = conditional::update(
        api.store.as_ref(),
        Kind::DnsProvider,
        &headers,
        || async { stored_provider_at(&api, &id).await.map(|(fields, revision)| (id.clone(), fields, revision)) },
        |fields| {
            apply(&body, fields)?;
            portico_model::record::touch(fields, &caller.username, portico_store::now_ms());
            Ok((id.clone(), fields.clone()))
        },
        |e, _| match e {
            StoreError::NotFound { .. } => ApiError::NotFound { kind: "DnsProvider", key: id.clone() },
            e => e.into(),
        },
    )
    .await?;
    let mut out = provider_json(&fields);
    out.insert("__requestedHost".into(), json!(id));
    Ok((etag, with_message(format!("\"{id}\" updated."), out)))
}

/// The optional field that says how long this provider's records take to be served, in
/// seconds (DNS-01 waits that long at most, instead of `dns.propagation_timeout`).
const PROPAGATION: &str = "propagationTimeout";

/// `propagationTimeout`, if given: whole seconds, 1 to 3600, as a number or a string.
fn propagation_timeout(body: &JsonObject, errors: &mut Vec<FieldError>) -> Option<u64> {
    let value = body.0.get(PROPAGATION)?;
    let seconds = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Null => return None,
        _ => None,
    };
    match seconds {
        Some(s @ 1..=3600) => Some(s),
        _ => {
            errors.push(FieldError::new(PROPAGATION, "propagationTimeout must be a number of seconds from 1 to 3600."));
            None
        }
    }
}

/// Applies an update's fields to a provider record; every bad field is one entry of the 422.
fn apply(body: &JsonObject, fields: &mut Fields) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(seconds) = propagation_timeout(body, &mut errors) {
        fields.insert(PROPAGATION.into(), seconds.to_string());
    }
    if let Some(name) = body.string("name", &mut errors) {
        fields.insert("name".into(), name);
    }
    if body.0.contains_key("dnsProvider") {
        errors.push(FieldError::new("dnsProvider", "dnsProvider cannot change; add a new provider instead."));
    }
    let provider = fields.get("dnsProvider").and_then(|k| provider_type(k));
    for (key, _) in provider.map_or(&[][..], |p| p.credentials) {
        if let Some(value) = body.string(key, &mut errors) {
            fields.insert((*key).to_owned(), value);
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(())
}

/// `DELETE /api/dns/{id}` (admin): the provider and every domain it manages.
#[utoipa::path(
    delete,
    path = "/api/dns/{id}",
    tag = "dns",
    params(("id" = String, Path)),
    responses((status = 200, body = doc::Written<doc::DnsProvider>), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn delete(State(api): State<Api>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let fields = stored_provider(&api, &id).await?;
    for (domain, record) in api.store.records(Kind::Domain).await? {
        if record.get("dnsProvider_id") == Some(&id) {
            api.store.delete(Kind::Domain, &domain).await?;
        }
    }
    api.store.delete(Kind::DnsProvider, &id).await?;
    Ok(with_message(format!("{id} deleted"), provider_json(&fields)))
}

/// `GET /api/dns/domain[?detail]`.
#[utoipa::path(
    get,
    path = "/api/dns/domain",
    tag = "dns",
    params(("detail" = Option<String>, Query, description = "Present: whole records instead of names")),
    responses((status = 200, body = doc::Listing<doc::Domain>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list_domains(
    State(api): State<Api>,
    _caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    listing(&api, Kind::Domain, &query, |f| Some(zones.zone(f))).await
}

/// `POST /api/dns/domain {domain, dnsProvider_id, zoneId?}` (admin).
#[utoipa::path(
    post,
    path = "/api/dns/domain",
    tag = "dns",
    request_body = doc::NewDomain,
    responses((status = 200, body = doc::Written<doc::Domain>), doc::AuthErrors, doc::InputErrors, doc::Taken),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create_domain(State(api): State<Api>, caller: Caller, body: JsonObject) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    let domain = body.required("domain", &mut errors).and_then(|d| {
        Hostname::parse(&d).map_err(|e| errors.push(FieldError::new("domain", format!("domain is invalid: {e}.")))).ok()
    });
    let provider_id = body.required("dnsProvider_id", &mut errors);
    let zone_id = body.string("zoneId", &mut errors);
    if let Some(id) = &provider_id
        && api.store.record(Kind::DnsProvider, id).await?.is_none()
    {
        errors.push(FieldError::new("dnsProvider_id", format!("no DNS provider {id}.")));
    }
    let (Some(domain), Some(provider_id), true) = (domain, provider_id, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let mut fields = new_record(&caller.username, [("domain", domain.to_string()), ("dnsProvider_id", provider_id)]);
    if let Some(zone) = zone_id {
        fields.insert("zoneId".into(), zone);
    }
    api.store
        .create(Kind::Domain, domain.as_str(), &fields)
        .await
        .map_err(|e| ApiError::from_write(e, Kind::Domain, domain.as_str(), "domain"))?;
    Ok(with_message(format!("\"{domain}\" added."), public_json(&fields)))
}

/// `GET /api/dns/domain/{name}`: the managed zone that contains `name` (longest suffix).
#[utoipa::path(
    get,
    path = "/api/dns/domain/{domain}",
    tag = "dns",
    params(("domain" = String, Path, description = "A zone, or any name in it: the longest managed suffix answers")),
    responses((status = 200, body = doc::Results<Vec<doc::Domain>>), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn find_domain(
    State(api): State<Api>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound { kind: "Domain", key: name.clone() };
    // A name or a host pattern (the seed's UI asks for `*.example.com`).
    let pattern = HostPattern::parse(&name).map_err(|_| not_found())?;
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    let zone = zones.zone_of(pattern.as_str()).ok_or_else(not_found)?;
    Ok(Json(json!({ "results": [zone] })))
}

/// `DELETE /api/dns/domain/{domain}` (admin).
#[utoipa::path(
    delete,
    path = "/api/dns/domain/{domain}",
    tag = "dns",
    params(("domain" = String, Path)),
    responses((status = 200, body = doc::Written<doc::Domain>), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn delete_domain(
    State(api): State<Api>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::NotFound { kind: "Domain", key: domain.clone() };
    let fields = api.store.record(Kind::Domain, &domain).await?.ok_or_else(not_found)?;
    api.store.delete(Kind::Domain, &domain).await?;
    Ok(with_message(format!("{domain} deleted"), public_json(&fields)))
}

/// `POST /api/dns/domain/refresh/{id}` (admin): links the provider's zones as domains now.
#[utoipa::path(
    post,
    path = "/api/dns/domain/refresh/{id}",
    tag = "dns",
    params(("id" = String, Path)),
    responses((status = 200, description = "The provider's domains now, and what changed"), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn refresh_domains(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let fields = stored_provider(&api, &id).await?;
    let dns = client(&api, &fields, "dnsProvider")?;
    let synced = sync(api.store.as_ref(), &id, dns.as_ref(), &caller.username).await?;
    Ok(Json(json!({
        "message": format!("\"{id}\" domains refreshed."),
        "results": {"domains": synced.domains, "added": synced.added, "removed": synced.removed, "taken": synced.taken},
    })))
}
