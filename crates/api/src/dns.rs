//! `/api/dns` and `/api/dns/domain`: DNS provider accounts and the zones they manage.
//!
//! This version keeps the data model and its CRUD; the calls to the providers themselves
//! (credential checks, domain sync, DNS-01) come with the DNS-01 issue. Credentials are stored
//! and never returned, logged or echoed in errors.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use http::HeaderMap;
use portico_model::Hostname;
use portico_model::dns::{PROVIDERS, ProviderType, SECRET_FIELDS, provider_type, zone_of};
use portico_store::{Fields, Kind, Revision, StoreError};
use serde_json::{Map, Value, json};

use crate::auth::{self, Caller};
use crate::conditional::{self, etag};
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::json::{new_record, record_json, with_message};
use crate::openapi as doc;
use crate::state::Api;
use crate::users::listing;

fn info(p: &ProviderType) -> Value {
    json!({ "name": p.name, "displayName": p.display_name, "fields": credential_specs(p) })
}

/// The credential fields of a provider type, as the seed's UI reads them.
fn credential_specs(p: &ProviderType) -> Map<String, Value> {
    p.credentials
        .iter()
        .map(|(key, display)| {
            let spec = json!({"type": "string", "isRequired": true, "isPrivate": true, "displayName": display});
            ((*key).to_owned(), spec)
        })
        .collect()
}

/// A provider as the API shows it: public fields and its type's info, never credentials.
fn provider_json(fields: &Fields) -> Map<String, Value> {
    let mut out = public(fields);
    if let Some(p) = fields.get("dnsProvider").and_then(|n| provider_type(n)) {
        out.insert("displayName".into(), json!(p.display_name));
        out.insert("fields".into(), Value::Object(credential_specs(p)));
    }
    out
}

/// Every field but credentials.
fn public(fields: &Fields) -> Map<String, Value> {
    record_json(fields, &SECRET_FIELDS)
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
    listing(&api, Kind::DnsProvider, &query, |f| Some(Value::Object(provider_json(f)))).await
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
    if let Some(p) = provider {
        for (key, _) in p.credentials {
            if let Some(value) = body.required(key, &mut errors) {
                credentials.push((*key, value));
            }
        }
    }
    let (Some(name), Some(provider), true) = (name, provider, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let id = auth::new_token()?[..16].to_owned();
    let mut fields =
        new_record(&caller.username, [("id", id.clone()), ("name", name), ("dnsProvider", provider.name.to_owned())]);
    for (key, value) in credentials {
        fields.insert(key.to_owned(), value);
    }
    api.store.create(Kind::DnsProvider, &id, &fields).await?;
    Ok(with_message(format!("\"{id}\" added."), provider_json(&fields)))
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
    Ok((etag(revision), Json(json!({ "item": id, "results": provider_json(&fields) }))))
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

/// Applies an update's fields to a provider record; every bad field is one entry of the 422.
fn apply(body: &JsonObject, fields: &mut Fields) -> Result<(), ApiError> {
    let mut errors = Vec::new();
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
    listing(&api, Kind::Domain, &query, |f| Some(Value::Object(public(f)))).await
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
    Ok(with_message(format!("\"{domain}\" added."), public(&fields)))
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
    let host = Hostname::parse(&name).map_err(|_| not_found())?;
    let domains = api.store.records(Kind::Domain).await?;
    let zone = zone_of(&host, domains.iter().map(|(d, _)| d.as_str())).ok_or_else(not_found)?;
    let record = domains.iter().find(|(d, _)| d == zone).map(|(_, f)| f).ok_or_else(not_found)?;
    Ok(Json(json!({ "results": [public(record)] })))
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
    Ok(with_message(format!("{domain} deleted"), public(&fields)))
}

/// `POST /api/dns/domain/refresh/{id}`: needs the provider clients of the DNS-01 issue.
#[utoipa::path(
    post,
    path = "/api/dns/domain/refresh/{id}",
    tag = "dns",
    params(("id" = String, Path)),
    responses(doc::AuthErrors, doc::Missing, doc::NotYet),
    security(("token" = []), ("bearer" = []))
)]
pub async fn refresh_domains(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    stored_provider(&api, &id).await?;
    Err(ApiError::Unavailable("syncing domains from DNS providers is not in this version yet"))
}
