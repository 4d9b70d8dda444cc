//! The connection to Redis: one server (`redis://`, `rediss://`), a master found through
//! Sentinel (`redis+sentinel://`), or a Cluster (`redis+cluster://`).
//!
//! Every command has a deadline ([`OP_TIMEOUT`]), so a store that has gone away is an error
//! within it, never a hang. The connections reconnect by themselves; a Sentinel link also
//! asks the sentinels again for the master when the one it knows refuses, drops the
//! connection or has become a read-only replica (after a failover), and switches to the
//! new one.
//!
//! The subscription to the change channel has a connection of its own: Redis holds a
//! subscribed client to the pub/sub output limit, which a large reply (a full reload of
//! many hosts) would exceed and get the connection dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisError, RedisFuture, Value,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::StoreError;

/// How long one command may take before the store counts as unavailable.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The least time between two questions to the sentinels.
const RESOLVE_EVERY: Duration = Duration::from_millis(250);

/// A connection that serves every command of the store.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the store is, parsed from its URL.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One server.
    Node(ConnectionInfo),
    /// Sentinels to ask for the master named `master`.
    Sentinel { sentinels: Vec<ConnectionAddr>, master: String, node: ConnectionInfo },
    /// Cluster nodes to start from.
    Cluster(Vec<ConnectionInfo>),
}

/// Parses a Redis store URL. Errors never repeat the password.
pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    let bad = |reason: &'static str| StoreError::Url { url: crate::redact(url), reason };
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let info = url.into_connection_info().map_err(|_| bad("not a valid redis:// URL"))?;
        return Ok(Target::Node(info));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (format!("{credentials}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    if hosts.is_empty() {
        return Err(bad("no host:port"));
    }
    let node_url = |host: &str, db: &str| {
        let db = if db.is_empty() { String::new() } else { format!("/{db}") };
        format!("redis://{credentials}{host}{db}")
            .into_connection_info()
            .map_err(|_| bad("a host:port in it is not valid"))
    };
    match scheme {
        "redis+cluster" => {
            if !path.is_empty() {
                return Err(bad("a Redis Cluster has no databases: drop the path"));
            }
            let nodes = hosts.split(',').map(|h| node_url(h, "")).collect::<Result<Vec<_>, _>>()?;
            Ok(Target::Cluster(nodes))
        }
        "redis+sentinel" => {
            let (master, db) = path.split_once('/').unwrap_or((path, ""));
            if master.is_empty() {
                return Err(bad("name the master after the sentinels: redis+sentinel://host:port,.../mymaster"));
            }
            if !db.is_empty() && db.parse::<u16>().is_err() {
                return Err(bad("the database after the master name must be a number"));
            }
            let sentinels = hosts
                .split(',')
                .map(|h| Ok(node_url(h, "")?.addr().clone()))
                .collect::<Result<Vec<_>, StoreError>>()?;
            // The master's own address comes from the sentinels; credentials and database apply to it.
            let node = node_url(hosts.split(',').next().unwrap_or(hosts), db)?;
            Ok(Target::Sentinel { sentinels, master: master.to_owned(), node })
        }
        _ => Err(bad("the scheme must be redb://, redis://, rediss://, redis+sentinel:// or redis+cluster://")),
    }
}

/// The live connection, and how to find a new master for Sentinel.
pub(crate) struct Link {
    target: Target,
    /// The change channel, subscribed again on a new Sentinel master.
    channel: String,
    conn: ArcSwap<Conn>,
    /// The connection subscribed to `channel`, which serves no command.
    sub: ArcSwap<Conn>,
    sentinel: Option<Sentinel>,
    push: UnboundedSender<PushInfo>,
}

struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    master: ArcSwap<ConnectionAddr>,
    last_resolve: std::sync::Mutex<Option<Instant>>,
}

