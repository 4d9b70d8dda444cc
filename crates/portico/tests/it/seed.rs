//! A seed deployment's Redis, written with plain Redis commands exactly as the seed writes
//! it (model-redis hashes of strings, bcrypt users, lua-resty-auto-ssl certificates), used
//! by Portico as it is.

use std::time::Duration;

use http::StatusCode;
use portico_store::{Kind, RedisStore, Store};
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::{Backend, Portico, RedisServer, eventually, tls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use time::OffsetDateTime;

use crate::BIN;

/// The seed's wildcard certificates carry this made-up expiry (year 2100), so that
/// lua-resty-auto-ssl never renews them.
const SEED_SENTINEL_EXPIRY: u64 = 4_120_307_657;

/// A certificate for `names`, valid from `from` to `until` days from now, signed by `ca`.
fn leaf(ca: &Issuer<'_, KeyPair>, names: &[&str], from: i64, until: i64) -> (String, String, i64) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(until);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem(), params.not_after.unix_timestamp())
}

/// model-redis' create: SADD to the index, then one HSET per field, values as strings.
fn seed_record(redis: &RedisServer, kind: &str, key: &str, fields: &[(&str, &str)]) {
    redis.run(&["SADD", &format!("proxy_{kind}"), key]);
    for (field, value) in fields {
        redis.run(&["HSET", &format!("proxy_{kind}_{key}"), field, value]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_deployments_redis_works_as_it_is() {
    let redis = RedisServer::start();
    let backend = Backend::start("seed").await;
    let port = backend.addr.port().to_string();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Seed Test CA");
    let ca = Issuer::new(ca_params, ca_key);

    let host = |name: &str, wildcard: bool| {
        let wildcard = wildcard.to_string();
        seed_record(
            &redis,
            "Host",
            name,
            &[
                ("created_by", "proxyadmin2"),
                ("created_on", "1735689600000"),
                ("updated_by", "__NONE__"),
                ("updated_on", "1735689600000"),
                ("host", name),
                ("ip", "127.0.0.1"),
                ("targetPort", &port),
                ("forcessl", "false"),
                ("targetssl", "false"),
                ("is_cache", "false"),
                ("is_wildcard", &wildcard),
            ],
        );
    };
    host("app.seed.test", false);
    host("*.wild.seed.test", true);
    redis.run(&["HSET", "proxy_Host_*.wild.seed.test", "wildcard_status", "Done"]);

    // An explicit host's certificate near its real end (a day left of 90): due for renewal.
    let (chain, key, app_expiry) = leaf(&ca, &["app.seed.test"], -89, 1);
    let app = json!({"fullchain_pem": chain, "cert_pem": chain, "privkey_pem": key, "expiry": app_expiry});
    redis.run(&["SET", "app.seed.test:latest", &app.to_string()]);
    // The Node app's wildcard certificate: the literal pattern as the name, a made-up expiry.
    let (chain, key, real) = leaf(&ca, &["*.wild.seed.test", "wild.seed.test"], -1, 60);
    let wild = json!({"fullchain_pem": chain, "cert_pem": chain, "privkey_pem": key, "csr_pem": "",
        "expiry": SEED_SENTINEL_EXPIRY, "real_expiry": real});
    redis.run(&["SET", "*.wild.seed.test:latest", &wild.to_string()]);

    let hash = bcrypt::hash("seed-user-password", 10).unwrap().replace("$2y$", "$2b$");
    seed_record(
        &redis,
        "User",
        "proxyadmin2",
        &[
            ("created_by", "__NONE__"),
            ("created_on", "1735689600000"),
            ("username", "proxyadmin2"),
            ("password", &hash),
            ("backing", "redis"),
        ],
    );
    let old_token = "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
    seed_record(
        &redis,
        "AuthToken",
        old_token,
        &[("created_by", "proxyadmin2"), ("token", old_token), ("is_valid", "true")],
    );
    seed_record(
        &redis,
        "DnsProvider",
        "0123456789abcdef",
        &[
            ("id", "0123456789abcdef"),
            ("name", "seed cloudflare"),
            ("dnsProvider", "cloudflare"),
            ("token", "cf-secret-token"),
        ],
    );
    seed_record(
        &redis,
        "Domain",
        "wild.seed.test",
        &[("domain", "wild.seed.test"), ("dnsProvider_id", "0123456789abcdef")],
    );

    let settings = [format!("store.url=\"{}\"", redis.url()), "tls.renew_interval=\"200ms\"".to_owned()];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let p = Portico::start_role(BIN, "serve", &settings);

    // The hosts route.
    let proxy = Proxy::h1(p.http);
    assert_eq!(proxy.get("app.seed.test", "/").await.status, StatusCode::OK);
    assert_eq!(proxy.get("x.wild.seed.test", "/").await.status, StatusCode::OK);

    // A name under the stored wildcard certificate is served that certificate, as it is.
    let served = tls::peek(p.https, "x.wild.seed.test").await;
    assert_eq!(served.names, ["*.wild.seed.test", "wild.seed.test"]);
    assert!(served.issuer.contains("Seed Test CA"), "{}", served.issuer);

    // The explicit host's certificate is taken on and renewed by its real expiry.
    let store = RedisStore::open(&redis.url()).await.unwrap();
    let renewed = eventually(Duration::from_secs(20), "the seed certificate to be renewed", || {
        let store = store.clone();
        async move {
            let state = store.record(Kind::Cert, "app.seed.test").await.unwrap()?;
            (state.get("issuer").map(String::as_str) == Some("internal")).then_some(state)
        }
    })
    .await;
    assert!(renewed["not_after"].parse::<i64>().unwrap() > app_expiry, "{renewed:?}");
    let served = tls::peek(p.https, "app.seed.test").await;
    assert!(!served.issuer.contains("Seed Test CA"), "still the old certificate: {}", served.issuer);
    assert!(
        !p.logs().iter().any(|l| l["fields"]["name"] == "x.wild.seed.test"),
        "a certificate was issued for a name the wildcard covers"
    );

    // The seed's users log in with their bcrypt passwords; their old tokens are not valid
    // (tokens are kept by hash now); providers are listed without their secrets.
    let api = ApiClient::new(p.api);
    let token = api.login("proxyadmin2", "seed-user-password").await;
    assert_eq!(api.call("GET", "/api/host", Some(old_token), None).await.status, StatusCode::UNAUTHORIZED);
    let hosts = api.call("GET", "/api/host?detail=true", Some(&token), None).await;
    assert_eq!(hosts.status, StatusCode::OK);
    assert!(hosts.raw.contains("*.wild.seed.test") && hosts.raw.contains("app.seed.test"), "{}", hosts.raw);
    let providers = api.call("GET", "/api/dns?detail=true", Some(&token), None).await;
    assert!(providers.raw.contains("seed cloudflare"), "{}", providers.raw);
    assert!(!providers.raw.contains("cf-secret-token"), "{}", providers.raw);
}
