//! `/api/user`: list, create, delete, me, password changes.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use portico_store::{Fields, Kind};
use serde_json::{Value, json};

use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;

/// How long a deletion may hold the users lock (it expires by itself if its holder dies).
const USERS_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a deletion waits for another to release the users lock.
const USERS_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Whether `?detail` asks for whole objects (present and not `false`/`0`).
pub fn wants_detail(query: &HashMap<String, String>) -> bool {
    query.get("detail").is_some_and(|v| !matches!(v.as_str(), "false" | "0"))
}

/// `{"results": [...]}` for a kind: keys, or with `?detail` each record rendered by `render`
/// (records it cannot render are left out).
pub async fn listing(
    api: &Api,
    kind: Kind,
    query: &HashMap<String, String>,
    render: impl Fn(&Fields) -> Option<Value>,
) -> Result<Json<Value>, ApiError> {
    let records = api.store.records(kind).await?;
    let results: Vec<Value> = if wants_detail(query) {
        records.iter().filter_map(|(_, f)| render(f)).collect()
    } else {
        records.into_iter().map(|(k, _)| json!(k)).collect()
    };
    Ok(Json(json!({ "results": results })))
}

/// A user as the API shows it: every stored field but the password hash, and the role.
pub fn user_json(fields: &Fields) -> Value {
    let mut out = portico_model::record::public_json(fields);
    out.insert("role".to_owned(), json!(Role::of(fields).as_str()));
    Value::Object(out)
}

/// `GET /api/user[?detail]` (admin).
#[utoipa::path(
    get,
    path = "/api/user",
    tag = "users",
    params(("detail" = Option<String>, Query, description = "Present: whole records instead of names")),
    responses((status = 200, body = doc::Listing<doc::User>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    listing(&api, Kind::User, &query, |f| Some(user_json(f))).await
}

/// `POST /api/user {username, password, role?}` (admin).
#[utoipa::path(
    post,
    path = "/api/user",
    tag = "users",
    request_body = doc::NewUser,
    responses((status = 200, body = doc::Written<doc::User>), doc::AuthErrors, doc::InputErrors, doc::Taken),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create(State(api): State<Api>, caller: Caller, body: JsonObject) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    let username = body.required("username", &mut errors);
    let password = body.required("password", &mut errors);
    if let Some(u) = &username
        && let Err(e) = check_username(u)
    {
        errors.push(e);
    }
    if let Some(p) = &password
        && let Err(e) = auth::check_password(p)
    {
        errors.push(e);
    }
    let role = match body.string("role", &mut errors).as_deref() {
        None | Some("user") => Role::User,
        Some("admin") => Role::Admin,
        Some(_) => {
            errors.push(FieldError::new("role", "role must be \"admin\" or \"user\"."));
            Role::User
        }
    };
    let (Some(username), Some(password), true) = (username, password, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let hash = auth::hash_password(password).await?;
    let fields = portico_model::record::user_fields(&username, hash, role, &caller.username, portico_store::now_ms());
    api.store
        .create(Kind::User, &username, &fields)
        .await
        .map_err(|e| ApiError::from_write(e, Kind::User, &username, "username"))?;
    Ok(Json(user_json(&fields)))
}

/// `DELETE /api/user/{username}` (admin). The last admin cannot be deleted.
#[utoipa::path(
    delete,
    path = "/api/user/{username}",
    tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = doc::DeletedUser), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    // Under the users lock (held across the cluster): two admins deleting each other at once
    // must not both see the other as "not the last admin".
    let lock = users_lock(&api).await?;
    let deleted = delete_locked(&api, &username).await;
    if let Err(e) = api.store.release(&lock).await {
        tracing::warn!(error = %e, "cannot release the users lock; it expires by itself");
    }
    let user = deleted?;
    Ok(Json(json!({ "username": username, "results": user_json(&user) })))
}

