//! Portico's web UI, embedded in the binary and served at `/` (its assets under `/ui/`). It is
//! a client of the documented API and nothing else; every page is sent with a strict
//! Content-Security-Policy (scripts, styles and connections from this origin only, no inline
//! script, no framing).

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");
const ICON: &str = include_str!("../ui/icon.svg");
/// socket.io's browser client (the npm package `socket.io-client`, at the version
/// `browser/package-lock.json` pins; MIT), which socket.io servers serve at
/// `/socket.io/socket.io.js` and the seed's pages load from there.
const SOCKET_IO_CLIENT: &str = include_str!("../ui/vendor/socket.io.min.js");

/// The policy every UI response carries.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The UI's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/ui/icon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        // Where browsers and feed readers look when a page names no icon.
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON) }))
}

/// `/socket.io/socket.io.js`: the client script, as a socket.io server serves it.
pub fn socket_io_client<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/socket.io/socket.io.js", get(|| async { asset("text/javascript; charset=utf-8", SOCKET_IO_CLIENT) }))
}
