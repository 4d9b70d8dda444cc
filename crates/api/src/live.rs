//! Live changes for UIs: the store's change feed as the seed's model events, topic
//! `model:<Model>:<create|update|remove>:<key>` with the record as the API shows it, for
//! hosts, DNS providers and domains. Served two ways, to holders of a valid token only:
//! socket.io at `/socket.io/` (event `P2PSub`, `{topic, data}`, as the seed's UI expects), and
//! server-sent events at `GET /api/events`.
//!
//! Changes made by any process reach every process's feed (a specific event, or a resync
//! that is diffed against what was last seen), so every node's listeners see every change.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use portico_model::Host;
use portico_model::host_view::HostView;
use portico_store::{Fields, Followed, Follower, Kind, Store, StoreError, Subscription};
use serde_json::{Value, json};
use socketioxide::extract::{Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::{Caller, token_key};
use crate::error::ApiError;
use crate::state::Api;

/// The kinds whose changes are announced: the seed's, and certificates' state (an issuance's
/// steps, renewals, uploads), which the seed did not announce.
const ANNOUNCED: [Kind; 4] = [Kind::Host, Kind::DnsProvider, Kind::Domain, Kind::Cert];
/// How often a listener's token is checked again, besides when the token's record changes
/// (its expiry passes without a write).
const TOKEN_RECHECK: Duration = Duration::from_secs(60);
/// Events a slow listener may fall behind by before it misses some (it is then told to
/// reload: a `resync` event).
const BACKLOG: usize = 1024;

/// What the feed announces.
#[derive(Debug)]
pub enum Event {
    /// A record was created, updated or removed: the seed's `{topic, data}`.
    Model(Value),
    /// An auth token's record changed (its key): listeners holding it check it again.
    Token(String),
}

/// The model-event feed of one process: started with its first listener.
#[derive(Debug)]
pub struct Feed {
    sender: broadcast::Sender<Arc<Event>>,
    started: OnceLock<()>,
}

impl Default for Feed {
    fn default() -> Self {
        Self { sender: broadcast::channel(BACKLOG).0, started: OnceLock::new() }
    }
}

impl Feed {
    /// A new listener (starts the feed, from the node's changes, if it is the first).
    pub fn subscribe(&self, store: &Arc<dyn Store>, changes: &Follower) -> broadcast::Receiver<Arc<Event>> {
        let receiver = self.sender.subscribe();
        self.started.get_or_init(|| {
            tokio::spawn(run(store.clone(), changes.subscribe(&ANNOUNCED), self.sender.clone()));
        });
        receiver
    }
}

/// A record as the API shows it, for an event's `data`.
fn render(kind: Kind, key: &str, fields: &Fields) -> Option<Value> {
    match kind {
        Kind::Host => Host::from_fields(fields).ok().and_then(|h| serde_json::to_value(HostView::of(&h)).ok()),
        Kind::DnsProvider => serde_json::to_value(portico_model::dns::ProviderView::of(key, fields)).ok(),
        Kind::Domain => serde_json::to_value(portico_model::dns::DomainView::of(key, fields)).ok(),
        Kind::Cert => {
            let state = portico_certs::status::CertState::from_fields(fields);
            Some(json!({
                "host": key,
                "issued_by": state.issuer,
                "not_after": state.not_after * 1000,
                "step": state.step,
                "failures": state.failures,
                "last_error": state.last_error,
            }))
        }
        _ => None,
    }
}

type Seen = HashMap<(Kind, String), Value>;

/// Follows the node's changes (records of the announced kinds read), turning them into
/// events, until the process ends.
async fn run(store: Arc<dyn Store>, mut changes: Subscription, sender: broadcast::Sender<Arc<Event>>) {
    let mut seen = Seen::new();
    // What is there now is the baseline: only what changes after it is announced.
    resync(store.as_ref(), &mut seen, None).await;
    while let Some(change) = changes.next().await {
        match change {
            Followed::Touched { kind: Kind::AuthToken, key } | Followed::Record { kind: Kind::AuthToken, key, .. } => {
                let _ = sender.send(Arc::new(Event::Token(key)));
            }
            Followed::Record { kind, key, now } if ANNOUNCED.contains(&kind) => {
                let now = now.and_then(|fields| render(kind, &key, &fields));
                announce(&mut seen, &sender, kind, key, now);
            }
            Followed::Resync => resync(store.as_ref(), &mut seen, Some(&sender)).await,
            _ => {}
        }
    }
}

fn announce(seen: &mut Seen, sender: &broadcast::Sender<Arc<Event>>, kind: Kind, key: String, now: Option<Value>) {
    let slot = (kind, key);
    let (action, data) = match (now, seen.get(&slot)) {
        (Some(now), Some(before)) if &now == before => return,
        (Some(now), before) => {
            let action = if before.is_some() { "update" } else { "create" };
            seen.insert(slot.clone(), now.clone());
            (action, now)
        }
        (None, Some(_)) => ("remove", seen.remove(&slot).unwrap_or_default()),
        (None, None) => return,
    };
    let topic = format!("model:{}:{action}:{}", slot.0.name(), slot.1);
    let _ = sender.send(Arc::new(Event::Model(json!({ "topic": topic, "data": data }))));
}

/// Re-reads every announced kind (retrying while the store is unavailable) and, with a
/// sender, announces the differences.
async fn resync(store: &dyn Store, seen: &mut Seen, sender: Option<&broadcast::Sender<Arc<Event>>>) {
    loop {
        match read_all(store).await {
            Ok(now) => {
                let Some(sender) = sender else {
                    *seen = now;
                    return;
                };
                let gone: Vec<(Kind, String)> = seen.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
                for (kind, key) in gone {
                    announce(seen, sender, kind, key, None);
                }
                for ((kind, key), value) in now {
                    announce(seen, sender, kind, key, Some(value));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "live feed: the store is unavailable; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn read_all(store: &dyn Store) -> Result<Seen, StoreError> {
    let mut all = Seen::new();
    for kind in ANNOUNCED {
        for (key, fields) in store.records(kind).await? {
            if let Some(value) = render(kind, &key, &fields) {
                all.insert((kind, key), value);
            }
        }
    }
    Ok(all)
}

/// Hands model events to `deliver` while the token stays valid and `deliver` accepts them
/// (it returns `false` once its listener is gone). A listener that fell behind gets a
/// `{topic: "resync"}` event: reload.
async fn follow(api: Api, token_key: String, mut deliver: impl FnMut(&Value) -> bool) {
    let mut events = api.feed.subscribe(&api.store, &api.changes);
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    recheck.tick().await;
    loop {
        let check = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => match event.as_ref() {
                    Event::Model(payload) => {
                        if !deliver(payload) {
                            return;
                        }
                        false
                    }
                    Event::Token(key) => *key == token_key,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !deliver(&json!({ "topic": "resync", "data": {} })) {
                        return;
                    }
                    false
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = recheck.tick() => true,
        };
        if check && matches!(Caller::of_token_key(&api, token_key.clone()).await, Err(ApiError::LoginFailed)) {
            return;
        }
    }
}

/// `GET /api/events`: model events as server-sent events (`event: P2PSub`, data
/// `{topic, data}`), until the token is revoked or expires.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    responses((status = 200, content_type = "text/event-stream", description = "Server-sent events: `event: P2PSub`, `data: {topic, data}`; topic `model:<Host|DnsProvider|Domain>:<create|update|remove>:<key>`, or `resync` when the listener fell behind"), crate::openapi::AuthErrors),
    security(("token" = []), ("bearer" = []))
)]
pub async fn events(
    State(api): State<Api>,
    caller: Caller,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(BACKLOG);
    let gone = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = follow(api, caller.token_key, move |payload| tx.try_send(payload.clone()).is_ok()) => {}
            // The client went away while nothing happened.
            () = gone.closed() => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let payload = rx.recv().await?;
        Some((Ok(SseEvent::default().event("P2PSub").data(payload.to_string())), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The socket.io service at `/socket.io/` (Engine.IO 4, as socket.io 4's client speaks):
/// a client authenticates with `{auth: {token}}` in its handshake, as the seed's UI does, and
/// receives every model event as `P2PSub`. What clients emit is not relayed (in the seed any
/// client could forge model events for every other one).
pub fn socket_io(api: Api) -> socketioxide::layer::SocketIoLayer {
    let (layer, io) = socketioxide::SocketIo::builder()
        // A session that has not connected to the namespace (with its token) by then is
        // closed, and its memory freed.
        .connect_timeout(SOCKET_IO_CONNECT_TIMEOUT)
        .with_state(api)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));
    layer
}

/// How long a socket.io session may go without connecting with a token.
const SOCKET_IO_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// New socket.io sessions (handshakes) per client address (IPv6: /64) a minute.
const SOCKET_IO_HANDSHAKES_PER_MINUTE: usize = 30;
/// socket.io requests (long-polls, WebSockets) open at once per client address.
const SOCKET_IO_OPEN_PER_ADDRESS: usize = 16;

/// What clients can make the socket.io service hold before they show a token: handshakes
/// per address a minute, and requests open at once per address. Past either: `429`.
#[derive(Debug)]
pub struct SocketIoLimits {
    /// Handshakes, counted as the limiter's events (one scope for all, never the limit).
    handshakes: portico_model::limiter::FailureLimiter,
    open: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl Default for SocketIoLimits {
    fn default() -> Self {
        let handshakes = portico_model::limiter::FailureLimiter::new(
            Duration::from_secs(60),
            usize::MAX,
            SOCKET_IO_HANDSHAKES_PER_MINUTE,
        );
        Self { handshakes, open: std::sync::Mutex::default() }
    }
}

/// One open socket.io request of an address; counted down when dropped.
struct OpenRequest<'a>(&'a SocketIoLimits, std::net::IpAddr);

impl Drop for OpenRequest<'_> {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Middleware in front of `/socket.io/`: the per-address bounds of [`SocketIoLimits`].
pub async fn limit_socket_io(
    axum::extract::State(api): axum::extract::State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    // (Served without a peer address only in tests of the router alone.)
    let (true, Some(peer)) = (request.uri().path().starts_with("/socket.io/"), peer) else {
        return next.run(request).await;
    };
    let client = match crate::auth::client_address(peer, request.headers(), &api.settings.load().trusted_proxies) {
        Ok(client) => portico_model::limiter::address_key(client),
        Err(e) => return e.into_response(),
    };
    let limits = &api.socket_io;
    let handshake = !request.uri().query().is_some_and(|q| q.split('&').any(|p| p.starts_with("sid=")));
    if handshake {
        if let Err(wait) = limits.handshakes.check(client, "socket.io") {
            return ApiError::TooManyRequests(wait).into_response();
        }
        limits.handshakes.failed(client, "socket.io");
    }
    let _open = {
        let mut open = limits.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(client).or_default();
        if *n >= SOCKET_IO_OPEN_PER_ADDRESS {
            drop(open);
            return ApiError::TooManyRequests(1).into_response();
        }
        *n += 1;
        OpenRequest(limits, client)
    };
    next.run(request).await
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginFailed")
    }
}

/// Connect middleware: a valid token in the handshake's `auth.token`, else `connect_error`.
async fn authenticate(
    socket: SocketRef,
    Data(auth): Data<Value>,
    socketioxide::extract::State(api): socketioxide::extract::State<Api>,
) -> Result<(), Refused> {
    let token = auth.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or(Refused)?;
    let caller = Caller::of_token_key(&api, token_key(token)).await.map_err(|_| Refused)?;
    socket.extensions.insert(caller.token_key);
    Ok(())
}

async fn on_connect(socket: SocketRef, socketioxide::extract::State(api): socketioxide::extract::State<Api>) {
    let Some(token_key) = socket.extensions.get::<String>() else {
        return;
    };
    let gone = CancellationToken::new();
    let on_gone = gone.clone();
    socket.on_disconnect(move || async move { on_gone.cancel() });
    let sender = socket.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = follow(api, token_key, move |payload| sender.emit("P2PSub", payload).is_ok()) => {
                // The token went: so does the socket.
                let _ = socket.disconnect();
            }
            () = gone.cancelled() => {}
        }
    });
}
