//! Wildcard certificates through DNS-01 against real Pebble and pebble-challtestsrv: the
//! provider fakes publish the TXT records the client creates through their APIs to
//! challtestsrv, which Pebble asks.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::dns_fake::{FakeDns, Provider};
use portico_test_support::pebble::{Options, Pebble};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, eventually, tls};
use serde_json::{Value, json};

use crate::BIN;

/// Pebble, a fake of `provider` holding `zones` and publishing to Pebble's DNS, and Portico
/// issuing from Pebble with the fake as the provider's API.
async fn setup(provider: Provider, zones: &[&str]) -> (Pebble, FakeDns, Portico) {
    let fake = FakeDns::start(provider, zones).await;
    let key = match provider {
        Provider::Cloudflare => "cloudflare_api",
        Provider::DigitalOcean => "digitalocean_api",
        Provider::Porkbun => "porkbun_api",
    };
    for _ in 0..5 {
        let pebble = Pebble::start_anywhere(Options::default());
        fake.publish_to(pebble.ports.chall);
        let mut settings = pebble.portico_settings();
        settings.push(format!("dns.{key}=\"{}\"", fake.base()));
        settings.push(format!("tls.dns_resolvers=[\"127.0.0.1:{}\"]", pebble.ports.dns));
        settings.push("dns.propagation_timeout=\"20s\"".to_owned());
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        if let Ok(p) = Portico::try_start(BIN, &settings) {
            return (pebble, fake, p);
        }
    }
    panic!("could not start Portico beside Pebble");
}

/// Adds the provider account through the API, which links its zone; returns the admin's
/// token.
async fn add_provider(api: &ApiClient, provider: Provider, domain: &str) -> String {
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let mut body = json!({"name": format!("test {}", provider.kind()), "dnsProvider": provider.kind()});
    for (field, value) in provider.credentials() {
        body[field] = value.into();
    }
    let created = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    // The provider's zones are linked as domains when it is added.
    assert_eq!(created.json["domains"], json!([domain]), "{}", created.raw);
    token
}

async fn add_host(api: &ApiClient, token: &str, host: &str, backend: &Backend) -> Value {
    let body = json!({"host": host, "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    let reply = api.call("POST", "/api/host", Some(token), Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    reply.json
}

/// A `*.zone` host whose zone a provider manages gets one certificate for `*.zone` and
/// `zone` through DNS-01 (one order, both TXT values at once), served to any name under it
/// and to the host `zone`, with the records removed afterwards.
async fn wildcard_through(provider: Provider) {
    let backend = Backend::start("wild").await;
    let (pebble, fake, p) = setup(provider, &["zone.test"]).await;
    let api = ApiClient::new(p.api);
    let token = add_provider(&api, provider, "zone.test").await;
    add_host(&api, &token, "*.zone.test", &backend).await;
    add_host(&api, &token, "zone.test", &backend).await;
    let roots = tls::roots(&pebble.root().await);
    // The certificate is made when the host is created; a handshake waits for it.
    let answer = eventually(Duration::from_secs(30), "the wildcard certificate", || {
        let client = Proxy::https(p.https, roots.clone(), false);
        async move {
            let answer = client.get("anything.zone.test", "/").await;
            (answer.status == StatusCode::OK).then_some(answer)
        }
    })
    .await;
    assert_eq!(answer.json()["backend"], "wild");
    let served = tls::peek(p.https, "anything.zone.test").await;
    assert_eq!(served.names, ["*.zone.test", "zone.test"]);
    assert_eq!(tls::peek(p.https, "zone.test").await, served, "the zone is served the same certificate");
    assert_eq!(tls::peek(p.https, "other.zone.test").await, served);
    assert_eq!(Proxy::https(p.https, roots, false).get("zone.test", "/").await.status, StatusCode::OK);
    assert_eq!(pebble.orders(), 1, "one order for the wildcard and its zone");
    eventually(Duration::from_secs(5), "the TXT records to be removed", || async {
        fake.records().is_empty().then_some(())
    })
    .await;
    let requests = fake.requests();
    let creates =
        requests.iter().filter(|r| r.starts_with("POST") && (r.ends_with("records") || r.contains("/dns/create/")));
    let deletes = requests.iter().filter(|r| r.starts_with("DELETE") || r.contains("/dns/delete/"));
    assert_eq!((creates.count(), deletes.count()), (2, 2), "two TXT values, each deleted by id: {requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_cloudflare() {
    wildcard_through(Provider::Cloudflare).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_digitalocean() {
    wildcard_through(Provider::DigitalOcean).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_porkbun() {
    wildcard_through(Provider::Porkbun).await
}
