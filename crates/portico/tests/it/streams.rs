//! Streams: TCP ports forwarded to real TCP peers on loopback, through the API and the CLI:
//! bytes both ways, failover, access lists, the PROXY protocol header, metrics, removal.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use portico_test_support::eventually;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::{METRICS, admin, portico, sample};

/// A TCP peer that answers each line with `name: line`; the first line it got on each
/// connection is sent to `first` too.
async fn peer(name: &'static str) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line.clone());
                    if write.write_all(format!("{name}: {line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `line` through the stream at `port` and reads the answer line; `None` when the
/// connection is refused or closed without one.
async fn ask(port: u16, line: &str) -> Option<String> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    socket.write_all(format!("{line}\n").as_bytes()).await.ok()?;
    let mut answer = String::new();
    let mut reader = BufReader::new(&mut socket);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut answer)).await.ok()?.ok()?;
    (!answer.is_empty()).then(|| answer.trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_streams_forward_bytes_fail_over_and_follow_the_api() {
    let p = portico(&[METRICS]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let (one, _) = peer("one").await;
    let (two, mut seen_by_two) = peer("two").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let target = |a: SocketAddr| json!({"ip": "127.0.0.1", "port": a.port()});

    let made = api.call("POST", "/api/stream", r, Some(json!({"listen": listen, "targets": [target(one)]}))).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    let id = made.json["id"].as_str().unwrap().to_owned();
    let answer =
        eventually(Duration::from_secs(5), "the stream listening", || async { ask(port, "hello").await }).await;
    assert_eq!(answer, "one: hello");
    let listed = api.call("GET", "/api/stream", r, None).await;
    assert_eq!(listed.json["results"][0]["listen"], listen.as_str(), "{}", listed.raw);
    let counted = format!("portico_stream_bytes_total{{stream=\"{listen}\",direction=\"in\"}}");
    eventually(Duration::from_secs(5), "bytes counted", || async {
        (sample(&p, &counted).await >= Some(6.0)).then_some(())
    })
    .await;

    // The first target down: connections go to the next; `first` keeps to the order.
    let dead = free_port();
    let update = json!({"targets": [{"ip": "127.0.0.1", "port": dead}, target(two)], "balance": "first"});
    assert_eq!(api.call("PUT", &format!("/api/stream/{id}"), r, Some(update)).await.status, StatusCode::OK);
    let moved = eventually(Duration::from_secs(5), "the new targets", || async {
        ask(port, "again").await.filter(|a| a.starts_with("two"))
    })
    .await;
    assert_eq!(moved, "two: again");

    // The PROXY protocol header names the client before its bytes.
    let update = json!({"proxyProtocol": true, "targets": [target(two)]});
    assert_eq!(api.call("PUT", &format!("/api/stream/{id}"), r, Some(update)).await.status, StatusCode::OK);
    while seen_by_two.try_recv().is_ok() {}
    let seen = std::sync::Arc::new(tokio::sync::Mutex::new(seen_by_two));
    let header = eventually(Duration::from_secs(5), "a PROXY header", || {
        let seen = seen.clone();
        async move {
            let mut socket = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let client = socket.local_addr().ok()?;
            socket.write_all(b"after the header\n").await.ok()?;
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await;
            let first = tokio::time::timeout(Duration::from_secs(1), seen.lock().await.recv()).await.ok()??;
            first.starts_with("PROXY").then_some((first, client))
        }
    })
    .await;
    assert_eq!(header.0, format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r", header.1.port()).trim_end_matches('\r'));

    // Access lists: loopback denied, the connection closes without an answer.
    let update = json!({"proxyProtocol": false, "deny": ["127.0.0.0/8"]});
    assert_eq!(api.call("PUT", &format!("/api/stream/{id}"), r, Some(update)).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "refused by deny", || async {
        ask(port, "denied?").await.is_none().then_some(())
    })
    .await;

    // Refusals: a port this node listens on, a PROXY header over UDP, not an admin.
    let taken = json!({"listen": p.http.to_string(), "targets": [target(one)]});
    let refused = api.call("POST", "/api/stream", r, Some(taken)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.raw);
    assert_eq!(refused.json["keys"][0]["key"], "listen");
    let udp = json!({"listen": format!("127.0.0.1:{}", free_port()), "protocol": "udp", "targets": [target(one)],
                     "proxyProtocol": true});
    assert_eq!(api.call("POST", "/api/stream", r, Some(udp)).await.json["keys"][0]["key"], "proxyProtocol");
    api.call("POST", "/api/user", r, Some(json!({"username": "sam", "password": "sam-password-1"}))).await;
    let sam = api.login("sam", "sam-password-1").await;
    assert_eq!(api.call("GET", "/api/stream", Some(&sam), None).await.status, StatusCode::FORBIDDEN);

    // Removed: the port closes.
    assert_eq!(api.call("DELETE", &format!("/api/stream/{id}"), r, None).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the port closed", || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_err().then_some(())
    })
    .await;

    // The CLI, beside the running server.
    let cli_port = free_port();
    let added = p.cli(
        "stream",
        &[
            "add",
            "--listen",
            &format!("127.0.0.1:{cli_port}"),
            "--target",
            &one.to_string(),
            "--health-check",
            r#"{"interval": "2s"}"#,
        ],
        "",
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let shown = String::from_utf8(p.cli("stream", &["ls", "--json"], "").stdout).unwrap();
    assert!(shown.contains(r#""healthCheck":{"healthy":2,"interval":"2s","unhealthy":3}"#), "{shown}");
    let answer = eventually(Duration::from_secs(5), "the CLI's stream", || async { ask(cli_port, "cli").await }).await;
    assert_eq!(answer, "one: cli");
    let listed = String::from_utf8(p.cli("stream", &["ls"], "").stdout).unwrap();
    let cli_id = listed.split_whitespace().next().unwrap().to_owned();
    assert!(p.cli("stream", &["rm", &cli_id], "").status.success());
    eventually(Duration::from_secs(5), "the CLI's stream removed", || async {
        TcpStream::connect(("127.0.0.1", cli_port)).await.is_err().then_some(())
    })
    .await;
}

/// A UDP peer that answers each datagram with `name: datagram`.
async fn udp_peer(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let answer = format!("{name}: {}", String::from_utf8_lossy(&buf[..n]));
            let _ = socket.send_to(answer.as_bytes(), from).await;
        }
    });
    addr
}

/// Sends `datagram` from `socket` to the stream and waits a moment for an answer.
async fn ask_udp(socket: &UdpSocket, port: u16, datagram: &str) -> Option<String> {
    socket.send_to(datagram.as_bytes(), ("127.0.0.1", port)).await.ok()?;
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_streams_carry_datagrams_per_client_and_pass_over_a_refusing_target() {
    let p = portico(&[METRICS, "proxy.tunnel_idle_timeout=\"2s\""]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let one = udp_peer("one").await;
    let two = udp_peer("two").await;
    let target = |a: SocketAddr| json!({"ip": "127.0.0.1", "port": a.port()});
    // A UDP port nobody listens on: its datagrams are refused (ICMP port unreachable).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    // The same port over TCP is another stream's, which does not clash.
    let tcp_port = json!({"listen": listen, "targets": [target(one)]});
    assert_eq!(api.call("POST", "/api/stream", r, Some(tcp_port)).await.status, StatusCode::OK);

    let made = api
        .call(
            "POST",
            "/api/stream",
            r,
            Some(json!({"listen": listen, "protocol": "udp", "targets": [target(dead), target(two)], "balance": "first"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    assert_eq!(made.json["protocol"], "udp", "{}", made.raw);
    let id = made.json["id"].as_str().unwrap().to_owned();
    let clash = json!({"listen": listen, "protocol": "udp", "targets": [target(one)]});
    let refused = api.call("POST", "/api/stream", r, Some(clash)).await;
    assert_eq!(refused.json["keys"][0]["key"], "listen", "{}", refused.raw);

    // The first target refuses: its session ends, it is passed over, and the same client's
    // next datagrams go to the second (with `first`, only because the first is passed over).
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answer = eventually(Duration::from_secs(10), "an answer from the second target", || async {
        ask_udp(&client, port, "hello").await
    })
    .await;
    assert_eq!(answer, "two: hello");
    for i in 0..3 {
        assert_eq!(
            ask_udp(&client, port, &format!("again {i}")).await.as_deref(),
            Some(format!("two: again {i}").as_str())
        );
    }
    // Another client is a session of its own.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask_udp(&other, port, "me too").await.as_deref(), Some("two: me too"));
    let name = format!("udp:{listen}");
    let sessions = format!("portico_stream_connections_open{{stream=\"{name}\"}}");
    assert!(sample(&p, &sessions).await >= Some(2.0), "two sessions open");
    let counted = format!("portico_stream_bytes_total{{stream=\"{name}\",direction=\"out\"}}");
    assert!(sample(&p, &counted).await >= Some(40.0), "answers counted");
    // Idle sessions end (proxy.tunnel_idle_timeout).
    eventually(Duration::from_secs(10), "idle sessions closed", || async {
        (sample(&p, &sessions).await == Some(0.0)).then_some(())
    })
    .await;

    // Access lists per datagram: denied, no answer.
    let update = json!({"deny": ["127.0.0.0/8"], "targets": [target(one)]});
    assert_eq!(api.call("PUT", &format!("/api/stream/{id}"), r, Some(update)).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "refused by deny", || async {
        ask_udp(&client, port, "denied?").await.is_none().then_some(())
    })
    .await;
    let update = json!({"deny": []});
    assert_eq!(api.call("PUT", &format!("/api/stream/{id}"), r, Some(update)).await.status, StatusCode::OK);
    let answer =
        eventually(Duration::from_secs(5), "allowed again", || async { ask_udp(&client, port, "back").await }).await;
    assert_eq!(answer, "one: back");

    // Removed: no answer any more.
    assert_eq!(api.call("DELETE", &format!("/api/stream/{id}"), r, None).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the UDP port closed", || async {
        ask_udp(&other, port, "anyone?").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_stream_checks_its_targets() {
    let p = portico(&[METRICS]);
    let (api, root) = admin(&p).await;
    let r = Some(root.as_str());
    let (one, _) = peer("one").await;
    // A target that does not listen yet.
    let later = free_port();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let stream = json!({"listen": listen, "balance": "first",
        "targets": [{"ip": "127.0.0.1", "port": later}, {"ip": "127.0.0.1", "port": one.port()}],
        "healthCheck": {"interval": "1s", "unhealthy": 1, "healthy": 1}});
    let made = api.call("POST", "/api/stream", r, Some(stream)).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.raw);
    assert_eq!(made.json["healthCheck"]["unhealthy"], 1, "{}", made.raw);
    let up = |target: u16| format!("portico_stream_target_up{{stream=\"{listen}\",target=\"127.0.0.1:{target}\"}}");
    eventually(Duration::from_secs(5), "the silent target checked down", || async {
        (sample(&p, &up(later)).await == Some(0.0) && sample(&p, &up(one.port())).await == Some(1.0)).then_some(())
    })
    .await;
    // Its connections go to the target that passes.
    assert_eq!(ask(port, "checked").await.as_deref(), Some("one: checked"));
    // The first target comes up: it passes its next check, and `first` sends to it again.
    let listener = TcpListener::bind(("127.0.0.1", later)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut line = String::new();
                let mut reader = BufReader::new(&mut socket);
                if reader.read_line(&mut line).await.is_ok() && !line.is_empty() {
                    let _ = socket.write_all(format!("later: {line}").as_bytes()).await;
                }
            });
        }
    });
    eventually(Duration::from_secs(5), "the first target up again", || async {
        (sample(&p, &up(later)).await == Some(1.0)).then_some(())
    })
    .await;
    let answer = eventually(Duration::from_secs(5), "connections to the first target", || async {
        ask(port, "again").await.filter(|a| a.starts_with("later"))
    })
    .await;
    assert_eq!(answer, "later: again");
    // A UDP stream cannot have active checks.
    let udp = json!({"listen": format!("127.0.0.1:{}", free_port()), "protocol": "udp",
        "targets": [{"ip": "127.0.0.1", "port": 53}], "healthCheck": {}});
    let refused = api.call("POST", "/api/stream", r, Some(udp)).await;
    assert_eq!(refused.json["keys"][0]["key"], "healthCheck", "{}", refused.raw);
}
