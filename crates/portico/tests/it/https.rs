//! HTTPS with certificates from the internal CA: the first request to a new host, HTTP/2 and
//! WebSocket over TLS, the fallback certificate, the 421 rule, restarts, `ca export`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, eventually, tls};
use rustls::RootCertStore;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{BIN, METRICS, issuances, portico};

/// The internal CA's root, as `portico ca export` prints it.
pub(crate) fn trusted(p: &Portico) -> RootCertStore {
    let out = p.cli("ca", &["export"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    tls::roots(&pem)
}

#[tokio::test]
async fn first_https_request_gets_a_certificate_that_chains_to_the_exported_root() {
    let backend = Backend::start("secure").await;
    let p = portico(&[]);
    p.add_host("secure.example.test", backend.addr, &[]);
    let roots = trusted(&p);

    let h1 = Proxy::https(p.https, roots.clone(), false);
    let answer = h1.get("secure.example.test", "/first").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let echo = answer.json();
    assert_eq!(echo["backend"], "secure");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");

    // HTTP/2 over TLS (ALPN h2) end to end.
    let h2 = Proxy::https(p.https, roots.clone(), true);
    let answer = h2.get("secure.example.test", "/second").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["uri"], "/second");
    // The server picks h2 by ALPN when offered (not only h2 with prior knowledge)...
    let offered = tls::client_config(Some(roots.clone()), &["h2", "http/1.1"]);
    let stream = tls::connect(p.https, "secure.example.test", offered).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // ...and speaks TLS 1.2 as well as 1.3.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
        let stream = tls::connect(p.https, "secure.example.test", std::sync::Arc::new(config)).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }

    let served = tls::peek(p.https, "secure.example.test").await;
    assert_eq!(served.names, vec!["secure.example.test"]);
    assert!(served.issuer.contains("Portico Internal Root CA"), "{}", served.issuer);
    assert_eq!(served.key, "ECDSA P-256");
    assert!(served.not_after - served.not_before > 6 * 86_400, "a week-long leaf by default");

    // The API shows it.
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let status = api.call("GET", "/api/cert/secure.example.test", Some(&token), None).await;
    assert_eq!(status.json["results"]["issued_by"], "internal", "{}", status.raw);
    assert_eq!(status.json["results"]["status"], "valid");
    assert_eq!(status.json["results"]["not_after"], served.not_after * 1000);
    assert!(status.json["results"]["next_attempt"].as_i64().unwrap() < served.not_after * 1000);
}

#[tokio::test]
async fn names_no_host_matches_get_the_fallback_certificate_and_no_issuance() {
    let backend = Backend::start("known").await;
    let p = portico(&[METRICS]);
    p.add_host("known.example.test", backend.addr, &[]);
    let unknown = tls::peek(p.https, "unknown.example.test").await;
    assert_eq!(unknown.names, vec!["portico.invalid"]);
    // No SNI at all (an IP literal sends none), and an IP literal as the host.
    let no_sni = tls::peek(p.https, "127.0.0.1").await;
    assert_eq!(no_sni, unknown, "one fallback certificate, never another host's");
    // A trusting client refuses it.
    let strict = tls::client_config(Some(trusted(&p)), &[]);
    assert!(tls::connect(p.https, "unknown.example.test", strict).await.is_err());
    // Nothing was issued for those names.
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let status = api.call("GET", "/api/cert/unknown.example.test", Some(&token), None).await;
    assert_eq!(status.status, StatusCode::NOT_FOUND, "{}", status.raw);
    assert_eq!(issuances(&p, "internal").await, 0.0);
    // The known name still gets its own.
    assert_eq!(tls::peek(p.https, "known.example.test").await.names, vec!["known.example.test"]);
}

