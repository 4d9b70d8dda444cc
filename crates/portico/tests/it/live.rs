//! Live model events for UIs: socket.io, driven by the seed UI's own client library
//! (`browser/socketio.mjs`, socket.io-client 4), and server-sent events at `/api/events`; on
//! one node and across nodes sharing Redis.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use portico_test_support::client::ApiClient;
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Portico, RedisServer, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::{BIN, portico};

/// How long an event may take to arrive ("within a few seconds").
const WITHIN: Duration = Duration::from_secs(5);

/// The folder of the JavaScript test clients (`npm ci` there installs them).
fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../browser")
}

/// The seed UI's socket.io client, connected to `api` with `token`; its events as JSON.
struct SeedSocket {
    _child: tokio::process::Child,
    events: mpsc::UnboundedReceiver<Value>,
}

impl SeedSocket {
    fn connect(api: SocketAddr, token: &str) -> Self {
        let mut child = tokio::process::Command::new("node")
            .arg(browser_dir().join("socketio.mjs"))
            .arg(format!("http://{api}"))
            .arg(token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (the browser tests' `npm ci` installs socket.io-client)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(serde_json::from_str(&line).unwrap_or(Value::String(line)));
            }
        });
        Self { _child: child, events }
    }

    /// The next event of this kind; other events before it are skipped.
    async fn next(&mut self, kind: &str) -> Value {
        let wait = async {
            loop {
                let event = self.events.recv().await.expect("the socket.io client ended");
                if event["event"] == kind {
                    return event;
                }
            }
        };
        tokio::time::timeout(WITHIN, wait).await.unwrap_or_else(|_| panic!("no {kind} event within {WITHIN:?}"))
    }

    /// The next model event (`P2PSub`) with this topic.
    async fn topic(&mut self, topic: &str) -> Value {
        loop {
            let event = self.next("P2PSub").await;
            if event["message"]["topic"] == topic {
                return event["message"]["data"].clone();
            }
        }
    }
}

/// A `GET /api/events` stream: its `P2PSub` payloads.
struct EventStream {
    events: mpsc::UnboundedReceiver<Option<Value>>,
}

impl EventStream {
    async fn open(api: SocketAddr, token: &str) -> Self {
        let (status, headers, mut chunks) = ApiClient::new(api).stream("/api/events", Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/event-stream");
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut text = String::new();
            while let Some(chunk) = chunks.recv().await {
                text.push_str(&chunk);
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                        let _ = tx.send(Some(serde_json::from_str(data).unwrap()));
                    }
                }
            }
            let _ = tx.send(None);
        });
        Self { events }
    }

    /// The next payload with this topic (`None`: the stream ended first).
    async fn topic(&mut self, topic: &str) -> Option<Value> {
        let wait = async {
            loop {
                let event = self.events.recv().await??;
                if event["topic"] == topic {
                    return Some(event["data"].clone());
                }
            }
        };
        tokio::time::timeout(WITHIN, wait).await.unwrap_or_else(|_| panic!("no {topic} within {WITHIN:?}"))
    }
}

async fn sse_status(api: SocketAddr, token: Option<&str>) -> StatusCode {
    ApiClient::new(api).stream("/api/events", token).await.0
}

fn host(name: &str, port: u16) -> Value {
    json!({"host": name, "ip": "127.0.0.1", "targetPort": port, "forcessl": false})
}

/// What the seed's host list subscribes to (`model:Host:create|update|remove:<host>`), through
/// its own client library; a bad token gets `connect_error`, and logging out disconnects.
#[tokio::test]
async fn the_seed_ui_socket_io_client_sees_host_changes() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let t = Some(token.as_str());

    let mut refused = SeedSocket::connect(p.api, "not-a-token");
    assert_eq!(refused.next("connect_error").await["message"], "LoginFailed");

    let mut socket = SeedSocket::connect(p.api, &token);
    socket.next("connect").await;
    // socket.io starts with long-polling and moves to a WebSocket on the same port.
    socket.next("websocket").await;
    assert_eq!(api.call("POST", "/api/host", t, Some(host("live.example.test", 8080))).await.status, StatusCode::OK);
    let created = socket.topic("model:Host:create:live.example.test").await;
    assert_eq!(created["host"], "live.example.test");
    assert_eq!(created["targetPort"], 8080);

    let put = api.call("PUT", "/api/host/live.example.test", t, Some(json!({"targetPort": 8081}))).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(socket.topic("model:Host:update:live.example.test").await["targetPort"], 8081);
    assert_eq!(api.call("DELETE", "/api/host/live.example.test", t, None).await.status, StatusCode::OK);
    assert_eq!(socket.topic("model:Host:remove:live.example.test").await["host"], "live.example.test");

    assert_eq!(api.call("POST", "/api/auth/logout", t, None).await.status, StatusCode::OK);
    socket.next("disconnect").await;
}

