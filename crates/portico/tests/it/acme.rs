//! Automatic HTTPS against a real Pebble ACME server (and pebble-challtestsrv as its DNS):
//! on-demand issuance, one order for concurrent handshakes, none for unknown names, the
//! TLS-ALPN-01 fallback, renewal, a CA outage, and restarts that reuse the account.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::pebble::{self, Options, Pebble};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, eventually, tls};

use crate::{BIN, METRICS, issuances};

/// Pebble, and Portico pointed at it.
fn setup(options: Options, extra: &[&str]) -> (Pebble, Portico) {
    pebble::with_portico(BIN, options, extra)
}

#[tokio::test]
async fn first_request_to_a_new_host_gets_a_certificate_from_pebble_with_one_order() {
    let backend = Backend::start("acme").await;
    let (pebble, p) = setup(Options::default(), &[]);
    p.add_host("app.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);

    // 20 concurrent first handshakes for one new name: one order, every request answered.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = Proxy::https(p.https, roots.clone(), i % 2 == 1);
        tasks.push(tokio::spawn(async move { client.get("app.example.test", "/hello").await }));
    }
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.json()["backend"], "acme");
    }
    assert_eq!(pebble.orders(), 1, "one order for 20 concurrent handshakes");
    assert_eq!(pebble.accounts(), 1);
    let served = tls::peek(p.https, "app.example.test").await;
    assert_eq!(served.names, vec!["app.example.test"]);
    assert_eq!(served.key, "ECDSA P-256", "the key Portico made for its CSR");

    // Every ACME step is logged, and the status shows it.
    let logs = p.logs();
    for step in ["ACME account created", "ACME order created", "ACME challenge ready", "certificate issued"] {
        assert!(logs.iter().any(|l| l["fields"]["message"] == step), "no {step:?} line");
    }
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let status = api.call("GET", "/api/cert/app.example.test", Some(&token), None).await;
    assert_eq!(status.json["results"]["issued_by"], "acme", "{}", status.raw);
    assert!(status.json["results"]["issuer"].as_str().unwrap().contains("Pebble"), "{}", status.raw);

    // An unknown name: the fallback certificate and no order at all.
    assert_eq!(tls::peek(p.https, "unknown.example.test").await.names, vec!["portico.invalid"]);
    assert_eq!(pebble.orders(), 1, "no order for a name no host matches");
}

