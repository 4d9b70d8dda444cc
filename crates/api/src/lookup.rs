//! The seed's lookup service: a client sends `{"domain":"<name>"}` over a Unix socket (or
//! TCP) and gets back, on one line, the host that serves the name with every field a string
//! as the seed stores it (`host` is the pattern that matched), or `{}`. Requests may end with
//! a newline or not, and several may come on one connection, even in one write (the seed's
//! server stalled on that). Answers come from the routing snapshot in memory: no store read,
//! no 100 ms wait.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portico_model::{Hostname, Routes};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest request a connection may send; a client that sends more is cut off.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(60);
/// Connections open at once; past it, new ones are closed as soon as they are accepted (the
/// service asks for no credentials, so idle connections must not eat the process's file
/// descriptors, which the proxy and the API need).
pub const MAX_CONNECTIONS: usize = 256;

/// Binds the Unix socket at `path` with permissions `mode`, replacing a stale socket file
/// (a path that holds anything else is refused).
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Where the lookup service listens.
#[derive(Debug)]
pub enum Endpoint {
    /// A Unix socket (its file is the caller's: removed when the node stops, or left to the
    /// process it was handed to).
    Unix(UnixListener),
    /// A TCP listener.
    Tcp(TcpListener),
}

/// Answers lookups on `endpoint` from `routes` until `shutdown`.
pub async fn serve(endpoint: Endpoint, routes: Arc<Routes>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let refusals = portico_model::limiter::Rarely::new(Duration::from_secs(60));
    loop {
        let accepted = match &endpoint {
            Endpoint::Unix(listener) => tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => a.map(|(s, _)| tokio_util::either::Either::Left(s)),
            },
            Endpoint::Tcp(listener) => tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => a.map(|(s, _)| tokio_util::either::Either::Right(s)),
            },
        };
        match accepted {
            Ok(stream) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Dropped at once; said at most once a minute.
                    if refusals.due() {
                        tracing::warn!(
                            limit = MAX_CONNECTIONS,
                            "lookup service: too many connections; closing new ones"
                        );
                    }
                    continue;
                };
                let (routes, shutdown) = (routes.clone(), shutdown.clone());
                connections.spawn(async move {
                    let _slot = slot;
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = answer(stream, &routes) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "lookup service: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// Reads requests from one connection and writes one line per answer, until the client
/// closes it, goes quiet, or sends something that is not JSON.
async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin, routes: &Routes) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => n,
        };
        buffer.extend_from_slice(&chunk[..n]);
        let mut values = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
        let mut replies = Vec::new();
        let mut consumed = 0;
        loop {
            match values.next() {
                Some(Ok(request)) => {
                    consumed = values.byte_offset();
                    replies.extend_from_slice(reply(&request, routes).as_bytes());
                    replies.push(b'\n');
                }
                // A request cut short: wait for the rest.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "lookup service: not JSON; closing the connection");
                    let _ = stream.write_all(&replies).await;
                    return;
                }
                None => {
                    consumed = buffer.len();
                    break;
                }
            }
        }
        buffer.drain(..consumed);
        if buffer.len() > MAX_REQUEST {
            return;
        }
        if !replies.is_empty() && stream.write_all(&replies).await.is_err() {
            return;
        }
    }
}

/// The answer to one request: the matched host's fields as strings, or `{}`; never a
/// secret one (basic-auth hashes, a seed's SSO secret): the service asks for no credentials.
fn reply(request: &Value, routes: &Routes) -> String {
    let found = request
        .get("domain")
        .and_then(Value::as_str)
        .and_then(|d| Hostname::parse(d).ok())
        .and_then(|name| routes.snapshot().lookup(name.as_str()).map(|(_, host)| host.to_fields()));
    let object: Map<String, Value> = found
        .into_iter()
        .flatten()
        .filter(|(k, _)| !portico_model::is_secret_field(k))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Value::Object(object).to_string()
}