/// `GET /api/events`: the same events as server-sent events, for holders of a valid token
/// only; the stream ends when its token is revoked.
#[tokio::test]
async fn server_sent_events_follow_changes_until_the_token_goes() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    assert_eq!(sse_status(p.api, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(sse_status(p.api, Some("not-a-token")).await, StatusCode::UNAUTHORIZED);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let mut events = EventStream::open(p.api, &token).await;
    let t = Some(token.as_str());
    assert_eq!(api.call("POST", "/api/host", t, Some(host("sse.example.test", 9000))).await.status, StatusCode::OK);
    let created = events.topic("model:Host:create:sse.example.test").await.expect("an event");
    assert_eq!(created["targetPort"], 9000);
    assert_eq!(api.call("POST", "/api/auth/logout", t, None).await.status, StatusCode::OK);
    assert_eq!(events.topic("never").await, None, "the stream ends once its token is revoked");
}

/// A change written through one node reaches listeners on another within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_on_one_node_reach_listeners_on_another() {
    let redis = RedisServer::start();
    let store = format!("store.url=\"{}\"", redis.url());
    let a = Portico::start_role(BIN, "api", &[&store]);
    let b = Portico::start_role(BIN, "api", &[&store]);
    let token = ApiClient::new(a.api).login("admin", ADMIN_PASSWORD).await;
    let mut socket = SeedSocket::connect(a.api, &token);
    socket.next("connect").await;
    let mut events = EventStream::open(a.api, &token).await;

    let on_b = ApiClient::new(b.api);
    let written = on_b.call("POST", "/api/host", Some(&token), Some(host("far.example.test", 7000))).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.raw);
    assert_eq!(socket.topic("model:Host:create:far.example.test").await["targetPort"], 7000);
    assert_eq!(events.topic("model:Host:create:far.example.test").await.unwrap()["targetPort"], 7000);
}

/// The seed's pages load `/socket.io/socket.io.js` from the server, as socket.io servers
/// serve it: the client of the version the browser tests' lockfile pins, byte for byte.
#[tokio::test]
async fn the_socket_io_client_script_is_served() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    let script = api.call("GET", "/socket.io/socket.io.js", None, None).await;
    assert_eq!(script.status, StatusCode::OK);
    assert_eq!(script.headers["content-type"], "text/javascript; charset=utf-8");
    let installed = browser_dir().join("node_modules/socket.io-client/dist/socket.io.min.js");
    let installed = std::fs::read_to_string(&installed).expect("`npm ci` in browser/");
    assert!(script.raw == installed, "the served client is socket.io-client's own");
    assert!(script.raw.starts_with("/*!\n * Socket.IO v4."), "with its licence banner");
}

/// Clients without a token cannot make the socket.io service hold much: 30 new sessions a
/// minute per address (then 429), and a session that never connects with a token is closed
/// after 10 seconds (its id is then unknown), freeing what it held.
#[tokio::test]
async fn socket_io_sessions_without_a_token_are_bounded_and_time_out() {
    let p = portico(&[]);
    let api = ApiClient::new(p.api);
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let mut first = None;
    for i in 0..30 {
        let reply = api.call("GET", handshake, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "handshake {i}: {}", reply.raw);
        first.get_or_insert(reply.raw);
    }
    let refused = api.call("GET", handshake, None, None).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.raw);

    // The first session never connected to the namespace: closed by the server.
    let open: Value = serde_json::from_str(first.unwrap().trim_start_matches('0')).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(20), "the session closed by the server", || async {
        let poll = api.call("GET", &format!("{handshake}&sid={sid}"), None, None).await;
        (poll.status == StatusCode::BAD_REQUEST).then_some(())
    })
    .await;
}
