//! The seed's lookup service on a Unix socket (and TCP), byte for byte as its clients speak it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portico_test_support::{Backend, eventually};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::portico;

/// Reads one answer line.
async fn line(reader: &mut (impl AsyncBufReadExt + Unpin)) -> serde_json::Value {
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut text)).await.unwrap().unwrap();
    assert!(text.ends_with('\n'), "one line per answer: {text:?}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn lookups_answer_the_matching_host_as_the_seed_stores_it() {
    let backend = Backend::start("b").await;
    let dir = tempfile::TempDir::new().unwrap();
    let socket = dir.path().join("lookup.sock");
    let p = portico(&[&format!("api.lookup_socket=\"{}\"", socket.display()), "api.lookup_listen=\"127.0.0.1:0\""]);
    p.add_host("*.example.test", backend.addr, &["--forcessl"]);
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);

    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // The described seed client: one request, no newline.
    write.write_all(br#"{"domain":"www.example.test"}"#).await.unwrap();
    let found = line(&mut reader).await;
    assert_eq!(found["host"], "*.example.test", "the pattern that matched");
    assert_eq!(found["ip"], backend.addr.ip().to_string());
    assert_eq!(found["targetPort"], backend.addr.port().to_string(), "strings, as the seed stores them");
    assert_eq!(found["forcessl"], "true");
    assert!(found.as_object().unwrap().values().all(|v| v.is_string()), "{found}");
    // Two requests in one write, with and without newlines, and one split across writes.
    write.write_all(b"{\"domain\":\"nothing.test\"}\n{\"domain\":\"API.Example.Test\"}").await.unwrap();
    assert_eq!(line(&mut reader).await, serde_json::json!({}));
    assert_eq!(line(&mut reader).await["host"], "*.example.test");
    write.write_all(br#"{"dom"#).await.unwrap();
    write.write_all(b"ain\":\"a.example.test\"}\n").await.unwrap();
    assert_eq!(line(&mut reader).await["host"], "*.example.test");
    write.write_all(br#"{"domain":"a..b"}"#).await.unwrap();
    assert_eq!(line(&mut reader).await, serde_json::json!({}), "an invalid name matches nothing");

    // The same over TCP.
    let addr = p.listener("lookup").expect("the lookup listener's address");
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(br#"{"domain":"tcp.example.test"}"#).await.unwrap();
    assert_eq!(line(&mut reader).await["host"], "*.example.test");
}

/// The service asks for no credentials: it never answers a secret field, and idle
/// connections beyond its cap are closed instead of holding the process's descriptors.
#[tokio::test]
async fn lookups_answer_no_secret_and_idle_connections_are_capped() {
    let backend = Backend::start("b").await;
    let p = portico(&["api.lookup_listen=\"127.0.0.1:0\""]);
    p.add_host("guarded.test", backend.addr, &["--basic-auth", "ann:planted-password-1"]);
    {
        // Secret fields another tool wrote into the host record.
        use portico_store::Store;
        let store = crate::store_of(&p).await;
        let mut host = store.record(portico_store::Kind::Host, "guarded.test").await.unwrap().unwrap();
        host.insert("upstream_api_key".into(), "planted-api-key-9".into());
        host.insert("notify_token".into(), "planted-token-9".into());
        // A plain field written with them, to see when the change is routed.
        host.insert("planted".into(), "yes".into());
        p.routing_after(store.replace(portico_store::Kind::Host, "guarded.test", "guarded.test", &host)).await.unwrap();
    }
    let addr = p.listener("lookup").expect("the lookup listener's address");
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // The planted record is the one routed.
    write.write_all(b"{\"domain\":\"guarded.test\"}\n").await.unwrap();
    let found = line(&mut reader).await;
    assert_eq!(found["planted"], "yes", "{found}");
    let text = found.to_string();
    for secret in ["planted-api-key-9", "planted-token-9", "argon2", "basicAuth", "upstream_api_key"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(found["ip"], "127.0.0.1", "the rest is answered: {text}");

    // Fill every slot with idle connections: the next is closed at once, the API stays up.
    let mut held = Vec::new();
    for _ in 0..portico_api::lookup::MAX_CONNECTIONS - 1 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
    over.write_all(b"{\"domain\":\"guarded.test\"}\n").await.ok();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut over, &mut rest));
    assert!(read.await.is_ok(), "closed, not left waiting");
    assert!(rest.is_empty(), "nothing answered past the cap");
    let health = portico_test_support::client::ApiClient::new(p.api).call("GET", "/healthz", None, None).await;
    assert_eq!(health.status, http::StatusCode::OK);
    // Slots come back when connections close.
    drop(held);
    eventually(Duration::from_secs(5), "slots given back", || async {
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        write.write_all(b"{\"domain\":\"guarded.test\"}\n").await.unwrap();
        let mut text = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut text)).await;
        text.contains("guarded.test").then_some(())
    })
    .await;
}
