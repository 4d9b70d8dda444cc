//! Uploaded certificates: checked before they are stored, served whole from the next
//! handshake (a wildcard for the names under it too), never renewed, an alert when a third of
//! their life is left, their key never shown again; the CLI does the same; removing one
//! returns the name to automatic certificates.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::tls::{self, TestCa};
use portico_test_support::{Backend, eventually};
use serde_json::json;

use crate::{METRICS, admin, issuances, portico, sample};

#[tokio::test]
async fn uploaded_certificates_are_checked_served_never_renewed_and_removable() {
    let backend = Backend::start("uploaded").await;
    let p = portico(&[METRICS, "tls.renew_interval=\"300ms\""]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    p.add_host("up.example.test", backend.addr, &[]);
    p.add_host("*.wild.example.test", backend.addr, &[]);

    let company = TestCa::root("Company Root");
    let middle = company.intermediate("Company Issuing CA");
    // Twenty days old, five to go: less than a third of its life is left.
    let (leaf, key) = middle.leaf(&["up.example.test"], -20 * 86400, 5 * 86400);
    let chain = format!("{leaf}{}", middle.cert.pem());
    let put = |host: &str, chain: &str, key: &str, token: Option<&str>| {
        let body = json!({"fullchain_pem": chain, "privkey_pem": key});
        let (api, path, token) = (api.clone(), format!("/api/cert/{host}"), token.map(str::to_owned));
        async move { api.call("PUT", &path, token.as_deref(), Some(body)).await }
    };

    // Refusals say which field is at fault and store nothing.
    let swapped = format!("{}{leaf}", middle.cert.pem());
    let (_, other_key) = middle.leaf(&["up.example.test"], -60, 86400);
    let (expired, expired_key) = middle.leaf(&["up.example.test"], -7200, -3600);
    for (body_chain, body_key, field, says) in [
        (swapped.as_str(), key.as_str(), "fullchain_pem", "out of order"),
        (chain.as_str(), other_key.as_str(), "privkey_pem", "not the key"),
        (expired.as_str(), expired_key.as_str(), "fullchain_pem", "expired on"),
    ] {
        let refused = put("up.example.test", body_chain, body_key, r).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
        assert_eq!(refused.json["keys"][0]["key"], field, "{}", refused.raw);
        assert!(refused.raw.contains(says), "{}", refused.raw);
        assert!(!refused.raw.contains("PRIVATE KEY"), "a refusal never echoes the key");
    }
    let uncovered = put("other.example.test", &chain, &key, r).await;
    assert!(uncovered.raw.contains("does not cover other.example.test"), "{}", uncovered.raw);
    assert_eq!(api.call("GET", "/api/cert/up.example.test", r, None).await.status, StatusCode::NOT_FOUND);
    api.call("POST", "/api/user", r, Some(json!({"username": "ursula", "password": "ursula-password"}))).await;
    let ursula = api.login("ursula", "ursula-password").await;
    assert_eq!(put("up.example.test", &chain, &key, Some(&ursula)).await.status, StatusCode::FORBIDDEN);

    let stored = put("up.example.test", &chain, &key, r).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.raw);
    assert_eq!(stored.json["results"]["source"], "uploaded");
    assert!(!stored.raw.contains("PRIVATE KEY"), "the key is never shown again");

    // The whole chain is served: a client trusting only the company's root verifies it.
    let trusting = tls::client_config(Some(tls::roots(&company.cert.pem())), &[]);
    let stream = tls::connect(p.https, "up.example.test", trusting.clone()).await.expect("verified handshake");
    assert!(tls::served(&stream).issuer.contains("Company Issuing CA"));

    let shown = api.call("GET", "/api/cert/up.example.test", r, None).await;
    assert_eq!(shown.json["results"]["source"], "uploaded", "{}", shown.raw);
    assert!(!shown.raw.contains("PRIVATE KEY"), "not even to the admin who uploaded it");
    let asked = api.call("GET", "/api/cert/up.example.test?include_private_key=true", r, None).await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN, "{}", asked.raw);
    assert!(!asked.raw.contains("PRIVATE KEY"));
    let listed = api.call("GET", "/api/cert", r, None).await;
    let entry = listed.json["results"].as_array().unwrap().iter().find(|c| c["host"] == "up.example.test").cloned();
    assert_eq!(entry.unwrap()["source"], "uploaded", "{}", listed.raw);

    // Never renewed: asking is refused, and the sweeps (every 300 ms) raise the alert instead.
    let renew = api.call("PUT", "/api/host/up.example.test/renew", r, None).await;
    assert_eq!(renew.status, StatusCode::BAD_GATEWAY, "{}", renew.raw);
    assert!(renew.raw.contains("uploaded"), "{}", renew.raw);
    let failing = "portico_certificate_renewal_failing{name=\"up.example.test\"}";
    eventually(Duration::from_secs(10), "the renewal-failing metric", || async {
        (sample(&p, failing).await == Some(1.0)).then_some(())
    })
    .await;
    let alerted = api.call("GET", "/api/cert/up.example.test", r, None).await;
    assert!(alerted.json["results"]["last_error"].as_str().unwrap().contains("upload a new one"), "{}", alerted.raw);
    assert_eq!(alerted.json["results"]["renewal_failing"], true, "{}", alerted.raw);
    // Its history, newest first: the alert, then the upload.
    let events: Vec<&str> =
        alerted.json["results"]["history"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("not renewed (uploaded)") && events[1].starts_with("uploaded, issued by"), "{events:?}");
    p.logged("an uploaded certificate expires soon and is never renewed by Portico: upload a new one").await;
    let served = tls::connect(p.https, "up.example.test", trusting.clone()).await.expect("still the uploaded one");
    assert!(tls::served(&served).issuer.contains("Company Issuing CA"));

    // A wildcard certificate for a `*.zone` pattern covers the names under it.
    let (wild, wild_key) = middle.leaf(&["*.wild.example.test"], -60, 90 * 86400);
    let wild_chain = format!("{wild}{}{}", middle.cert.pem(), company.cert.pem());
    assert_eq!(put("*.wild.example.test", &wild_chain, &wild_key, r).await.status, StatusCode::OK);
    let under = tls::connect(p.https, "a.wild.example.test", trusting.clone()).await.expect("the wildcard");
    assert_eq!(tls::served(&under).names, vec!["*.wild.example.test"]);
    let as_wildcard = api.call("GET", "/api/cert/b.wild.example.test", r, None).await;
    assert_eq!(as_wildcard.json["results"]["source"], "uploaded", "{}", as_wildcard.raw);

    // The CLI, beside the running server: a fresh certificate replaces the one served.
    let dir = tempfile::tempdir().unwrap();
    let (fresh, fresh_key) = middle.leaf(&["up.example.test"], -60, 90 * 86400);
    std::fs::write(dir.path().join("chain.pem"), format!("{fresh}{}", middle.cert.pem())).unwrap();
    std::fs::write(dir.path().join("key.pem"), &fresh_key).unwrap();
    std::fs::write(dir.path().join("wrong.pem"), &other_key).unwrap();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let wrong =
        p.cli("cert", &["upload", "up.example.test", "--chain", &path("chain.pem"), "--key", &path("wrong.pem")], "");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("privkey_pem is not the key"));
    let before = tls::fingerprint(p.https, "up.example.test").await;
    let cli =
        p.cli("cert", &["upload", "up.example.test", "--chain", &path("chain.pem"), "--key", &path("key.pem")], "");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    eventually(Duration::from_secs(10), "the CLI's certificate served", || async {
        (tls::fingerprint(p.https, "up.example.test").await != before).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the alert gone with the fresh certificate", || async {
        (sample(&p, failing).await == Some(0.0)).then_some(())
    })
    .await;

    // Removing it returns the name to automatic certificates: the next handshake gets one
    // from the configured issuer (the internal CA here). An automatic one is not removed.
    assert_eq!(issuances(&p, "internal").await, 0.0, "nothing was issued while uploaded");
    let removed = api.call("DELETE", "/api/cert/up.example.test", r, None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.raw);
    let automatic = tls::peek(p.https, "up.example.test").await;
    assert!(automatic.issuer.contains("Portico"), "{}", automatic.issuer);
    assert_eq!(issuances(&p, "internal").await, 1.0);
    let shown = api.call("GET", "/api/cert/up.example.test", r, None).await;
    assert_eq!(shown.json["results"]["source"], "internal", "{}", shown.raw);
    assert_eq!(shown.json["results"]["history"][0]["event"], "issued by internal", "{}", shown.raw);
    let refused = api.call("DELETE", "/api/cert/up.example.test", r, None).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
    let gone = p.cli("cert", &["rm", "*.wild.example.test"], "");
    assert!(gone.status.success(), "{}", String::from_utf8_lossy(&gone.stderr));
    assert_eq!(api.call("DELETE", "/api/cert/*.wild.example.test", r, None).await.status, StatusCode::NOT_FOUND);
}
