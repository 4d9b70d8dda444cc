//! The seed's own UI against Portico's API: each request exactly as its pages send it
//! (jQuery: the `auth-token` header, `application/json; charset=utf-8`, its paths as they are
//! written, trailing slashes included), and the fields its templates read.

use http::StatusCode;
use portico_test_support::client::{ApiClient, Reply};
use portico_test_support::dns_fake::{self, FakeDns, Provider};
use serde_json::{Value, json};

use crate::{admin, portico};

/// What the seed's `app.api.*` sends: `/api/` + the page's path, its token, JSON.
async fn seed(api: &ApiClient, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
    let mut headers = vec![("auth-token", token.to_owned())];
    headers.push(("content-type", "application/json; charset=utf-8".to_owned()));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    api.raw(method, &format!("/api/{path}"), &headers, body).await
}

/// The Users page (`user/?detail=true`, `user/`), adding a DNS provider (`dns/`) and hosts
/// (`host/`): Express treats a trailing slash as the path without it, and so does Portico.
#[tokio::test]
async fn paths_with_a_trailing_slash_are_the_paths_without_it() {
    let fake = FakeDns::start(Provider::Cloudflare, &["slash.test"]).await;
    let p = portico(&[&format!("dns.cloudflare_api=\"{}\"", fake.base())]);
    let (api, root) = admin(&p).await;

    // The Users page's form, as `formAJAX` serialises it: a hidden `delete` and the repeated
    // password come along.
    let form =
        json!({"delete": "false", "username": "sam", "password": "sam-password-1", "passwordMatch": "sam-password-1"});
    let added = seed(&api, "POST", "user/", &root, Some(form)).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.raw);
    assert!(!added.raw.contains("sam-password-1"));
    // Its per-row password change, then the user's own login with it.
    let changed = seed(&api, "PUT", "user/password/sam", &root, Some(json!({"password": "sam-password-2"}))).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.raw);
    api.login("sam", "sam-password-2").await;
    let users = seed(&api, "GET", "user/?detail=true", &root, None).await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.raw);
    let names: Vec<&str> =
        users.json["results"].as_array().unwrap().iter().filter_map(|u| u["username"].as_str()).collect();
    assert_eq!(names, ["admin", "sam"], "{}", users.raw);

    let provider = json!({"name": "main", "dnsProvider": "Cloudflare", "token": dns_fake::CLOUDFLARE_TOKEN});
    let provider = seed(&api, "POST", "dns/", &root, Some(provider)).await;
    assert_eq!(provider.status, StatusCode::OK, "{}", provider.raw);
    assert_eq!(seed(&api, "GET", "dns/?detail=true", &root, None).await.json["results"][0]["name"], "main");

    let host = json!({"host": "app.slash.test", "ip": "127.0.0.1", "targetPort": 8080, "forcessl": true, "targetssl": false, "challengeType": "HTTP-01"});
    let host = seed(&api, "POST", "host/", &root, Some(host)).await;
    assert_eq!(host.status, StatusCode::OK, "{}", host.raw);
    assert_eq!(seed(&api, "GET", "host/", &root, None).await.json["results"], json!(["app.slash.test"]));
    let edited = seed(&api, "PUT", "host/app.slash.test/", &root, Some(json!({"targetPort": 8081}))).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.raw);
    assert_eq!(edited.json["targetPort"], 8081);
    // Only trailing slashes go: the path is otherwise what was asked.
    assert_eq!(seed(&api, "GET", "host//app.slash.test", &root, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(seed(&api, "GET", "nothing-here/", &root, None).await.status, StatusCode::NOT_FOUND);
}

/// The host list's three downloads (`cert/<host>`, then `data.cert_pem`, `data.fullchain_pem`,
/// `data.privkey_pem`): the seed answers the stored JSON flat. The key goes to admins only,
/// and every export is logged.
#[tokio::test]
async fn certificate_downloads_read_the_seed_fields() {
    let p = portico(&[]);
    let (api, root) = admin(&p).await;
    let cert = rcgen::generate_simple_self_signed(vec!["dl.example.test".to_owned()]).unwrap();
    let key_pem = cert.signing_key.serialize_pem();
    let chain = format!("{}{}", cert.cert.pem(), cert.cert.pem());
    let stored = json!({"fullchain_pem": chain, "cert_pem": cert.cert.pem(), "privkey_pem": key_pem, "expiry": 4_102_444_800u64});
    {
        let store = crate::store_of(&p).await;
        use portico_store::Store;
        let blob = stored.to_string();
        store.put_blob(&portico_store::keys::cert_latest("dl.example.test"), blob.as_bytes(), None).await.unwrap();
    }
    let data = seed(&api, "GET", "cert/dl.example.test", &root, None).await;
    assert_eq!(data.status, StatusCode::OK, "{}", data.raw);
    assert_eq!(data.json["cert_pem"], cert.cert.pem());
    assert_eq!(data.json["fullchain_pem"], chain);
    assert_eq!(data.json["privkey_pem"], key_pem);
    assert_eq!(data.json["expiry"], 4_102_444_800u64);
    // Portico's own view is still there.
    assert_eq!(data.json["results"]["names"], json!(["dl.example.test"]));
    let logged = p.logged("private key exported through the API").await;
    assert_eq!(logged["fields"]["host"], "dl.example.test");
    assert!(!logged.to_string().contains("PRIVATE KEY"));

    // A plain user gets the certificates, never the key.
    seed(&api, "POST", "user/", &root, Some(json!({"username": "una", "password": "una-password-1"}))).await;
    let una = api.login("una", "una-password-1").await;
    let plain = seed(&api, "GET", "cert/dl.example.test", &una, None).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.raw);
    assert_eq!(plain.json["cert_pem"], cert.cert.pem());
    assert!(!plain.raw.contains("PRIVATE KEY"), "{}", plain.raw);
    // An admin's client that does not want the key says so.
    let without = seed(&api, "GET", "cert/dl.example.test?include_private_key=false", &root, None).await;
    assert_eq!(without.json["fullchain_pem"], chain);
    assert!(!without.raw.contains("PRIVATE KEY"), "{}", without.raw);
}

