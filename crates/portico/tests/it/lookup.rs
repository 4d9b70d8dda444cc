//! The seed's lookup service on a Unix socket (and TCP), byte for byte as its clients speak it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portico_test_support::Backend;
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
    let tcp = p.logs().into_iter().find(|l| l["fields"]["listener"] == "lookup").unwrap();
    let addr = tcp["fields"]["addr"].as_str().unwrap().to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(br#"{"domain":"tcp.example.test"}"#).await.unwrap();
    assert_eq!(line(&mut reader).await["host"], "*.example.test");
}
