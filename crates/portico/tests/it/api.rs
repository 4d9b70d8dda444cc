//! The management API over real HTTP, against the real binary.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::dns_fake::{self, FakeDns, Provider};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, eventually};
use serde_json::{Value, json};

use crate::{BIN, admin, portico};

#[tokio::test]
async fn first_start_creates_an_admin_with_a_random_password() {
    let p = Portico::start_with(BIN, tempfile::TempDir::new().unwrap(), &[], None);
    let file = p.data_dir().join("initial-admin-password");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(password.len() >= 20);
    let api = ApiClient::new(p.api);
    for (user, pass) in [("admin", "admin"), ("proxyadmin2", "proxyadmin2"), ("admin", "")] {
        let reply = api.call("POST", "/api/auth/login", None, Some(json!({"username": user, "password": pass}))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}/{pass}");
    }
    api.login("admin", &password).await;
}

#[tokio::test]
async fn tokens_work_in_both_headers_and_logout_revokes() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    assert_eq!(token.len(), 64);
    let me = api.call("GET", "/api/user/me", Some(&token), None).await;
    assert_eq!(me.json, json!({"username": "admin", "role": "admin"}));
    let bearer = api.raw("GET", "/api/user/me", &[("authorization", format!("Bearer {token}"))], String::new()).await;
    assert_eq!(bearer.status, StatusCode::OK);

    let none = api.call("GET", "/api/host", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json, json!({"name": "LoginFailed", "message": "Invalid Credentials, login failed."}));
    let wrong = api.call("GET", "/api/host", Some("0".repeat(64).as_str()), None).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let bye = api.call("POST", "/api/auth/logout", Some(&token), None).await;
    assert_eq!(bye.json, json!({"message": "Bye"}));
    assert_eq!(api.call("GET", "/api/user/me", Some(&token), None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_expire() {
    let p = portico(&["api.session_ttl=\"1s\""]);
    let (api, token) = admin(&p).await;
    assert_eq!(api.call("GET", "/api/user/me", Some(&token), None).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the session to expire", || {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let status = api.call("GET", "/api/user/me", Some(&token), None).await.status;
            (status == StatusCode::UNAUTHORIZED).then_some(())
        }
    })
    .await;
    // The next login sweeps expired token records away.
    let fresh = api.login("admin", ADMIN_PASSWORD).await;
    let path = p.data_dir().join("portico.redb");
    let store = portico_store::EmbeddedStore::open(&path).await.unwrap();
    use portico_store::Store;
    let kept = eventually(Duration::from_secs(5), "expired tokens to be swept", || {
        let store = store.clone();
        async move {
            let keys = store.keys(portico_store::Kind::AuthToken).await.unwrap();
            (keys.len() == 1).then_some(keys)
        }
    })
    .await;
    assert_eq!(kept[0], portico_api::auth::token_key(&fresh));
}

#[tokio::test]
async fn hosts_crud_as_the_seed_ui_sends_it() {
    let backend = Backend::start("api-host").await;
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let t = Some(token.as_str());
    // String numbers and booleans, as the seed's UI sends them.
    let body = json!({"host": "App.Example.Test", "ip": "127.0.0.1", "targetPort": backend.addr.port().to_string(),
        "forcessl": "false", "targetssl": false, "challengeType": "HTTP-01"});
    let created = api.call("POST", "/api/host", t, Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    assert_eq!(created.json["message"], "\"app.example.test\" added.");
    assert_eq!(created.json["targetPort"], backend.addr.port());
    assert_eq!(created.json["forcessl"], false);
    assert_eq!(created.json["created_by"], "admin");
    assert!(created.json["created_on"].is_number());

    // The proxy routes it within a second.
    let proxy = Proxy::h1(p.http);
    eventually(Duration::from_secs(1), "the API-created host to be routed", || {
        let proxy = proxy.clone();
        async move { (proxy.get("app.example.test", "/").await.status == StatusCode::OK).then_some(()) }
    })
    .await;

    let dup = api.call("POST", "/api/host", t, Some(body)).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.json["name"], "EntryNameUsed");
    assert_eq!(dup.json["keys"][0]["key"], "host");

    let defaults =
        api.call("POST", "/api/host", t, Some(json!({"host": "*.example.test", "ip": "::1", "targetPort": 80}))).await;
    assert_eq!(defaults.json["forcessl"], true, "API hosts default to forcessl, as in the seed");

    let list = api.call("GET", "/api/host", t, None).await;
    let mut names: Vec<String> = serde_json::from_value(list.json["results"].clone()).unwrap();
    names.sort();
    assert_eq!(names, vec!["*.example.test", "app.example.test"]);
    let detail = api.call("GET", "/api/host?detail=true", t, None).await;
    assert_eq!(detail.json["results"].as_array().unwrap().len(), 2);
    assert!(detail.json["results"][0]["ip"].is_string());

    let got = api.call("GET", "/api/host/app.example.test", t, None).await;
    assert_eq!(got.json["item"], "app.example.test");
    assert_eq!(got.json["results"]["ip"], "127.0.0.1");

    let lookup = api.call("GET", "/api/host/lookup/www.example.test", t, None).await;
    assert_eq!(lookup.json["string"], "www.example.test");
    assert_eq!(lookup.json["results"]["host"], "*.example.test");
    let miss = api.call("GET", "/api/host/lookup/nothing.test", t, None).await;
    assert_eq!(miss.json, json!({"string": "nothing.test"}));
    let tree = api.call("GET", "/api/host/lookupobj", t, None).await;
    assert_eq!(tree.json["results"]["test"]["example"]["*"]["#record"]["host"], "*.example.test");

    // Partial update, then rename.
    let updated = api.call("PUT", "/api/host/app.example.test", t, Some(json!({"forcessl": true}))).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.raw);
    assert_eq!(updated.json["forcessl"], true);
    assert_eq!(updated.json["ip"], "127.0.0.1");
    assert_eq!(updated.json["updated_by"], "admin");
    assert_eq!(updated.json["__requestedHost"], "app.example.test");
    let renamed = api.call("PUT", "/api/host/app.example.test", t, Some(json!({"host": "web.example.test"}))).await;
    assert_eq!(renamed.json["host"], "web.example.test");
    assert_eq!(api.call("GET", "/api/host/app.example.test", t, None).await.status, StatusCode::NOT_FOUND);
    let clash = api.call("PUT", "/api/host/web.example.test", t, Some(json!({"host": "*.example.test"}))).await;
    assert_eq!(clash.status, StatusCode::CONFLICT);

    // Renewal issues a certificate now (the harness runs the internal CA).
    let renew = api.call("PUT", "/api/host/web.example.test/renew", t, None).await;
    assert_eq!(renew.status, StatusCode::OK, "{}", renew.raw);
    assert_eq!(renew.json["results"][0]["name"], "web.example.test");
    let cert = api.call("GET", "/api/cert/web.example.test", t, None).await;
    assert_eq!(cert.json["results"]["issued_by"], "internal", "{}", cert.raw);
    assert_eq!(cert.json["results"]["not_after"], renew.json["results"][0]["not_after"]);

    let deleted = api.call("DELETE", "/api/host/web.example.test", t, None).await;
    assert_eq!(deleted.json["message"], "web.example.test deleted");
    let gone = api.call("DELETE", "/api/host/web.example.test", t, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.json["name"], "EntryNotFound");
}

