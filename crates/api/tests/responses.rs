//! Every documented success answer against the live one: each operation of the OpenAPI
//! document is called in process with a request that succeeds, and its JSON body is checked
//! against the schema the document gives for that status (types, required fields, nested
//! records), so the document cannot drift from what the handlers send.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::Api;
use http::StatusCode;
use portico_certs::internal::InternalCa;
use portico_certs::status::CertState;
use portico_certs::{Issuer, NoProgress, Plan};
use portico_store::Kind;
use serde_json::{Value, json};

/// Operations not called here, and why: each needs a service outside the process (a DNS
/// provider's API, a CA) or a live stream. The integration tests call them against fakes
/// and real CAs.
const NOT_CALLED: [(&str, &str, &str); 4] = [
    ("post", "/api/dns", "checks the credentials with the provider's API"),
    ("post", "/api/dns/domain/refresh/{id}", "lists the provider's zones through its API"),
    ("put", "/api/host/{item}/renew", "issues from a CA"),
    ("get", "/api/events", "a server-sent event stream, not a JSON body"),
];

/// The schema `reference` names (`#/components/schemas/X`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let name = reference.strip_prefix("#/components/schemas/").unwrap();
    &doc["components"]["schemas"][name]
}

/// Whether `value` is of the JSON type `kind`.
fn is_type(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

/// Where `value` breaks `schema`, one line each (`at` names the place).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return check(doc, resolve(doc, reference), value, at, problems);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let fits = branches.iter().any(|branch| {
                let mut none = Vec::new();
                check(doc, branch, value, at, &mut none);
                none.is_empty()
            });
            if !fits {
                problems.push(format!("{at}: {value} fits none of {key}"));
            }
            return;
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(doc, part, value, at, problems);
        }
    }
    let kinds: Vec<&str> = match schema.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !kinds.is_empty() && !kinds.iter().any(|kind| is_type(value, kind)) {
        problems.push(format!("{at}: {value} is not {kinds:?}"));
        return;
    }
    if let (Some(object), Some(properties)) = (value.as_object(), schema.get("properties")) {
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                problems.push(format!("{at}: required {name} is missing from {value}"));
            }
        }
        for (name, field) in object {
            if let Some(property) = properties.get(name) {
                check(doc, property, field, &format!("{at}.{name}"), problems);
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, schema, item, &format!("{at}[{i}]"), problems);
        }
    }
}

/// The schema documented for `method path` answering `status`, if any.
fn documented<'a>(doc: &'a Value, method: &str, template: &str, status: StatusCode) -> Option<&'a Value> {
    let response = &doc["paths"][template][method]["responses"][status.as_str()];
    response.get("content")?.get("application/json")?.get("schema")
}

struct Calls {
    api: Api,
    doc: Value,
    called: BTreeSet<(String, String)>,
    problems: Vec<String>,
}

impl Calls {
    /// Calls `method path` (an instance of `template`) with `body`, expecting `status`, and
    /// checks the answer against the documented schema for it.
    async fn call(&mut self, method: &str, template: &str, path: &str, body: Value, status: StatusCode) -> Value {
        let token = self.api.token.clone();
        self.call_as(&token, method, template, path, body, status).await
    }

    /// [`Calls::call`] with another token.
    async fn call_as(
        &mut self,
        token: &str,
        method: &str,
        template: &str,
        path: &str,
        body: Value,
        status: StatusCode,
    ) -> Value {
        let answer = self.api.call_as(token, &method.to_uppercase(), path, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.json);
        match documented(&self.doc, method, template, status) {
            Some(schema) => check(&self.doc, schema, &answer.json, &format!("{method} {template}"), &mut self.problems),
            None => self.problems.push(format!("{method} {template}: {status} has no documented JSON body")),
        }
        self.called.insert((method.to_owned(), template.to_owned()));
        answer.json
    }
}

