//! Several CAs in order (`[[tls.issuers]]`) against real Pebbles: the second issues when the
//! first is down or refuses Portico's account, renewals go to the CA that issued, and which
//! CA issued is shown in the API and the metrics.

use http::StatusCode;
use portico_test_support::client::Proxy;
use portico_test_support::pebble::{EAB_HMAC_KEY, EAB_KID, Options, Pebble, Ports};
use portico_test_support::{Backend, Portico, tls};

use crate::{BIN, METRICS, admin, sample};

/// Two Pebbles that validate on the same proxy ports (the first's), each with its own CA.
fn two_cas(first: Options, second: Options) -> (Pebble, Pebble) {
    let a = Pebble::start_anywhere(first);
    for _ in 0..8 {
        let ports = Ports { http: a.ports.http, tls: a.ports.tls, ..Ports::pick() };
        if let Ok(b) = Pebble::start(ports, second) {
            return (a, b);
        }
    }
    panic!("a second pebble did not start");
}

/// One `[[tls.issuers]]` entry for `pebble`, as inline TOML, with `extra` fields.
fn entry(pebble: &Pebble, extra: &str) -> String {
    format!("{{directory = \"{}\", ca_roots = [\"{}\"]{extra}}}", pebble.directory, pebble.listener_ca.display())
}

/// Portico issuing from `issuers` (inline TOML entries, in order), its listeners on the ports
/// the Pebbles validate.
fn portico(ports: Ports, issuers: &[String]) -> Portico {
    let list = format!("tls.issuers=[{}]", issuers.join(", "));
    let http = format!("proxy.http=\"127.0.0.1:{}\"", ports.http);
    let https = format!("proxy.https=\"127.0.0.1:{}\"", ports.tls);
    // The harness's own default issuer (the internal CA) is not combined with a list.
    Portico::try_start(BIN, &["tls.issuer=\"acme\"", list.as_str(), http.as_str(), https.as_str(), METRICS])
        .expect("portico starts on the pebbles' validation ports")
}

/// What `GET /api/cert/<name>` says of the CA: the top-level `issuer` (the stored
/// certificate's) and the state's `ca`.
async fn issued_by(p: &Portico, name: &str) -> (String, String) {
    let (api, token) = admin(p).await;
    let cert = api.call("GET", &format!("/api/cert/{name}"), Some(&token), None).await;
    assert_eq!(cert.status, StatusCode::OK, "{}", cert.raw);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    (text(&cert.json["issuer"]), text(&cert.json["results"]["ca"]))
}

