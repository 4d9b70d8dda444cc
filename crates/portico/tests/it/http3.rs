//! HTTP/3 over QUIC, asked of Portico by aioquic (a client nobody here wrote, from PyPI):
//! the same routing, forwarding, policies and metrics as over TCP, `Alt-Svc` on HTTPS
//! answers, the internal CA's certificate checked by the client, several requests at once.

use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::Proxy;
use portico_test_support::{Backend, Portico, eventually};
use serde_json::Value;

use crate::https::trusted;
use crate::{METRICS, issuances, portico, sample};

/// What the HTTP/3 client printed: one answer per line, or its complaint.
fn h3(p: &Portico, name: &str, cafile: Option<&std::path::Path>, args: &[&str]) -> Result<Vec<Value>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h3_client.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(p.https.port().to_string()).arg(name).args(args);
    if let Some(cafile) = cafile {
        command.arg("--cafile").arg(cafile);
    }
    let out = command.output().expect("python3 runs (and has aioquic: scripts/test installs it)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(text.lines().map(|line| serde_json::from_str(line).unwrap()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_serves_the_same_hosts_as_tcp_and_is_advertised() {
    let backend = Backend::start("over-quic").await;
    let p = portico(&[METRICS, "proxy.http3=true"]);
    p.add_host("h3.example.test", backend.addr, &[]);
    let roots = trusted(&p);
    let dir = tempfile::tempdir().unwrap();
    let cafile = dir.path().join("root.pem");
    std::fs::write(&cafile, p.cli("ca", &["export"], "").stdout).unwrap();

    // Over TCP first: the answer advertises HTTP/3 on the same port.
    let tcp = Proxy::https(p.https, roots, false).get("h3.example.test", "/first").await;
    assert_eq!(tcp.status, StatusCode::OK);
    let alt_svc = tcp.headers.get("alt-svc").expect("Alt-Svc on an HTTPS answer").to_str().unwrap();
    assert_eq!(alt_svc, format!("h3=\":{}\"; ma=86400", p.https.port()));
    let plain = Proxy::h1(p.http).get("h3.example.test", "/").await;
    assert!(plain.headers.get("alt-svc").is_none(), "not on plain HTTP");

    // Over QUIC: the certificate chains to the internal CA's root for the name, and the
    // request goes to the target as any HTTPS request does.
    let answers = h3(&p, "h3.example.test", Some(&cafile), &["--path", "/over/quic?x=1"]).unwrap();
    let answer = &answers[0];
    assert_eq!(answer["status"], 200, "{answer}");
    let echo: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["backend"], "over-quic");
    assert_eq!(echo["uri"], "/over/quic?x=1");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(echo["headers"]["host"][0], "h3.example.test");
    assert!(answer["headers"]["x-request-id"][0].as_str().is_some_and(|id| !id.is_empty()), "{answer}");
    assert!(answer["headers"].get("keep-alive").is_none(), "no connection-specific header: {answer}");

    // A body goes through; several requests at once on one connection, twice over.
    let posted = h3(&p, "h3.example.test", Some(&cafile), &["--method", "POST", "--data", "twelve bytes"]).unwrap();
    let echo: Value = serde_json::from_str(posted[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!((echo["method"].as_str(), echo["body_len"].as_u64()), (Some("POST"), Some(12)), "{echo}");
    let many = h3(&p, "h3.example.test", Some(&cafile), &["--parallel", "8", "--repeat", "2"]).unwrap();
    assert_eq!(many.len(), 16);
    assert!(many.iter().all(|a| a["status"] == 200), "{many:?}");

    // Counted as HTTP/3 in the metrics, beside the TCP requests.
    let counted = r#"portico_http_requests_total{host="h3.example.test",status="2xx",protocol="HTTP/3.0"}"#;
    eventually(Duration::from_secs(5), "HTTP/3 requests counted", || async {
        (sample(&p, counted).await >= Some(18.0)).then_some(())
    })
    .await;

    // The host's policies hold over QUIC: denied addresses get Portico's 403.
    let out = p.host(&["update", "h3.example.test", "--deny", "127.0.0.0/8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p.wait_routed();
    let denied = h3(&p, "h3.example.test", Some(&cafile), &[]).unwrap();
    assert_eq!(denied[0]["status"], 403, "{}", denied[0]);
    // A name no host has: the fallback certificate (taken unchecked here), which covers no
    // name, so 421 as over TCP; and no certificate is issued for it.
    let unknown = h3(&p, "nobody.example.test", None, &[]).unwrap();
    assert_eq!(unknown[0]["status"], 421, "{}", unknown[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_quic_handshake_for_a_new_name_gets_its_certificate() {
    let backend = Backend::start("fresh").await;
    let p = portico(&[METRICS, "proxy.http3=true"]);
    p.add_host("fresh.example.test", backend.addr, &[]);
    let dir = tempfile::tempdir().unwrap();
    let cafile = dir.path().join("root.pem");
    std::fs::write(&cafile, p.cli("ca", &["export"], "").stdout).unwrap();
    assert_eq!(issuances(&p, "internal").await, 0.0);
    // No TCP handshake before: the very first QUIC handshake, by a client that checks the
    // certificate, gets the name's own (issued while its first packets waited).
    let answers = h3(&p, "fresh.example.test", Some(&cafile), &[]).expect("the first QUIC handshake succeeds");
    assert_eq!(answers[0]["status"], 200, "{}", answers[0]);
    assert_eq!(issuances(&p, "internal").await, 1.0, "issued once");
}

#[tokio::test]
async fn without_http3_nothing_is_advertised() {
    let backend = Backend::start("tcp-only").await;
    let p = portico(&[]);
    p.add_host("tcp.example.test", backend.addr, &[]);
    let answer = Proxy::https(p.https, trusted(&p), false).get("tcp.example.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers.get("alt-svc").is_none());
    assert!(h3(&p, "tcp.example.test", None, &[]).is_err(), "no HTTP/3 endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_over_http3() {
    let backend = Backend::start("for-chromium").await;
    let p = portico(&[METRICS, "proxy.http3=true"]);
    p.add_host("browser.example.test", backend.addr, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../browser/h3.mjs");
    let port = p.https.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("H3_NAME", "browser.example.test")
            .env("H3_PORT", port)
            .output()
            .expect("node (./scripts/test installs it, with playwright-core)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["protocol"], "h3", "{seen}");
    assert!(seen["text"].as_str().unwrap().contains("for-chromium"), "the backend's answer: {seen}");
    let counted = r#"portico_http_requests_total{host="browser.example.test",status="2xx",protocol="HTTP/3.0"}"#;
    assert!(sample(&p, counted).await >= Some(1.0), "Portico answered it over HTTP/3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_taken_only_when_configured() {
    let backend = Backend::start("early").await;
    let dir = tempfile::tempdir().unwrap();
    let cafile = dir.path().join("root.pem");
    for early in [false, true] {
        let p = portico(&["proxy.http3=true", &format!("proxy.http3_0rtt={early}")]);
        p.add_host("early.example.test", backend.addr, &[]);
        std::fs::write(&cafile, p.cli("ca", &["export"], "").stdout).unwrap();
        // A resumed connection sends its request at once: in 0-RTT when Portico takes it.
        let answers = h3(&p, "early.example.test", Some(&cafile), &["--resume"]).unwrap();
        let resumed = &answers[1];
        assert_eq!(resumed["status"], 200, "{resumed}");
        assert_eq!(resumed["resumed"], true, "the session resumed: {resumed}");
        assert_eq!(resumed["early_data"], early, "0-RTT taken only with proxy.http3_0rtt: {resumed}");
        // An unsafe method sent in 0-RTT is still answered (acted on once the handshake
        // completes).
        let posted =
            h3(&p, "early.example.test", Some(&cafile), &["--resume", "--method", "POST", "--data", "once"]).unwrap();
        let echo: Value = serde_json::from_str(posted[1]["body"].as_str().unwrap()).unwrap();
        assert_eq!((echo["method"].as_str(), echo["body_len"].as_u64()), (Some("POST"), Some(4)), "{echo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_keeps_the_tcp_limits_on_header_size_and_streams() {
    let backend = Backend::start("limited").await;
    let p = portico(&["proxy.http3=true", "proxy.max_header_bytes=8192"]);
    p.add_host("limits.example.test", backend.addr, &[]);
    // A request head within `proxy.max_header_bytes` goes through; one over it cannot be
    // sent (the limit is the connection's SETTINGS_MAX_FIELD_SECTION_SIZE, which the client's
    // QPACK encoder keeps to) and nothing reaches the target.
    let head =
        |count: usize| -> Vec<String> { (0..count).map(|i| format!("x-big-{i}: {}", "a".repeat(1000))).collect() };
    let args = |headers: &[String]| -> Vec<String> {
        headers.iter().flat_map(|h| ["--header".to_owned(), h.clone()]).collect()
    };
    let within = args(&head(5));
    let within: Vec<&str> = within.iter().map(String::as_str).collect();
    let answered = h3(&p, "limits.example.test", None, &within).unwrap();
    assert_eq!(answered[0]["status"], 200, "{answered:?}");
    assert_eq!(backend.hits(), 1);
    let over = args(&head(10));
    let over: Vec<&str> = over.iter().map(String::as_str).collect();
    let refused = h3(&p, "limits.example.test", None, &over).unwrap_err();
    assert!(refused.contains("lsqpack_enc_encode failed"), "refused by the advertised limit: {refused}");
    assert_eq!(backend.hits(), 1, "nothing more reached the target");
    // Many requests at once on one connection: all answered, beyond the streams allowed in
    // flight (the rest wait for a stream).
    let answers = h3(&p, "limits.example.test", None, &["--parallel", "250"]).unwrap();
    assert_eq!(answers.iter().filter(|a| a["status"] == 200).count(), 250);
    assert_eq!(backend.hits(), 251);
}
