//! The OpenAPI document against the router: every route of the router is in the document,
//! every documented operation is routed, and the document is a well-formed OpenAPI 3.1 one.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use portico_api::{ApiSettings, ApiState};
use portico_model::Routes;
use serde_json::Value;
use tower::ServiceExt;

const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"];

fn document() -> Value {
    serde_json::to_value(portico_api::openapi_document()).unwrap()
}

/// A concrete path for a template: every `{param}` becomes `x`.
fn concrete(template: &str) -> String {
    template.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/")
}

async fn status_and_name(router: &axum::Router, method: &str, path: &str) -> (StatusCode, String) {
    let request = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(path);
    let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let name = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["name"].as_str().map(str::to_owned));
    (status, name.unwrap_or_default())
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let store = portico_store::open(&format!("redb://{}", dir.path().join("s.redb").display())).await.unwrap();
    let changes = portico_store::Follower::start(store.clone(), std::future::pending());
    let router =
        portico_api::router(ApiState::new(store, changes, Arc::new(Routes::new()), ApiSettings::default(), None));
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{paths:?}");
    for (template, item) in paths {
        let path = concrete(template);
        for method in METHODS {
            let documented = item.get(method.to_lowercase()).is_some();
            let (status, name) = status_and_name(&router, method, &path).await;
            if documented {
                // Routed: whatever the handler says (401 without a token, 404 for a missing
                // entry), it is not the router's "no such route" or "no such method".
                let unrouted = status == StatusCode::NOT_FOUND && name == "Error";
                assert!(!unrouted, "{method} {template} is documented but not routed");
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template} is documented but not routed");
            } else if method != "HEAD" {
                // axum answers HEAD wherever GET is routed.
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is routed ({status}, {name}) but not documented"
                );
            }
        }
    }
    // A path outside the document is not routed.
    let (status, name) = status_and_name(&router, "GET", "/api/nothing").await;
    assert_eq!((status, name.as_str()), (StatusCode::NOT_FOUND, "Error"));
    // The document itself is served, and is the same document.
    let (status, _) = status_and_name(&router, "GET", "/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_complete() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "$ref {r} names no schema");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["token"]["name"], "auth-token");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");

    let open = ["/healthz", "/readyz", "/api/auth/login"];
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {template} has no responses");
            // Every parameter in the template is described.
            for param in template.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
                let described = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == param && p["in"] == "path"));
                assert!(described, "{method} {template}: path parameter {param} is not described");
            }
            if open.contains(&template.as_str()) {
                assert!(op.get("security").is_none(), "{method} {template} needs no token");
            } else {
                assert!(responses.contains_key("401"), "{method} {template} does not say it can answer 401");
                let security = op["security"].as_array().unwrap();
                assert!(security.iter().any(|s| s.get("token").is_some()), "{method} {template}");
            }
        }
    }
    // The shapes users rely on: the host fields and the error shape.
    let host = properties(schemas, "Host");
    for field in ["host", "ip", "targetPort", "forcessl", "targetssl", "created_by", "created_on", "updated_on"] {
        assert!(host.contains(&field.to_owned()), "Host lacks {field}: {host:?}");
    }
    assert_eq!(properties(schemas, "ErrorBody"), ["keys", "message", "name"]);
    let new_host = properties(schemas, "NewHost");
    assert!(new_host.contains(&"targetPort".to_owned()), "{new_host:?}");
}

/// The property names of a schema, through `allOf` and `$ref` (flattened structs).
fn properties(schemas: &serde_json::Map<String, Value>, name: &str) -> Vec<String> {
    fn walk(schemas: &serde_json::Map<String, Value>, schema: &Value, out: &mut Vec<String>) {
        if let Some(r) = schema["$ref"].as_str() {
            walk(schemas, &schemas[r.trim_start_matches("#/components/schemas/")], out);
        }
        if let Some(props) = schema["properties"].as_object() {
            out.extend(props.keys().cloned());
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            walk(schemas, part, out);
        }
    }
    let mut out = Vec::new();
    walk(schemas, &schemas[name], &mut out);
    out.sort();
    out
}
