//! Portico's management API (axum), compatible with the seed's routes, field names and
//! error shape (`{name, message, keys?}`), and secure by default: no default credentials,
//! hashed expiring tokens, roles, a login rate limit, secrets never in responses.
//!
//! Routes: `/api/auth/{login,logout}`, `/api/user…`, `/api/token…`, `/api/host…`, `/api/dns…`, `/api/cert/{host}`,
//! `/healthz`, `/readyz`. Every `/api` route but login needs a token in the `auth-token`
//! header or `Authorization: Bearer`.

pub mod auth;
mod certs;
mod dns;
pub mod error;
mod health;
mod hosts;
mod json;
mod session;
pub mod state;
mod users;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{any, get, post, put};
use tokio::net::TcpListener;

pub use error::ApiError;
pub use state::{Api, ApiSettings, ApiState};

/// Every route of the API.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/auth/login", post(session::login))
        .route("/api/auth/logout", any(session::logout))
        .route("/api/token", get(session::list_tokens).post(session::create_token))
        .route("/api/token/{id}", axum::routing::delete(session::revoke_token))
        .route("/api/user", get(users::list).post(users::create))
        .route("/api/user/me", get(users::me))
        .route("/api/user/password", put(users::own_password))
        .route("/api/user/password/{username}", put(users::user_password))
        .route("/api/user/{username}", axum::routing::delete(users::delete))
        .route("/api/cert/{host}", get(certs::get))
        .route("/api/dns", get(dns::list).post(dns::create).options(dns::types))
        .route("/api/dns/domain", get(dns::list_domains).post(dns::create_domain))
        .route("/api/dns/domain/refresh/{id}", post(dns::refresh_domains))
        .route("/api/dns/domain/{domain}", get(dns::find_domain).delete(dns::delete_domain))
        .route("/api/dns/{id}", get(dns::get).put(dns::update).delete(dns::delete))
        .route("/api/host", get(hosts::list).post(hosts::create))
        .route("/api/host/lookupobj", get(hosts::lookup_tree))
        .route("/api/host/lookup/{item}", get(hosts::lookup))
        .route("/api/host/{item}", get(hosts::get).put(hosts::update).delete(hosts::delete))
        .route("/api/host/{item}/renew", put(hosts::renew))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(api)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(api).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