#[tokio::test]
async fn every_documented_answer_is_the_live_one() {
    let doc = serde_json::to_value(portico_api::openapi_document()).unwrap();
    let mut c = Calls { api: Api::new().await, doc, called: BTreeSet::new(), problems: Vec::new() };
    let ok = StatusCode::OK;
    // Health and the caller.
    c.call("get", "/healthz", "/healthz", Value::Null, ok).await;
    // Not ready in process: no listener is bound (a serving node's is checked end to end).
    c.call("get", "/readyz", "/readyz", Value::Null, StatusCode::SERVICE_UNAVAILABLE).await;
    c.call("get", "/api/stats", "/api/stats", Value::Null, ok).await;
    c.call("get", "/api/user/me", "/api/user/me", Value::Null, ok).await;
    let login = json!({"username": "admin", "password": common::ADMIN_PASSWORD});
    c.call("post", "/api/auth/login", "/api/auth/login", login, ok).await;
    // Users.
    let user = json!({"username": "erin", "password": "erin-password"});
    c.call("post", "/api/user", "/api/user", user, ok).await;
    c.call("get", "/api/user", "/api/user", Value::Null, ok).await;
    c.call("get", "/api/user", "/api/user?detail", Value::Null, ok).await;
    let password = json!({"password": "erin-password-2"});
    c.call("put", "/api/user/password/{username}", "/api/user/password/erin", password, ok).await;
    // Tokens.
    let made = c.call("post", "/api/token", "/api/token", json!({"name": "ci", "days": 2}), ok).await;
    c.call("get", "/api/token", "/api/token", Value::Null, ok).await;
    let id = made["results"]["id"].as_str().unwrap().to_owned();
    c.call("delete", "/api/token/{id}", &format!("/api/token/{id}"), Value::Null, ok).await;
    // Hosts.
    let host = json!({"host": "app.test", "ip": "127.0.0.1", "targetPort": 8080, "basicAuth": [
        {"username": "ann", "password": "ann-password"}], "healthCheck": {"path": "/up"}});
    c.call("post", "/api/host", "/api/host", host, ok).await;
    c.call("get", "/api/host", "/api/host", Value::Null, ok).await;
    c.call("get", "/api/host", "/api/host?detail", Value::Null, ok).await;
    c.call("get", "/api/host/{item}", "/api/host/app.test", Value::Null, ok).await;
    c.call("put", "/api/host/{item}", "/api/host/app.test", json!({"targetPort": 8081}), ok).await;
    // A certificate for it, from the internal CA, stored as an issuance stores one.
    let ca = InternalCa::new(c.api.store.clone(), std::time::Duration::from_secs(86_400));
    let issued = ca.issue(&Plan::single("app.test"), &NoProgress).await.unwrap();
    c.api.store.put_blob(&portico_store::keys::cert_latest("app.test"), &issued.to_json(), None).await.unwrap();
    let state = CertState { issuer: "internal".into(), failures: 1, last_error: "once".into(), ..CertState::default() };
    c.api.store.put(Kind::Cert, "app.test", &state.to_fields()).await.unwrap();
    let cert = c.call("get", "/api/cert/{host}", "/api/cert/app.test", Value::Null, ok).await;
    assert_eq!(cert["results"]["names"], json!(["app.test"]), "{cert}");
    assert!(cert["privkey_pem"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")), "an admin's plain request");
    let without = "/api/cert/app.test?include_private_key=false";
    let cert = c.call("get", "/api/cert/{host}", without, Value::Null, ok).await;
    assert!(cert.get("privkey_pem").is_none() && cert["results"].get("privkey_pem").is_none(), "{cert}");
    assert_eq!((cert["results"]["failures"].as_u64(), cert["results"]["last_error"].as_str()), (Some(1), Some("once")));
    // The list: every managed certificate, no PEM in it.
    let all = c.call("get", "/api/cert", "/api/cert", Value::Null, ok).await;
    assert_eq!(all["results"][0]["host"], "app.test", "{all}");
    assert_eq!(all["results"][0]["names"], json!(["app.test"]), "{all}");
    assert!(!all.to_string().contains("BEGIN"), "no PEM in the list: {all}");
    // An uploaded certificate, and back to automatic.
    let company = portico_certs::testing::TestCa::root("Company Root");
    let (leaf, key) = company.leaf(&["upload.test"], -60, 86_400);
    let upload = json!({"fullchain_pem": leaf, "privkey_pem": key});
    let uploaded = c.call("put", "/api/cert/{host}", "/api/cert/upload.test", upload, ok).await;
    assert_eq!(uploaded["results"]["source"], "uploaded", "{uploaded}");
    c.call("delete", "/api/cert/{host}", "/api/cert/upload.test", Value::Null, ok).await;
    // A stream.
    let stream = json!({"listen": "127.0.0.1:45999", "targets": [{"ip": "127.0.0.1", "port": 5432}]});
    let made = c.call("post", "/api/stream", "/api/stream", stream, ok).await;
    let stream_path = format!("/api/stream/{}", made["id"].as_str().unwrap());
    c.call("get", "/api/stream", "/api/stream", Value::Null, ok).await;
    c.call("get", "/api/stream/{id}", &stream_path, Value::Null, ok).await;
    c.call("put", "/api/stream/{id}", &stream_path, json!({"balance": "first"}), ok).await;
    c.call("delete", "/api/stream/{id}", &stream_path, Value::Null, ok).await;
    c.call("get", "/api/host/lookup/{item}", "/api/host/lookup/app.test", Value::Null, ok).await;
    c.call("get", "/api/host/lookupobj", "/api/host/lookupobj", Value::Null, ok).await;
    // DNS: a provider account as the store holds one (adding one checks its credentials with
    // the provider), then its zones.
    let provider = [
        ("id", "p1"),
        ("name", "do"),
        ("dnsProvider", "DigitalOcean"),
        ("token", "secret"),
        ("created_by", "admin"),
        ("created_on", "1700000000000"),
        ("updated_by", "__NONE__"),
        ("updated_on", "1700000000000"),
    ];
    let fields = provider.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    c.api.store.create(Kind::DnsProvider, "p1", &fields).await.unwrap();
    c.call("options", "/api/dns", "/api/dns", Value::Null, ok).await;
    c.call("get", "/api/dns", "/api/dns?detail", Value::Null, ok).await;
    c.call("get", "/api/dns/{id}", "/api/dns/p1", Value::Null, ok).await;
    c.call("put", "/api/dns/{id}", "/api/dns/p1", json!({"name": "renamed"}), ok).await;
    let zone = json!({"domain": "zone.test", "dnsProvider_id": "p1", "zoneId": "z1"});
    c.call("post", "/api/dns/domain", "/api/dns/domain", zone, ok).await;
    c.call("get", "/api/dns/domain", "/api/dns/domain?detail", Value::Null, ok).await;
    c.call("get", "/api/dns/domain/{domain}", "/api/dns/domain/www.zone.test", Value::Null, ok).await;
    c.call("delete", "/api/dns/domain/{domain}", "/api/dns/domain/zone.test", Value::Null, ok).await;
    c.call("delete", "/api/dns/{id}", "/api/dns/p1", Value::Null, ok).await;
    // The audit log of what came before.
    let audit = c.call("get", "/api/audit", "/api/audit?limit=5&kind=Host", Value::Null, ok).await;
    assert_eq!(audit["results"][0]["kind"], "Host", "{audit}");
    // Deletions and the caller's own password last.
    c.call("delete", "/api/host/{item}", "/api/host/app.test", Value::Null, ok).await;
    c.call("delete", "/api/user/{username}", "/api/user/erin", Value::Null, ok).await;
    let own = json!({"current_password": common::ADMIN_PASSWORD, "password": "admin-password-2"});
    c.call("put", "/api/user/password", "/api/user/password", own, ok).await;
    // Logout answers any method: each with a session of its own.
    for method in ["get", "post", "put", "patch", "delete"] {
        let login = json!({"username": "admin", "password": "admin-password-2"});
        let session = c.api.call("POST", "/api/auth/login", login).await.json["token"].as_str().unwrap().to_owned();
        c.call_as(&session, method, "/api/auth/logout", "/api/auth/logout", Value::Null, ok).await;
    }

    assert!(c.problems.is_empty(), "answers that differ from the document:\n{}", c.problems.join("\n"));
    // Every documented operation with a JSON success answer was called, or is listed above.
    let mut missed = Vec::new();
    for (template, item) in c.doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let success = operation["responses"]["200"].get("content").is_some();
            let listed = NOT_CALLED.iter().any(|(m, t, _)| *m == method && *t == template);
            if success && !listed && !c.called.contains(&(method.clone(), template.clone())) {
                missed.push(format!("{method} {template}"));
            }
        }
    }
    assert!(missed.is_empty(), "documented operations this test does not call: {missed:?}");
}
