//! `/api/user`: list, create, delete, me, password changes.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use portico_store::{Fields, Kind};

use portico_model::user::{NewUser, PasswordChange, User};

use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;
use crate::wire::{DeletedUser, Entry, Listing, Results, UserView};

/// How long a deletion may hold the users lock (it expires by itself if its holder dies).
const USERS_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a deletion waits for another to release the users lock.
const USERS_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Whether `?detail` asks for whole objects (present and not `false`/`0`).
pub fn wants_detail(query: &HashMap<String, String>) -> bool {
    query.get("detail").is_some_and(|v| !matches!(v.as_str(), "false" | "0"))
}

/// `{"results": [...]}` for a kind: keys, or with `?detail` each record rendered by `render`
/// from its key and fields (records it cannot render are left out).
pub async fn listing<T>(
    api: &Api,
    kind: Kind,
    query: &HashMap<String, String>,
    render: impl Fn(&str, &Fields) -> Option<T>,
) -> Result<Json<Listing<T>>, ApiError> {
    let records = api.store.records(kind).await?;
    let results = if wants_detail(query) {
        records.iter().filter_map(|(k, f)| render(k, f)).map(Entry::Detail).collect()
    } else {
        records.into_iter().map(|(k, _)| Entry::Name(k)).collect()
    };
    Ok(Json(Listing::new(results)))
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
) -> Result<Json<Listing<UserView>>, ApiError> {
    caller.require_admin()?;
    listing(&api, Kind::User, &query, |key, f| Some(UserView::from(&User::from_fields(key, f)))).await
}

/// `POST /api/user {username, password, role?}` (admin).
#[utoipa::path(
    post,
    path = "/api/user",
    tag = "users",
    request_body = doc::NewUser,
    responses((status = 200, body = doc::User), doc::AuthErrors, doc::InputErrors, doc::Taken),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create(State(api): State<Api>, caller: Caller, body: JsonObject) -> Result<Json<UserView>, ApiError> {
    caller.require_admin()?;
    let new = NewUser::from_json(&body.0).map_err(ApiError::Validation)?;
    let hash = auth::hash_password(new.password.clone()).await?;
    let user = User::new(new, hash, &caller.username, portico_store::now_ms() as i64);
    api.store
        .create(Kind::User, &user.username, &user.to_fields())
        .await
        .map_err(|e| ApiError::from_write(e, Kind::User, &user.username, "username"))?;
    Ok(Json(UserView::from(&user)))
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
) -> Result<Json<DeletedUser>, ApiError> {
    caller.require_admin()?;
    // Under the users lock (held across the cluster): two admins deleting each other at once
    // must not both see the other as "not the last admin".
    let lock = users_lock(&api).await?;
    let deleted = delete_locked(&api, &username).await;
    if let Err(e) = api.store.release(&lock).await {
        tracing::warn!(error = %e, "cannot release the users lock; it expires by itself");
    }
    let user = User::from_fields(&username, &deleted?);
    Ok(Json(DeletedUser::new(&user)))
}

/// Takes the users lock, waiting a few seconds for another API node's deletion to finish.
async fn users_lock(api: &Api) -> Result<portico_store::Lease, ApiError> {
    crate::state::lock(api, &portico_store::keys::users_lock(), USERS_LOCK_TTL, USERS_LOCK_WAIT).await
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
        return Err(ApiError::Validation(vec![FieldError::refused("username", "the last admin cannot be deleted")]));
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
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me { role: caller.role.as_str(), username: caller.username })
}

/// The caller.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The caller's user name.
    username: String,
    /// `admin` or `user`.
    #[schema(value_type = crate::openapi::Role)]
    role: &'static str,
}

/// `PUT /api/user/password {current_password, password}`: the caller's own password, given
/// the current one (a stolen session cannot take the account over). Other sessions end.
#[utoipa::path(
    put,
    path = "/api/user/password",
    tag = "users",
    request_body = doc::OwnPassword,
    responses((status = 200, body = doc::Results<doc::User>, description = "Changed; the caller's other sessions end"), doc::AuthErrors, doc::InputErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn own_password(
    State(api): State<Api>,
    caller: Caller,
    body: JsonObject,
) -> Result<Json<Results<UserView>>, ApiError> {
    let user = set_password(&api, &caller, &caller.username, body, Current::Required).await?;
    auth::revoke_tokens(api.store.as_ref(), &caller.username, Some(&caller.token_key)).await?;
    Ok(Json(Results::new(UserView::from(&user))))
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
) -> Result<Json<Results<UserView>>, ApiError> {
    caller.require_admin()?;
    let user = set_password(&api, &caller, &username, body, Current::NotAsked).await?;
    let keep = (username == caller.username).then_some(caller.token_key.as_str());
    auth::revoke_tokens(api.store.as_ref(), &username, keep).await?;
    Ok(Json(Results::new(UserView::from(&user))))
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
) -> Result<User, ApiError> {
    let change = PasswordChange::from_json(&body.0, current == Current::Required).map_err(ApiError::Validation)?;
    let stored = api
        .store
        .record(Kind::User, username)
        .await?
        .ok_or_else(|| ApiError::NotFound { kind: "User", key: username.to_owned() })?;
    let mut user = User::from_fields(username, &stored);
    if let Some(given) = change.current
        && !auth::verify_password(given, user.password_hash.clone()).await.0
    {
        let wrong = FieldError::refused(change.current_field, "the current password is not right");
        return Err(ApiError::Validation(vec![wrong]));
    }
    let hash = auth::hash_password(change.password).await?;
    user.set_password(hash, &caller.username, portico_store::now_ms() as i64);
    api.store.put(Kind::User, username, &user.to_fields()).await?;
    Ok(user)
}