#[tokio::test]
async fn concurrent_first_handshakes_cause_one_issuance() {
    let backend = Backend::start("many").await;
    let p = portico(&[METRICS]);
    p.add_host("**.many.example.test", backend.addr, &[]);
    let roots = trusted(&p);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = Proxy::https(p.https, roots.clone(), i % 2 == 0);
        tasks.push(tokio::spawn(async move { client.get("a.b.many.example.test", "/").await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(issuances(&p, "internal").await, 1.0, "20 concurrent first handshakes, one issuance");
    // A different name under the same pattern gets its own certificate.
    assert_eq!(tls::peek(p.https, "c.many.example.test").await.names, vec!["c.many.example.test"]);
}

#[tokio::test]
async fn a_request_for_a_host_the_certificate_does_not_cover_gets_421() {
    let backend = Backend::start("two").await;
    let p = portico(&[]);
    p.add_host("one.example.test", backend.addr, &[]);
    p.add_host("two.example.test", backend.addr, &[]);
    let config = tls::client_config(Some(trusted(&p)), &["http/1.1"]);
    let stream = tls::connect(p.https, "one.example.test", config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let ask = |host: &str| {
        http::Request::builder()
            .uri("/")
            .header("host", host)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let ok = sender.send_request(ask("one.example.test")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let other = sender.send_request(ask("two.example.test")).await.unwrap();
    assert_eq!(other.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn websocket_over_tls() {
    let echo = Backend::websocket_echo().await;
    let p = portico(&[]);
    p.add_host("wss.example.test", echo.addr, &[]);
    let config = tls::client_config(Some(trusted(&p)), &["http/1.1"]);
    let stream = tls::connect(p.https, "wss.example.test", config).await.unwrap();
    let url = format!("wss://wss.example.test:{}/socket", p.https.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade over TLS");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn api_hosts_redirect_to_https_by_default_and_certificates_survive_a_restart() {
    let backend = Backend::start("kept").await;
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body = json!({"host": "kept.example.test", "ip": "127.0.0.1", "targetPort": backend.addr.port()});
    let made = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    assert_eq!(made.json["forcessl"], true, "{}", made.raw);
    p.wait_routed();
    let plain = Proxy::h1(p.http).get("kept.example.test", "/x").await;
    assert_eq!(plain.status, StatusCode::PERMANENT_REDIRECT);
    let first = tls::peek(p.https, "kept.example.test").await;

    let p = Portico::start_in(BIN, p.into_data_dir(), &[METRICS]);
    let again = tls::peek(p.https, "kept.example.test").await;
    assert_eq!(again, first, "the stored certificate is served after a restart");
    assert_eq!(issuances(&p, "internal").await, 0.0);
    let answer = Proxy::https(p.https, trusted(&p), false).get("kept.example.test", "/x").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn slow_clients_are_dropped_at_the_handshake_deadline() {
    let p = portico(&["proxy.handshake_timeout=\"300ms\""]);
    let mut stream = tokio::net::TcpStream::connect(p.https).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut stream, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the silent client is disconnected: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn certificates_from_a_seed_deployment_are_served_as_they_are() {
    let backend = Backend::start("seed").await;
    let p = portico(&[METRICS]);
    // lua-resty-auto-ssl's JSON at `<name>:latest`, as the seed's Redis holds it (with its
    // hard-coded expiry sentinel).
    let made = rcgen::generate_simple_self_signed(vec!["seed.example.test".to_owned()]).unwrap();
    let seed = json!({
        "fullchain_pem": made.cert.pem(),
        "privkey_pem": made.signing_key.serialize_pem(),
        "cert_pem": made.cert.pem(),
        "expiry": 4120307657u64,
    });
    {
        use portico_store::Store;
        let store = crate::store_of(&p).await;
        let key = portico_store::keys::cert_latest("seed.example.test");
        store.put_blob(&key, seed.to_string().as_bytes(), None).await.unwrap();
    }
    p.add_host("seed.example.test", backend.addr, &[]);
    let served = tls::peek(p.https, "seed.example.test").await;
    assert_eq!(served.names, vec!["seed.example.test"]);
    assert!(served.issuer.contains("rcgen"), "the planted certificate, not a new one: {}", served.issuer);
    assert_eq!(issuances(&p, "internal").await, 0.0);
}

/// Made-up names under a wildcard pattern draw on a budget of their own: after a flood of
/// them, a new explicit host still gets its certificate at once, and renewals go on.
#[tokio::test]
async fn a_flood_of_names_under_a_pattern_starves_neither_new_hosts_nor_renewals() {
    let backend = Backend::start("flood").await;
    let settings = [
        "tls.max_issuances_per_minute=5",
        "tls.max_pattern_issuances_per_minute=3",
        "tls.internal_lifetime=\"9s\"",
        "tls.renew_interval=\"1s\"",
    ];
    let p = portico(&settings);
    p.add_host("steady.example.test", backend.addr, &[]);
    p.add_host("**.flood.example.test", backend.addr, &[]);
    assert_eq!(tls::peek(p.https, "steady.example.test").await.names, vec!["steady.example.test"]);

    let https = p.https;
    let flood: Vec<_> = (0..40)
        .map(|i| tokio::spawn(async move { (i, tls::peek(https, &format!("x{i}.flood.example.test")).await) }))
        .collect();
    let mut issued = 0;
    for task in flood {
        let (i, served) = task.await.unwrap();
        if served.names == vec![format!("x{i}.flood.example.test")] {
            issued += 1;
        } else {
            assert_eq!(served.names, vec!["portico.invalid"], "the fallback, never another name's certificate");
        }
    }
    assert_eq!(issued, 3, "the budget of names under wildcard patterns");

    // (Internal-CA leaves start five minutes back, so a 9-second one is due at every sweep.)
    let after_flood = tls::peek(https, "steady.example.test").await.not_after;
    p.add_host("new.example.test", backend.addr, &[]);
    assert_eq!(tls::peek(p.https, "new.example.test").await.names, vec!["new.example.test"]);
    eventually(Duration::from_secs(30), "steady.example.test to be renewed after the flood", || async {
        (tls::peek(https, "steady.example.test").await.not_after > after_flood).then_some(())
    })
    .await;
}

/// Names under a wildcard pattern are capped per pattern, renewed only when used since they
/// were issued, and an unused one is removed once expired, which frees its place.
#[tokio::test]
async fn names_under_a_pattern_are_capped_and_renewed_only_when_used() {
    let backend = Backend::start("cap").await;
    let settings = ["tls.max_certs_per_pattern=2", "tls.internal_lifetime=\"6s\"", "tls.renew_interval=\"1s\""];
    let p = portico(&settings);
    p.add_host("*.cap.example.test", backend.addr, &[]);
    let https = p.https;
    let used = tls::peek(https, "used.cap.example.test").await;
    assert_eq!(used.names, vec!["used.cap.example.test"]);
    assert_eq!(tls::peek(https, "idle.cap.example.test").await.names, vec!["idle.cap.example.test"]);
    assert_eq!(tls::peek(https, "third.cap.example.test").await.names, vec!["portico.invalid"], "capped");

    // `used` keeps being asked for and is renewed; `idle` is never asked for again.
    eventually(Duration::from_secs(30), "used.cap.example.test to be renewed", || async {
        (tls::peek(https, "used.cap.example.test").await.not_after > used.not_after).then_some(())
    })
    .await;
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    eventually(Duration::from_secs(30), "idle.cap.example.test's certificate to be removed", || {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let status = api.call("GET", "/api/cert/idle.cap.example.test", Some(&token), None).await.status;
            (status == StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;
    assert_eq!(tls::peek(https, "third.cap.example.test").await.names, vec!["third.cap.example.test"]);
}

/// The issuance budget holds across the cluster: two processes on one store share it.
#[tokio::test]
async fn the_issuance_budget_is_shared_by_every_process_on_the_store() {
    let backend = Backend::start("shared").await;
    let p = portico(&["tls.max_pattern_issuances_per_minute=3"]);
    p.add_host("**.shared.example.test", backend.addr, &[]);
    let other = p.start_beside("proxy", &["tls.max_pattern_issuances_per_minute=3"]);
    // The shared count is per clock minute: keep the handshakes below inside one.
    let into_minute = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if into_minute >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    let mut issued = 0;
    for i in 0..8 {
        for (node, https) in [("a", p.https), ("b", other.https)] {
            let name = format!("{node}{i}.shared.example.test");
            if tls::peek(https, &name).await.names == vec![name.clone()] {
                issued += 1;
            }
        }
    }
    assert_eq!(issued, 3, "one budget for the cluster, not one per process");
}

/// A certificate stored under a name it does not cover (as a seed deployment may hold one)
/// is never served for that name: the name gets its own.
#[tokio::test]
async fn a_stored_certificate_is_served_only_for_names_it_covers() {
    let backend = Backend::start("covers").await;
    let p = portico(&[]);
    let other = rcgen::generate_simple_self_signed(vec!["other.example.test".to_owned()]).unwrap();
    let planted = json!({"fullchain_pem": other.cert.pem(), "privkey_pem": other.signing_key.serialize_pem(),
        "cert_pem": other.cert.pem(), "expiry": 4120307657u64});
    {
        use portico_store::Store;
        let store = crate::store_of(&p).await;
        let key = portico_store::keys::cert_latest("mine.example.test");
        store.put_blob(&key, planted.to_string().as_bytes(), None).await.unwrap();
    }
    p.add_host("mine.example.test", backend.addr, &[]);
    let served = tls::peek(p.https, "mine.example.test").await;
    assert_eq!(served.names, vec!["mine.example.test"], "its own, not the planted one for another name");
    assert!(!served.issuer.contains("rcgen"), "{}", served.issuer);
}

/// A client that prefers the hybrid post-quantum key exchange (as browsers do) gets it; one
/// without it gets X25519. Either way the server picks AES-128-GCM with SHA-256 over the
/// client's first choice (AES-256 with SHA-384, as OpenSSL clients order them): its key
/// schedule costs less.
#[tokio::test]
async fn handshakes_use_post_quantum_key_exchange_when_the_client_prefers_it_and_aes_128() {
    let backend = Backend::start("pq").await;
    let p = portico(&[]);
    p.add_host("pq.example.test", backend.addr, &[]);
    let roots = trusted(&p);
    let client = |provider: rustls::crypto::CryptoProvider| {
        let mut provider = provider;
        // The client's own order: AES-256 first, as OpenSSL 3 sends it.
        provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        provider.kx_groups.sort_by_key(|g| g.name() != rustls::NamedGroup::X25519MLKEM768);
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        )
    };
    for (provider, group) in [
        (rustls::crypto::aws_lc_rs::default_provider(), rustls::NamedGroup::X25519MLKEM768),
        (rustls::crypto::ring::default_provider(), rustls::NamedGroup::X25519),
    ] {
        let stream = tls::connect(p.https, "pq.example.test", client(provider)).await.expect("handshake");
        let (_, conn) = stream.get_ref();
        assert_eq!(conn.negotiated_key_exchange_group().map(|g| g.name()), Some(group));
        assert_eq!(
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}

/// A client resumes its TLS session on its next connection, even after 300 other clients
/// made sessions of their own in between (more than an in-memory session cache keeps).
#[tokio::test]
async fn sessions_resume_after_many_other_clients() {
    let backend = Backend::start("resume").await;
    let p = portico(&[]);
    p.add_host("resume.example.test", backend.addr, &[]);
    let roots = trusted(&p);
    let returning = tls::client_config(Some(roots.clone()), &[]);
    let mut first = tls::connect(p.https, "resume.example.test", returning.clone()).await.unwrap();
    assert_eq!(first.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // TLS 1.3 hands the session over after the handshake: read a response to take it.
    first.write_all(b"GET / HTTP/1.1\r\nHost: resume.example.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    for _ in 0..300 {
        // Each a new client: a configuration of its own, so a session store of its own.
        let other = tls::client_config(Some(roots.clone()), &[]);
        let stream = tls::connect(p.https, "resume.example.test", other).await.unwrap();
        assert_eq!(stream.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
    }
    let again = tls::connect(p.https, "resume.example.test", returning).await.unwrap();
    assert_eq!(again.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
}

/// An ACME HTTP-01 request is answered for a name a host matches, before that host's
/// redirect to HTTPS; for any other name there is nothing to answer (no store read): 404,
/// even when an answer was planted for it.
#[tokio::test]
async fn http01_answers_only_names_a_host_matches() {
    let backend = Backend::start("acme-path").await;
    let p = portico(&[]);
    p.add_host("matched.example.test", backend.addr, &["--forcessl"]);
    {
        use portico_store::Store;
        let store = crate::store_of(&p).await;
        for name in ["matched.example.test", "nohost.example.test"] {
            let key = portico_store::keys::http01(name, "tok-1");
            store.put_blob(&key, format!("tok-1.{name}").as_bytes(), Some(Duration::from_secs(60))).await.unwrap();
        }
    }
    let proxy = Proxy::h1(p.http);
    let answer = proxy.get("matched.example.test", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!((answer.status, answer.text()), (StatusCode::OK, "tok-1.matched.example.test".to_owned()));
    let other = proxy.get("matched.example.test", "/.well-known/acme-challenge/other").await;
    assert_eq!(other.status, StatusCode::PERMANENT_REDIRECT, "no answer pending: the host's redirect");
    let unmatched = proxy.get("nohost.example.test", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!(unmatched.status, StatusCode::NOT_FOUND, "{}", unmatched.text());
}
