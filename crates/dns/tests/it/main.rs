//! The contract every DNS provider client keeps, run against faithful in-process fakes of
//! the providers' APIs (`portico_test_support::dns_fake`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use portico_dns::{DnsError, DnsProvider, Endpoints, Zone};
use portico_test_support::dns_fake::{self, FakeDns, Provider};

fn endpoints(fake: &FakeDns) -> Endpoints {
    let base = fake.base();
    Endpoints {
        cloudflare: base.clone(),
        digitalocean: base.clone(),
        porkbun: base,
        timeout: Duration::from_secs(2),
        ..Endpoints::default()
    }
}

fn client(fake: &FakeDns, credentials: &[(&str, &str)]) -> Box<dyn DnsProvider> {
    let mut fields: BTreeMap<String, String> =
        credentials.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    fields.insert("dnsProvider".into(), fake.provider.kind().into());
    portico_dns::client(&fields, &endpoints(fake)).unwrap()
}

async fn credentials_are_checked(provider: Provider) {
    let fake = FakeDns::start(provider, &["example.test"]).await;
    client(&fake, &provider.credentials()).verify().await.unwrap();
    let err = client(&fake, &provider.wrong_credentials()).verify().await.unwrap_err();
    let said = match provider {
        Provider::Cloudflare => "Authentication error",
        Provider::DigitalOcean => "Unable to authenticate you",
        Provider::Porkbun => "Invalid API key. (001)",
    };
    assert!(matches!(&err, DnsError::Unauthorized { message, .. } if message.contains(said)), "{err}");
    // Nothing else was asked with the wrong credentials.
    assert!(fake.records().is_empty());
}

async fn every_page_of_zones(provider: Provider) {
    // More zones than one page holds: Cloudflare 50, DigitalOcean 200, Porkbun 1,000.
    let count = match provider {
        Provider::Cloudflare => 120,
        Provider::DigitalOcean => 250,
        Provider::Porkbun => 1_050,
    };
    let names: Vec<String> = (0..count).map(|i| format!("zone{i}.test")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fake = FakeDns::start(provider, &refs).await;
    let zones = client(&fake, &provider.credentials()).zones().await.unwrap();
    let mut listed: Vec<String> = zones.into_iter().map(|z| z.name).collect();
    listed.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected);
}

async fn the_zone_of_a_name(provider: Provider) {
    let fake = FakeDns::start(provider, &["example.test", "dev.example.test", "ample.test"]).await;
    let dns = client(&fake, &provider.credentials());
    let zone = |n: &'static str| {
        let dns = &dns;
        async move { dns.zone_of(n).await.unwrap().map(|z| z.name) }
    };
    assert_eq!(zone("_acme-challenge.a.dev.example.test").await.as_deref(), Some("dev.example.test"));
    assert_eq!(zone("_acme-challenge.example.test").await.as_deref(), Some("example.test"));
    assert_eq!(zone("example.test").await.as_deref(), Some("example.test"));
    assert_eq!(zone("_acme-challenge.xample.test").await, None);
}

async fn two_values_at_one_name_and_deletes_by_id(provider: Provider) {
    let fake = FakeDns::start(provider, &["example.test"]).await;
    let dns = client(&fake, &provider.credentials());
    let zone: Zone = dns.zone_of("example.test").await.unwrap().unwrap();
    let name = "_acme-challenge.example.test";
    let first = dns.create_txt(&zone, name, "value-for-the-wildcard").await.unwrap();
    let second = dns.create_txt(&zone, name, "value-for-the-apex").await.unwrap();
    assert_ne!(first, second);
    let mut held: Vec<(String, String)> = fake.records().into_iter().map(|r| (r.fqdn, r.value)).collect();
    held.sort();
    assert_eq!(
        held,
        [(name.to_owned(), "value-for-the-apex".to_owned()), (name.to_owned(), "value-for-the-wildcard".to_owned())]
    );
    // By id: the other value at the same name stays.
    dns.delete(&zone, &first).await.unwrap();
    let held: Vec<String> = fake.records().into_iter().map(|r| r.value).collect();
    assert_eq!(held, ["value-for-the-apex"]);
    dns.delete(&zone, &second).await.unwrap();
    assert!(fake.records().is_empty());
    // A subdomain's record, relative names and all.
    let sub = dns.create_txt(&zone, "_acme-challenge.dev.example.test", "v").await.unwrap();
    assert_eq!(fake.records()[0].fqdn, "_acme-challenge.dev.example.test");
    dns.delete(&zone, &sub).await.unwrap();
    assert!(!fake.requests().iter().any(|r| r.contains("ByNameType")), "never by name and type");
}

async fn provider_errors_keep_the_providers_message(provider: Provider) {
    let fake = FakeDns::start(provider, &["example.test"]).await;
    let dns = client(&fake, &provider.credentials());
    let zone = dns.zone_of("example.test").await.unwrap().unwrap();
    fake.fail_creates_after(1);
    dns.create_txt(&zone, "_acme-challenge.example.test", "one").await.unwrap();
    let err = dns.create_txt(&zone, "_acme-challenge.example.test", "two").await.unwrap_err();
    let said = match provider {
        Provider::Cloudflare => "An internal error has occurred.",
        Provider::DigitalOcean => "Server was unable to give you a response.",
        Provider::Porkbun => "503 Service Temporarily Unavailable",
    };
    assert!(matches!(&err, DnsError::Provider { message, .. } if message.contains(said)), "{err}");
    // A zone the account does not have.
    let other = Zone { name: "other.test".into(), id: "0".repeat(32) };
    assert!(dns.create_txt(&other, "_acme-challenge.other.test", "x").await.is_err());
}