/// Takes the users lock, waiting a few seconds for another API node's deletion to finish.
async fn users_lock(api: &Api) -> Result<portico_store::Lease, ApiError> {
    let deadline = tokio::time::Instant::now() + USERS_LOCK_WAIT;
    loop {
        if let Some(lease) = api.store.acquire(&portico_store::keys::users_lock(), USERS_LOCK_TTL).await? {
            return Ok(lease);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::Internal("the users lock is held too long"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete_locked(api: &Api, username: &str) -> Result<Fields, ApiError> {
    let users = api.store.records(Kind::User).await?;
    let user = users
        .iter()
        .find(|(k, _)| *k == username)
        .map(|(_, f)| f.clone())
        .ok_or_else(|| ApiError::NotFound { kind: "User", key: username.to_owned() })?;
    let admins = users.iter().filter(|(_, f)| Role::of(f) == Role::Admin).count();
    if Role::of(&user) == Role::Admin && admins <= 1 {
        return Err(ApiError::Validation(vec![FieldError::new("username", "the last admin cannot be deleted.")]));
    }
    api.store.delete(Kind::User, username).await?;
    auth::revoke_tokens(api.store.as_ref(), username, None).await?;
    Ok(user)
}

/// `GET /api/user/me`.
#[utoipa::path(
    get,
    path = "/api/user/me",
    tag = "users",
    responses((status = 200, body = doc::Me), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn me(caller: Caller) -> Json<Value> {
    Json(json!({ "username": caller.username, "role": caller.role.as_str() }))
}

/// `PUT /api/user/password {currentPassword, password}`: the caller's own password, given
/// the current one (a stolen session cannot take the account over). Other sessions end.
#[utoipa::path(
    put,
    path = "/api/user/password",
    tag = "users",
    request_body = doc::OwnPassword,
    responses((status = 200, body = doc::Results<doc::User>, description = "Changed; the caller's other sessions end"), doc::AuthErrors, doc::InputErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn own_password(State(api): State<Api>, caller: Caller, body: JsonObject) -> Result<Json<Value>, ApiError> {
    let user = set_password(&api, &caller, &caller.username, body, Current::Required).await?;
    auth::revoke_tokens(api.store.as_ref(), &caller.username, Some(&caller.token_key)).await?;
    Ok(Json(json!({ "results": user_json(&user) })))
}

/// `PUT /api/user/password/{username} {password}` (admin). That user's sessions end.
#[utoipa::path(
    put,
    path = "/api/user/password/{username}",
    tag = "users",
    request_body = doc::NewPassword,
    params(("username" = String, Path)),
    responses((status = 200, body = doc::Results<doc::User>, description = "Changed; that user's sessions end"), doc::AuthErrors, doc::InputErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn user_password(
    State(api): State<Api>,
    caller: Caller,
    Path(username): Path<String>,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let user = set_password(&api, &caller, &username, body, Current::NotAsked).await?;
    let keep = (username == caller.username).then_some(caller.token_key.as_str());
    auth::revoke_tokens(api.store.as_ref(), &username, keep).await?;
    Ok(Json(json!({ "results": user_json(&user) })))
}

/// Whether a password change must name the current password (one's own, through a
/// session that may have been stolen) or not (an admin setting someone's).
#[derive(PartialEq)]
enum Current {
    Required,
    NotAsked,
}

async fn set_password(
    api: &Api,
    caller: &Caller,
    username: &str,
    body: JsonObject,
    current: Current,
) -> Result<Fields, ApiError> {
    let mut errors = Vec::new();
    let given = (current == Current::Required).then(|| body.required("currentPassword", &mut errors)).flatten();
    let password = body.required("password", &mut errors);
    if let Some(p) = &password
        && let Err(e) = auth::check_password(p)
    {
        errors.push(e);
    }
    let (Some(password), true) = (password, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let mut user = api
        .store
        .record(Kind::User, username)
        .await?
        .ok_or_else(|| ApiError::NotFound { kind: "User", key: username.to_owned() })?;
    if let Some(given) = given
        && !auth::verify_password(given, user.get("password").cloned().unwrap_or_default()).await.0
    {
        let wrong = FieldError::new("currentPassword", "the current password is not right.");
        return Err(ApiError::Validation(vec![wrong]));
    }
    user.insert("password".to_owned(), auth::hash_password(password).await?);
    portico_model::record::touch(&mut user, &caller.username, portico_store::now_ms());
    api.store.put(Kind::User, username, &user).await?;
    Ok(user)
}

fn check_username(name: &str) -> Result<(), FieldError> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !(3..=64).contains(&name.len()) || !valid_chars {
        return Err(FieldError::new("username", "username must be 3 to 64 letters, digits, '.', '_', '-' or '@'."));
    }
    Ok(())
}