impl Link {
    /// Connects and subscribes to `channel`; push messages (and disconnections) go to `push`.
    pub(crate) async fn connect(
        target: &Target,
        channel: &str,
        push: UnboundedSender<PushInfo>,
    ) -> Result<Self, RedisError> {
        let (conn, sub, sentinel) = match target {
            Target::Node(info) => (node(info.clone(), None).await?, node(info.clone(), Some(&push)).await?, None),
            Target::Cluster(nodes) => {
                let client = |push: Option<&UnboundedSender<PushInfo>>| {
                    let mut builder = ClusterClientBuilder::new(nodes.iter().map(|n| resp3(n.clone())))
                        .use_protocol(ProtocolVersion::RESP3)
                        .connection_timeout(CONNECT_TIMEOUT)
                        .response_timeout(OP_TIMEOUT)
                        .retries(2);
                    if let Some(push) = push {
                        builder = builder.push_sender(push.clone());
                    }
                    builder.build()
                };
                let conn = Conn::Cluster(client(None)?.get_async_connection().await?);
                (conn, Conn::Cluster(client(Some(&push))?.get_async_connection().await?), None)
            }
            Target::Sentinel { sentinels, master, node: info } => {
                let settings = info.redis_settings();
                let mut builder = SentinelClientBuilder::new(sentinels.clone(), master, SentinelServerType::Master)?
                    .set_client_to_redis_protocol(ProtocolVersion::RESP3)
                    .set_client_to_redis_db(settings.db());
                if let Some(user) = settings.username() {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = settings.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                let mut client = builder.build()?;
                let master_info = client.async_get_client().await?.get_connection_info().clone();
                let conn = node(master_info.clone(), None).await?;
                let sub = node(master_info.clone(), Some(&push)).await?;
                let sentinel = Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    master: ArcSwap::from_pointee(master_info.addr().clone()),
                    last_resolve: std::sync::Mutex::new(Some(Instant::now())),
                };
                (conn, sub, Some(sentinel))
            }
        };
        subscribe(&sub, channel).await?;
        Ok(Self {
            target: target.clone(),
            channel: channel.to_owned(),
            conn: ArcSwap::from_pointee(conn),
            sub: ArcSwap::from_pointee(sub),
            sentinel,
            push,
        })
    }

    /// The current connection.
    pub(crate) fn conn(&self) -> Conn {
        Conn::clone(&self.conn.load())
    }

    /// Runs `f` on the connection within [`OP_TIMEOUT`]. A failure that may mean the master
    /// moved makes a Sentinel link look for it again (for the next call).
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result = match tokio::time::timeout(OP_TIMEOUT, f(self.conn())).await {
            Ok(result) => result.map_err(backend),
            Err(_) => Err(backend(Timeout)),
        };
        if let Err(StoreError::Backend { source, .. }) = &result {
            let lost = source.downcast_ref::<Timeout>().is_some()
                || source.downcast_ref::<RedisError>().is_some_and(moved_or_gone);
            if lost {
                self.find_master().await;
            }
        }
        result
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await }).await
    }

    /// Asks the sentinels for the master again, at most every [`RESOLVE_EVERY`]; switches
    /// to it (and subscribes there) when it moved. Returns whether it switched.
    pub(crate) async fn find_master(&self) -> bool {
        let Some(sentinel) = &self.sentinel else { return false };
        {
            let mut last = sentinel.last_resolve.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RESOLVE_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let Ok(mut client) = sentinel.client.try_lock() else { return false };
        let found = tokio::time::timeout(OP_TIMEOUT, client.async_get_client()).await;
        let Ok(Ok(found)) = found else { return false };
        let info = found.get_connection_info().clone();
        if **sentinel.master.load() == *info.addr() {
            return false;
        }
        let connected = async {
            Ok::<_, RedisError>((node(info.clone(), None).await?, node(info.clone(), Some(&self.push)).await?))
        };
        let Ok(Ok((conn, sub))) = tokio::time::timeout(OP_TIMEOUT, connected).await else {
            return false;
        };
        if subscribe(&sub, &self.channel).await.is_err() {
            return false;
        }
        tracing::warn!(master = %info.addr(), "the Redis master moved (Sentinel failover); using the new one");
        sentinel.master.store(Arc::new(info.addr().clone()));
        self.conn.store(Arc::new(conn));
        self.sub.store(Arc::new(sub));
        true
    }
}

