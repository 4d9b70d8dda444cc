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
use portico_model::dns::{Domain, DomainView, PROVIDERS, Provider, ProviderType, ProviderTypeInfo, ProviderView};
use portico_model::{HostPattern, Hostname};
use portico_store::{Fields, Kind, Revision, Store, StoreError};
use serde_json::Value;

use crate::auth::{self, Caller};
use crate::conditional::{self, etag};
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;
use crate::users::listing;
use crate::wire::{Item, Listing, Results, Written};

/// `OPTIONS /api/dns`: the provider types and their credential fields.
#[utoipa::path(
    options,
    path = "/api/dns",
    tag = "dns",
    responses((status = 200, body = doc::Results<Vec<doc::DnsProviderType>>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn types(_caller: Caller) -> Json<Results<Vec<ProviderTypeInfo>>> {
    Json(Results::new(PROVIDERS.iter().map(ProviderType::info).collect()))
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
) -> Result<Json<Listing<ProviderView>>, ApiError> {
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    listing(&api, Kind::DnsProvider, &query, |key, f| Some(zones.provider(f.get("id").map_or(key, String::as_str), f)))
        .await
}

/// `POST /api/dns {name, dnsProvider, token | apiKey + secretApiKey}` (admin).
#[utoipa::path(
    post,
    path = "/api/dns",
    tag = "dns",
    request_body = doc::NewDnsProvider,
    responses((status = 200, body = AddedProvider), doc::AuthErrors, doc::InputErrors, doc::Taken),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create(State(api): State<Api>, caller: Caller, body: JsonObject) -> Result<Json<AddedProvider>, ApiError> {
    caller.require_admin()?;
    let id = auth::new_token()?[..16].to_owned();
    let account = Provider::from_json(&body.0, id.clone(), &caller.username, portico_store::now_ms() as i64)
        .map_err(ApiError::Validation)?;
    let fields = account.to_fields();
    let credential = account.credential_field();
    let dns = client(&api, &fields, credential)?;
    dns.verify().await.map_err(|e| dns_error(e, credential))?;
    api.store.create(Kind::DnsProvider, &id, &fields).await?;
    let domains = match sync(api.store.as_ref(), &id, dns.as_ref(), &caller.username).await {
        Ok(synced) => Some(synced.domains),
        // The provider is stored; its domains come at the next sync.
        Err(e) => {
            tracing::warn!(provider = %id, error = %e, "cannot list the new provider's domains yet");
            None
        }
    };
    let provider = ProviderView::of(&id, &fields);
    Ok(Json(AddedProvider { provider, domains, message: format!("\"{id}\" added.") }))
}

/// A provider account just added: the account, the zones found at the provider and linked to
/// it (by name; absent when the provider could not list them yet), and a message.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AddedProvider {
    #[serde(flatten)]
    provider: ProviderView,
    #[serde(skip_serializing_if = "Option::is_none")]
    domains: Option<Vec<String>>,
    message: String,
}

/// A client for a provider record; a record that cannot make one is a 422 on `field`.
fn client(api: &Api, fields: &Fields, field: &'static str) -> Result<Box<dyn DnsProvider>, ApiError> {
    portico_dns::client(fields, &api.settings.load().dns).map_err(|e| dns_error(e, field))
}

/// A provider's error for the API: refused credentials are the caller's to fix (422 on the
/// credential field, with the provider's words); anything else is the provider's (424).
fn dns_error(e: DnsError, field: &'static str) -> ApiError {
    match e {
        DnsError::Unauthorized { .. } | DnsError::Config(_) => {
            ApiError::Validation(vec![FieldError::refused(field, e.to_string())])
        }
        other => ApiError::DnsApi(other.to_string()),
    }
}

/// What a domain sync did.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
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
                let Ok(name) = Hostname::parse(&zone.name) else {
                    tracing::warn!(provider = id, zone = %zone.name, "the provider names a zone that is not a DNS name");
                    continue;
                };
                let domain =
                    Domain::new(name, id.to_owned(), Some(zone.id.clone()), by, portico_store::now_ms() as i64);
                match store.create(Kind::Domain, &zone.name, &domain.to_fields()).await {
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
) -> Result<(HeaderMap, Json<Item<ProviderView>>), ApiError> {
    let (fields, revision) = stored_provider_at(&api, &id).await?;
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    Ok((etag(revision), Json(Item::new(id.clone(), zones.provider(&id, &fields)))))
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
) -> Result<(HeaderMap, Json<Written<ProviderView>>), ApiError> {
    caller.require_admin()?;
    // New credentials are checked with the provider before anything is written.
    let mut candidate = Provider::from_fields(&id, &stored_provider(&api, &id).await?);
    let changed = candidate.apply_json(&body.0).map_err(ApiError::Validation)?;
    if let Some(first) = changed.first() {
        client(&api, &candidate.to_fields(), first)?.verify().await.map_err(|e| dns_error(e, first))?;
    }
    let (etag, fields) = conditional::update(
        api.store.as_ref(),
        Kind::DnsProvider,
        &headers,
        || async { stored_provider_at(&api, &id).await.map(|(fields, revision)| (id.clone(), fields, revision)) },
        |fields| {
            let mut account = Provider::from_fields(&id, fields);
            account.apply_json(&body.0).map_err(ApiError::Validation)?;
            account.stamps.touch(&caller.username, portico_store::now_ms() as i64);
            *fields = account.to_fields();
            Ok((id.clone(), fields.clone()))
        },
        |e, _| match e {
            StoreError::NotFound { .. } => ApiError::NotFound { kind: "DnsProvider", key: id.clone() },
            e => e.into(),
        },
    )
    .await?;
    let written = Written::new(ProviderView::of(&id, &fields), format!("\"{id}\" updated."));
    Ok((etag, Json(written.asked_as(id))))
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
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Written<ProviderView>>, ApiError> {
    caller.require_admin()?;
    let fields = stored_provider(&api, &id).await?;
    for (domain, record) in api.store.records(Kind::Domain).await? {
        if record.get("dnsProvider_id") == Some(&id) {
            api.store.delete(Kind::Domain, &domain).await?;
        }
    }
    api.store.delete(Kind::DnsProvider, &id).await?;
    Ok(Json(Written::new(ProviderView::of(&id, &fields), format!("{id} deleted"))))
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
) -> Result<Json<Listing<DomainView>>, ApiError> {
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    listing(&api, Kind::Domain, &query, |key, f| Some(zones.zone(key, f))).await
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
pub async fn create_domain(
    State(api): State<Api>,
    caller: Caller,
    body: JsonObject,
) -> Result<Json<Written<DomainView>>, ApiError> {
    caller.require_admin()?;
    let domain = Domain::from_json(&body.0, &caller.username, portico_store::now_ms() as i64);
    let provider_id = body.0.get("dnsProvider_id").and_then(Value::as_str);
    let unknown = match provider_id {
        Some(id) if api.store.record(Kind::DnsProvider, id).await?.is_none() => {
            Some(FieldError::refused("dnsProvider_id", format!("no DNS provider {id}")))
        }
        _ => None,
    };
    let domain = match (domain, unknown) {
        (Ok(domain), None) => domain,
        (Ok(_), Some(unknown)) => return Err(ApiError::Validation(vec![unknown])),
        (Err(errors), unknown) => return Err(ApiError::Validation(errors.into_iter().chain(unknown).collect())),
    };
    let fields = domain.to_fields();
    let domain = domain.domain;
    api.store
        .create(Kind::Domain, domain.as_str(), &fields)
        .await
        .map_err(|e| ApiError::from_write(e, Kind::Domain, domain.as_str(), "domain"))?;
    Ok(Json(Written::new(DomainView::of(domain.as_str(), &fields), format!("\"{domain}\" added."))))
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
) -> Result<Json<Results<Vec<DomainView>>>, ApiError> {
    let not_found = || ApiError::NotFound { kind: "Domain", key: name.clone() };
    // A name or a host pattern (the seed's UI asks for `*.example.com`).
    let pattern = HostPattern::parse(&name).map_err(|_| not_found())?;
    let zones = portico_store::load_zones(api.store.as_ref()).await?;
    let zone = zones.zone_of(pattern.as_str()).ok_or_else(not_found)?;
    Ok(Json(Results::new(vec![zone])))
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
) -> Result<Json<Written<DomainView>>, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::NotFound { kind: "Domain", key: domain.clone() };
    let fields = api.store.record(Kind::Domain, &domain).await?.ok_or_else(not_found)?;
    api.store.delete(Kind::Domain, &domain).await?;
    Ok(Json(Written::new(DomainView::of(&domain, &fields), format!("{domain} deleted"))))
}

/// `POST /api/dns/domain/refresh/{id}` (admin): links the provider's zones as domains now.
#[utoipa::path(
    post,
    path = "/api/dns/domain/refresh/{id}",
    tag = "dns",
    params(("id" = String, Path)),
    responses((status = 200, body = Refreshed, description = "The provider's domains now, and what changed"), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn refresh_domains(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Refreshed>, ApiError> {
    caller.require_admin()?;
    let fields = stored_provider(&api, &id).await?;
    let dns = client(&api, &fields, "dnsProvider")?;
    let results = sync(api.store.as_ref(), &id, dns.as_ref(), &caller.username).await?;
    Ok(Json(Refreshed { message: format!("\"{id}\" domains refreshed."), results }))
}

/// A provider's domains refreshed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Refreshed {
    /// `"<id>" domains refreshed.`
    message: String,
    /// What the sync did.
    results: Synced,
}
