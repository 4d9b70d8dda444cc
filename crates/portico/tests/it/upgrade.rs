//! `portico upgrade`: a new process takes the listening sockets over while the old one
//! drains; nothing is refused or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use portico_test_support::client::{Proxy, empty, read};
use portico_test_support::{Backend, Portico, eventually, tls};
use tokio_tungstenite::tungstenite::Message;

use crate::BIN;

/// Counts of one kind of client's requests.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Sends requests to `app.example` with `client()` until `stop`, counting answers that are
/// not 200 and connections refused or cut as failures.
fn load(
    client: impl Fn() -> Proxy + Send + 'static,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, tokio::task::JoinHandle<()>) {
    let tally = Arc::new(Tally::default());
    let counting = tally.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let answered = client().try_send("GET", "app.example", "/", empty()).await;
            let good = match answered {
                Ok(response) => response.status() == StatusCode::OK && !read(response).await.body.is_empty(),
                Err(e) => {
                    eprintln!("request failed: {e:?}");
                    false
                }
            };
            if good { &counting.ok } else { &counting.failed }.fetch_add(1, Ordering::SeqCst);
        }
    });
    (tally, task)
}

/// Under HTTP/1.1 keep-alive, new connections and HTTPS load, with a request in flight and
/// a WebSocket open, `portico upgrade --binary` hands the sockets to a new process of
/// another binary file: zero failed requests and zero refused connections; the request in
/// flight completes; the WebSocket works until the old process's drain deadline; the old
/// process exits; the new one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_drops_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let next = dir.path().join("portico-next");
    std::fs::copy(BIN, &next).unwrap();
    let backend = Backend::start("app").await;
    let echo = Backend::websocket_echo().await;
    let mut p = Portico::start(BIN, &["proxy.shutdown_timeout=\"3s\""]);
    p.add_host("app.example", backend.addr, &[]);
    p.add_host("ws.example", echo.addr, &[]);
    let old = p.main_pid().unwrap();
    let pem = String::from_utf8(p.cli("ca", &["export"], "").stdout).unwrap();
    let roots = tls::roots(&pem);
    let (http, https) = (p.http, p.https);

    let stop = Arc::new(AtomicBool::new(false));
    let kept = Proxy::h1(http);
    let (kept_alive, a) = load(move || kept.clone(), stop.clone());
    let (fresh, b) = load(move || Proxy::h1(http), stop.clone());
    let (secure, c) = load(move || Proxy::https(https, roots.clone(), false), stop.clone());
    let in_flight = tokio::spawn({
        let proxy = Proxy::h1(http);
        async move { proxy.get("app.example", "/sleep/1500").await.status }
    });
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let url = format!("ws://ws.example:{}/socket", http.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let data_dir = p.data_dir().to_owned();
    let command = {
        let next = next.clone();
        move || {
            std::process::Command::new(BIN)
                .arg("upgrade")
                .arg("--binary")
                .arg(&next)
                .arg("--data-dir")
                .arg(&data_dir)
                .output()
                .unwrap()
        }
    };
    let upgraded = tokio::task::spawn_blocking(command).await.unwrap();
    assert!(upgraded.status.success(), "{}", String::from_utf8_lossy(&upgraded.stderr));
    let handed_over = Instant::now();
    let new = p.wait_main_pid(Duration::from_secs(5)).expect("the new process is the main one");
    assert_ne!(new, old);
    assert!(String::from_utf8_lossy(&upgraded.stdout).contains(&format!("process {new} serves now")), "{upgraded:?}");
    assert_eq!(std::fs::read_link(format!("/proc/{new}/exe")).unwrap(), next, "the new process runs the new binary");
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK, "the request in flight completed");
    // The old process still carries the WebSocket, until its drain deadline.
    ws.send(Message::text("during the drain")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("during the drain"));
    // The old process exits once drained (3 s at most); the new one serves on.
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0), "the old process exits cleanly");
    assert!(handed_over.elapsed() < Duration::from_secs(8), "{:?}", handed_over.elapsed());
    let closed =
        tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the WebSocket is closed at the drain");
    assert!(!matches!(closed, Some(Ok(Message::Text(_)))), "{closed:?}");
    // Each kind of client is answered by the new process alone now.
    for tally in [&kept_alive, &fresh, &secure] {
        let after_exit = tally.ok.load(Ordering::SeqCst);
        eventually(Duration::from_secs(5), "requests answered by the new process", || async {
            (tally.ok.load(Ordering::SeqCst) > after_exit + 10).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in [a, b, c] {
        task.await.unwrap();
    }
    for (name, tally) in [("keep-alive", &kept_alive), ("new connections", &fresh), ("HTTPS", &secure)] {
        let (ok, failed) = (tally.ok.load(Ordering::SeqCst), tally.failed.load(Ordering::SeqCst));
        eprintln!("{name}: {ok} requests, {failed} failed");
        assert_eq!(failed, 0, "{name}: {failed} of {} requests failed", ok + failed);
    }
    let mut ws_new = tokio_tungstenite::client_async(
        format!("ws://ws.example:{}/socket", http.port()),
        tokio::net::TcpStream::connect(http).await.unwrap(),
    )
    .await
    .unwrap()
    .0;
    ws_new.send(Message::text("after")).await.unwrap();
    assert_eq!(ws_new.next().await.unwrap().unwrap(), Message::text("after"));
}

/// A new binary that does not start leaves the old process serving, and `portico upgrade`
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_does_not_start_leaves_the_old_process_serving() {
    let backend = Backend::start("app").await;
    let p = Portico::start(BIN, &[]);
    p.add_host("app.example", backend.addr, &[]);
    let old = p.main_pid().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = p.cli("upgrade", &["--binary", broken.to_str().unwrap()], "");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("process {old} keeps serving")) && said.contains("exit status: 3"), "{said}");
    assert_eq!(p.main_pid(), Some(old));
    assert_eq!(Proxy::h1(p.http).get("app.example", "/").await.status, StatusCode::OK);
    let not_there = p.cli("upgrade", &["--binary", "/nonexistent/portico"], "");
    assert!(String::from_utf8_lossy(&not_there.stderr).contains("cannot find /nonexistent/portico"), "{not_there:?}");
}

/// systemd's socket activation: a socket named `http` (`FileDescriptorName=http`) is served
/// instead of binding `proxy.http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_from_systemd_is_served() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let wrapper: Vec<String> = ["systemd-socket-activate", "-l", &addr.to_string(), "--fdname=http"]
        .into_iter()
        .chain(["-E", "NOTIFY_SOCKET", "-E", "PORTICO_ADMIN_PASSWORD"])
        .map(str::to_owned)
        .collect();
    // It starts the program at the first connection, which the program then answers.
    let first = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.write_all(b"GET / HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    });
    let p = Portico::start_wrapped(BIN, "serve", &wrapper, &[]);
    assert_eq!(p.http, addr, "the activated socket is the HTTP listener");
    assert!(first.join().unwrap().starts_with("HTTP/1.1 404"), "the connection that started it is answered");
    let backend = Backend::start("app").await;
    p.add_host("app.example", backend.addr, &[]);
    assert_eq!(Proxy::h1(addr).get("app.example", "/").await.status, StatusCode::OK);
}