macro_rules! contract {
    ($module:ident, $provider:expr) => {
        mod $module {
            use super::*;
            #[tokio::test]
            async fn credentials_are_checked() {
                super::credentials_are_checked($provider).await
            }
            #[tokio::test]
            async fn every_page_of_zones() {
                super::every_page_of_zones($provider).await
            }
            #[tokio::test]
            async fn the_zone_of_a_name() {
                super::the_zone_of_a_name($provider).await
            }
            #[tokio::test]
            async fn two_values_at_one_name_and_deletes_by_id() {
                super::two_values_at_one_name_and_deletes_by_id($provider).await
            }
            #[tokio::test]
            async fn provider_errors_keep_the_providers_message() {
                super::provider_errors_keep_the_providers_message($provider).await
            }
        }
    };
}

contract!(cloudflare, Provider::Cloudflare);
contract!(digitalocean, Provider::DigitalOcean);
contract!(porkbun, Provider::Porkbun);

/// Cloudflare's legacy e-mail and Global API Key work too.
#[tokio::test]
async fn cloudflare_global_key() {
    let fake = FakeDns::start(Provider::Cloudflare, &["example.test"]).await;
    let dns = client(&fake, &[("email", dns_fake::CLOUDFLARE_EMAIL), ("apiKey", dns_fake::CLOUDFLARE_GLOBAL_KEY)]);
    dns.verify().await.unwrap();
    let wrong = client(&fake, &[("email", dns_fake::CLOUDFLARE_EMAIL), ("apiKey", "nope")]);
    assert!(matches!(wrong.verify().await, Err(DnsError::Unauthorized { .. })));
}

/// A provider that does not answer is an error within the timeout, not a hang.
#[tokio::test]
async fn a_silent_provider_times_out() {
    let silent = portico_test_support::Backend::silent().await;
    let endpoints = Endpoints {
        digitalocean: format!("http://{}", silent.addr),
        timeout: Duration::from_millis(300),
        ..Endpoints::default()
    };
    let fields: BTreeMap<String, String> =
        [("dnsProvider", "DigitalOcean"), ("token", "t")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let started = std::time::Instant::now();
    let err = portico_dns::client(&fields, &endpoints).unwrap().verify().await.unwrap_err();
    assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A provider record without its credentials cannot make a client, and says what is missing.
#[test]
fn a_record_without_credentials_is_refused() {
    let fields: BTreeMap<String, String> = [("dnsProvider".to_string(), "PorkBun".to_string())].into();
    let err = portico_dns::client(&fields, &Endpoints::default()).unwrap_err();
    assert!(err.to_string().contains("apiKey and secretApiKey"), "{err}");
}

/// RFC 2136 against a real Knot DNS: the key is checked, two values at one name, each
/// deleted by value, the zones as the account names them.
mod rfc2136 {
    use super::*;
    use portico_test_support::knot::{self, Knot};

    fn client(knot: &Knot, secret: &str) -> Box<dyn DnsProvider> {
        let mut fields: BTreeMap<String, String> =
            knot.provider_fields("zone.test, dev.zone.test").into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        fields.insert("secret".into(), secret.into());
        fields.insert("dnsProvider".into(), "RFC2136".into());
        portico_dns::client(&fields, &Endpoints { timeout: Duration::from_secs(2), ..Endpoints::default() }).unwrap()
    }

    #[tokio::test]
    async fn updates_signed_with_tsig() {
        let knot = Knot::start(&["zone.test", "dev.zone.test"]);
        let dns = client(&knot, knot::SECRET);
        dns.verify().await.unwrap();
        assert_eq!(dns.zone_of("_acme-challenge.a.dev.zone.test").await.unwrap().unwrap().name, "dev.zone.test");
        let zone = dns.zone_of("_acme-challenge.zone.test").await.unwrap().unwrap();
        let name = "_acme-challenge.zone.test";
        let first = dns.create_txt(&zone, name, "value-one").await.unwrap();
        let second = dns.create_txt(&zone, name, "value-two").await.unwrap();
        let mut served = portico_dns::lookup::txt(knot.addr, name).await.unwrap();
        served.sort();
        assert_eq!(served, ["value-one", "value-two"]);
        dns.delete(&zone, &first).await.unwrap();
        assert_eq!(portico_dns::lookup::txt(knot.addr, name).await.unwrap(), ["value-two"]);
        dns.delete(&zone, &second).await.unwrap();
        assert!(portico_dns::lookup::txt(knot.addr, name).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_changes_nothing() {
        let knot = Knot::start(&["zone.test", "dev.zone.test"]);
        let wrong = client(&knot, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZy0=");
        let err = wrong.verify().await.unwrap_err();
        assert!(matches!(err, DnsError::Unauthorized { .. }), "{err}");
        let zone = Zone { name: "zone.test".into(), id: "zone.test".into() };
        assert!(wrong.create_txt(&zone, "_acme-challenge.zone.test", "sneaky").await.is_err());
        assert!(portico_dns::lookup::txt(knot.addr, "_acme-challenge.zone.test").await.unwrap().is_empty());
    }
}
