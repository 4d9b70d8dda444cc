//! Hosts changing while serving, graceful shutdown, restarts, and the CLI.

use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy, empty, read};
use portico_test_support::{Backend, Portico, eventually};
use serde_json::json;

use crate::{BIN, portico};

#[tokio::test]
async fn host_added_while_serving_is_routed_within_a_second() {
    let backend = Backend::start("late").await;
    let p = portico(&[]);
    let client = Proxy::h1(p.http);
    assert_eq!(client.get("late.example.test", "/").await.status, StatusCode::NOT_FOUND);
    // Keep one connection open across the change.
    let kept = Proxy::h1(p.http);
    assert_eq!(kept.get("late.example.test", "/").await.status, StatusCode::NOT_FOUND);

    p.add_host("late.example.test", backend.addr, &[]);
    eventually(Duration::from_secs(1), "the new host to be routed", || {
        let client = client.clone();
        async move { (client.get("late.example.test", "/").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
    assert_eq!(kept.get("late.example.test", "/").await.json()["backend"], "late");

    let out = p.host(&["rm", "late.example.test"]);
    assert!(out.status.success());
    eventually(Duration::from_secs(1), "the removed host to be gone", || {
        let client = client.clone();
        async move { (client.get("late.example.test", "/").await.status == StatusCode::NOT_FOUND).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let backend = Backend::start("slow").await;
    let mut p = portico(&[]);
    p.add_host("slow.test", backend.addr, &[]);
    let client = Proxy::h1(p.http);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { read(client.send("GET", "slow.test", "/sleep/1500", empty()).await).await }
    });
    // Once the request is at the backend, ask the proxy to stop.
    eventually(Duration::from_secs(10), "the request to reach the backend", || {
        let hits = backend.hits();
        async move { (hits == 1).then_some(()) }
    })
    .await;
    p.terminate();
    // New connections are refused once the proxy stops accepting.
    eventually(Duration::from_secs(5), "the listener to close", || async {
        tokio::net::TcpStream::connect(p.http).await.is_err().then_some(())
    })
    .await;
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "slept 1500ms");
    let code = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn hosts_survive_a_restart() {
    let backend = Backend::start("durable").await;
    let p = portico(&[]);
    p.add_host("durable.test", backend.addr, &[]);
    let dir = p.into_data_dir();
    let p = Portico::start_in(BIN, dir, &[]);
    assert_eq!(Proxy::h1(p.http).get("durable.test", "/").await.json()["backend"], "durable");
}

#[tokio::test]
async fn access_log_line_per_request() {
    let backend = Backend::start("logged").await;
    let p = portico(&[]);
    p.add_host("logged.test", backend.addr, &[]);
    let answer = Proxy::h1(p.http).get("logged.test", "/path?q=1").await;
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let entry = eventually(Duration::from_secs(5), "the access log line", || {
        let entries = p.access_log();
        let id = id.clone();
        async move { entries.into_iter().find(|e| e["request_id"] == id) }
    })
    .await;
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["host"], "logged.test");
    assert_eq!(entry["path"], "/path?q=1");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes"], answer.body.len() as u64);
    assert_eq!(entry["target"], backend.addr.to_string());
    let ms = entry["duration_ms"].as_f64().unwrap();
    assert_eq!((ms * 1000.0).round() / 1000.0, ms, "rounded to the microsecond: {ms}");
}

/// Logs to a pipe or a file carry no terminal colour codes.
#[tokio::test]
async fn text_logs_have_no_colour_codes_off_a_terminal() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let out = std::process::Command::new(crate::BIN)
        .args(["serve", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--set", "log.format=\"text\""])
        .args(["--set", &format!("api.listen=\"{}\"", taken.local_addr().unwrap())])
        .args(["--set", "tls.issuer=\"internal\""])
        .arg("--data-dir")
        .arg(dir.path())
        .env("PORTICO_ADMIN_PASSWORD", "test-admin-password-1")
        .env_remove("PORTICO_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the API's port is taken");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store opened"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[tokio::test]
async fn cli_validates_and_reports() {
    let p = portico(&[]);
    let ok = p.host(&["add", "*.Example.Test", "--ip", "127.0.0.1", "--port", "8080"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dup = p.host(&["add", "*.example.test.", "--ip", "127.0.0.1", "--port", "8081"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = p.host(&["add", "a*.example.test", "--ip", "127.0.0.1", "--port", "80"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wildcard"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad_ip = p.host(&["add", "x.test", "--ip", "not an ip", "--port", "80"]);
    assert!(!bad_ip.status.success());
    assert!(String::from_utf8_lossy(&bad_ip.stderr).contains("ip"));
    let ls = p.host(&["ls", "--json"]);
    let line = String::from_utf8_lossy(&ls.stdout).to_string();
    let host: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(host["host"], "*.example.test");
    assert_eq!(host["targetPort"], 8080);
    assert_eq!(host["forcessl"], false);
    // The same object the API answers with.
    let api = ApiClient::new(p.api);
    let token = api.login("admin", portico_test_support::portico::ADMIN_PASSWORD).await;
    let shown = api.call("GET", "/api/host/*.example.test", Some(&token), None).await;
    assert_eq!(shown.json["results"], host);
    let missing = p.host(&["rm", "nope.test"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no host nope.test"));
    let version = std::process::Command::new(BIN).arg("version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("portico {}", env!("CARGO_PKG_VERSION")));
}

/// `portico api` and `portico proxy` run apart on one store: a host created through the API
/// process is routed by the proxy process, and each runs only its own listeners.
#[tokio::test]
async fn api_and_proxy_roles_run_apart_on_one_store() {
    let backend = Backend::start("split").await;
    let control = Portico::start_role(BIN, "api", &[]);
    let data = control.start_beside("proxy", &[]);
    assert_eq!((control.listener("http"), control.listener("api")), (None, Some(control.api)));
    assert_eq!((data.listener("http"), data.listener("api")), (Some(data.http), None));

    let api = ApiClient::new(control.api);
    let token = api.login("admin", portico_test_support::portico::ADMIN_PASSWORD).await;
    let body = json!({"host": "split.test", "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    let made = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    let client = Proxy::h1(data.http);
    eventually(Duration::from_secs(1), "the proxy process to route the new host", || {
        let client = client.clone();
        async move { (client.get("split.test", "/").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
    let ready = api.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.raw);
}

/// Runs `portico ARGS… --data-dir DIR` and returns (success, stdout + stderr).
fn run_in(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(crate::BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--set", "proxy.http=\"127.0.0.1:0\"", "--set", "proxy.https=\"127.0.0.1:0\""])
        .args(["--set", "api.listen=\"127.0.0.1:0\""])
        .env("PORTICO_ADMIN_PASSWORD", "test-admin-password-1")
        .env_remove("PORTICO_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A mistyped data directory is an error for commands that read, not a new empty store.
#[tokio::test]
async fn read_only_commands_refuse_a_store_that_does_not_exist() {
    let dir = tempfile::TempDir::new().unwrap();
    let typo = dir.path().join("dta");
    for args in
        [&["host", "ls"][..], &["host", "rm", "a.test"], &["user", "ls"], &["ca", "export"], &["store", "check"]]
    {
        let (ok, text) = run_in(&typo, args);
        assert!(!ok, "{args:?}: {text}");
        assert!(text.contains("no store at") && text.contains("dta"), "{args:?}: {text}");
    }
    assert!(!typo.exists(), "nothing was created");
    // Adding something starts a store where there was none.
    let (ok, text) = run_in(&typo, &["host", "add", "a.test", "--ip", "127.0.0.1", "--port", "80"]);
    assert!(ok, "{text}");
    let (ok, text) = run_in(&typo, &["host", "ls"]);
    assert!(ok && text.contains("a.test"), "{text}");
}

/// An empty or damaged store file stops the start with a message naming the file, and is
/// never replaced by a fresh store; `portico store check` tells a sound file from a damaged one.
#[tokio::test]
async fn an_empty_or_damaged_store_file_stops_the_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("portico.redb");
    std::fs::write(&file, b"").unwrap();
    let (ok, text) = run_in(dir.path(), &["serve"]);
    assert!(!ok, "{text}");
    assert!(text.contains("portico.redb") && text.contains("not a Portico store"), "{text}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as it was");
    assert!(!dir.path().join("initial-admin-password").exists(), "no new admin");
    std::fs::remove_file(&file).unwrap();

    for i in 0..100 {
        let (ok, text) =
            run_in(dir.path(), &["host", "add", &format!("h{i}.test"), "--ip", "127.0.0.1", "--port", "80"]);
        assert!(ok, "{text}");
    }
    let (ok, text) = run_in(dir.path(), &["store", "check"]);
    assert!(ok && text.contains("sound"), "{text}");
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    for b in &mut bytes[4096..len.min(4096 * 64)] {
        *b = 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    let (ok, text) = run_in(dir.path(), &["store", "check"]);
    assert!(!ok && text.contains("damaged"), "{text}");
    for args in [&["host", "ls"][..], &["serve"]] {
        let (ok, text) = run_in(dir.path(), args);
        assert!(!ok, "{args:?}: a damaged store does not open as if sound: {text}");
        let last = text.lines().last().unwrap_or_default();
        assert!(last.contains("portico.redb") && last.contains("portico store check"), "{args:?}: {last}");
    }
}

/// The store holds every private key: it is created private, and a wider mode is warned about.
#[tokio::test]
async fn the_store_is_private_and_a_wider_mode_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let p = crate::portico(&[]);
    let file = p.data_dir().join("portico.redb");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let dir = p.into_data_dir();
    std::fs::set_permissions(dir.path().join("portico.redb"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = portico_test_support::Portico::start_in(crate::BIN, dir, &[]);
    let warned = p.logs().iter().any(|l| {
        l["level"] == "WARN" && l["fields"]["message"].as_str().is_some_and(|m| m.contains("open to other users"))
    });
    assert!(warned, "{:?}", p.logs());
}

/// A full disk (here: a file-size limit the store reaches) fails writes, keeps traffic
/// flowing, and once there is room again the store is reopened by itself; the failure is
/// logged once, not at every poll.
#[tokio::test]
async fn the_store_recovers_from_a_full_disk_by_itself() {
    use portico_test_support::portico::ADMIN_PASSWORD;

    let backend = Backend::start("live").await;
    let first = portico(&[]);
    first.add_host("live.test", backend.addr, &[]);
    let dir = first.into_data_dir();
    let size = std::fs::metadata(dir.path().join("portico.redb")).unwrap().len();
    // Soft limit only: raising it again needs no privilege.
    let limit = format!("--fsize={}:unlimited", size + 256 * 1024);
    let p = Portico::start_limited(BIN, dir, &[&limit], &[]);
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let add = |name: String| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let host = json!({"host": name, "ip": "127.0.0.1", "targetPort": 80, "forcessl": false});
            api.call("POST", "/api/host", Some(&token), Some(host)).await
        }
    };
    let mut full = false;
    for i in 0..5000 {
        let reply = add(format!("h{i}.fill.test")).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            full = true;
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    }
    assert!(full, "the store never filled up");
    assert_eq!(Proxy::h1(p.http).get("live.test", "/").await.status, StatusCode::OK, "traffic flows");

    p.set_limit("--fsize=unlimited:unlimited");
    eventually(Duration::from_secs(60), "writes to work again", || async move {
        (add("after.full.test".into()).await.status == StatusCode::OK).then_some(())
    })
    .await;
    // The store came back through a reopen (redb refuses everything after an I/O error until
    // then), which was logged before the write above could succeed.
    let said = |message: &str| p.logs().iter().filter(|l| l["fields"]["message"] == message).count();
    assert_eq!(said("the store failed"), 1, "{:?}", p.logs());
    assert!(said("the store works again (reopened after an I/O error)") >= 1, "{:?}", p.logs());
}
