//! The audit log: every change made through the API (who, when, from which address, what
//! object, which fields), kept in the store (`Kind::Audit`) with a bounded retention, and
//! listed to admins at `GET /api/audit`. Field names are recorded, never their values: a
//! password, a key or a provider's credentials never reach the log.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use portico_store::{Fields, Kind};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi as doc;
use crate::state::Api;
use crate::wire::Results;

/// Entries kept: the newest ones; older ones are removed as new ones come.
pub const RETAINED: usize = 10_000;
/// And none older than this (milliseconds: 180 days).
pub const RETAINED_FOR_MS: u64 = 180 * 24 * 3600 * 1000;
/// The largest request body whose field names are read (bigger bodies are refused by the
/// routes anyway).
const BODY_LIMIT: usize = 4 << 20;

/// One change made through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Entry {
    /// When, in milliseconds since the epoch.
    pub time: u64,
    /// Who: the user whose token made it (for a sign-in, the name signed in as).
    pub user: String,
    /// The client's address (behind a trusted proxy, the address it forwards for).
    pub address: String,
    /// What: `create`, `update`, `delete`, `renew`, `password`, `login`, `logout`, ...
    pub action: String,
    /// The kind of object: `Host`, `User`, `AuthToken`, `DnsProvider`, `Domain`, `Cert`,
    /// `Session`.
    pub kind: String,
    /// Which object (a host pattern, a user name, a provider id, ...), when the path names one.
    pub key: String,
    /// The fields the request set (names only, sorted).
    pub changes: Vec<String>,
}

impl Entry {
    fn to_fields(&self) -> Fields {
        let mut fields = Fields::new();
        fields.insert("time".into(), self.time.to_string());
        fields.insert("user".into(), self.user.clone());
        fields.insert("address".into(), self.address.clone());
        fields.insert("action".into(), self.action.clone());
        fields.insert("kind".into(), self.kind.clone());
        fields.insert("key".into(), self.key.clone());
        fields.insert("changes".into(), self.changes.join(","));
        fields
    }

    fn from_fields(fields: &Fields) -> Self {
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        Self {
            time: fields.get("time").and_then(|t| t.parse().ok()).unwrap_or(0),
            user: text("user"),
            address: text("address"),
            action: text("action"),
            kind: text("kind"),
            key: text("key"),
            changes: text("changes").split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
        }
    }
}

/// What a change's path says: the action, the kind of object and its key.
fn described(method: &Method, path: &str) -> Option<(&'static str, &'static str, String)> {
    let rest = path.strip_prefix("/api/")?;
    let (area, item) = rest.split_once('/').unwrap_or((rest, ""));
    let item = percent_encoding::percent_decode_str(item).decode_utf8_lossy().into_owned();
    let by_method = match *method {
        Method::POST => "create",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => return None,
    };
    Some(match area {
        "auth" if item == "login" => ("login", "Session", String::new()),
        "auth" => ("logout", "Session", String::new()),
        "host" => match item.strip_suffix("/renew") {
            Some(host) => ("renew", "Host", host.to_owned()),
            None => (by_method, "Host", item),
        },
        "user" => match item.strip_prefix("password") {
            Some(other) => ("password", "User", other.trim_start_matches('/').to_owned()),
            None => (by_method, "User", item),
        },
        "token" => (by_method, "AuthToken", item),
        "dns" => match item.strip_prefix("domain") {
            Some(domain) => match domain.strip_prefix("/refresh/") {
                Some(provider) => ("refresh", "DnsProvider", provider.to_owned()),
                None => (by_method, "Domain", domain.trim_start_matches('/').to_owned()),
            },
            None => (by_method, "DnsProvider", item),
        },
        "stream" => (by_method, "Stream", item),
        "cert" if *method == Method::PUT => ("upload", "Cert", item),
        "cert" => (by_method, "Cert", item),
        _ => (by_method, "Other", rest.to_owned()),
    })
}

