//! Access log formats and request ids.

use std::time::Duration;

use portico_test_support::{Backend, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::portico;

/// Sends one HTTP/1.1 request with `headers` and returns the whole answer as text.
async fn exchange(addr: std::net::SocketAddr, host: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /logged?x=1 HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The response's `X-Request-Id`, and the one the backend received (its JSON echo).
fn ids(answer: &str) -> (String, String) {
    let head = answer.split("\r\n\r\n").next().unwrap();
    let sent = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("an X-Request-Id on the response")
        .to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let echo: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    (sent, echo["headers"]["x-request-id"][0].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_clients_request_id_is_kept_and_a_bad_one_replaced() {
    let backend = Backend::start("ids").await;
    let p = portico(&[]);
    p.add_host("ids.example", backend.addr, &[]);
    let kept = exchange(p.http, "ids.example", "X-Request-Id: lb-4f2a.9:z_1\r\n").await;
    assert_eq!(ids(&kept), ("lb-4f2a.9:z_1".to_owned(), "lb-4f2a.9:z_1".to_owned()), "{kept}");
    for bad in ["has space", "quote\"d", &"x".repeat(129)] {
        let answer = exchange(p.http, "ids.example", &format!("X-Request-Id: {bad}\r\n")).await;
        let (sent, seen) = ids(&answer);
        assert_eq!(sent, seen, "the target gets the id the client sees");
        assert!(sent.len() == 16 && sent != bad, "{bad:?} replaced by {sent}");
    }
    let fresh = exchange(p.http, "ids.example", "").await;
    let (sent, seen) = ids(&fresh);
    assert_eq!((sent.len(), &sent), (16, &seen));
}

#[tokio::test]
async fn the_access_log_in_the_combined_format() {
    let backend = Backend::start("clf").await;
    let p = portico(&["log.access_log=\"common\""]);
    p.add_host("clf.example", backend.addr, &[]);
    exchange(p.http, "clf.example", "User-Agent: curl/8.0\r\nReferer: https://from.example/\r\n").await;
    let line = eventually(Duration::from_secs(5), "the access log line", || async {
        p.output().into_iter().find(|l| l.contains("clf.example"))
    })
    .await;
    // host peer - - [time] "request" status bytes "referer" "agent"
    assert!(line.starts_with("clf.example 127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /logged?x=1 HTTP/1.1\" 200 "), "{line}");
    assert!(line.ends_with(" \"https://from.example/\" \"curl/8.0\""), "{line}");
    assert!(!p.logs().iter().any(|l| l["target"] == "portico::access"), "not in the application log too");
}

#[tokio::test]
async fn the_access_log_as_json_and_off() {
    let backend = Backend::start("json").await;
    let p = portico(&["log.access_log=\"json\""]);
    p.add_host("json.example", backend.addr, &[]);
    exchange(p.http, "json.example", "X-Request-Id: trace-1\r\n").await;
    let line = eventually(Duration::from_secs(5), "the access log line", || async {
        p.output().into_iter().find(|l| l.contains("json.example"))
    })
    .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["request_id"], "trace-1");
    assert_eq!((entry["method"].as_str(), entry["status"].as_u64()), (Some("GET"), Some(200)));
    assert_eq!(entry["path"], "/logged?x=1");
    assert_eq!(entry["target"], backend.addr.to_string());

    let quiet = portico(&["log.access_log=false"]);
    quiet.add_host("quiet.example", backend.addr, &[]);
    exchange(quiet.http, "quiet.example", "").await;
    let again = exchange(quiet.http, "quiet.example", "").await;
    assert!(again.starts_with("HTTP/1.1 200"));
    assert!(quiet.output().is_empty() && !quiet.logs().iter().any(|l| l["target"] == "portico::access"));
}
