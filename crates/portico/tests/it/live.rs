//! Live model events for UIs: socket.io, driven by the seed UI's own client library
//! (`browser/socketio.mjs`, socket.io-client 4), and server-sent events at `/api/events`; on
//! one node and across nodes sharing Redis.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use portico_test_support::client::ApiClient;
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Portico, RedisServer};
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
        let (status, body) = sse(api, Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        let mut body = body.unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                text.push_str(&String::from_utf8_lossy(&data));
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

type SseBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn sse(api: SocketAddr, token: Option<&str>) -> (StatusCode, Option<SseBody>) {
    let stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::get("/api/events").header("host", api.to_string());
    if let Some(token) = token {
        request = request.header("auth-token", token);
    }
    let response = sender.send_request(request.body(http_body_util::Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        (status, Some(response.into_body().boxed()))
    } else {
        (status, None)
    }
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
    assert_eq!(sse(p.api, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(sse(p.api, Some("not-a-token")).await.0, StatusCode::UNAUTHORIZED);
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
