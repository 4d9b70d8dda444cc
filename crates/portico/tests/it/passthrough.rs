//! TLS passthrough by SNI: a passthrough host's connections reach a real TLS server behind
//! Portico unterminated (the client sees that server's certificate), beside hosts whose TLS
//! Portico terminates on the same port; failover, the PROXY protocol header, address lists,
//! metrics, what is refused, and the CLI.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::{Backend, eventually, tls};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::{METRICS, admin, portico, sample};

/// A GET over a TLS connection to Portico's HTTPS port for `name`, trusting anything: the
/// answer's text, or `None` when the connection is refused or closed.
async fn get_through(https: std::net::SocketAddr, name: &str) -> Option<String> {
    let mut stream = tls::connect(https, name, tls::client_config(None, &["http/1.1"])).await.ok()?;
    let request = format!("GET /through HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_reaches_the_target_unterminated_beside_terminated_hosts() {
    let p = portico(&[METRICS]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let behind = Backend::tls("behind").await;
    let plain = Backend::start("terminated").await;
    let port = behind.addr.port();

    let made = api
        .call(
            "POST",
            "/api/host",
            r,
            Some(json!({"host": "*.pass.test", "kind": "passthrough", "ip": "127.0.0.1", "targetPort": port})),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    assert_eq!(made.json["kind"], "passthrough", "{}", made.raw);
    p.add_host("web.other.test", plain.addr, &[]);

    // The client sees the target's own certificate (self-signed for localhost), byte for byte.
    let own = tls::fingerprint(behind.addr, "localhost").await;
    let seen = eventually(Duration::from_secs(5), "the passthrough routed", || async {
        let seen = tls::fingerprint(p.https, "app.pass.test").await;
        (seen == own).then_some(seen)
    })
    .await;
    assert_eq!(seen, own);
    // Requests inside go to the target as they are: Portico does not read them.
    let answer = get_through(p.https, "app.pass.test").await.expect("an answer through the passthrough");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"backend\":\"behind\""), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("x-forwarded-for"), "not proxied: {answer}");
    // The same port still terminates TLS for the other host, with Portico's certificate.
    let terminated = tls::peek(p.https, "web.other.test").await;
    assert!(terminated.issuer.contains("Portico"), "{}", terminated.issuer);
    // Portico gets no certificate for a passthrough name, and will not renew one.
    let certs = api.call("GET", "/api/cert", r, None).await;
    assert!(!certs.raw.contains("pass.test"), "{}", certs.raw);
    let renew = api.call("PUT", "/api/host/*.pass.test/renew", r, None).await;
    assert_eq!(renew.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", renew.raw);
    // Plain HTTP for the name is sent to HTTPS (the target speaks TLS only).
    let redirected = portico_test_support::client::Proxy::h1(p.http).get("app.pass.test", "/x").await;
    assert!(redirected.status.is_redirection(), "{}", redirected.status);
    let location = redirected.headers.get("location").unwrap().to_str().unwrap();
    assert!(location.starts_with("https://app.pass.test"), "{location}");
    // Bytes both ways, in the metrics under the host's pattern.
    for direction in ["in", "out"] {
        let name = format!("portico_stream_bytes_total{{stream=\"sni:*.pass.test\",direction=\"{direction}\"}}");
        eventually(Duration::from_secs(5), "passthrough bytes counted", || async {
            (sample(&p, &name).await >= Some(200.0)).then_some(())
        })
        .await;
    }

    // A dead first target: the connection goes to the next one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let two =
        json!({"targets": [{"ip": "127.0.0.1", "port": dead}, {"ip": "127.0.0.1", "port": port}], "balance": "first"});
    let changed = api.call("PUT", "/api/host/*.pass.test", r, Some(two)).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.raw);
    p.wait_routed();
    for _ in 0..3 {
        let answer = get_through(p.https, "db.pass.test").await.expect("an answer after failover");
        assert!(answer.contains("\"backend\":\"behind\""), "{answer}");
    }

    // The address lists apply per connection: denied, the connection is closed unanswered.
    let deny = api.call("PUT", "/api/host/*.pass.test", r, Some(json!({"deny": ["127.0.0.0/8"]}))).await;
    assert_eq!(deny.status, StatusCode::OK, "{}", deny.raw);
    p.wait_routed();
    assert!(get_through(p.https, "app.pass.test").await.is_none_or(|a| a.is_empty()), "denied");
    assert!(tls::connect(p.https, "app.pass.test", tls::client_config(None, &[])).await.is_err());

    // What needs a request to act on is refused for a passthrough host, each on its field.
    for (body, field) in [
        (json!({"basicAuth": [{"username": "u", "password": "a-long-password"}]}), "basicAuth"),
        (json!({"compress": true}), "compress"),
        (json!({"hsts": {"maxAge": 60}}), "hsts"),
        (json!({"passthrough": {"proxyProtocol": "yes"}}), "passthrough"),
    ] {
        let refused = api.call("PUT", "/api/host/*.pass.test", r, Some(body.clone())).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", refused.raw);
        assert!(refused.json["keys"].as_array().unwrap().iter().any(|k| k["key"] == field), "{body}: {}", refused.raw);
    }

    // A PROXY protocol header names the client to the target, before the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pp_port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mut reader = BufReader::new(socket);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_ok() {
                let first = reader.read_u8().await.ok();
                let _ = tx.send((line, first));
            }
        }
    });
    let out = p.host(&[
        "add",
        "pp.proxied.test",
        "--ip",
        "127.0.0.1",
        "--port",
        &pp_port.to_string(),
        "--kind",
        "passthrough",
        "--passthrough",
        r#"{"proxyProtocol": true}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p.wait_routed();
    let listed = String::from_utf8(p.host(&["ls"]).stdout).unwrap();
    assert!(listed.contains(&format!("passthrough 127.0.0.1:{pp_port}")), "{listed}");
    let _ = tls::connect(p.https, "pp.proxied.test", tls::client_config(None, &[])).await;
    let (line, first) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let https = p.https.port();
    assert!(line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "), "{line:?}");
    assert!(line.ends_with(&format!(" {https}\r\n")), "{line:?}");
    assert_eq!(first, Some(0x16), "a TLS handshake record follows the header");

    // Removed, the name is Portico's again: no host, the fallback certificate.
    let removed = api.call("DELETE", "/api/host/*.pass.test", r, None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.raw);
    p.wait_routed();
    assert_ne!(tls::fingerprint(p.https, "app.pass.test").await, own);
}
