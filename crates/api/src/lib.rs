//! Portico's management API (axum), compatible with the seed's routes, field names and
//! error shape (`{name, message, keys?}`), and secure by default: no default credentials,
//! hashed expiring tokens, roles, a login rate limit, secrets never in responses.
//!
//! Routes: `/api/auth/{login,logout}`, `/api/user…`, `/api/token…`, `/api/host…`, `/api/dns…`, `/api/cert/{host}`,
//! `/healthz`, `/readyz`, `/api/stats`, live events (`/api/events`, socket.io at `/socket.io/`), the OpenAPI
//! 3.1 document at `/api/openapi.json`, and the web UI at `/`. Every `/api` route but login needs a token in the `auth-token`
//! header or `Authorization: Bearer`.

pub mod audit;
pub mod auth;
mod certs;
mod conditional;
mod dns;
pub mod error;
mod health;
mod hosts;
mod json;
mod live;
pub mod lookup;
pub mod openapi;
mod session;
pub mod state;
mod streams;
mod ui;
mod users;
pub mod wire;

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use dns::{Synced, sync as sync_dns_provider, sync_all as sync_dns_domains};
pub use error::ApiError;
pub use state::{Api, ApiSettings, ApiState, HealthReport, RequestCounter, Traffic};

/// Every route of the API with its OpenAPI entry. Routes are only ever added here, through
/// `routes!`, which registers a handler together with its `#[utoipa::path]` description.
fn documented() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(session::list_tokens, session::create_token))
        .routes(routes!(session::revoke_token))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::me))
        .routes(routes!(users::own_password))
        .routes(routes!(users::user_password))
        .routes(routes!(users::delete))
        .routes(routes!(certs::list))
        .routes(routes!(certs::get, certs::upload, certs::remove))
        .routes(routes!(dns::list, dns::create, dns::types))
        .routes(routes!(dns::list_domains, dns::create_domain))
        .routes(routes!(dns::refresh_domains))
        .routes(routes!(dns::find_domain, dns::delete_domain))
        .routes(routes!(dns::get, dns::update, dns::delete))
        .routes(routes!(hosts::list, hosts::create))
        .routes(routes!(hosts::lookup_tree))
        .routes(routes!(hosts::lookup))
        .routes(routes!(hosts::get, hosts::update, hosts::delete))
        .routes(routes!(hosts::renew))
        .routes(routes!(live::events))
        .routes(routes!(health::stats))
        .routes(routes!(audit::list))
        .routes(routes!(streams::list, streams::create))
        .routes(routes!(streams::get, streams::update, streams::delete))
}

/// The OpenAPI document of every route (also served at `/api/openapi.json`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// Every route of the API, and `/api/openapi.json`.
///
/// A path with a trailing slash is the path without it (`POST /api/user/` is `POST
/// /api/user`), as in the seed (Express), whose UI sends both forms.
pub fn router(api: Api) -> Router {
    let (routes, doc) = documented().split_for_parts();
    let doc = Arc::new(doc);
    let routes = routes
        .route("/api/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .merge(ui::routes())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(api.clone(), audit::record))
        .with_state(api.clone());
    // Routing happens inside a `Router`, so the path is trimmed by a service in front of it.
    let routes = tower::ServiceExt::map_request(routes, without_trailing_slash);
    // The client script is the one `/socket.io/` path that is not socket.io's own.
    let live = tower::Layer::layer(&live::socket_io(api.clone()), routes);
    ui::socket_io_client()
        .fallback_service(live)
        .layer(axum::middleware::from_fn_with_state(api, live::limit_socket_io))
}

/// The request with its path's trailing slashes removed (but for `/` itself).
fn without_trailing_slash<B>(mut request: http::Request<B>) -> http::Request<B> {
    let uri = request.uri();
    let path = uri.path();
    let trimmed = path.trim_end_matches('/');
    if trimmed.len() == path.len() || trimmed.is_empty() {
        return request;
    }
    let rebuilt = match uri.query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    if let Ok(path_and_query) = http::uri::PathAndQuery::try_from(rebuilt) {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}
