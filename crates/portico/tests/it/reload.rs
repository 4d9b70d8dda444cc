//! `SIGHUP` and `portico reload`: the configuration read again and applied live, without
//! dropping a connection; an invalid one changes nothing and is reported.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::{Proxy, empty, read};
use portico_test_support::{Backend, Portico, eventually};

use crate::BIN;

/// `portico serve` reading `file` (through `PORTICO_CONFIG`), with a host for `backend`.
fn configured(file: &Path, backend: &Backend) -> Portico {
    let wrapper = ["env".to_owned(), format!("PORTICO_CONFIG={}", file.display())];
    let p = Portico::start_wrapped(BIN, "serve", &wrapper, &[]);
    p.add_host("app.example", backend.addr, &[]);
    p
}

/// Requests to `app.example` until `stop`, over one kept-alive connection and over a new
/// connection each time: (answered 200, anything else).
fn load(http: std::net::SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let kept = Proxy::h1(http);
        while !stop.load(Ordering::SeqCst) {
            for proxy in [&kept, &Proxy::h1(http)] {
                let answered = proxy.try_send("GET", "app.example", "/", empty()).await;
                let good = matches!(&answered, Ok(response) if response.status() == StatusCode::OK);
                if let Ok(response) = answered {
                    read(response).await;
                }
                if good { &ok } else { &failed }.fetch_add(1, Ordering::SeqCst);
            }
        }
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    })
}

/// Under load, a reload changes a timeout (a request in flight keeps the one it started
/// with, the next gets the new one), the log level (debug lines appear) and moves the
/// metrics listener; not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_timeouts_the_log_level_and_listeners_under_load() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("portico.toml");
    let settings = |timeout: &str, level: &str, metrics: &str| {
        format!(
            "[proxy]\nupstream_timeout = \"{timeout}\"\n[log]\nlevel = \"{level}\"\n[metrics]\nlisten = \"{metrics}\"\n"
        )
    };
    std::fs::write(&file, settings("5s", "info", "127.0.0.1:0")).unwrap();
    let backend = Backend::start("app").await;
    let p = configured(&file, &backend);
    let proxy = Proxy::h1(p.http);
    assert_eq!(proxy.get("app.example", "/sleep/1500").await.status, StatusCode::OK, "within 5 s");
    let metrics = p.listening("metrics").unwrap();
    assert_eq!(Proxy::h1(metrics).get("localhost", "/metrics").await.status, StatusCode::OK);
    // A connection to the HTTPS port that closes without a ClientHello is a debug line.
    let debug_lines = || p.logs().iter().filter(|l| l["level"] == "DEBUG").count();
    let no_hello = || async {
        let _ = tokio::net::TcpStream::connect(p.https).await.unwrap();
        Proxy::h1(p.http).get("app.example", "/").await;
    };
    no_hello().await;
    assert_eq!(debug_lines(), 0);

    let stop = Arc::new(AtomicBool::new(false));
    let loading = load(p.http, stop.clone());
    // A request in flight across the reload: it started with 5 s.
    let in_flight = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.get("app.example", "/sleep/1500").await.status }
    });
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = free.local_addr().unwrap();
    drop(free);
    std::fs::write(&file, settings("1s", "debug", &moved.to_string())).unwrap();
    assert!(p.hangup(), "the reload is applied");
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK, "a request in flight keeps its timeout");
    let late = proxy.get("app.example", "/sleep/1500").await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "the new upstream_timeout: {}", late.text());
    no_hello().await;
    eventually(Duration::from_secs(5), "a debug line", || async { (debug_lines() > 0).then_some(()) }).await;
    assert_eq!(p.listening("metrics"), Some(moved));
    assert_eq!(Proxy::h1(moved).get("localhost", "/metrics").await.status, StatusCode::OK);
    assert!(std::net::TcpStream::connect(metrics).is_err(), "the old metrics listener is closed");

    // Once more through `portico reload`, back to how it was.
    std::fs::write(&file, settings("5s", "info", &moved.to_string())).unwrap();
    assert!(p.reload());
    assert_eq!(proxy.get("app.example", "/sleep/1500").await.status, StatusCode::OK);
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = loading.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {} requests failed across two reloads", ok + failed);
    assert!(ok > 10, "{ok}");
    let said: Vec<String> =
        p.logs().iter().filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned)).collect();
    assert!(said.iter().any(|m| m == "configuration reloaded"), "{said:?}");
}

/// An invalid file is refused with the error `serve` gives, and nothing changes; what cannot
/// change live (the store) is named and left as it was, while the rest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_changes_nothing_and_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("portico.toml");
    std::fs::write(&file, "[proxy]\nupstream_timeout = \"1s\"\n").unwrap();
    let backend = Backend::start("app").await;
    let p = configured(&file, &backend);
    let proxy = Proxy::h1(p.http);
    assert_eq!(proxy.get("app.example", "/sleep/1500").await.status, StatusCode::GATEWAY_TIMEOUT);

    std::fs::write(&file, "[proxy]\nupstream_timeout = \"soon\"\n").unwrap();
    let serve_says = std::process::Command::new(BIN).args(["serve", "-c", file.to_str().unwrap()]).output().unwrap();
    let serve_says = String::from_utf8_lossy(&serve_says.stderr).trim().trim_start_matches("error: ").to_owned();
    assert!(serve_says.contains("upstream_timeout"), "{serve_says}");
    assert!(!p.reload(), "refused");
    // The log is read from the process's stderr, the reload's outcome from its notify socket:
    // the line may come a moment later.
    let refused = || {
        p.logs().iter().any(|l| {
            l["level"] == "ERROR" && l["fields"]["message"].as_str().is_some_and(|m| m.contains(serve_says.as_str()))
        })
    };
    eventually(Duration::from_secs(5), "serve's error in the log", || async { refused().then_some(()) }).await;
    assert_eq!(proxy.get("app.example", "/sleep/1500").await.status, StatusCode::GATEWAY_TIMEOUT, "still 1 s");

    // The store cannot change live: named, kept; the timeout applies.
    std::fs::write(&file, "[proxy]\nupstream_timeout = \"5s\"\n[store]\nurl = \"redis://127.0.0.1:1\"\n").unwrap();
    assert!(p.hangup());
    let named =
        p.logged("these settings cannot change while Portico runs: they stay as they were until a restart").await;
    assert_eq!((named["level"].as_str(), named["fields"]["keys"].as_str()), (Some("WARN"), Some("store.url")));
    assert_eq!(proxy.get("app.example", "/sleep/1500").await.status, StatusCode::OK, "5 s now");
    assert_eq!(p.host(&["ls"]).status.code(), Some(0), "the store is the one it was");
    p.add_host("more.example", backend.addr, &[]);
    assert_eq!(proxy.get("more.example", "/").await.status, StatusCode::OK, "the store is followed as before");
}

/// `portico reload` with nothing running says so.
#[test]
fn reload_without_a_running_process_says_so() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = std::process::Command::new(BIN).args(["reload", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("portico.pid") && said.contains("is Portico running"), "{said}");
}