#[tokio::test]
async fn bad_input_is_4xx_naming_the_field() {
    let p = portico(&[]);
    let (api, token) = admin(&p).await;
    let t = Some(token.as_str());
    let cases = [
        (json!({}), vec!["host", "ip", "targetPort"]),
        (json!({"host": "a*.test", "ip": "127.0.0.1", "targetPort": 80}), vec!["host"]),
        (json!({"host": "ok.test", "ip": "not an ip", "targetPort": 80}), vec!["ip"]),
        (json!({"host": "ok.test", "ip": "127.0.0.1", "targetPort": 70000}), vec!["targetPort"]),
        (json!({"host": "ok.test", "ip": "127.0.0.1", "targetPort": "80x"}), vec!["targetPort"]),
        (json!({"host": "ok.test", "ip": "127.0.0.1", "targetPort": 80, "forcessl": "yes"}), vec!["forcessl"]),
        (json!({"host": 5, "ip": ["x"], "targetPort": true}), vec!["host", "ip", "targetPort"]),
    ];
    for (body, fields) in cases {
        let reply = api.call("POST", "/api/host", t, Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", reply.raw);
        assert_eq!(reply.json["name"], "ObjectValidateError");
        let keys: Vec<&str> =
            reply.json["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap()).collect();
        assert_eq!(keys, fields, "{body}");
    }
    for raw in ["{not json", "[1,2]", "\"text\"", "{\"host\": "] {
        let reply = api.raw("POST", "/api/host", &[("auth-token", token.clone())], raw.to_owned()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{raw}");
        assert_eq!(reply.json["name"], "SyntaxError");
    }
    let unknown = api.call("GET", "/api/nothing", t, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json, json!({"name": "Error", "message": "Page not found"}));
    assert_eq!(api.call("PATCH", "/api/host", t, None).await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.call("GET", "/api/host/%2e%2e", t, None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn roles_are_enforced() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let created =
        api.call("POST", "/api/user", r, Some(json!({"username": "alice", "password": "alice-password"}))).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    assert_eq!(created.json["role"], "user");
    assert!(created.json.get("password").is_none());
    let dup =
        api.call("POST", "/api/user", r, Some(json!({"username": "alice", "password": "another-password"}))).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let short = api.call("POST", "/api/user", r, Some(json!({"username": "bob", "password": "short"}))).await;
    assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);

    let alice = api.login("alice", "alice-password").await;
    let a = Some(alice.as_str());
    let host = json!({"host": "alice.test", "ip": "127.0.0.1", "targetPort": 80});
    assert_eq!(api.call("POST", "/api/host", a, Some(host)).await.status, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/user/me", a, None).await.json["role"], "user");
    for (method, path, body) in [
        ("GET", "/api/user", None),
        ("POST", "/api/user", Some(json!({"username": "mallory", "password": "mallory-password"}))),
        ("DELETE", "/api/user/admin", None),
        ("PUT", "/api/user/password/admin", Some(json!({"password": "taken-over-1"}))),
        ("GET", "/api/host/lookupobj", None),
    ] {
        let reply = api.call(method, path, a, body).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(reply.json["name"], "Forbidden");
    }
    let users = api.call("GET", "/api/user?detail=1", r, None).await;
    assert_eq!(users.json["results"].as_array().unwrap().len(), 2);
    let last = api.call("DELETE", "/api/user/admin", r, None).await;
    assert_eq!(last.status, StatusCode::UNPROCESSABLE_ENTITY, "the last admin stays");
    let removed = api.call("DELETE", "/api/user/alice", r, None).await;
    assert_eq!(removed.json["username"], "alice");
    assert_eq!(api.call("GET", "/api/user/me", a, None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn password_changes_end_other_sessions_and_revoke_api_tokens() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    api.call("POST", "/api/user", r, Some(json!({"username": "carol", "password": "carol-password"}))).await;
    let first = api.login("carol", "carol-password").await;
    let second = api.login("carol", "carol-password").await;
    let api_token = |session: String| {
        let api = api.clone();
        async move {
            let made = api.call("POST", "/api/token", Some(&session), Some(json!({"name": "automation"}))).await;
            assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
            made.json["token"].as_str().unwrap().to_owned()
        }
    };
    let automation = api_token(first.clone()).await;
    assert_eq!(api.call("GET", "/api/user/me", Some(&automation), None).await.status, StatusCode::OK);
    // Without the current password, or with a wrong one, a session cannot change it.
    for current in [None, Some("not-carols-password")] {
        let mut body = json!({"password": "carol-new-password"});
        if let Some(current) = current {
            body["current_password"] = current.into();
        }
        let refused = api.call("PUT", "/api/user/password", Some(&first), Some(body)).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
        assert_eq!(refused.json["keys"][0]["key"], "current_password", "{}", refused.raw);
    }
    assert_eq!(api.call("GET", "/api/user/me", Some(&second), None).await.status, StatusCode::OK);
    let body = json!({"current_password": "carol-password", "password": "carol-new-password"});
    let changed = api.call("PUT", "/api/user/password", Some(&first), Some(body)).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.raw);
    assert!(changed.json["results"].get("password").is_none());
    assert_eq!(api.call("GET", "/api/user/me", Some(&first), None).await.status, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/user/me", Some(&second), None).await.status, StatusCode::UNAUTHORIZED);
    // An API token made under the old password goes too: whoever knew it may have made it.
    assert_eq!(api.call("GET", "/api/user/me", Some(&automation), None).await.status, StatusCode::UNAUTHORIZED);
    let automation = api_token(first.clone()).await;
    let old = api
        .call("POST", "/api/auth/login", None, Some(json!({"username": "carol", "password": "carol-password"})))
        .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    // An admin reset ends every session of that user and revokes its API tokens.
    let reset = api.call("PUT", "/api/user/password/carol", r, Some(json!({"password": "carol-reset-password"}))).await;
    assert_eq!(reset.status, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/user/me", Some(&first), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.call("GET", "/api/user/me", Some(&automation), None).await.status, StatusCode::UNAUTHORIZED);
    api.login("carol", "carol-reset-password").await;
}

#[tokio::test]
async fn login_is_rate_limited() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    for _ in 0..5 {
        let reply =
            api.call("POST", "/api/auth/login", None, Some(json!({"username": "admin", "password": "guess"}))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let limited =
        api.call("POST", "/api/auth/login", None, Some(json!({"username": "admin", "password": ADMIN_PASSWORD}))).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=301).contains(&wait), "{wait}");
}

/// Behind a trusted proxy the limiter counts the client from `X-Forwarded-For`; from anyone
/// else the header is ignored. A name locked out by someone guessing its password still logs
/// in from where it logged in before.
#[tokio::test]
async fn the_login_limiter_counts_clients_behind_trusted_proxies_and_spares_known_addresses() {
    let p = portico(&["api.trusted_proxies=\"127.0.0.1\""]);
    let api = ApiClient::new(p.api);
    let login = |from: &'static str, username: &'static str, password: &'static str| {
        let api = api.clone();
        async move {
            let body = json!({"username": username, "password": password}).to_string();
            let headers = [("x-forwarded-for", format!("198.51.100.200, {from}"))];
            api.raw("POST", "/api/auth/login", &headers, body).await.status
        }
    };
    assert_eq!(login("192.0.2.1", "admin", ADMIN_PASSWORD).await, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(login("203.0.113.9", "admin", "guess").await, StatusCode::UNAUTHORIZED);
    }
    // The name is locked out, except from the address it logged in from before.
    assert_eq!(login("203.0.113.10", "admin", ADMIN_PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login("192.0.2.1", "admin", ADMIN_PASSWORD).await, StatusCode::OK);
    // One client's failures lock out that client, not every client behind the proxy.
    for i in 0..20 {
        let name: &'static str = Box::leak(format!("nobody{i}").into_boxed_str());
        login("203.0.113.50", name, "guess").await;
    }
    assert_eq!(login("203.0.113.50", "someone", "guess").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login("192.0.2.1", "admin", ADMIN_PASSWORD).await, StatusCode::OK);
}

#[tokio::test]
async fn json_bodies_must_say_they_are_json() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    let body = json!({"username": "admin", "password": ADMIN_PASSWORD}).to_string();
    // What a web page on another site can post without asking the browser first.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let reply =
            api.raw("POST", "/api/auth/login", &[("content-type", content_type.to_owned())], body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}: {}", reply.raw);
        assert_eq!(reply.json["name"], "UnsupportedMediaType");
    }
    let reply = api
        .raw("POST", "/api/auth/login", &[("content-type", "application/json; charset=utf-8".to_owned())], body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
}

#[tokio::test]
async fn two_admins_deleting_each_other_at_once_leave_one() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    let mut survivor = ("admin".to_owned(), api.login("admin", ADMIN_PASSWORD).await);
    for round in 0..5 {
        let name = format!("admin{round}");
        let made = api
            .call(
                "POST",
                "/api/user",
                Some(&survivor.1),
                Some(json!({"username": name, "password": "a-long-password", "role": "admin"})),
            )
            .await;
        assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
        let other = (name.clone(), api.login(&name, "a-long-password").await);
        let users = api.call("GET", "/api/user?detail=true", Some(&other.1), None).await;
        let admins = users.json["results"].as_array().unwrap().iter().filter(|u| u["role"] == "admin").count();
        assert_eq!(admins, 2, "{}", users.raw);
        let (delete_other, delete_survivor) = (format!("/api/user/{}", other.0), format!("/api/user/{}", survivor.0));
        let (a, b) = tokio::join!(
            api.call("DELETE", &delete_other, Some(&survivor.1), None),
            api.call("DELETE", &delete_survivor, Some(&other.1), None),
        );
        let left = api.call("GET", "/api/user?detail=true", Some(&other.1), None).await;
        let left = if left.status == StatusCode::OK {
            left
        } else {
            api.call("GET", "/api/user?detail=true", Some(&survivor.1), None).await
        };
        let remaining = left.json["results"].as_array().unwrap().clone();
        assert_eq!(remaining.len(), 1, "round {round}: {} / {} → {}", a.raw, b.raw, left.raw);
        assert_eq!(remaining[0]["role"], "admin");
        survivor = if remaining[0]["username"] == other.0.as_str() { other } else { survivor };
    }
}

#[tokio::test]
async fn a_short_admin_password_from_the_environment_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--set", "api.listen=\"127.0.0.1:0\""])
        .arg("--data-dir")
        .arg(dir.path())
        .env("PORTICO_ADMIN_PASSWORD", "short")
        .env_remove("PORTICO_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PORTICO_ADMIN_PASSWORD") && stderr.contains("min 8"), "{stderr}");
}

#[tokio::test]
async fn api_tokens_for_automation() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let made = api.call("POST", "/api/token", Some(&root), Some(json!({"name": "ci deploy", "days": 30}))).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    let token = made.json["token"].as_str().unwrap().to_owned();
    let id = made.json["results"]["id"].as_str().unwrap().to_owned();
    assert_ne!(token, id);
    let listed = api.call("GET", "/api/token", Some(&root), None).await;
    assert_eq!(listed.json["results"][0]["name"], "ci deploy");
    assert!(!listed.raw.contains(&token), "a token is shown only once");
    let bearer = api.raw("GET", "/api/host", &[("authorization", format!("Bearer {token}"))], String::new()).await;
    assert_eq!(bearer.status, StatusCode::OK);
    // Logging out a session does not touch API tokens.
    api.call("POST", "/api/auth/logout", Some(&root), None).await;
    assert_eq!(api.call("GET", "/api/host", Some(&token), None).await.status, StatusCode::OK);
    let revoked = api.call("DELETE", &format!("/api/token/{id}"), Some(&token), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/host", Some(&token), None).await.status, StatusCode::UNAUTHORIZED);
    let bad =
        api.call("POST", "/api/token", Some(&api.login("admin", ADMIN_PASSWORD).await), Some(json!({"days": 0}))).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn seed_bcrypt_users_log_in_and_are_rehashed() {
    let p = portico(&[]);
    let path = p.data_dir().join("portico.redb");
    let store = portico_store::EmbeddedStore::open(&path).await.unwrap();
    use portico_store::Store;
    // A user exactly as the seed's model-redis wrote it: bcrypt, no role.
    let hash = bcrypt::hash("seed-password", 4).unwrap();
    let fields = [
        ("username", "proxyuser"),
        ("password", hash.as_str()),
        ("created_by", "proxyadmin2"),
        ("created_on", "1735689600000"),
        ("updated_by", "__NONE__"),
        ("updated_on", "1735689600000"),
        ("backing", "redis"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    store.create(portico_store::Kind::User, "proxyuser", &fields).await.unwrap();
    let api = ApiClient::new(p.api);
    let token = api.login("proxyuser", "seed-password").await;
    assert_eq!(api.call("GET", "/api/user/me", Some(&token), None).await.json["role"], "admin");
    let stored = store.record(portico_store::Kind::User, "proxyuser").await.unwrap().unwrap();
    assert!(stored["password"].starts_with("$argon2id$"), "{}", stored["password"]);
    api.login("proxyuser", "seed-password").await;
}

#[tokio::test]
async fn health_and_readiness() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    assert_eq!(api.call("GET", "/healthz", None, None).await.json, json!({"status": "ok"}));
    let ready = api.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let addresses = json!({"http": p.http.to_string(), "https": p.https.to_string(), "api": p.api.to_string()});
    let routing = |generation: u64, hosts: u64| json!({"generation": generation, "hosts": hosts});
    assert_eq!(
        ready.json,
        json!({"store": true, "listeners": true, "addresses": addresses, "routing": routing(1, 0)}),
        "the first table (empty) is generation 1"
    );
    // A new host is a new table; /readyz says which this process routes by.
    p.add_host("ready.test", "127.0.0.1:9".parse().unwrap(), &[]);
    assert_eq!(api.call("GET", "/readyz", None, None).await.json["routing"], routing(2, 1));
    assert!(p.host(&["rm", "ready.test"]).status.success());
    p.wait_routed();
    assert_eq!(api.call("GET", "/readyz", None, None).await.json["routing"], routing(3, 0));
}

#[tokio::test]
async fn cli_manages_users() {
    let p = portico(&[]);
    let out = p.cli("user", &["add", "dave", "--admin"], "dave-password\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let short = p.cli("user", &["add", "erin"], "short\n");
    assert!(!short.status.success());
    // The command line makes users by the API's rules: a name the API refuses is refused.
    let spaced = p.cli("user", &["add", "erin smith"], "erin-password\n");
    let said = String::from_utf8_lossy(&spaced.stderr);
    assert!(!spaced.status.success() && said.contains("username must be 3 to 64"), "{said}");
    let api = ApiClient::new(p.api);
    let token = api.login("dave", "dave-password").await;
    assert_eq!(api.call("GET", "/api/user/me", Some(&token), None).await.json["role"], "admin");
    let ls = p.cli("user", &["ls"], "");
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(text.lines().any(|l| l.starts_with("dave") && l.ends_with("admin")), "{text}");
    let out = p.cli("user", &["passwd", "dave"], "dave-new-password\n");
    assert!(out.status.success());
    assert_eq!(api.call("GET", "/api/user/me", Some(&token), None).await.status, StatusCode::UNAUTHORIZED);
    api.login("dave", "dave-new-password").await;
}

/// Plants secrets, calls every route as admin and as user, and checks that no response body
/// and no log line contains any of them.
#[tokio::test]
async fn secrets_never_leave() {
    // Provider credentials are checked with the provider: a fake of Porkbun's API, whose
    // secret key is the planted secret.
    let fake = FakeDns::start(Provider::Porkbun, &["planted.test"]).await;
    let p = portico(&[&format!("dns.porkbun_api=\"{}\"", fake.base())]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let user_password = "planted-user-password-7";
    api.call("POST", "/api/user", r, Some(json!({"username": "frank", "password": user_password}))).await;
    let user = api.login("frank", user_password).await;
    let made = api.call("POST", "/api/token", r, Some(json!({"name": "planted"}))).await;
    let api_token = made.json["token"].as_str().unwrap().to_owned();
    api.call("POST", "/api/host", r, Some(json!({"host": "s.test", "ip": "127.0.0.1", "targetPort": 80}))).await;
    let (dns_key, dns_secret) = (dns_fake::PORKBUN_KEY, dns_fake::PORKBUN_SECRET);
    let dns = api
        .call(
            "POST",
            "/api/dns",
            r,
            Some(json!({"name": "pb", "dnsProvider": "PorkBun", "apiKey": dns_key, "secretApiKey": dns_secret})),
        )
        .await;
    let dns_id = dns.json["id"].as_str().unwrap().to_owned();
    let key_pem = rcgen::generate_simple_self_signed(vec!["s.test".to_owned()]).unwrap();
    let private_key = key_pem.signing_key.serialize_pem();
    let stored = {
        let store = crate::store_of(&p).await;
        use portico_store::Store;
        let cert =
            json!({"fullchain_pem": key_pem.cert.pem(), "cert_pem": key_pem.cert.pem(), "privkey_pem": private_key});
        store.put_blob(&portico_store::keys::cert_latest("s.test"), cert.to_string().as_bytes(), None).await.unwrap();
        // A host as the seed's later versions write it: its basic-auth password and SSO
        // secret in the record.
        let mut host = store.record(portico_store::Kind::Host, "s.test").await.unwrap().unwrap();
        host.insert("basicauth_password".into(), "planted-basic-auth-9".into());
        host.insert("sso_client_secret".into(), "planted-sso-secret-9".into());
        store.replace(portico_store::Kind::Host, "s.test", "s.test", &host).await.unwrap();
        // A DNS provider with credentials under names written straight into the store
        // (another tool's spelling): hidden by the same rule as a host's.
        let mut provider = store.record(portico_store::Kind::DnsProvider, &dns_id).await.unwrap().unwrap();
        provider.insert("api_token".into(), "planted-dns-token-9".into());
        provider.insert("password".into(), "planted-dns-password-9".into());
        provider.insert("secretapikey".into(), "planted-dns-secretapikey-9".into());
        store.replace(portico_store::Kind::DnsProvider, &dns_id, &dns_id, &provider).await.unwrap();
        store.record(portico_store::Kind::User, "frank").await.unwrap().unwrap()["password"].clone()
    };
    api.call("POST", "/api/dns/domain", r, Some(json!({"domain": "s.test", "dnsProvider_id": dns_id}))).await;
    let secrets = [
        user_password,
        ADMIN_PASSWORD,
        root.as_str(),
        user.as_str(),
        api_token.as_str(),
        stored.as_str(),
        dns_secret,
        dns_key,
        private_key.as_str(),
        "planted-basic-auth-9",
        "planted-sso-secret-9",
        "planted-dns-token-9",
        "planted-dns-password-9",
        "planted-dns-secretapikey-9",
    ];
    let planted_dns = json!({"name": "x", "dnsProvider": "PorkBun", "apiKey": dns_key, "secretApiKey": dns_secret});
    // Bodies for the writes: they leave the planted data in place, and those that must fail
    // still echo their input nowhere. Routes not named here are called without a body.
    let write_bodies: Vec<(&str, &str, Value)> = vec![
        ("PUT", "/api/dns/{id}", json!({"name": "renamed"})),
        ("POST", "/api/dns", planted_dns),
        ("POST", "/api/dns", json!({"name": "x", "dnsProvider": "PorkBun", "apiKey": dns_secret})),
        ("POST", "/api/dns/domain", json!({"domain": "s.test", "dnsProvider_id": dns_id})),
        ("PUT", "/api/host/{item}", json!({"targetPort": 81})),
        ("POST", "/api/host", json!({"host": "s.test", "ip": "127.0.0.1", "targetPort": 80})),
        ("POST", "/api/user", json!({"username": "frank", "password": user_password})),
        ("POST", "/api/token", json!({"name": user_password, "days": 0})),
        ("PUT", "/api/user/password", json!({"password": "short"})),
        ("PUT", "/api/user/password/{username}", json!({"password": user_password})),
        ("POST", "/api/auth/login", json!({"username": "frank", "password": "wrong"})),
    ];
    // Every operation of the OpenAPI document (which is the router's own list): reads first,
    // then writes, then deletes of things that do not exist, then logout.
    let doc = api.call("GET", "/api/openapi.json", None, None).await.json;
    let mut operations: Vec<(String, String, bool)> = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let detail = op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == "detail");
            operations.push((method.to_uppercase(), template.clone(), detail));
        }
    }
    assert!(operations.len() >= 30, "{operations:?}");
    let phase = |method: &str, template: &str| match (template, method) {
        ("/api/auth/logout", _) => 3,
        (_, "GET" | "OPTIONS" | "HEAD") => 0,
        (_, "DELETE") => 2,
        _ => 1,
    };
    operations.sort_by_key(|(m, t, _)| phase(m, t));
    let mut routes: Vec<(String, String, Option<Value>)> = Vec::new();
    for (method, template, detail) in &operations {
        let deleting = method == "DELETE";
        let path = template
            .replace("{id}", if deleting { "0000000000000000" } else { &dns_id })
            .replace("{item}", if deleting { "nothing.test" } else { "s.test" })
            .replace("{host}", "s.test")
            .replace("{domain}", if deleting { "nothing.test" } else { "a.s.test" })
            .replace("{username}", "nobody");
        assert!(!path.contains('{'), "no value for a parameter of {template}");
        let bodies: Vec<Option<Value>> = write_bodies
            .iter()
            .filter(|(m, t, _)| m == method && t == template)
            .map(|(_, _, b)| Some(b.clone()))
            .collect();
        for body in if bodies.is_empty() { vec![None] } else { bodies } {
            routes.push((method.clone(), path.clone(), body));
        }
        if *detail {
            routes.push((method.clone(), format!("{path}?detail=true"), None));
        }
    }
    for (method, template, _) in &write_bodies {
        assert!(operations.iter().any(|(m, t, _)| m == method && t == template), "{method} {template} is gone");
    }
    // The live events, which carry every record written below, are read while it happens.
    let mut events = Vec::new();
    for token in [root.as_str(), user.as_str()] {
        let (status, _, stream) = api.stream("/api/events", Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        events.push(stream);
    }
    routes.retain(|(method, path, _)| !(method == "GET" && path == "/api/events"));
    let mut bodies = Vec::new();
    for token in [root.as_str(), user.as_str()] {
        for (method, path, body) in &routes {
            let reply = api.call(method, path, Some(token), body.clone()).await;
            // The one documented export of a private key: the seed's certificate download,
            // for admins, logged (`certificate_downloads_read_the_seed_fields`). It is
            // checked there; everywhere else the key must not appear.
            if token == root && method == "GET" && path == "/api/cert/s.test" {
                assert_eq!(reply.json["privkey_pem"], private_key.as_str());
                continue;
            }
            bodies.push(reply.raw);
        }
    }
    let mut streamed = 0;
    for mut stream in events {
        while let Ok(chunk) = stream.try_recv() {
            streamed += chunk.matches("model:").count();
            bodies.push(chunk);
        }
    }
    assert!(streamed > 0, "the live events were read");
    let logs: Vec<String> = p.logs().iter().map(|l| l.to_string()).collect();
    for secret in secrets {
        // Multi-line secrets (private keys) appear JSON-escaped in bodies and log lines.
        let escaped = serde_json::to_string(secret).unwrap();
        let escaped = escaped.trim_matches('"');
        for text in bodies.iter().chain(&logs) {
            assert!(!text.contains(secret) && !text.contains(escaped), "a secret left: {text}");
        }
    }
}

#[tokio::test]
async fn dns_providers_and_domains() {
    // A fake of Cloudflare's API, which has one zone.
    let fake = FakeDns::start(Provider::Cloudflare, &["synced.test"]).await;
    let p = portico(&[&format!("dns.cloudflare_api=\"{}\"", fake.base())]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let types = api.call("OPTIONS", "/api/dns", r, None).await;
    assert_eq!(types.status, StatusCode::OK, "{}", types.raw);
    let names: Vec<&str> =
        types.json["results"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["Cloudflare", "DigitalOcean", "PorkBun", "RFC2136", "Webhook", "Exec", "AcmeDns"]);
    assert!(types.json["results"][6]["fields"]["password"]["isPrivate"].as_bool().unwrap());
    assert!(!types.json["results"][5]["fields"]["program"]["isPrivate"].as_bool().unwrap());
    assert!(types.json["results"][2]["fields"]["secretApiKey"]["isPrivate"].as_bool().unwrap());
    assert!(types.json["results"][3]["fields"]["secret"]["isPrivate"].as_bool().unwrap());
    assert!(!types.json["results"][3]["fields"]["server"]["isPrivate"].as_bool().unwrap());

    // Credentials the provider refuses: 422 with its complaint, and nothing stored.
    let refused = api
        .call("POST", "/api/dns", r, Some(json!({"name": "bad", "dnsProvider": "Cloudflare", "token": "wrong-token"})))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
    assert_eq!(refused.json["keys"][0]["key"], "token");
    assert!(refused.raw.contains("Authentication error"), "the provider's complaint: {}", refused.raw);
    assert!(!refused.raw.contains("wrong-token"));
    assert_eq!(api.call("GET", "/api/dns", r, None).await.json["results"], json!([]));

    // Cloudflare's legacy e-mail and Global API Key instead of a token.
    let legacy = json!({"name": "legacy", "dnsProvider": "Cloudflare", "email": dns_fake::CLOUDFLARE_EMAIL, "apiKey": dns_fake::CLOUDFLARE_GLOBAL_KEY});
    let legacy = api.call("POST", "/api/dns", r, Some(legacy)).await;
    assert_eq!(legacy.status, StatusCode::OK, "{}", legacy.raw);
    assert!(!legacy.raw.contains(dns_fake::CLOUDFLARE_GLOBAL_KEY));
    let legacy_id = legacy.json["id"].as_str().unwrap().to_owned();
    assert_eq!(api.call("DELETE", &format!("/api/dns/{legacy_id}"), r, None).await.status, StatusCode::OK);
    let neither = api.call("POST", "/api/dns", r, Some(json!({"name": "x", "dnsProvider": "Cloudflare"}))).await;
    assert_eq!(neither.json["keys"][0]["key"], "token", "{}", neither.raw);

    let secret = dns_fake::CLOUDFLARE_TOKEN;
    let made = api
        .call("POST", "/api/dns", r, Some(json!({"name": "main", "dnsProvider": "Cloudflare", "token": secret})))
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    let id = made.json["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);
    assert_eq!(made.json["message"], format!("\"{id}\" added."));
    // Its zones are linked as domains at once.
    assert_eq!(made.json["domains"], json!(["synced.test"]));
    assert_eq!(
        api.call("GET", "/api/dns/domain/x.synced.test", r, None).await.json["results"][0]["dnsProvider_id"],
        id
    );
    let missing =
        api.call("POST", "/api/dns", r, Some(json!({"name": "pb", "dnsProvider": "PorkBun", "apiKey": "pk1"}))).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.json["keys"][0]["key"], "secretApiKey");
    assert!(!missing.raw.contains("pk1"));
    let unknown = api.call("POST", "/api/dns", r, Some(json!({"name": "x", "dnsProvider": "Route53"}))).await;
    assert_eq!(unknown.json["keys"][0]["key"], "dnsProvider");

    let detail = api.call("GET", "/api/dns?detail=true", r, None).await;
    assert_eq!(detail.json["results"][0]["displayName"], "CloudFlare");
    let one = api.call("GET", &format!("/api/dns/{id}"), r, None).await;
    assert_eq!(one.json["results"]["name"], "main");
    // A new token is checked too: one the provider refuses changes nothing.
    let rotated = api
        .call("PUT", &format!("/api/dns/{id}"), r, Some(json!({"name": "primary", "token": "rotated-token-456"})))
        .await;
    assert_eq!(rotated.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", rotated.raw);
    assert_eq!(api.call("GET", &format!("/api/dns/{id}"), r, None).await.json["results"]["name"], "main");
    let renamed =
        api.call("PUT", &format!("/api/dns/{id}"), r, Some(json!({"name": "primary", "token": secret}))).await;
    assert_eq!(renamed.json["name"], "primary");
    for reply in [&made, &detail, &one, &renamed, &rotated] {
        assert!(!reply.raw.contains(secret) && !reply.raw.contains("rotated-token-456"), "{}", reply.raw);
    }

    let domain = api
        .call(
            "POST",
            "/api/dns/domain",
            r,
            Some(json!({"domain": "Example.Test", "dnsProvider_id": id, "zoneId": "z1"})),
        )
        .await;
    assert_eq!(domain.status, StatusCode::OK, "{}", domain.raw);
    let dup =
        api.call("POST", "/api/dns/domain", r, Some(json!({"domain": "example.test", "dnsProvider_id": id}))).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let orphan =
        api.call("POST", "/api/dns/domain", r, Some(json!({"domain": "other.test", "dnsProvider_id": "nope"}))).await;
    assert_eq!(orphan.json["keys"][0]["key"], "dnsProvider_id");
    let found = api.call("GET", "/api/dns/domain/a.b.example.test", r, None).await;
    assert_eq!(found.json["results"][0]["domain"], "example.test");
    assert_eq!(api.call("GET", "/api/dns/domain/example.org", r, None).await.status, StatusCode::NOT_FOUND);
    // A refresh links what the provider has and unlinks what it no longer has; a domain
    // linked by hand to a zone the provider does not have is the provider's no longer.
    let refresh = api.call("POST", &format!("/api/dns/domain/refresh/{id}"), r, None).await;
    assert_eq!(refresh.status, StatusCode::OK, "{}", refresh.raw);
    assert_eq!(refresh.json["results"]["domains"], json!(["synced.test"]));
    assert_eq!(refresh.json["results"]["removed"], json!(["example.test"]));
    fake.set_down(true);
    let down = api.call("POST", &format!("/api/dns/domain/refresh/{id}"), r, None).await;
    assert_eq!(down.status, StatusCode::FAILED_DEPENDENCY, "{}", down.raw);
    assert_eq!(down.json["name"], "OtherDnsApiError");
    assert!(down.raw.contains("service temporarily unavailable"), "{}", down.raw);
    fake.set_down(false);

    // Users may read, not write.
    api.call("POST", "/api/user", r, Some(json!({"username": "gina", "password": "gina-password"}))).await;
    let gina = api.login("gina", "gina-password").await;
    assert_eq!(api.call("GET", "/api/dns", Some(&gina), None).await.status, StatusCode::OK);
    let denied = api
        .call("POST", "/api/dns", Some(&gina), Some(json!({"name": "x", "dnsProvider": "Cloudflare", "token": "t"})))
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    let deleted = api.call("DELETE", &format!("/api/dns/{id}"), r, None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let domains = api.call("GET", "/api/dns/domain", r, None).await;
    assert_eq!(domains.json["results"], json!([]), "deleting a provider removes its domains");
}

#[tokio::test]
async fn certificate_metadata_and_logged_key_export() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    // A certificate as lua-resty-auto-ssl (and so the seed) stored it: `<name>:latest` JSON.
    let cert = rcgen::generate_simple_self_signed(vec!["app.example.test".to_owned()]).unwrap();
    let key_pem = cert.signing_key.serialize_pem();
    let stored = json!({"fullchain_pem": cert.cert.pem(), "cert_pem": cert.cert.pem(), "privkey_pem": key_pem, "expiry": 4_102_444_800u64});
    {
        let store = crate::store_of(&p).await;
        use portico_store::Store;
        let blob = stored.to_string();
        store.put_blob(&portico_store::keys::cert_latest("app.example.test"), blob.as_bytes(), None).await.unwrap();
    }
    api.call("POST", "/api/user", Some(&root), Some(json!({"username": "henry", "password": "henry-password"}))).await;
    let henry = api.login("henry", "henry-password").await;

    let meta = api.call("GET", "/api/cert/App.Example.Test", Some(&henry), None).await;
    assert_eq!(meta.status, StatusCode::OK, "{}", meta.raw);
    let results = &meta.json["results"];
    assert_eq!(results["names"], json!(["app.example.test"]));
    assert_eq!(results["status"], "valid");
    assert!(results["not_after"].as_i64().unwrap() > results["not_before"].as_i64().unwrap());
    assert!(results["issuer"].as_str().unwrap().contains("rcgen"));
    assert!(!meta.raw.contains("PRIVATE KEY"), "metadata must not carry the key");

    let denied = api.call("GET", "/api/cert/app.example.test?include_private_key=true", Some(&henry), None).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(!denied.raw.contains("PRIVATE KEY"));
    let exported = api.call("GET", "/api/cert/app.example.test?include_private_key=true", Some(&root), None).await;
    assert_eq!(exported.json["results"]["privkey_pem"], key_pem);
    let logged = p.logged("private key exported through the API").await;
    assert_eq!(logged["fields"]["username"], "admin");
    assert!(!logged.to_string().contains("PRIVATE KEY"));

    let missing = api.call("GET", "/api/cert/none.example.test", Some(&root), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["name"], "EntryNotFound");
}

/// Host updates are compare-and-set: `ETag`/`If-Match` for clients that want to know (412
/// when someone changed the host since it was read), and for the rest concurrent updates of
/// different fields both land instead of one silently overwriting the other.
#[tokio::test]
async fn host_updates_are_compare_and_set() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let host = json!({"host": "cas.example.test", "ip": "127.0.0.1", "targetPort": 8000, "forcessl": false});
    assert_eq!(api.call("POST", "/api/host", r, Some(host)).await.status, StatusCode::OK);
    let read = api.call("GET", "/api/host/cas.example.test", r, None).await;
    let tag = read.headers["etag"].to_str().unwrap().to_owned();
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");

    let put = |if_match: Option<String>, body: Value| {
        let (api, root) = (api.clone(), root.clone());
        async move {
            let mut headers = vec![("auth-token", root)];
            if let Some(tag) = if_match {
                headers.push(("if-match", tag));
            }
            api.raw("PUT", "/api/host/cas.example.test", &headers, body.to_string()).await
        }
    };
    let updated = put(Some(tag.clone()), json!({"targetPort": 8001})).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.raw);
    let new_tag = updated.headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_tag, tag);
    // A client still holding the first ETag lost the race: 412, and nothing changes.
    let lost = put(Some(tag), json!({"targetPort": 9999})).await;
    assert_eq!(lost.status, StatusCode::PRECONDITION_FAILED, "{}", lost.raw);
    assert_eq!(lost.json["name"], "PreconditionFailed");
    let now = api.call("GET", "/api/host/cas.example.test", r, None).await;
    assert_eq!(now.json["results"]["targetPort"], 8001);
    assert_eq!(now.headers["etag"].to_str().unwrap(), new_tag);

    // Seed clients send no If-Match: two updates of different fields at once both land.
    for round in 0..10u16 {
        let port = 8100 + round;
        let forcessl = round % 2 == 0;
        let (a, b) = tokio::join!(put(None, json!({"targetPort": port})), put(None, json!({"forcessl": forcessl})));
        assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK), "{} / {}", a.raw, b.raw);
        let now = api.call("GET", "/api/host/cas.example.test", r, None).await;
        assert_eq!(now.json["results"]["targetPort"], port, "round {round}: {}", now.raw);
        assert_eq!(now.json["results"]["forcessl"], forcessl, "round {round}: {}", now.raw);
    }
}

