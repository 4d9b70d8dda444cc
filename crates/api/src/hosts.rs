//! `/api/host`: the seed's host routes, over the same store and routing table as the proxy.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use http::HeaderMap;
use portico_model::{Host, HostPattern, Hostname, PatternLabel, Target};
use portico_store::{Kind, Revision, StoreError};
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::conditional::{self, etag};
use crate::dns::Zones;
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::json::with_message;
use crate::openapi as doc;
use crate::state::Api;
use crate::users::listing;

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
) -> Result<Json<Value>, ApiError> {
    let zones = Zones::load(api.store.as_ref()).await?;
    listing(&api, Kind::Host, &query, |f| Host::from_fields(f).ok().map(|h| host_json(&h, &zones))).await
}

/// A host as the API shows it, with the seed's `domain` relation: the managed DNS zone it is
/// in, with that zone's provider (`null` when it is in none).
pub fn host_json(host: &Host, zones: &Zones) -> Value {
    let mut out = host.to_json();
    out.insert("domain".into(), zones.zone_of(host.host.as_str()).unwrap_or(Value::Null));
    Value::Object(out)
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
pub async fn create(State(api): State<Api>, caller: Caller, mut body: JsonObject) -> Result<Json<Value>, ApiError> {
    hash_basic_auth(&mut body.0).await?;
    let mut errors = Vec::new();
    let pattern = body.required("host", &mut errors).and_then(|h| parse_pattern(&h, &mut errors));
    // `targets`, or the seed's `ip` + `targetPort` for a single one.
    if !body.0.contains_key("targets") {
        for key in ["ip", "targetPort"] {
            if body.0.get(key).is_none_or(Value::is_null) {
                errors.push(FieldError::new(key, format!("{key} is required.")));
            }
        }
    }
    let forcessl = body.flag("forcessl", &mut errors).unwrap_or(true);
    let targetssl = body.flag("targetssl", &mut errors).unwrap_or(false);
    // The first target comes from `targets` or `ip`/`targetPort`, applied below.
    let unset = Target::new("127.0.0.1", 1).map_err(|_| ApiError::Internal("a placeholder target"))?;
    let placeholder = HostPattern::parse("placeholder.invalid").map_err(|_| ApiError::Internal("a placeholder"))?;
    let now = portico_store::now_ms() as i64;
    let mut host = Host::new(pattern.clone().unwrap_or(placeholder), unset, forcessl, targetssl, &caller.username, now);
    apply_policy(&body, &mut host, &mut errors);
    let (Some(pattern), true) = (pattern, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    api.store
        .create(Kind::Host, pattern.as_str(), &host.to_fields())
        .await
        .map_err(|e| ApiError::from_write(e, Kind::Host, pattern.as_str(), "host"))?;
    Ok(with_message(format!("\"{pattern}\" added."), host.to_json()))
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
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let (_, host, revision) = stored(&api, &item).await?;
    let zones = Zones::load(api.store.as_ref()).await?;
    let mut shown = host_json(&host, &zones);
    // Each target's health as this process sees it (when it proxies), for hosts whose
    // health is followed: several targets, or active checks.
    if let (Some(report), Value::Object(fields)) = (&api.settings.target_health, &mut shown)
        && host.health_followed()
    {
        fields.insert("targets".into(), Value::Array((report.0)(&host)));
    }
    Ok((etag(revision), Json(json!({ "item": item, "results": shown }))))
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
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    hash_basic_auth(&mut body.0).await?;
    let (etag, host) = conditional::update(
        api.store.as_ref(),
        Kind::Host,
        &headers,
        || stored(&api, &item),
        |host| {
            apply(&body, host)?;
            host.updated_by = caller.username.clone();
            host.updated_on = portico_store::now_ms() as i64;
            Ok((host.host.to_string(), host.to_fields()))
        },
        |e, new_key| match e {
            StoreError::NotFound { .. } => not_found(&item),
            e => ApiError::from_write(e, Kind::Host, new_key, "host"),
        },
    )
    .await?;
    let mut fields = host.to_json();
    fields.insert("__requestedHost".into(), json!(item));
    Ok((etag, with_message(format!("\"{item}\" updated."), fields)))
}

/// Applies an update's fields (the API's JSON names: `host`, `ip`, `targetPort`, `targets`,
/// `balance`, `healthCheck`, `forcessl`, `targetssl`) to `host`, as `PUT /api/host/{item}`
/// does; the command line uses it too. Every bad field is one entry of the error.
pub fn apply_update(fields: serde_json::Map<String, Value>, host: &mut Host) -> Result<(), ApiError> {
    apply(&JsonObject(fields), host)
}

/// Applies an update's fields to `host`; every bad field is one entry of the 422.
fn apply(body: &JsonObject, host: &mut Host) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(pattern) = body.string("host", &mut errors).and_then(|h| parse_pattern(&h, &mut errors)) {
        host.host = pattern;
    }
    apply_policy(body, host, &mut errors);
    if let Some(v) = body.flag("forcessl", &mut errors) {
        host.forcessl = v;
    }
    if let Some(v) = body.flag("targetssl", &mut errors) {
        host.targetssl = v;
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(())
}

/// Applies `targets`, `balance`, `healthCheck` and the access fields
/// ([`Host::apply_policy`]), then the seed's `ip`/`targetPort` (the first target), from a
/// create or an update to `host`.
fn apply_policy(body: &JsonObject, host: &mut Host, errors: &mut Vec<FieldError>) {
    for e in host.apply_policy(&body.0) {
        errors.push(FieldError::new(e.field(), format!("{e}.")));
    }
    let ip = body.string("ip", errors);
    let port = body.port("targetPort", errors);
    if ip.is_some() || port.is_some() {
        let ip = ip.unwrap_or_else(|| host.target().ip().to_owned());
        let port = port.unwrap_or(host.target().port());
        if let Some(target) = parse_target(&ip, port, errors) {
            if body.0.contains_key("targets") && &target != host.target() {
                errors.push(FieldError::new("ip", "ip and targetPort are the first of targets: they differ."));
            } else {
                host.set_first_target(target);
            }
        }
    }
}

/// Hashes the passwords of `basicAuth` entries (Argon2id, off the async threads), so what
/// is applied and stored holds hashes only. An entry may give a `hash` itself (an Argon2 or
/// a seed's bcrypt hash) instead of a `password`.
pub async fn hash_basic_auth(fields: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let Some(Value::Array(users)) = fields.get_mut("basicAuth") else { return Ok(()) };
    for user in users.iter_mut() {
        let Some(entry) = user.as_object_mut() else { continue };
        let Some(password) = entry.remove("password") else { continue };
        let Some(password) = password.as_str().filter(|p| !p.is_empty()) else {
            return Err(ApiError::Validation(vec![FieldError::new(
                "basicAuth",
                "basicAuth: a password must be text.",
            )]));
        };
        if let Some(problem) = portico_model::record::password_problem(password) {
            return Err(ApiError::Validation(vec![FieldError::new("basicAuth", format!("basicAuth: {problem}"))]));
        }
        entry.insert("hash".into(), Value::String(crate::auth::hash_password(password.to_owned()).await?));
    }
    Ok(())
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
) -> Result<Json<Value>, ApiError> {
    // A host that cannot be used (a seed's access fields, a damaged record) can be deleted.
    let key = HostPattern::parse(&item).map_err(|_| not_found(&item))?.to_string();
    let host = match api.store.record(Kind::Host, &key).await {
        Ok(None) => return Err(not_found(&item)),
        Ok(Some(fields)) => Host::from_fields(&fields).ok(),
        Err(StoreError::Corrupt { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let shown = host.map_or_else(|| Map::from_iter([("host".to_owned(), Value::String(key.clone()))]), |h| h.to_json());
    if !api.store.delete(Kind::Host, &key).await? {
        return Err(not_found(&item));
    }
    Ok(with_message(format!("{item} deleted"), shown))
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
pub async fn lookup(State(api): State<Api>, _caller: Caller, Path(item): Path<String>) -> Json<Value> {
    let table = api.routes.snapshot();
    let found = Hostname::parse(&item).ok().and_then(|name| table.lookup(name.as_str()).map(|(_, h)| h.to_json()));
    match found {
        Some(host) => Json(json!({ "string": item, "results": host })),
        None => Json(json!({ "string": item })),
    }
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
pub async fn lookup_tree(State(api): State<Api>, caller: Caller) -> Result<Json<Value>, ApiError> {
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
        node.insert("#record".into(), Value::Object(host.to_json()));
    }
    Ok(Json(json!({ "results": root })))
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
pub async fn renew(State(api): State<Api>, _caller: Caller, Path(item): Path<String>) -> Result<Json<Value>, ApiError> {
    let (_, host, _) = stored(&api, &item).await?;
    let Some(certs) = &api.certs else {
        return Err(ApiError::Unavailable("this process does not manage certificates"));
    };
    let names = certs.certificates_of(&host.host).await.map_err(|e| match e {
        portico_certs::CertError::Store(e) => ApiError::Store(e),
        other => ApiError::Upstream(other.to_string()),
    })?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for name in names {
        match certs.renew_now(&name).await {
            Ok(loaded) => results.push(json!({ "name": name, "not_after": loaded.meta.not_after * 1000 })),
            Err(e) => failures.push(format!("{name}: {e}")),
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
    Ok(Json(json!({ "message": message, "results": results })))
}

fn parse_pattern(text: &str, errors: &mut Vec<FieldError>) -> Option<HostPattern> {
    HostPattern::parse(text).map_err(|e| errors.push(FieldError::new("host", format!("host is invalid: {e}.")))).ok()
}

fn parse_target(ip: &str, port: u16, errors: &mut Vec<FieldError>) -> Option<Target> {
    Target::new(ip, port).map_err(|e| errors.push(FieldError::new(e.field(), format!("{e}.")))).ok()
}