#[tokio::test]
async fn tls_alpn_01_works_alone_when_http_01_cannot_be_reached() {
    let backend = Backend::start("alpn").await;
    // The HTTP listener is not where Pebble validates HTTP-01: that port is closed.
    let (pebble, p) = setup(Options::default(), &["proxy.http=\"127.0.0.1:0\""]);
    assert_ne!(p.http.port(), pebble.ports.http);
    p.add_host("alpn.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    let answer = Proxy::https(p.https, roots, false).get("alpn.example.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let logs: Vec<String> = p.logs().iter().map(|l| l.to_string()).collect();
    assert!(logs.iter().any(|l| l.contains("answering an ACME TLS-ALPN-01 validation")), "{logs:#?}");
    assert!(logs.iter().any(|l| l.contains("trying tls-alpn-01")), "HTTP-01 was tried first");
}

#[tokio::test]
async fn http_01_alone_when_preferred() {
    let backend = Backend::start("h01").await;
    let (pebble, p) = setup(Options::default(), &["tls.challenge=\"http-01\""]);
    p.add_host("h01.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots, false).get("h01.example.test", "/").await.status, StatusCode::OK);
    let logs: Vec<String> = p.logs().iter().map(|l| l.to_string()).collect();
    assert!(logs.iter().any(|l| l.contains("answered an ACME HTTP-01 challenge")), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("TLS-ALPN-01 validation")));
}

#[tokio::test]
async fn short_lived_certificates_are_renewed_and_clients_see_the_new_one() {
    let backend = Backend::start("renew").await;
    let settings = ["tls.renew_remaining_ratio=0.75", "tls.renew_interval=\"300ms\""];
    let (pebble, p) = setup(Options { validity_secs: Some(12), ..Options::default() }, &settings);
    p.add_host("short.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    let client = Proxy::https(p.https, roots.clone(), false);
    assert_eq!(client.get("short.example.test", "/").await.status, StatusCode::OK);
    let first = tls::peek(p.https, "short.example.test").await;
    assert!(first.not_after - first.not_before <= 13, "{first:?}");

    let https = p.https;
    let renewed = eventually(Duration::from_secs(10), "a renewed certificate to be served", || async move {
        let now = tls::peek(https, "short.example.test").await;
        (now.not_after > first.not_after).then_some(now)
    })
    .await;
    assert_eq!(renewed.names, first.names);
    assert_eq!(pebble.orders(), 2);
    // The connection opened before the renewal still works.
    assert_eq!(client.get("short.example.test", "/").await.status, StatusCode::OK);
    let fresh = Proxy::https(p.https, roots, false);
    assert_eq!(fresh.get("short.example.test", "/").await.status, StatusCode::OK);
    assert!(p.logs().iter().any(|l| l["fields"]["message"] == "certificate renewed"));
}

#[tokio::test]
async fn a_ca_outage_keeps_existing_certificates_serving_and_backs_off() {
    let backend = Backend::start("outage").await;
    let (mut pebble, p) = setup(Options::default(), &[METRICS]);
    p.add_host("before.example.test", backend.addr, &[]);
    p.add_host("after.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    let client = Proxy::https(p.https, roots.clone(), false);
    assert_eq!(client.get("before.example.test", "/").await.status, StatusCode::OK);

    pebble.stop();
    // The existing certificate keeps serving, on new connections too.
    let fresh = Proxy::https(p.https, roots.clone(), false);
    assert_eq!(fresh.get("before.example.test", "/").await.status, StatusCode::OK);
    // A new name cannot be issued: the fallback certificate, and the status shows the backoff.
    assert_eq!(tls::peek(p.https, "after.example.test").await.names, vec!["portico.invalid"]);
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let status = api.call("GET", "/api/cert/after.example.test", Some(&token), None).await;
    let results = &status.json["results"];
    assert_eq!(results["status"], "none", "{}", status.raw);
    assert_eq!(results["failures"], 1);
    assert!(results["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{}", status.raw);
    let next = results["next_attempt"].as_i64().unwrap();
    let last = results["last_attempt"].as_i64().unwrap();
    assert!(next - last >= 59_000, "a backoff of about a minute: {}", status.raw);
    // During the backoff, handshakes do not retry the CA.
    let attempts = issuances(&p, "acme").await;
    assert_eq!(attempts, 2.0, "before's, and after's that failed");
    tls::peek(p.https, "after.example.test").await;
    assert_eq!(issuances(&p, "acme").await, attempts, "no new attempt inside the backoff");
}

#[tokio::test]
async fn a_restart_reuses_the_stored_account_and_certificates() {
    let backend = Backend::start("restart").await;
    let (pebble, p) = setup(Options::default(), &[]);
    p.add_host("kept.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots.clone(), false).get("kept.example.test", "/").await.status, StatusCode::OK);
    let first = tls::peek(p.https, "kept.example.test").await;
    let dir = p.into_data_dir();
    let mut settings = pebble.portico_settings();
    settings.push("api.listen=\"127.0.0.1:0\"".to_owned());
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let p = Portico::start_in(BIN, dir, &settings);
    assert_eq!(tls::peek(p.https, "kept.example.test").await, first);
    // A new name after the restart uses the stored account: a new order, no new account.
    p.add_host("new.example.test", backend.addr, &[]);
    assert_eq!(Proxy::https(p.https, roots, false).get("new.example.test", "/").await.status, StatusCode::OK);
    assert_eq!((pebble.orders(), pebble.accounts()), (2, 1));
}

#[tokio::test]
async fn a_certificate_whose_host_is_gone_is_not_renewed_and_is_removed_after_expiry() {
    let backend = Backend::start("gone").await;
    // Renewal would be due 3.8 s after issuance, expiry at 4 s: the host is removed long
    // before either, even on a loaded machine (at a ratio of 0.5 it was due after 1.5 s, and
    // a slow `host rm` let one renewal through).
    let settings = ["tls.renew_remaining_ratio=0.05", "tls.renew_interval=\"200ms\""];
    let (pebble, p) = setup(Options { validity_secs: Some(4), ..Options::default() }, &settings);
    p.add_host("gone.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots, false).get("gone.example.test", "/").await.status, StatusCode::OK);
    assert!(p.host(&["rm", "gone.example.test"]).status.success());
    p.wait_routed();
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    eventually(Duration::from_secs(8), "the expired certificate to be removed", || {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let status = api.call("GET", "/api/cert/gone.example.test", Some(&token), None).await.status;
            (status == StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;
    assert_eq!(pebble.orders(), 1, "no renewal for a name no host matches");
    assert!(
        p.logs().iter().any(|l| l["fields"]["message"] == "removed the expired certificate of a name no host matches")
    );
}

#[tokio::test]
async fn twelve_new_names_at_once_all_get_certificates() {
    let backend = Backend::start("twelve").await;
    let (pebble, p) = setup(Options::default(), &[]);
    p.add_host("**.twelve.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let client = Proxy::https(p.https, roots.clone(), false);
            tokio::spawn(async move {
                client
                    .try_send("GET", &format!("n{i}.twelve.example.test"), "/", portico_test_support::client::empty())
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(StatusCode::OK) => {}
            other => failures.push(format!("n{i}: {other:?}")),
        }
    }
    let warnings: Vec<String> = p.logs().iter().filter(|l| l["level"] != "INFO").map(|l| l.to_string()).collect();
    assert!(failures.is_empty(), "{failures:#?}\n{warnings:#?}");
    assert_eq!(pebble.orders(), 12);
}

#[tokio::test]
async fn external_account_binding_and_the_acme_problem_in_the_status() {
    use portico_test_support::pebble::{EAB_HMAC_KEY, EAB_KID};
    let backend = Backend::start("eab").await;
    let options = Options { require_eab: true, ..Options::default() };
    // Without EAB, a CA that requires it refuses the account: the status names the problem.
    let (pebble, p) = setup(options, &[]);
    p.add_host("eab.example.test", backend.addr, &[]);
    assert_eq!(tls::peek(p.https, "eab.example.test").await.names, vec!["portico.invalid"]);
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let status = api.call("GET", "/api/cert/eab.example.test", Some(&token), None).await;
    assert_eq!(
        status.json["results"]["last_error_type"], "urn:ietf:params:acme:error:externalAccountRequired",
        "{}",
        status.raw
    );
    assert_eq!(pebble.orders(), 0);
    drop((pebble, p));

    // With it, the account is bound and issuance works.
    let kid = format!("tls.acme_eab_kid=\"{EAB_KID}\"");
    let key = format!("tls.acme_eab_hmac_key=\"{EAB_HMAC_KEY}\"");
    let (pebble, p) = setup(options, &[kid.as_str(), key.as_str()]);
    p.add_host("eab.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots, false).get("eab.example.test", "/").await.status, StatusCode::OK);
    assert_eq!(pebble.accounts(), 1);
    // The HMAC key is a secret: never in the log.
    assert!(!p.logs().iter().any(|l| l.to_string().contains(EAB_HMAC_KEY)));
}

#[tokio::test]
async fn a_certificate_that_cannot_be_renewed_alerts_the_operator_once_and_says_when_it_is_over() {
    use portico_test_support::dns_fake::Hook;
    let hook = Hook::start().await;
    let backend = Backend::start("alert").await;
    let url = format!("tls.notify_url=\"{}\"", hook.url());
    let settings = ["tls.renew_remaining_ratio=0.75", "tls.renew_interval=\"300ms\"", url.as_str(), METRICS];
    let (pebble, p) = setup(Options { validity_secs: Some(15), ..Options::default() }, &settings);
    p.add_host("alert.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots, false).get("alert.example.test", "/").await.status, StatusCode::OK);
    let issued = tls::peek(p.https, "alert.example.test").await;

    // The CA stops answering: the renewal fails (each request to the CA waits 15 s first),
    // and with half of this short-lived certificate's life gone the operator is told, once.
    pebble.pause();
    let (api, token) = crate::admin(&p).await;
    eventually(Duration::from_secs(60), "the renewal to fail", || {
        let (api, token) = (&api, &token);
        async move {
            let status = api.call("GET", "/api/cert/alert.example.test", Some(token), None).await;
            (status.json["results"]["failures"].as_u64() >= Some(1)).then_some(())
        }
    })
    .await;
    let failing = eventually(Duration::from_secs(5), "the failing alert", || async {
        hook.posted().into_iter().find(|p| p["event"] == "failing")
    })
    .await;
    assert_eq!(failing["name"], "alert.example.test");
    assert!(failing["not_after"].as_str().is_some_and(|t| t.starts_with("20")), "{failing}");
    assert!(failing["error"].as_str().is_some_and(|e| !e.is_empty()), "the renewal's error: {failing}");
    let metric = "portico_certificate_renewal_failing{name=\"alert.example.test\"}";
    assert_eq!(crate::sample(&p, metric).await, Some(1.0));
    let status = api.call("GET", "/api/cert/alert.example.test", Some(&token), None).await;
    assert!(status.raw.contains("renewal failing, expires 20"), "in the history: {}", status.raw);
    assert_eq!(status.json["results"]["renewal_failing"], true, "{}", status.raw);

    // The CA is back and a renewal works: the alert is over, said once too.
    pebble.resume();
    let renewed = api.call("PUT", "/api/host/alert.example.test/renew", Some(&token), None).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.raw);
    assert!(tls::peek(p.https, "alert.example.test").await.not_after > issued.not_after);
    let recovered = eventually(Duration::from_secs(10), "the alert's end", || async {
        hook.posted().into_iter().find(|p| p["event"] == "recovered")
    })
    .await;
    assert_eq!((recovered["name"].as_str(), recovered["error"].as_str()), (Some("alert.example.test"), Some("")));
    assert_eq!(crate::sample(&p, metric).await, Some(0.0));
    let status = api.call("GET", "/api/cert/alert.example.test", Some(&token), None).await;
    assert_eq!(status.json["results"]["renewal_failing"], false, "{}", status.raw);
    let events: Vec<serde_json::Value> = hook.posted().iter().map(|p| p["event"].clone()).collect();
    assert_eq!(events, ["failing", "recovered"], "one post each");
}

#[tokio::test]
async fn a_host_that_is_an_ip_address_gets_an_ip_address_certificate_over_http_01() {
    let backend = Backend::start("ip").await;
    // TLS-ALPN-01 preferred: an address is validated by HTTP-01 all the same, in one order.
    let (pebble, p) = setup(Options::default(), &["tls.challenge=\"tls-alpn-01\""]);
    p.add_host("127.0.0.1", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    // A client asking for https://127.0.0.1/ sends no SNI: the address it reached picks the
    // certificate, and the client checks the address in it.
    let answer = Proxy::https(p.https, roots.clone(), false).get("127.0.0.1", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["backend"], "ip");
    assert_eq!(pebble.orders(), 1, "one order, HTTP-01 first");
    let (api, token) = crate::admin(&p).await;
    let cert = api.call("GET", "/api/cert/127.0.0.1", Some(&token), None).await;
    assert_eq!(cert.json["results"]["names"], serde_json::json!(["127.0.0.1"]), "{}", cert.raw);
    // Over HTTP/2 too, on a new connection: the certificate is held.
    let again = Proxy::https(p.https, roots, true).get("127.0.0.1", "/").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(pebble.orders(), 1);
}