#[tokio::test]
async fn the_second_ca_issues_while_the_first_is_down_and_renews_what_it_issued() {
    let backend = Backend::start("issuers").await;
    let (mut a, b) = two_cas(Options::default(), Options::default());
    let p = portico(a.ports, &[entry(&a, ""), entry(&b, "")]);
    // The first CA is down (its directory does not answer).
    a.stop();
    p.add_host("first.example.test", backend.addr, &[]);
    let b_roots = tls::roots(&b.root().await);
    let answer = Proxy::https(p.https, b_roots.clone(), false).get("first.example.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "a client trusting the second CA only: {}", answer.text());
    assert_eq!(b.orders(), 1);
    assert_eq!(issued_by(&p, "first.example.test").await, (b.directory.clone(), b.directory.clone()));
    let series = format!("portico_certificate_ca{{name=\"first.example.test\",ca=\"{}\"}}", b.directory);
    assert_eq!(sample(&p, &series).await, Some(1.0), "the metric names the CA");

    // The first CA is back: a renewal still goes to the CA that issued, and a new name to the
    // first listed.
    a.start_again();
    let (api, token) = admin(&p).await;
    let renewed = api.call("PUT", "/api/host/first.example.test/renew", Some(&token), None).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.raw);
    assert_eq!((a.orders(), b.orders()), (0, 2), "renewed by the CA that issued it, the first not asked");
    p.add_host("second.example.test", backend.addr, &[]);
    let a_roots = tls::roots(&a.root().await);
    let answer = Proxy::https(p.https, a_roots, false).get("second.example.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "a client trusting the first CA only: {}", answer.text());
    assert_eq!((a.orders(), b.orders()), (1, 2));
    assert_eq!(issued_by(&p, "second.example.test").await, (a.directory.clone(), a.directory.clone()));
}

#[tokio::test]
async fn a_ca_that_requires_external_account_binding_takes_the_account_only_with_the_key() {
    let backend = Backend::start("eab-issuers").await;
    let eab = Options { require_eab: true, ..Options::default() };
    let (a, b) = two_cas(eab, Options::default());
    // Without the key, the first CA refuses the account: the second issues, and the first's
    // refusal is in the certificate's history.
    let p = portico(a.ports, &[entry(&a, ""), entry(&b, "")]);
    p.add_host("bound.example.test", backend.addr, &[]);
    let b_roots = tls::roots(&b.root().await);
    assert_eq!(Proxy::https(p.https, b_roots, false).get("bound.example.test", "/").await.status, StatusCode::OK);
    assert_eq!((a.orders(), b.orders()), (0, 1));
    assert_eq!(issued_by(&p, "bound.example.test").await.1, b.directory);
    drop(p);
    let refused_accounts = a.accounts();

    // With the key, the first CA binds the account and issues.
    let key = format!(", eab_kid = \"{EAB_KID}\", eab_hmac = \"{EAB_HMAC_KEY}\"");
    let p = portico(a.ports, &[entry(&a, &key), entry(&b, "")]);
    p.add_host("bound.example.test", backend.addr, &[]);
    let a_roots = tls::roots(&a.root().await);
    assert_eq!(Proxy::https(p.https, a_roots, false).get("bound.example.test", "/").await.status, StatusCode::OK);
    assert_eq!(a.accounts(), refused_accounts + 1, "one account made with the key");
    assert_eq!((a.orders(), b.orders()), (1, 1));
    assert_eq!(issued_by(&p, "bound.example.test").await.1, a.directory);
    assert!(!p.logs().iter().any(|l| l.to_string().contains(EAB_HMAC_KEY)), "the HMAC key is never logged");
}

#[tokio::test]
async fn a_profile_the_ca_does_not_offer_places_no_order_there_and_the_next_ca_issues() {
    let backend = Backend::start("profiles").await;
    let (a, b) = two_cas(Options::default(), Options::default());
    // Pebble's directory lists no profiles.
    let p = portico(a.ports, &[entry(&a, ", profile = \"shortlived\""), entry(&b, "")]);
    p.add_host("profiled.example.test", backend.addr, &[]);
    let b_roots = tls::roots(&b.root().await);
    assert_eq!(Proxy::https(p.https, b_roots, false).get("profiled.example.test", "/").await.status, StatusCode::OK);
    assert_eq!((a.orders(), b.orders()), (0, 1), "no order where the profile is not offered");
    drop(p);

    // That CA alone: the certificate's last error says why.
    let p = portico(a.ports, &[entry(&a, ", profile = \"shortlived\"")]);
    p.add_host("profiled.example.test", backend.addr, &[]);
    assert_eq!(tls::peek(p.https, "profiled.example.test").await.names, ["portico.invalid"]);
    let (api, token) = admin(&p).await;
    let cert = api.call("GET", "/api/cert/profiled.example.test", Some(&token), None).await;
    let error = cert.json["results"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("offers no certificate profiles: remove profile \"shortlived\""), "{}", cert.raw);
    assert_eq!(a.orders(), 0);
}

#[tokio::test]
async fn a_profile_the_directory_offers_is_ordered_and_one_it_does_not_is_refused() {
    let backend = Backend::start("offered").await;
    let pebble = Pebble::start_anywhere(Options::default());
    // A CA whose directory offers profiles: Pebble's, with `meta.profiles` added.
    let directory = pebble.with_profiles(&["shortlived", "classic"]).await;
    let issuer = |profile: &str| {
        format!(
            "{{directory = \"{}\", ca_roots = [\"{}\", \"{}\"], profile = \"{profile}\"}}",
            directory.url,
            pebble.listener_ca.display(),
            directory.cert.display()
        )
    };
    let p = portico(pebble.ports, &[issuer("shortlived")]);
    p.add_host("offered.example.test", backend.addr, &[]);
    let roots = tls::roots(&pebble.root().await);
    assert_eq!(Proxy::https(p.https, roots, false).get("offered.example.test", "/").await.status, StatusCode::OK);
    assert_eq!(pebble.orders(), 1);
    assert_eq!(issued_by(&p, "offered.example.test").await.1, directory.url, "recorded by the directory it came from");
    drop(p);

    let p = portico(pebble.ports, &[issuer("six-days")]);
    p.add_host("unoffered.example.test", backend.addr, &[]);
    assert_eq!(tls::peek(p.https, "unoffered.example.test").await.names, ["portico.invalid"]);
    let (api, token) = admin(&p).await;
    let cert = api.call("GET", "/api/cert/unoffered.example.test", Some(&token), None).await;
    let error = cert.json["results"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("does not offer the profile \"six-days\" (it offers: classic, shortlived)"), "{}", cert.raw);
    assert_eq!(pebble.orders(), 1, "no order for a profile the CA does not offer");
}