/// Records every successful change made through the API (a middleware around its routes).
pub async fn record(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some((action, kind, key)) = described(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return ApiError::Malformed("the request body could not be read".into()).into_response();
    };
    let body: Option<Map<String, Value>> = serde_json::from_slice(&bytes).ok();
    // A new object is named by its body (`host`, `username`, `name`).
    let named = ["host", "username", "name"].iter().find_map(|f| body.as_ref()?.get(*f)?.as_str());
    let key = match (key.is_empty(), named) {
        (true, Some(name)) if action == "create" => name.to_owned(),
        _ => key,
    };
    let mut changes: Vec<String> = body.iter().flat_map(|b| b.keys().cloned()).collect();
    changes.sort();
    // A sign-in is by whom it names (whatever token came with it); anything else is by the
    // holder of the token it came with.
    let user = match crate::auth::presented_token(&parts) {
        _ if action == "login" => {
            Some(body.as_ref().and_then(|b| b.get("username")).and_then(Value::as_str).unwrap_or_default().to_owned())
        }
        Some(token) => Caller::of_token_key(&api, crate::auth::token_key(token)).await.ok().map(|c| c.username),
        None => None,
    };
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let address = peer
        .and_then(|peer| crate::auth::client_address(peer, &parts.headers, &api.settings.load().trusted_proxies).ok())
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if let (true, Some(user)) = (response.status().is_success(), user) {
        let entry = Entry {
            time: portico_store::now_ms(),
            user,
            address,
            action: action.into(),
            kind: kind.into(),
            key,
            changes,
        };
        if let Err(e) = write(&api, &entry).await {
            tracing::warn!(error = %e, "cannot write an audit log entry");
        }
    }
    response
}

/// Writes `entry`, and now and then removes what is past the retention.
async fn write(api: &Api, entry: &Entry) -> Result<(), portico_store::StoreError> {
    let key = format!("{:013}-{:08x}", entry.time, fastrand::u32(..));
    api.store.create(Kind::Audit, &key, &entry.to_fields()).await?;
    // One write in 50 looks at the whole log: the bound holds within 2 %.
    if fastrand::u8(..50) == 0 {
        prune(api.store.as_ref(), RETAINED, entry.time.saturating_sub(RETAINED_FOR_MS)).await?;
    }
    Ok(())
}

/// Removes the entries beyond the newest `keep`, and those older than `before` (ms).
pub async fn prune(
    store: &dyn portico_store::Store,
    keep: usize,
    before: u64,
) -> Result<usize, portico_store::StoreError> {
    let mut keys = store.keys(Kind::Audit).await?;
    keys.sort_unstable_by(|a, b| b.cmp(a));
    let cutoff = format!("{before:013}");
    let mut removed = 0;
    for (i, key) in keys.iter().enumerate() {
        if i >= keep || key.as_str() < cutoff.as_str() {
            store.delete(Kind::Audit, key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// `GET /api/audit[?limit=&user=&kind=]` (admins): the changes made through the API,
/// newest first (at most `limit`, 100 unless said, 1,000 at most).
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "users",
    params(
        ("limit" = Option<usize>, Query, description = "At most this many (100 unless said; 1,000 at most)"),
        ("user" = Option<String>, Query, description = "Only this user's changes"),
        ("kind" = Option<String>, Query, description = "Only changes to this kind of object (`Host`, `User`, ...)"),
    ),
    responses((status = 200, body = doc::Results<Vec<Entry>>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Results<Vec<Entry>>>, ApiError> {
    caller.require_admin()?;
    let limit = match query.get("limit") {
        Some(limit) => limit.parse::<usize>().map_err(|_| ApiError::Malformed("limit must be a number".into()))?,
        None => 100,
    }
    .min(1000);
    let newest: BTreeMap<String, Fields> = api.store.records(Kind::Audit).await?.into_iter().collect();
    let wanted = |entry: &Entry| {
        query.get("user").is_none_or(|u| &entry.user == u)
            && query.get("kind").is_none_or(|k| entry.kind.eq_ignore_ascii_case(k))
    };
    let entries = newest.values().rev().map(Entry::from_fields).filter(wanted).take(limit).collect();
    Ok(Json(Results::new(entries)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_say_what_changed() {
        let d = |m: Method, p: &str| described(&m, p);
        assert_eq!(d(Method::POST, "/api/host"), Some(("create", "Host", String::new())));
        assert_eq!(d(Method::PUT, "/api/host/%2A.example.com"), Some(("update", "Host", "*.example.com".into())));
        assert_eq!(d(Method::PUT, "/api/host/app.test/renew"), Some(("renew", "Host", "app.test".into())));
        assert_eq!(d(Method::PUT, "/api/cert/%2A.zone.test"), Some(("upload", "Cert", "*.zone.test".into())));
        assert_eq!(d(Method::DELETE, "/api/cert/app.test"), Some(("delete", "Cert", "app.test".into())));
        assert_eq!(d(Method::PUT, "/api/user/password"), Some(("password", "User", String::new())));
        assert_eq!(d(Method::PUT, "/api/user/password/erin"), Some(("password", "User", "erin".into())));
        assert_eq!(d(Method::DELETE, "/api/dns/domain/example.com"), Some(("delete", "Domain", "example.com".into())));
        assert_eq!(d(Method::POST, "/api/auth/login"), Some(("login", "Session", String::new())));
        assert_eq!(d(Method::GET, "/api/host"), None);
        assert_eq!(d(Method::POST, "/ui/app.js"), None);
    }
}
