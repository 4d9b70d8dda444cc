//! Wildcard certificates through DNS-01 against real Pebble and pebble-challtestsrv: the
//! provider fakes publish the TXT records the client creates through their APIs to
//! challtestsrv, which Pebble asks.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::dns_fake::{FakeDns, Provider};
use portico_test_support::knot::{self, Knot};
use portico_test_support::pebble::{self, Options, Pebble};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, eventually, tls};
use serde_json::{Value, json};

use crate::BIN;

/// Pebble, a fake of `provider` holding `zones` and publishing to Pebble's DNS, and Portico
/// issuing from Pebble with the fake as the provider's API.
async fn setup(provider: Provider, zones: &[&str]) -> (Pebble, FakeDns, Portico) {
    setup_with(provider, zones, &[]).await
}

/// [`setup`] with extra Portico settings.
async fn setup_with(provider: Provider, zones: &[&str], extra: &[&str]) -> (Pebble, FakeDns, Portico) {
    let fake = FakeDns::start(provider, zones).await;
    let key = match provider {
        Provider::Cloudflare => "cloudflare_api",
        Provider::DigitalOcean => "digitalocean_api",
        Provider::Porkbun => "porkbun_api",
    };
    let (pebble, p) = pebble::with_portico_for(BIN, Options::default(), |pebble| {
        fake.publish_to(pebble.ports.chall);
        let mut settings = vec![
            format!("dns.{key}=\"{}\"", fake.base()),
            format!("tls.dns_resolvers=[\"127.0.0.1:{}\"]", pebble.ports.dns),
            "dns.propagation_timeout=\"20s\"".to_owned(),
        ];
        settings.extend(extra.iter().map(|s| s.to_string()));
        settings
    });
    (pebble, fake, p)
}

/// Adds the provider account through the API, which links its zone; returns the admin's
/// token.
async fn add_provider(api: &ApiClient, provider: Provider, domain: &str) -> String {
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body = provider_body(provider, json!({}));
    let created = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    // The provider's zones are linked as domains when it is added.
    assert_eq!(created.json["domains"], json!([domain]), "{}", created.raw);
    token
}

/// The API body that adds an account of `provider` with the fake's credentials, and the
/// fields of `extra`.
fn provider_body(provider: Provider, extra: Value) -> Value {
    let mut body = json!({"name": format!("test {}", provider.kind()), "dnsProvider": provider.kind()});
    for (field, value) in provider.credentials() {
        body[field] = value.into();
    }
    for (field, value) in extra.as_object().into_iter().flatten() {
        body[field] = value.clone();
    }
    body
}