impl Link {
    /// Every key of Redis type `kind` (`string`, `hash`, …), by `SCAN` (never `KEYS`) on the
    /// server, or on every master of a Cluster.
    pub(crate) async fn scan(&self, kind: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        match &self.target {
            Target::Cluster(nodes) => {
                let listing: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
                for line in listing.lines() {
                    let mut fields = line.split(' ');
                    let (Some(_), Some(addr), Some(flags)) = (fields.next(), fields.next(), fields.next()) else {
                        continue;
                    };
                    if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                        continue;
                    }
                    let addr = addr.split(['@', ',']).next().unwrap_or(addr);
                    let Some((host, port)) = addr.rsplit_once(':') else { continue };
                    let Ok(port) = port.parse() else { continue };
                    let info = nodes[0].clone().set_addr(ConnectionAddr::Tcp(host.to_owned(), port));
                    let client = redis::Client::open(info).map_err(backend)?;
                    let mut conn = client.get_multiplexed_async_connection().await.map_err(backend)?;
                    scan_node(&mut conn, kind, &mut keys).await?;
                }
            }
            _ => scan_node(&mut self.conn(), kind, &mut keys).await?,
        }
        keys.sort_unstable();
        Ok(keys)
    }
}

/// `SCAN`s one server for keys of `kind`.
async fn scan_node(conn: &mut impl ConnectionLike, kind: &str, keys: &mut Vec<String>) -> Result<(), StoreError> {
    let mut cursor = 0u64;
    loop {
        let mut command = redis::cmd("SCAN");
        command.arg(cursor).arg("COUNT").arg(1000).arg("TYPE").arg(kind);
        let scanned = command.query_async(conn);
        let (next, batch): (u64, Vec<String>) = match tokio::time::timeout(OP_TIMEOUT, scanned).await {
            Ok(result) => result.map_err(backend)?,
            Err(_) => return Err(backend(Timeout)),
        };
        keys.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A connection to one server, speaking RESP3; with `push`, the one for the subscription
/// (subscribed again after a reconnection), whose messages and disconnections go there.
async fn node(info: ConnectionInfo, push: Option<&UnboundedSender<PushInfo>>) -> Result<Conn, RedisError> {
    let mut config = ConnectionManagerConfig::new();
    if let Some(push) = push {
        config = config.set_push_sender(push.clone()).set_automatic_resubscription();
    }
    let config = config
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let client = redis::Client::open(resp3(info))?;
    Ok(Conn::Node(ConnectionManager::new_with_config(client, config).await?))
}

fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

async fn subscribe(conn: &Conn, channel: &str) -> Result<(), RedisError> {
    let subscribed = async {
        match conn.clone() {
            Conn::Node(mut c) => c.subscribe(channel).await,
            Conn::Cluster(mut c) => c.subscribe(channel).await,
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, subscribed).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))),
    }
}

/// Whether an error may mean the server went away or is no longer the master.
fn moved_or_gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.to_string().contains("READONLY")
}

/// A command that did not answer within [`OP_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("Redis did not answer within {OP_TIMEOUT:?}")]
pub(crate) struct Timeout;

/// A Redis failure as the store's error.
pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend { backend: "Redis", source: Box::new(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(matches!(parse("redis://127.0.0.1:6379/2").unwrap(), Target::Node(_)));
        let Target::Cluster(nodes) = parse("redis+cluster://:pw@127.0.0.1:7001,127.0.0.1:7002").unwrap() else {
            panic!()
        };
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].redis_settings().password(), Some("pw"));
        let Target::Sentinel { sentinels, master, node } =
            parse("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/3").unwrap()
        else {
            panic!()
        };
        assert_eq!((sentinels.len(), master.as_str(), node.redis_settings().db()), (2, "mymaster", 3));
        for bad in [
            "redis+sentinel://127.0.0.1:26379",
            "redis+sentinel://127.0.0.1:26379/m/x",
            "redis+cluster://127.0.0.1:7001/0",
            "redis+cluster:///",
            "memcached://x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let err = parse("redis+sentinel://:hunter2@127.0.0.1:26379").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