/// Adding `*.zone` offers DNS-01 when `dns/domain/*.zone` finds the zone; the host list shows
/// each host's provider (`domain.provider.displayIconHtml`, `displayName`, `name`); the DNS
/// page lists each provider's `domains`.
#[tokio::test]
async fn wildcards_find_their_zone_and_hosts_show_their_provider() {
    let fake = FakeDns::start(Provider::Cloudflare, &["zone.test"]).await;
    let p = portico(&[&format!("dns.cloudflare_api=\"{}\"", fake.base())]);
    let (api, root) = admin(&p).await;
    let provider = json!({"name": "main", "dnsProvider": "Cloudflare", "token": dns_fake::CLOUDFLARE_TOKEN});
    let provider = seed(&api, "POST", "dns/", &root, Some(provider)).await;
    let id = provider.json["id"].as_str().unwrap().to_owned();

    for asked in ["*.zone.test", "**.zone.test", "api.*.zone.test", "*.deep.zone.test", "zone.test"] {
        let found = seed(&api, "GET", &format!("dns/domain/{asked}"), &root, None).await;
        assert_eq!(found.status, StatusCode::OK, "{asked}: {}", found.raw);
        let results = found.json["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{asked}: {}", found.raw);
        assert_eq!(results[0]["domain"], "zone.test");
        assert_eq!(results[0]["provider"]["id"], id.as_str());
    }
    for outside in ["*.other.test", "*.test"] {
        let missing = seed(&api, "GET", &format!("dns/domain/{outside}"), &root, None).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{outside}: {}", missing.raw);
    }

    let providers = seed(&api, "GET", "dns/?detail=true", &root, None).await;
    let listed = &providers.json["results"][0];
    assert_eq!(listed["domains"][0]["domain"], "zone.test", "{}", providers.raw);
    assert!(listed["displayIconHtml"].as_str().unwrap().starts_with("data:image/svg+xml,"), "{listed}");
    assert!(listed["displayIconUni"].as_str().unwrap().starts_with("&#x"), "{listed}");
    assert!(!providers.raw.contains(dns_fake::CLOUDFLARE_TOKEN));
    let one = seed(&api, "GET", &format!("dns/{id}"), &root, None).await;
    assert_eq!(one.json["results"]["domains"][0]["domain"], "zone.test");

    for host in ["*.zone.test", "elsewhere.test"] {
        let body = json!({"host": host, "ip": "127.0.0.1", "targetPort": 8080, "forcessl": true, "targetssl": false});
        assert_eq!(seed(&api, "POST", "host", &root, Some(body)).await.status, StatusCode::OK);
    }
    let hosts = seed(&api, "GET", "host?detail=1&provider=1", &root, None).await;
    let by_name =
        |name: &str| hosts.json["results"].as_array().unwrap().iter().find(|h| h["host"] == name).cloned().unwrap();
    let wildcard = by_name("*.zone.test");
    assert_eq!(wildcard["domain"]["domain"], "zone.test", "{wildcard}");
    assert_eq!(wildcard["domain"]["provider"]["name"], "main");
    assert_eq!(wildcard["domain"]["provider"]["displayName"], "CloudFlare");
    assert!(wildcard["domain"]["provider"]["displayIconHtml"].is_string());
    assert_eq!(by_name("elsewhere.test")["domain"], Value::Null);
    assert!(!hosts.raw.contains(dns_fake::CLOUDFLARE_TOKEN));
    let one = seed(&api, "GET", "host/*.zone.test", &root, None).await;
    assert_eq!(one.json["results"]["domain"]["provider"]["dnsProvider"], "Cloudflare");
}
