//! An in-process API for tests: a router over a new embedded store with its first admin.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, StatusCode};
use portico_api::{ApiSettings, ApiState};
use portico_model::Routes;
use serde_json::Value;
use serde_json::json;
use tower::ServiceExt;

pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// A router over a new embedded store with its first admin, and that admin's token.
pub struct Api {
    pub router: axum::Router,
    pub token: String,
    pub store: std::sync::Arc<dyn portico_store::Store>,
    _dir: tempfile::TempDir,
}

/// An answer: status, `ETag` and JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub json: Value,
}

impl Answer {
    /// The fields a 422 names, in order.
    pub fn keys(&self) -> Vec<&str> {
        self.json["keys"].as_array().map_or(vec![], |k| k.iter().filter_map(|k| k["key"].as_str()).collect())
    }
}

impl Api {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = portico_store::open(&format!("redb://{}", dir.path().join("s.redb").display())).await.unwrap();
        portico_api::auth::bootstrap_admin(store.as_ref(), dir.path(), Some(ADMIN_PASSWORD.into())).await.unwrap();
        let changes = portico_store::Follower::start(store.clone(), std::future::pending());
        let state = ApiState::new(store.clone(), changes, Arc::new(Routes::new()), ApiSettings::default(), None);
        let mut api = Self { router: portico_api::router(state), token: String::new(), store, _dir: dir };
        let login = api.call("POST", "/api/auth/login", json!({"username": "admin", "password": ADMIN_PASSWORD})).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.json);
        api.token = login.json["token"].as_str().unwrap().to_owned();
        api
    }

    pub async fn call(&self, method: &str, path: &str, body: Value) -> Answer {
        self.call_as(&self.token, method, path, body).await
    }

    pub async fn call_as(&self, token: &str, method: &str, path: &str, body: Value) -> Answer {
        self.call_with(&[("auth-token", token)], method, path, body).await
    }

    /// A call with the admin's token and `headers`.
    pub async fn call_headed(&self, headers: &[(&str, &str)], method: &str, path: &str, body: Value) -> Answer {
        let mut all = vec![("auth-token", self.token.as_str())];
        all.extend_from_slice(headers);
        self.call_with(&all, method, path, body).await
    }

    async fn call_with(&self, headers: &[(&str, &str)], method: &str, path: &str, body: Value) -> Answer {
        let mut request = Request::builder().method(method).uri(path).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request =
            request.body(Body::from(if body.is_null() { String::new() } else { body.to_string() })).unwrap();
        request.extensions_mut().insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        Answer { status, etag, json: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }
}