/// Waits until an HTTPS request for `name`, verified against Pebble's roots, is answered.
async fn served_over_https(p: &Portico, pebble: &Pebble, name: &str) {
    let roots = tls::roots(&pebble.root().await);
    eventually(Duration::from_secs(30), &format!("a certificate for {name}"), || {
        let client = Proxy::https(p.https, roots.clone(), false);
        async move { (client.get(name, "/").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
}

/// The last error of the certificate `cert` (as its API path has it, `%2A.zone.test`) once
/// an issuance has failed.
async fn last_error(api: &ApiClient, token: &str, cert: &str) -> String {
    eventually(Duration::from_secs(30), &format!("a failed issuance of {cert}"), || async move {
        let state = api.call("GET", &format!("/api/cert/{cert}"), Some(token), None).await;
        state.json["results"]["last_error"].as_str().filter(|e| !e.is_empty()).map(str::to_owned)
    })
    .await
}

/// Adds the host `*.zone.test` and waits for its wildcard certificate from `pebble`, through
/// DNS-01 on `knot`, and for the challenge records to be removed.
async fn wildcard_through_knot(
    api: &ApiClient,
    token: &str,
    p: &Portico,
    pebble: &Pebble,
    knot: &Knot,
    backend: &Backend,
) {
    add_host(api, token, "*.zone.test", backend).await;
    served_over_https(p, pebble, "x.zone.test").await;
    assert_eq!(tls::peek(p.https, "x.zone.test").await.names, ["*.zone.test", "zone.test"]);
    assert_eq!(pebble.orders(), 1);
    eventually(Duration::from_secs(5), "the records to be removed", || async {
        portico_dns::lookup::txt(knot.addr, "_acme-challenge.zone.test").await.unwrap().is_empty().then_some(())
    })
    .await;
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
    // The status of any name under it is the wildcard's.
    let status = api.call("GET", "/api/cert/anything.zone.test", Some(&token), None).await;
    assert_eq!(status.json["results"]["host"], "*.zone.test", "{}", status.raw);
    assert_eq!(status.json["results"]["step"], "issued", "{}", status.raw);
    assert_eq!(status.json["results"]["names"], json!(["*.zone.test", "zone.test"]), "{}", status.raw);
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

/// One test per SaaS provider for a scenario.
macro_rules! per_provider {
    ($scenario:ident: $($test:ident => $provider:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $scenario(Provider::$provider).await
            }
        )+
    };
}

per_provider!(wildcard_through:
    wildcard_through_cloudflare => Cloudflare,
    wildcard_through_digitalocean => DigitalOcean,
    wildcard_through_porkbun => Porkbun,
);

per_provider!(a_provider_failing_mid_order_cleans_up_and_backs_off:
    cloudflare_failing_mid_order => Cloudflare,
    digitalocean_failing_mid_order => DigitalOcean,
    porkbun_failing_mid_order => Porkbun,
);

/// The provider fails in the middle of an order (the second TXT record): the first record
/// is removed, the failure and its backoff are recorded with the provider's message, the
/// process goes on, and other names still get certificates.
async fn a_provider_failing_mid_order_cleans_up_and_backs_off(provider: Provider) {
    let backend = Backend::start("wild").await;
    let (pebble, fake, p) = setup(provider, &["zone.test"]).await;
    let api = ApiClient::new(p.api);
    let token = add_provider(&api, provider, "zone.test").await;
    fake.fail_creates_after(1);
    add_host(&api, &token, "*.zone.test", &backend).await;
    let state = eventually(Duration::from_secs(20), "the failure to be recorded", || {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let status = api.call("GET", "/api/cert/%2A.zone.test", Some(&token), None).await;
            (status.json["results"]["failures"].as_u64() >= Some(1)).then_some(status.json)
        }
    })
    .await;
    let error = state["results"]["last_error"].as_str().unwrap_or_default().to_owned();
    let said = match provider {
        Provider::Cloudflare => "An internal error has occurred.",
        Provider::DigitalOcean => "Server was unable to give you a response",
        Provider::Porkbun => "503 Service Temporarily Unavailable",
    };
    assert!(error.contains("creating the TXT record") && error.contains(said), "{state}");

    assert!(
        state["results"]["next_attempt"].as_u64() > state["results"]["last_attempt"].as_u64(),
        "a backoff: {state}"
    );
    assert_eq!(state["results"]["step"], "failed", "{state}");
    assert_eq!(state["results"]["failed_step"], "ordered", "it failed before the records were all published: {state}");
    eventually(Duration::from_secs(5), "the first record to be removed", || async {
        fake.records().is_empty().then_some(())
    })
    .await;
    // Names under it get the fallback meanwhile; an explicit host still gets its certificate.
    assert_eq!(tls::peek(p.https, "a.zone.test").await.names, ["portico.invalid"]);
    add_host(&api, &token, "plain.test", &backend).await;
    let roots = tls::roots(&pebble.root().await);
    let answer = Proxy::https(p.https, roots, false).get("plain.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

/// Records that are never served: the order gives up after the provider's own propagation
/// timeout (`propagationTimeout`, one second here, not the global twenty), cleans up, and
/// says it failed waiting for DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_never_served_give_up_after_the_providers_propagation_timeout() {
    let backend = Backend::start("wild").await;
    let (_pebble, fake, p) = setup(Provider::Cloudflare, &["zone.test"]).await;
    fake.publish_nowhere();
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let mut body = provider_body(Provider::Cloudflare, json!({"propagationTimeout": "x"}));
    let bad = api.call("POST", "/api/dns", Some(&token), Some(body.clone())).await;
    assert_eq!(bad.json["keys"][0]["key"], "propagationTimeout", "{}", bad.raw);
    body["propagationTimeout"] = 1.into();
    assert_eq!(api.call("POST", "/api/dns", Some(&token), Some(body)).await.status, StatusCode::OK);
    let created = std::time::Instant::now();
    add_host(&api, &token, "*.zone.test", &backend).await;
    let state = eventually(Duration::from_secs(15), "the order to give up", || {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let status = api.call("GET", "/api/cert/%2A.zone.test", Some(&token), None).await;
            (status.json["results"]["step"] == "failed").then_some(status.json)
        }
    })
    .await;
    assert!(created.elapsed() < Duration::from_secs(10), "gave up after {:?}", created.elapsed());
    assert_eq!(state["results"]["failed_step"], "waiting for DNS", "{state}");
    assert!(state["results"]["last_error"].as_str().unwrap().contains("within 1s"), "{state}");
    eventually(Duration::from_secs(5), "the records to be removed", || async {
        fake.records().is_empty().then_some(())
    })
    .await;
}

/// `_acme-challenge.zone.test` delegated by a CNAME to another zone the provider manages:
/// the record goes where the CNAME points, and Pebble, following it, validates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_delegation_is_followed() {
    let backend = Backend::start("wild").await;
    let (pebble, fake, p) = setup(Provider::Cloudflare, &["zone.test", "acme-delegate.test"]).await;
    pebble.set_cname("_acme-challenge.zone.test", "zone-test.acme-delegate.test").await;
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body = provider_body(Provider::Cloudflare, json!({}));
    assert_eq!(api.call("POST", "/api/dns", Some(&token), Some(body)).await.status, StatusCode::OK);
    add_host(&api, &token, "*.zone.test", &backend).await;
    served_over_https(&p, &pebble, "x.zone.test").await;
    let logs = p.logs();
    let published: Vec<&str> = logs
        .iter()
        .filter(|l| l["fields"]["message"] == "DNS-01 record published")
        .filter_map(|l| l["fields"]["record"].as_str())
        .collect();
    assert_eq!(published, ["zone-test.acme-delegate.test", "zone-test.acme-delegate.test"]);
    eventually(Duration::from_secs(5), "the records to be removed", || async {
        fake.records().is_empty().then_some(())
    })
    .await;
}

/// A seed wildcard certificate (`*.zone:latest` with the seed's made-up `expiry`), near its
/// real end: taken on and renewed through DNS-01, and the new one served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_wildcard_certificate_is_renewed_through_dns01() {
    let backend = Backend::start("wild").await;
    let (pebble, fake, p) = setup_with(Provider::Cloudflare, &["zone.test"], &["tls.renew_interval=\"300ms\""]).await;
    let api = ApiClient::new(p.api);
    let token = add_provider(&api, Provider::Cloudflare, "zone.test").await;
    // As the Node app stored it: a day left of 90, and the made-up `expiry`.
    let mut params = rcgen::CertificateParams::new(vec!["*.zone.test".to_owned(), "zone.test".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(89);
    params.not_after = now + time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let seed = params.self_signed(&key).unwrap();
    let stored = json!({"fullchain_pem": seed.pem(), "cert_pem": seed.pem(), "privkey_pem": key.serialize_pem(),
        "expiry": 4_120_307_657u64});
    {
        use portico_store::Store;
        let store = crate::store_of(&p).await;
        store
            .put_blob(&portico_store::keys::cert_latest("*.zone.test"), stored.to_string().as_bytes(), None)
            .await
            .unwrap();
    }
    add_host(&api, &token, "*.zone.test", &backend).await;
    let roots = tls::roots(&pebble.root().await);
    // The seed's certificate is served (as it is) until the renewed one replaces it.
    let https = p.https;
    let served = eventually(Duration::from_secs(30), "the renewed wildcard certificate", || async move {
        let served = tls::peek(https, "x.zone.test").await;
        served.issuer.contains("Pebble").then_some(served)
    })
    .await;
    let answer = Proxy::https(p.https, roots, false).get("x.zone.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(served.names, ["*.zone.test", "zone.test"]);
    assert!(served.issuer.contains("Pebble"), "the renewed one: {}", served.issuer);
    assert_eq!(pebble.orders(), 1);
    eventually(Duration::from_secs(5), "the records to be removed", || async {
        fake.records().is_empty().then_some(())
    })
    .await;
    assert!(p.logs().iter().any(|l| l["fields"]["message"] == "took on a stored certificate"));
}

/// RFC 2136: a real Knot DNS, authoritative for the zone, takes the TSIG-signed updates,
/// and Pebble asks it for the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_rfc2136_with_knot() {
    let backend = Backend::start("wild").await;
    let knot = Knot::start(&["zone.test"]);
    let options = Options { dns_server: Some(knot.addr), ..Options::default() };
    let (pebble, p) =
        pebble::with_portico_for(BIN, options, |_| vec![format!("tls.dns_resolvers=[\"{}\"]", knot.addr)]);
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let mut body = json!({"name": "knot", "dnsProvider": "RFC2136"});
    for (field, value) in knot.provider_fields("zone.test") {
        body[field] = value.into();
    }
    let created = api.call("POST", "/api/dns", Some(&token), Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    assert_eq!(created.json["domains"], json!(["zone.test"]));
    assert!(!created.raw.contains(knot::SECRET));
    // A wrong secret is refused before anything is stored.
    body["secret"] = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZy0=".into();
    let refused = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
    assert!(refused.raw.contains("TSIG"), "{}", refused.raw);

    wildcard_through_knot(&api, &token, &p, &pebble, &knot, &backend).await;
}

/// A webhook of the admin's (lego's `httpreq` convention; an in-process stand-in publishing
/// to Pebble's DNS): the wildcard certificate through `POST /present` and `/cleanup`, each
/// with the shared secret; a wrong secret's 401 is the issuance's last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_a_webhook() {
    use portico_test_support::dns_fake::{WEBHOOK_SECRET, WebhookDns};
    let backend = Backend::start("wild").await;
    let hook = WebhookDns::start().await;
    let (pebble, p) = pebble::with_portico_for(BIN, Options::default(), |pebble| {
        hook.publish_to(pebble.ports.chall);
        vec![
            format!("tls.dns_resolvers=[\"127.0.0.1:{}\"]", pebble.ports.dns),
            "dns.propagation_timeout=\"20s\"".to_owned(),
        ]
    });
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body = json!({"name": "hook", "dnsProvider": "Webhook", "url": hook.base(), "secret": WEBHOOK_SECRET,
                      "zones": "zone.test, other.test"});
    let created = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    assert_eq!(created.json["domains"], json!(["zone.test", "other.test"]), "{}", created.raw);
    assert!(!created.raw.contains(WEBHOOK_SECRET), "the secret is never shown");
    let bad = json!({"name": "bad", "dnsProvider": "Webhook", "url": "ftp://x", "secret": "s", "zones": "x.test"});
    let refused = api.call("POST", "/api/dns", Some(&token), Some(bad)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);

    add_host(&api, &token, "*.zone.test", &backend).await;
    served_over_https(&p, &pebble, "x.zone.test").await;
    assert_eq!(tls::peek(p.https, "x.zone.test").await.names, ["*.zone.test", "zone.test"]);
    eventually(Duration::from_secs(5), "the records cleaned up", || async { hook.records().is_empty().then_some(()) })
        .await;
    let requests = hook.requests();
    let count = |path: &str| requests.iter().filter(|r| r.starts_with(&format!("POST /dns/{path} "))).count();
    assert_eq!((count("present"), count("cleanup")), (2, 2), "{requests:?}");
    assert!(requests.iter().all(|r| r.contains("\"fqdn\":\"_acme-challenge.zone.test.\"")), "{requests:?}");

    // The same webhook with a wrong secret: its 401 is what the issuance says.
    let provider = created.json["id"].as_str().unwrap().to_owned();
    let changed =
        api.call("PUT", &format!("/api/dns/{provider}"), Some(&token), Some(json!({"secret": "wrong"}))).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.raw);
    add_host(&api, &token, "*.other.test", &backend).await;
    let failed = last_error(&api, &token, "%2A.other.test").await;
    assert!(failed.contains("bad or missing bearer token"), "{failed}");
}

/// An Exec provider: a program the configuration names (`dns.exec.NAME`), run as lego's
/// `exec` convention has it; here a shell script that updates a real Knot zone with
/// `knsupdate`. The API names the program and never takes a path; a program that fails has
/// its output in the issuance's last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_an_exec_program_that_updates_knot() {
    use std::os::unix::fs::PermissionsExt;
    let backend = Backend::start("wild").await;
    let knot = Knot::start(&["zone.test", "other.test"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let update = write(
        "knot-update",
        format!(
            "set -e\ncase \"$1\" in present) verb=add ;; cleanup) verb=del ;; *) echo \"unknown action $1\" >&2; exit 2 ;; esac\n\
             zone=$(echo \"$2\" | sed 's/^_acme-challenge\\.//')\n\
             printf 'server {ip} {port}\\nzone %s\\nupdate %s %s 60 TXT \"%s\"\\nsend\\n' \"$zone\" \"$verb\" \"$2\" \"$3\" \\\n\
             | knsupdate -y {alg}:{key}:{secret}",
            ip = knot.addr.ip(),
            port = knot.addr.port(),
            alg = knot::ALGORITHM,
            key = knot::KEY_NAME,
            secret = knot::SECRET,
        ),
    );
    let refusing = write("refusing", "echo \"the DNS team says no to $2\" >&2\nexit 4".to_owned());
    let programs =
        format!("dns.exec={{knot-update = \"{}\", refusing = \"{}\"}}", update.display(), refusing.display());
    let options = Options { dns_server: Some(knot.addr), ..Options::default() };
    let (pebble, p) = pebble::with_portico_for(BIN, options, |_| {
        vec![format!("tls.dns_resolvers=[\"{}\"]", knot.addr), programs.clone()]
    });
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body = json!({"name": "knot", "dnsProvider": "Exec", "program": "knot-update", "zones": "zone.test"});
    let created = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    assert_eq!(created.json["domains"], json!(["zone.test"]));
    // A path, or a name the configuration does not list, is refused: nothing is stored.
    for program in ["/bin/sh", "knot"] {
        let body = json!({"name": "bad", "dnsProvider": "Exec", "program": program, "zones": "x.test"});
        let refused = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
        assert!(refused.raw.contains("no program is named"), "{}", refused.raw);
    }

    wildcard_through_knot(&api, &token, &p, &pebble, &knot, &backend).await;

    // A program that fails: what it printed is the issuance's last error.
    let body = json!({"name": "no", "dnsProvider": "Exec", "program": "refusing", "zones": "other.test"});
    assert_eq!(api.call("POST", "/api/dns", Some(&token), Some(body)).await.status, StatusCode::OK);
    add_host(&api, &token, "*.other.test", &backend).await;
    let failed = last_error(&api, &token, "%2A.other.test").await;
    assert!(
        failed.contains("the DNS team says no to _acme-challenge.other.test.") && failed.contains("status 4"),
        "{failed}"
    );
}

/// acme-dns (an in-process stand-in faithful to its HTTP API, serving through Pebble's DNS):
/// the registration's fields make the provider; an order is not placed until
/// `_acme-challenge` is a CNAME to the registration's `fulldomain`, and the error says what
/// record to add; then the wildcard certificate comes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_through_acme_dns_once_the_cname_is_in_place() {
    use portico_test_support::dns_fake::AcmeDnsServer;
    let backend = Backend::start("wild").await;
    let (pebble, p) = pebble::with_portico_for(BIN, Options::default(), |pebble| {
        vec![
            format!("tls.dns_resolvers=[\"127.0.0.1:{}\"]", pebble.ports.dns),
            "dns.propagation_timeout=\"20s\"".to_owned(),
        ]
    });
    let server = AcmeDnsServer::start(pebble.ports.chall).await;
    // The admin registers once, as with `curl -X POST <server>/register`.
    let registered = Proxy::h1(server.url().trim_start_matches("http://").parse().unwrap())
        .ask("POST", "localhost", "/register", &[])
        .await;
    assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.text());
    let reg = registered.json();
    let fulldomain = reg["fulldomain"].as_str().unwrap().to_owned();

    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let mut body = json!({"name": "acme-dns", "dnsProvider": "AcmeDns", "server": server.url(), "zones": "zone.test"});
    for field in ["username", "password", "subdomain", "fulldomain"] {
        body[field] = reg[field].clone();
    }
    // Wrong credentials are refused when the provider is added.
    let mut wrong = body.clone();
    wrong["password"] = "not-the-password".into();
    let refused = api.call("POST", "/api/dns", Some(&token), Some(wrong)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
    assert!(refused.raw.contains("forbidden"), "{}", refused.raw);
    let created = api.call("POST", "/api/dns", Some(&token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
    assert!(!created.raw.contains(reg["password"].as_str().unwrap()), "the password is never shown");

    // No CNAME yet: no order, and the error names the record to add.
    add_host(&api, &token, "*.zone.test", &backend).await;
    let failed = last_error(&api, &token, "%2A.zone.test").await;
    assert!(failed.contains(&format!("`_acme-challenge.zone.test. CNAME {fulldomain}.`")), "{failed}");
    assert_eq!(pebble.orders(), 0, "no order placed before the delegation is in place");

    pebble.set_cname("_acme-challenge.zone.test", &fulldomain).await;
    let renewed = api.call("PUT", "/api/host/%2A.zone.test/renew", Some(&token), None).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.raw);
    served_over_https(&p, &pebble, "x.zone.test").await;
    assert_eq!(tls::peek(p.https, "x.zone.test").await.names, ["*.zone.test", "zone.test"]);
    assert_eq!(pebble.orders(), 1);
    // The verification's placeholder, then the two values of the wildcard and its zone.
    assert_eq!(server.updates(), 3);
}
