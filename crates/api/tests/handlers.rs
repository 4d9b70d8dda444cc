//! The API's handlers in process (`Router::oneshot`, no sockets): the rules a client meets
//! when it writes users, hosts, DNS providers and domains, each bad field reported at once,
//! in the seed's error shape.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

use common::{ADMIN_PASSWORD, Api};

#[tokio::test]
async fn a_new_user_is_checked_field_by_field_and_shown_without_its_password() {
    let api = Api::new().await;
    let bad = api.call("POST", "/api/user", json!({"username": "a b", "password": "short", "role": "root"})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json["name"], "ObjectValidateError");
    assert_eq!(bad.keys(), ["role", "username", "password"], "{}", bad.json);
    assert!(bad.json["keys"].as_array().unwrap().iter().all(|k| k["message"].as_str().unwrap().ends_with('.')));
    let made = api.call("POST", "/api/user", json!({"username": "bob", "password": "bob-password"})).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.json);
    assert_eq!((made.json["username"].as_str(), made.json["role"].as_str()), (Some("bob"), Some("user")));
    assert!(made.json.get("password").is_none(), "{}", made.json);
    assert_eq!(made.json["created_by"], "admin");
    let again = api.call("POST", "/api/user", json!({"username": "bob", "password": "bob-password"})).await;
    assert_eq!((again.status, again.keys()), (StatusCode::CONFLICT, vec!["username"]));
}

#[tokio::test]
async fn the_last_admin_stays_and_ones_own_password_needs_the_current_one() {
    let api = Api::new().await;
    let last = api.call("DELETE", "/api/user/admin", Value::Null).await;
    assert_eq!((last.status, last.keys()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["username"]));
    let without = api.call("PUT", "/api/user/password", json!({"password": "new-password-1"})).await;
    assert_eq!((without.status, without.keys()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["current_password"]));
    let wrong = api
        .call("PUT", "/api/user/password", json!({"current_password": "nope-nope", "password": "new-password-1"}))
        .await;
    assert_eq!((wrong.status, wrong.keys()), (StatusCode::UNPROCESSABLE_ENTITY, vec!["current_password"]));
    // The name earlier versions documented still works, and errors name it back.
    let wrong = api
        .call("PUT", "/api/user/password", json!({"currentPassword": "nope-nope", "password": "new-password-1"}))
        .await;
    assert_eq!(wrong.keys(), ["currentPassword"]);
    let body = json!({"current_password": ADMIN_PASSWORD, "password": "new-password-1"});
    let changed = api.call("PUT", "/api/user/password", body).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.json);
    assert_eq!(changed.json["results"]["updated_by"], "admin");
    // The session that changed it goes on; a login with the old password does not.
    assert_eq!(api.call("GET", "/api/user/me", Value::Null).await.status, StatusCode::OK);
    let old = api.call("POST", "/api/auth/login", json!({"username": "admin", "password": ADMIN_PASSWORD})).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_new_host_reports_every_bad_field_and_an_update_needs_the_revision_it_read() {
    let api = Api::new().await;
    let bad = api.call("POST", "/api/host", json!({"host": "bad host", "targetPort": 0, "forcessl": "maybe"})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let keys = bad.keys();
    for key in ["host", "ip", "targetPort", "forcessl"] {
        assert!(keys.contains(&key), "{key} not reported: {}", bad.json);
    }
    let made = api.call("POST", "/api/host", json!({"host": "app.test", "ip": "127.0.0.1", "targetPort": 8080})).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.json);
    let mut request = Request::builder()
        .method("PUT")
        .uri("/api/host/app.test")
        .header("content-type", "application/json")
        .header("auth-token", &api.token)
        .header("if-match", "\"0-stale\"")
        .body(Body::from(json!({"targetPort": 9090}).to_string()))
        .unwrap();
    request.extensions_mut().insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
    let stale = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let shown = api.call("GET", "/api/host/app.test", Value::Null).await;
    assert_eq!(shown.json["results"]["targetPort"], 8080, "a refused update changes nothing: {}", shown.json);
}

#[tokio::test]
async fn dns_providers_and_domains_are_checked_before_anything_is_stored() {
    let api = Api::new().await;
    let bad = api.call("POST", "/api/dns", json!({"dnsProvider": "Route53", "propagationTimeout": 0})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.keys(), ["name", "dnsProvider", "propagationTimeout"], "{}", bad.json);
    let missing = api.call("POST", "/api/dns", json!({"name": "pb", "dnsProvider": "PorkBun", "apiKey": "k"})).await;
    assert_eq!(missing.keys(), ["secretApiKey"], "{}", missing.json);
    let listed = api.call("GET", "/api/dns", Value::Null).await;
    assert_eq!(listed.json["results"], json!([]), "nothing stored");
    let orphan = api.call("POST", "/api/dns/domain", json!({"domain": "bad name", "dnsProvider_id": "nope"})).await;
    assert_eq!(orphan.keys(), ["domain", "dnsProvider_id"], "{}", orphan.json);
    let types = api.call("OPTIONS", "/api/dns", Value::Null).await;
    let names: Vec<&str> =
        types.json["results"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["Cloudflare", "DigitalOcean", "PorkBun", "RFC2136", "Webhook", "Exec", "AcmeDns"]);
}

