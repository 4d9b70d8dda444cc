//! `/api/auth/login` and `/api/auth/logout`, and long-lived API tokens (`/api/token`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use http::HeaderMap;
use portico_store::Kind;

use crate::auth::{self, Caller};
use crate::error::{ApiError, FieldError};
use crate::json::JsonObject;
use crate::openapi as doc;
use crate::state::Api;
use crate::wire::{CreatedToken, Message, Results, RevokedToken, TokenView};

/// Longest lifetime of an API token, and its default.
const API_TOKEN_MAX_DAYS: u64 = 3650;
const API_TOKEN_DEFAULT_DAYS: u64 = 365;

/// `POST /api/auth/login {username, password}` → `{login, token, message}`.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body = doc::Login,
    responses((status = 200, body = doc::LoginReply), (status = 400, body = doc::ErrorBody, description = "Malformed JSON"), (status = 415, body = doc::ErrorBody, description = "The body is not declared as JSON (UnsupportedMediaType)"), (status = 401, body = doc::ErrorBody, description = "Wrong user name or password (LoginFailed)"), (status = 429, body = doc::ErrorBody, description = "Too many attempts", headers(("Retry-After" = u64, description = "Seconds to wait"))))
)]
pub async fn login(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Json<LoginReply>, ApiError> {
    let mut ignored = Vec::new();
    let username = portico_model::body::string(&body.0, "username", &mut ignored).unwrap_or_default();
    let password = portico_model::body::string(&body.0, "password", &mut ignored).unwrap_or_default();
    let address = auth::client_address(peer, &headers, &api.settings.load().trusted_proxies)?;
    api.limiter.check(address, &username)?;
    let user = match username.is_empty() {
        true => None,
        false => api.store.record(Kind::User, &username).await?,
    };
    let (ok, rehash) = auth::check_credentials(user.as_ref(), password.clone()).await;
    let Some(user) = user.filter(|_| ok) else {
        api.limiter.failed(address, &username);
        tracing::info!(username = %username, client = %address, "login failed");
        return Err(ApiError::LoginFailed);
    };
    api.limiter.succeeded(address, &username);
    if rehash {
        let mut updated = user.clone();
        updated.insert("password".to_owned(), auth::hash_password(password).await?);
        api.store.put(Kind::User, &username, &updated).await?;
        tracing::info!(username = %username, "replaced a bcrypt password hash with Argon2id");
    }
    let issued =
        auth::issue_token(api.store.as_ref(), &username, "session", None, api.settings.load().session_ttl).await?;
    tracing::info!(username = %username, client = %address, "login");
    let store = api.store.clone();
    tokio::spawn(async move {
        if let Err(e) = auth::sweep_expired(store.as_ref()).await {
            tracing::warn!(error = %e, "cannot sweep expired tokens");
        }
    });
    Ok(Json(LoginReply { login: true, token: issued.token, message: format!("{username} logged in!") }))
}

/// A successful login.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LoginReply {
    /// Always `true`.
    login: bool,
    /// The session token: send it in `auth-token` (or `Authorization: Bearer`).
    token: String,
    /// `<username> logged in!`
    message: String,
}

/// `/api/auth/logout` (any method): revokes the token used.
#[utoipa::path(
    method(get, post, put, delete, patch),
    path = "/api/auth/logout",
    tag = "auth",
    responses((status = 200, body = doc::Message, description = "The token is revoked"), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn logout(State(api): State<Api>, caller: Caller) -> Result<Json<Message>, ApiError> {
    api.store.delete(Kind::AuthToken, &caller.token_key).await?;
    Ok(Json(Message { message: "Bye".into() }))
}

/// `POST /api/token {name, days?}` → the new token, shown once.
#[utoipa::path(
    post,
    path = "/api/token",
    tag = "auth",
    request_body = doc::NewToken,
    responses((status = 200, body = doc::CreatedToken), doc::AuthErrors, doc::InputErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn create_token(
    State(api): State<Api>,
    caller: Caller,
    body: JsonObject,
) -> Result<Json<CreatedToken>, ApiError> {
    let mut errors = Vec::new();
    let name = portico_model::body::required(&body.0, "name", &mut errors);
    if let Some(name) = &name
        && !(1..=100).contains(&name.chars().count())
    {
        errors.push(FieldError::refused("name", "name must be 1 to 100 characters"));
    }
    let days = portico_model::body::whole_number(
        &body.0,
        "days",
        1..=API_TOKEN_MAX_DAYS,
        &format!("from 1 to {API_TOKEN_MAX_DAYS}"),
        &mut errors,
    );
    let (Some(name), true) = (name, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let days = days.unwrap_or(API_TOKEN_DEFAULT_DAYS);
    let ttl = Duration::from_secs(days * 86_400);
    let issued = auth::issue_token(api.store.as_ref(), &caller.username, "api", Some(&name), ttl).await?;
    Ok(Json(CreatedToken { token: issued.token, results: TokenView::new(&issued.key, &issued.fields) }))
}

/// `GET /api/token`: the caller's API tokens (never the tokens themselves).
#[utoipa::path(
    get,
    path = "/api/token",
    tag = "auth",
    responses((status = 200, body = doc::Results<Vec<doc::Token>>), doc::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn list_tokens(State(api): State<Api>, caller: Caller) -> Result<Json<Results<Vec<TokenView>>>, ApiError> {
    let tokens = api
        .store
        .records(Kind::AuthToken)
        .await?
        .iter()
        .filter(|(_, f)| f.get("kind").is_some_and(|k| k == "api"))
        .filter(|(_, f)| f.get("created_by") == Some(&caller.username))
        .map(|(id, f)| TokenView::new(id, f))
        .collect();
    Ok(Json(Results::new(tokens)))
}

/// `DELETE /api/token/{id}`: revokes one of the caller's API tokens (admins: anyone's).
#[utoipa::path(
    delete,
    path = "/api/token/{id}",
    tag = "auth",
    params(("id" = String, Path)),
    responses((status = 200, body = doc::RevokedToken), doc::AuthErrors, doc::Missing),
    security(("token" = []), ("bearer" = []))
)]
pub async fn revoke_token(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RevokedToken>, ApiError> {
    let not_found = || ApiError::NotFound { kind: "Token", key: id.clone() };
    let record = api.store.record(Kind::AuthToken, &id).await?.ok_or_else(not_found)?;
    let owner = record.get("created_by") == Some(&caller.username);
    if record.get("kind").is_none_or(|k| k != "api") || !(owner || caller.role == auth::Role::Admin) {
        return Err(not_found());
    }
    api.store.delete(Kind::AuthToken, &id).await?;
    Ok(Json(RevokedToken { message: format!("{id} revoked"), results: TokenView::new(&id, &record) }))
}