/// DNS provider updates are compare-and-set too, and an update racing a deletion does not
/// bring the provider back.
#[tokio::test]
async fn dns_provider_updates_are_compare_and_set() {
    let fake = FakeDns::start(Provider::Cloudflare, &[]).await;
    let p = portico(&[&format!("dns.cloudflare_api=\"{}\"", fake.base())]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let body = json!({"name": "a", "dnsProvider": "Cloudflare", "token": dns_fake::CLOUDFLARE_TOKEN});
    let made = api.call("POST", "/api/dns", r, Some(body)).await;
    let id = made.json["id"].as_str().unwrap().to_owned();
    let path = format!("/api/dns/{id}");
    let tag = api.call("GET", &path, r, None).await.headers["etag"].to_str().unwrap().to_owned();
    let put = |tag: &str, name: &str| {
        let headers = [("auth-token", root.clone()), ("if-match", tag.to_owned())];
        let body = json!({ "name": name }).to_string();
        let (api, path) = (api.clone(), path.clone());
        async move { api.raw("PUT", &path, &headers, body).await }
    };
    let first = put(&tag, "b").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.raw);
    let stale = put(&tag, "c").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{}", stale.raw);
    assert_eq!(api.call("GET", &path, r, None).await.json["results"]["name"], "b");
    assert_eq!(api.call("DELETE", &path, r, None).await.status, StatusCode::OK);
    let after = put("*", "d").await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{}", after.raw);
    assert_eq!(api.call("GET", &path, r, None).await.status, StatusCode::NOT_FOUND, "not brought back");
}