#[tokio::test]
async fn a_user_token_cannot_do_an_admins_work() {
    let api = Api::new().await;
    api.call("POST", "/api/user", json!({"username": "carol", "password": "carol-password"})).await;
    let login = api.call("POST", "/api/auth/login", json!({"username": "carol", "password": "carol-password"})).await;
    let carol = login.json["token"].as_str().unwrap().to_owned();
    let made = api.call_as(&carol, "POST", "/api/user", json!({"username": "dave", "password": "dave-password"})).await;
    assert_eq!((made.status, made.json["name"].as_str()), (StatusCode::FORBIDDEN, Some("Forbidden")));
    let host = json!({"host": "carol.test", "ip": "127.0.0.1", "targetPort": 80});
    assert_eq!(api.call_as(&carol, "POST", "/api/host", host).await.status, StatusCode::OK, "users manage hosts");
    assert_eq!(api.call_as("no-such-token", "GET", "/api/host", Value::Null).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_change_is_audited_with_field_names_never_values_and_the_log_is_bounded() {
    let api = Api::new().await;
    let host = json!({"host": "app.test", "ip": "127.0.0.1", "targetPort": 8080,
        "basicAuth": [{"username": "ann", "password": "ann-secret-password"}]});
    assert_eq!(api.call("POST", "/api/host", host).await.status, StatusCode::OK);
    assert_eq!(api.call("PUT", "/api/host/app.test", json!({"targetPort": 8081})).await.status, StatusCode::OK);
    // A refused change is not one.
    assert_eq!(
        api.call("PUT", "/api/host/app.test", json!({"targetPort": "x"})).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let erin = json!({"username": "erin", "password": "erin-secret-password"});
    assert_eq!(api.call("POST", "/api/user", erin).await.status, StatusCode::OK);
    assert_eq!(api.call("DELETE", "/api/host/app.test", Value::Null).await.status, StatusCode::OK);

    let log = api.call("GET", "/api/audit", Value::Null).await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.json);
    let entries = log.json["results"].as_array().unwrap();
    let said: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["kind"].as_str().unwrap(), e["key"].as_str().unwrap()))
        .collect();
    // Newest first: the sign-in the harness made is the oldest.
    assert_eq!(
        said,
        [
            ("delete", "Host", "app.test"),
            ("create", "User", "erin"),
            ("update", "Host", "app.test"),
            ("create", "Host", "app.test"),
            ("login", "Session", "")
        ]
    );
    assert!(entries.iter().all(|e| e["user"] == "admin" && e["address"] == "127.0.0.1"), "{}", log.json);
    assert_eq!(entries[3]["changes"], json!(["basicAuth", "host", "ip", "targetPort"]));
    assert!(!log.json.to_string().contains("secret-password"), "no value is recorded: {}", log.json);
    let times: Vec<u64> = entries.iter().map(|e| e["time"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Filters, and admins only.
    let users = api.call("GET", "/api/audit?kind=User", Value::Null).await;
    assert_eq!(users.json["results"].as_array().unwrap().len(), 1);
    let one = api.call("GET", "/api/audit?limit=1", Value::Null).await;
    assert_eq!(one.json["results"][0]["action"], "delete");
    let login =
        api.call("POST", "/api/auth/login", json!({"username": "erin", "password": "erin-secret-password"})).await;
    let erin = login.json["token"].as_str().unwrap().to_owned();
    assert_eq!(api.call_as(&erin, "GET", "/api/audit", Value::Null).await.status, StatusCode::FORBIDDEN);
    let by_erin = api.call("GET", "/api/audit?user=erin", Value::Null).await;
    assert_eq!(by_erin.json["results"][0]["action"], "login", "{}", by_erin.json);

    // The bound: the newest entries stay.
    let removed = portico_api::audit::prune(api.store.as_ref(), 3, 0).await.unwrap();
    assert_eq!(removed, 3, "six entries, three kept");
    let kept = api.call("GET", "/api/audit", Value::Null).await;
    let kept: Vec<&str> =
        kept.json["results"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(kept, ["login", "delete", "create"], "the three newest (the log call itself is no change)");
}

#[tokio::test]
async fn a_stream_update_needs_the_revision_it_read_and_two_writes_cannot_take_one_address() {
    let api = Api::new().await;
    let stream =
        |port: u16| json!({"listen": format!("127.0.0.1:{port}"), "targets": [{"ip": "127.0.0.1", "port": 5432}]});
    // Two creates for one address at once: one is refused, one stream stored.
    let (a, b) =
        tokio::join!(api.call("POST", "/api/stream", stream(15432)), api.call("POST", "/api/stream", stream(15432)));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNPROCESSABLE_ENTITY], "{} {}", a.json, b.json);
    let listed = api.call("GET", "/api/stream", Value::Null).await;
    assert_eq!(listed.json["results"].as_array().unwrap().len(), 1, "{}", listed.json);
    // Two updates moving two streams onto one address at once: one is refused.
    let other = api.call("POST", "/api/stream", stream(15433)).await;
    let third = api.call("POST", "/api/stream", stream(15434)).await;
    let ids = [&other, &third].map(|x| x.json["id"].as_str().unwrap().to_owned());
    let moved = json!({"listen": "127.0.0.1:15435"});
    let paths = ids.map(|id| format!("/api/stream/{id}"));
    let (a, b) = tokio::join!(api.call("PUT", &paths[0], moved.clone()), api.call("PUT", &paths[1], moved.clone()));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNPROCESSABLE_ENTITY], "{} {}", a.json, b.json);

    // The revision read is the one updated, or 412 and nothing changes.
    let path = &paths[0];
    let read = api.call("GET", path, Value::Null).await;
    let etag = read.etag.clone().expect("an ETag");
    let first = api.call_headed(&[("if-match", &etag)], "PUT", path, json!({"balance": "least_conn"})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    assert!(first.etag.is_some_and(|e| e != etag), "a new revision");
    let stale = api.call_headed(&[("if-match", &etag)], "PUT", path, json!({"balance": "ip_hash"})).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{}", stale.json);
    let shown = api.call("GET", path, Value::Null).await;
    assert_eq!(shown.json["results"]["balance"], "least_conn", "a refused update changes nothing: {}", shown.json);
}
