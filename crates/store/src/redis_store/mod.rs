//! The Redis backend: the seed's key layout, for clusters of Portico nodes.
//!
//! Layout (that of the seed's model-redis and lua-resty-auto-ssl, so a seed deployment's
//! Redis is used as it is): a record is a hash `proxy_<Kind>_<key>` of string fields, listed
//! in the set `proxy_<Kind>`; blobs are plain strings (`<name>:latest`,
//! `<name>:challenge:<token>`), with a time to live where they have one; a lock is a string
//! holding its holder's token, set with `SET NX PX` and given back by a compare-and-delete
//! script. A record's revision is the hash's `_rev` field (see [`keys::REVISION_FIELD`]).
//!
//! **Two keys, no transaction.** In a Redis Cluster the index set and a record's hash live
//! in different slots, so no write can change both at once. The order makes every state a
//! reader can see a sound one: the index entry is added before the record is written and
//! removed after it is deleted. A reader lists the index and reads each record, skipping
//! entries whose record is missing, so it never sees an index entry without its record. A
//! process that dies between the two steps leaves at worst such a dangling entry, which
//! the periodic resync removes ([`RedisStore::repair`]). A rename writes the new record
//! before it deletes the old one: if it is cut short, both names exist and nothing is lost.
//!
//! **Change feed.** Every write that others must hear about increments `proxy_version` and
//! publishes its events on `proxy_events`. A node announces its own writes to itself at
//! once, and others' as they arrive. Each second it reads the counter: when a value it
//! read a second ago was never announced (a writer died between the two, or a script only
//! bumped the counter), or the counter went backwards, it announces [`Change::Resync`]. It
//! does the same when it gets Redis back after losing it, and every [`RESYNC_EVERY`].
//! Leases, counters and blobs with a time to live are announced nowhere. No `KEYS`, no
//! keyspace notifications.

mod link;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use redis::{FromRedisValue, PushInfo, PushKind, Script, Value, cmd};
use tokio::sync::{broadcast, mpsc};

use crate::keys::{EVENTS_CHANNEL, REVISION_FIELD, VERSION_COUNTER};
use crate::{Change, Fields, Key, Kind, Lease, Revision, Store, StoreError};
use link::{Link, Target, backend};

/// Why the Redis at `url` cannot be used, once, in words that say what to do (a password
/// asked for or refused, a refused connection), naming the URL without its password.
fn unreachable(url: &str, e: &StoreError) -> StoreError {
    const PASSWORD: &str = "redis://:PASSWORD@host:6379 (redis://USER:PASSWORD@… with ACLs, rediss:// for TLS)";
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    let mut detail = None;
    while let Some(error) = source {
        if let Some(redis) = error.downcast_ref::<redis::RedisError>() {
            detail = match redis.code() {
                Some("NOAUTH") => Some(format!("it asks for a password: give it in the URL, {PASSWORD}")),
                Some("WRONGPASS") => {
                    Some(format!("it refuses the user or password in the URL; the form is {PASSWORD}"))
                }
                _ if redis.is_connection_refusal() => {
                    Some("connection refused: is Redis running, and listening on that address?".to_owned())
                }
                _ => None,
            };
            if detail.is_some() {
                break;
            }
        }
        if error.downcast_ref::<link::Timeout>().is_some() {
            detail = Some("no answer in time".to_owned());
            break;
        }
        innermost = error.to_string();
        source = error.source();
    }
    StoreError::Unreachable { url: crate::redact(url), detail: detail.unwrap_or(innermost) }
}

/// How often a node reads `proxy_version` to find events it missed.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often every node re-reads everything regardless.
pub const RESYNC_EVERY: Duration = Duration::from_secs(600);
/// How far this machine's clock may be from the Redis server's before a warning.
const MAX_SKEW_MS: u128 = 30_000;
/// How many record reads are in flight at once when listing a kind.
const READS_IN_FLIGHT: usize = 256;

/// Writes a record whole. `KEYS[1]`: the hash. `ARGV[1]`: `put` (create or overwrite),
/// `replace` (it must exist) or `claim` (it must exist; only its revision moves on).
/// `ARGV[2]`: the revision it must be at, or empty. `ARGV[3]`: the least new revision.
/// The rest: field, value, …. Answers `{status, revision}`. The new revision is the
/// server's clock in microseconds, or one more than the old one if that is later, so a
/// record deleted and made again never repeats a revision.
const WRITE: &str = r"
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[1] ~= 'put' and not exists then return {'notfound', '0'} end
local old = tonumber(redis.call('HGET', KEYS[1], '_rev') or '0') or 0
if ARGV[2] ~= '' and old ~= tonumber(ARGV[2]) then return {'stale', '0'} end
local t = redis.call('TIME')
local rev = math.max(old + 1, tonumber(ARGV[3]), t[1] * 1000000 + t[2])
local text = string.format('%.0f', rev)
if ARGV[1] == 'claim' then
  redis.call('HSET', KEYS[1], '_rev', text)
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], '_rev', text, unpack(ARGV, 4))
end
return {'ok', text}
";

/// Creates a record unless its hash exists. `KEYS[1]`: the hash; `ARGV[1]`: the least
/// revision; the rest: field, value, …. Answers the revision, or nil if it exists.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('TIME')
local text = string.format('%.0f', math.max(tonumber(ARGV[1]), t[1] * 1000000 + t[2]))
redis.call('HSET', KEYS[1], '_rev', text, unpack(ARGV, 2))
return text
";

/// Deletes a record if it is (still) at revision `ARGV[1]`, or whatever it is at when that
/// is empty. Answers 1 if it deleted it.
const DELETE: &str = r"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], '_rev') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
";

/// Reads a record: `{'ok', field, value, …}`, or `{'none'}`, `{'type', <its type>}` when the
/// key is not a hash, `{'large', <bytes>}` when it holds more than `ARGV[1]` bytes (measured
/// without moving them).
const READ: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {'none'} end
if t ~= 'hash' then return {'type', t} end
local size = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  size = size + #f + redis.call('HSTRLEN', KEYS[1], f)
end
if size > tonumber(ARGV[1]) then return {'large', tostring(size)} end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'ok')
return all
";

/// Deletes a blob; answers its time to live before (-2: there was none, -1: it had no
/// expiry).
const DELETE_BLOB: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl ~= -2 then redis.call('DEL', KEYS[1]) end
return ttl
";

/// Counts one in `KEYS[1]`, which lives `ARGV[1]` milliseconds from its first count.
const COUNT: &str = r"
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// Extends lease `KEYS[1]` to `ARGV[2]` ms if `ARGV[1]` still holds it.
const REFRESH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

/// Gives lease `KEYS[1]` back if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
";

struct Scripts {
    read: Script,
    write: Script,
    create: Script,
    delete: Script,
    delete_blob: Script,
    count: Script,
    refresh: Script,
    release: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        read: Script::new(READ),
        write: Script::new(WRITE),
        create: Script::new(CREATE),
        delete: Script::new(DELETE),
        delete_blob: Script::new(DELETE_BLOB),
        count: Script::new(COUNT),
        refresh: Script::new(REFRESH),
        release: Script::new(RELEASE),
    })
}

/// The Redis store (see the module documentation).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    /// The URL without its password, for messages.
    url: String,
    /// This handle's name in the events it publishes, so it does not announce them twice.
    id: String,
    changes: broadcast::Sender<Change>,
    /// Index entries found without their record at the last repair.
    dangling: Mutex<HashSet<(Kind, String)>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.inner.url).finish()
    }
}

/// What a write script answered.
enum Written {
    Ok(Revision),
    NotFound,
    Stale,
}

impl RedisStore {
    /// Connects to the store a `redis://`, `rediss://`, `redis+sentinel://` or
    /// `redis+cluster://` URL names and subscribes to its change feed. Must be called inside
    /// a Tokio runtime: the task that follows the feed ends when the store is dropped.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let target = link::parse(url)?;
        let (push, pushed) = mpsc::unbounded_channel();
        let unreachable = |e: StoreError| unreachable(url, &e);
        let link = match tokio::time::timeout(link::OP_TIMEOUT * 4, Link::connect(&target, EVENTS_CHANNEL, push)).await
        {
            Ok(link) => link.map_err(backend).map_err(unreachable)?,
            Err(_) => return Err(unreachable(backend(link::Timeout))),
        };
        let (changes, _) = broadcast::channel(4096);
        let id: String = std::iter::repeat_with(fastrand::alphanumeric).take(16).collect();
        let inner = Arc::new(Inner { link, url: crate::redact(url), id, changes, dangling: Mutex::default() });
        let start = inner.query(cmd("GET").arg(VERSION_COUNTER)).await.map(|v: Option<u64>| v.unwrap_or(0));
        let start = start.map_err(unreachable)?;
        tokio::spawn(follow(Arc::downgrade(&inner), pushed, start));
        if inner.persistent().await == Some(false) {
            tracing::warn!(
                store = %inner.url,
                "this Redis keeps nothing on disk (appendonly no, no save points): a restart empties it; Portico \
                 keeps serving from memory and refuses the empty store, but turn on appendonly"
            );
        }
        let store = Self { inner };
        if let Ok(server) = store.clock_ms().await {
            let skew = i128::from(crate::now_ms()) - i128::from(server);
            if skew.unsigned_abs() > MAX_SKEW_MS {
                let (seconds, side) = (skew.unsigned_abs() / 1000, if skew > 0 { "ahead of" } else { "behind" });
                tracing::warn!(
                    store = %store.inner.url,
                    "this machine's clock is {seconds} s {side} the Redis server's: token expiry follows the \
                     server's clock, but fix this one (NTP) for certificates and logs"
                );
            }
        }
        let inner = store.inner;
        if matches!(target, Target::Cluster(_)) {
            tracing::debug!(
                "Redis Cluster: index sets and records live in different slots; writes are ordered, not transactional"
            );
        }
        Ok(Self { inner })
    }

    /// Removes index entries whose record is missing (a writer died between the two
    /// steps), when they were missing at the previous call too: a create in progress has
    /// its index entry a moment before its record, and must not lose it. Returns how many
    /// it removed. The periodic resync calls it.
    pub async fn repair(&self) -> Result<usize, StoreError> {
        let mut found = HashSet::new();
        for kind in Kind::ALL {
            for key in self.inner.members(kind).await? {
                if !self.inner.query::<bool>(cmd("EXISTS").arg(kind.record_key(&key))).await? {
                    found.insert((kind, key));
                }
            }
        }
        let previous = std::mem::take(&mut *self.inner.dangling.lock().unwrap_or_else(|e| e.into_inner()));
        let mut removed = 0;
        for (kind, key) in found.intersection(&previous) {
            // Dangling at both passes: check once more right before removing it (a create
            // of the same key in the instant between the two commands is not guarded).
            if !self.inner.query::<bool>(cmd("EXISTS").arg(kind.record_key(key))).await? {
                self.inner.query::<()>(cmd("SREM").arg(kind.index_key()).arg(key)).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed index entries left without their record by an interrupted write");
        }
        let left: HashSet<_> = found.difference(&previous).cloned().collect();
        *self.inner.dangling.lock().unwrap_or_else(|e| e.into_inner()) = left;
        Ok(removed)
    }
}

impl Inner {
    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        self.link.query(command).await
    }

    /// Whether the server keeps its data on disk (an append-only file or save points), by
    /// `CONFIG GET`, or `INFO persistence` where `CONFIG` is refused (managed Redis); `None`
    /// when neither says.
    async fn persistent(&self) -> Option<bool> {
        let config: Result<std::collections::HashMap<String, String>, _> =
            self.query(cmd("CONFIG").arg("GET").arg("appendonly").arg("save")).await;
        if let Ok(config) = config
            && let (Some(aof), Some(save)) = (config.get("appendonly"), config.get("save"))
        {
            return Some(aof == "yes" || !save.trim().is_empty());
        }
        let info: String = self.query(cmd("INFO").arg("persistence")).await.ok()?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        // Without CONFIG, save points cannot be seen: only an append-only file counts.
        field("aof_enabled:").map(|v| v == "1")
    }

    async fn script<T: FromRedisValue>(&self, script: &Script, key: &str, args: &[&[u8]]) -> Result<T, StoreError> {
        self.link
            .run(|mut conn| async move {
                let mut invocation = script.key(key);
                for arg in args {
                    invocation.arg(*arg);
                }
                invocation.invoke_async(&mut conn).await
            })
            .await
    }

    /// The keys in a kind's index, sorted; read in batches (`SSCAN`), so a large index is
    /// never one reply. An entry that is not UTF-8 is not a key Portico wrote: skipped.
    async fn members(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let command = cmd("SSCAN").arg(kind.index_key()).arg(cursor).arg("COUNT").arg(1000).clone();
            let (next, batch): (u64, Vec<Vec<u8>>) = self.query(&command).await?;
            keys.extend(batch.into_iter().filter_map(|k| String::from_utf8(k).ok()));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// A record's fields and revision; `None` if its hash is missing or empty. A key that
    /// is not a hash, or a field that is not UTF-8, is [`StoreError::Corrupt`]; a record
    /// over [`crate::MAX_RECORD_BYTES`] is [`StoreError::TooLarge`].
    async fn read(&self, kind: Kind, key: &str) -> Result<Option<(Fields, Revision)>, StoreError> {
        let limit = crate::MAX_RECORD_BYTES.to_string();
        let answer: Vec<Vec<u8>> = self.script(&scripts().read, &kind.record_key(key), &[limit.as_bytes()]).await?;
        let corrupt = |why: String| StoreError::Corrupt { kind, key: key.to_owned(), source: why.into() };
        let mut items = answer.into_iter();
        match items.next().as_deref() {
            Some(b"ok") => {}
            Some(b"none") => return Ok(None),
            Some(b"large") => {
                let size = items.next().and_then(|n| String::from_utf8(n).ok()?.parse().ok()).unwrap_or(usize::MAX);
                return Err(StoreError::TooLarge { kind, key: key.to_owned(), size });
            }
            Some(b"type") => {
                let found = String::from_utf8_lossy(&items.next().unwrap_or_default()).into_owned();
                return Err(corrupt(format!("the key is a Redis {found}, not a hash")));
            }
            _ => return Err(corrupt("an unexpected answer to reading it".into())),
        }
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| corrupt("a field that is not UTF-8".into()));
        let mut fields = BTreeMap::new();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            fields.insert(text(name)?, text(value)?);
        }
        let revision = fields.remove(REVISION_FIELD).and_then(|r| r.parse().ok()).unwrap_or(0);
        // A hash holding only a revision is not a record (no write leaves one, but a seed
        // tool might have removed every other field).
        Ok((!fields.is_empty() || revision != 0).then_some((fields, Revision(revision))))
    }

    async fn write(
        &self,
        mode: &str,
        kind: Kind,
        key: &str,
        expected: Option<Revision>,
        least: u64,
        fields: &Fields,
    ) -> Result<Written, StoreError> {
        let expected = expected.map(|r| r.0.to_string()).unwrap_or_default();
        let least = least.to_string();
        let mut args: Vec<&[u8]> = vec![mode.as_bytes(), expected.as_bytes(), least.as_bytes()];
        for (name, value) in fields.iter().filter(|(name, _)| name.as_str() != REVISION_FIELD) {
            args.extend([name.as_bytes(), value.as_bytes()]);
        }
        let (status, revision): (String, String) = self.script(&scripts().write, &kind.record_key(key), &args).await?;
        Ok(match status.as_str() {
            "notfound" => Written::NotFound,
            "stale" => Written::Stale,
            _ => Written::Ok(Revision(revision.parse().unwrap_or(0))),
        })
    }

    /// Tells this process at once, and others through the channel.
    async fn announce(&self, events: Vec<Change>) {
        let payload = serde_json::json!({ "from": self.id, "changes": crate::encode_changes(&events) });
        for event in events {
            let _ = self.changes.send(event);
        }
        let published = async {
            let version: u64 = self.query(cmd("INCR").arg(VERSION_COUNTER)).await?;
            let mut message = payload;
            message["v"] = version.into();
            self.query::<()>(cmd("PUBLISH").arg(EVENTS_CHANNEL).arg(message.to_string())).await
        };
        // The write itself succeeded; others learn of it at their next resync.
        if let Err(e) = published.await {
            tracing::warn!(error = %e, "a write could not be announced to other nodes; they see it at their next resync");
        }
    }
}

fn record_event(kind: Kind, key: &str) -> Change {
    Change::Record { kind, key: key.to_owned() }
}

fn store_err_for(kind: Kind, key: &str, written: Written) -> Result<Revision, StoreError> {
    match written {
        Written::Ok(revision) => Ok(revision),
        Written::NotFound => Err(StoreError::NotFound { kind, key: key.to_owned() }),
        Written::Stale => Err(StoreError::Stale { kind, key: key.to_owned() }),
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn record(&self, kind: Kind, key: &str) -> Result<Option<Fields>, StoreError> {
        Ok(self.inner.read(kind, key).await?.map(|(fields, _)| fields))
    }

    async fn record_at(&self, kind: Kind, key: &str) -> Result<Option<(Fields, Revision)>, StoreError> {
        self.inner.read(kind, key).await
    }

    async fn records(&self, kind: Kind) -> Result<Vec<(String, Fields)>, StoreError> {
        let keys = self.inner.members(kind).await?;
        let inner = &self.inner;
        let read: Vec<_> = futures_util::stream::iter(keys)
            .map(|key| async move {
                crate::readable(inner.read(kind, &key).await).map(|r| r.map(|(fields, _)| (key, fields)))
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(read.into_iter().flatten().collect())
    }

    async fn keys(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        let keys = self.inner.members(kind).await?;
        let inner = &self.inner;
        let present: Vec<_> = futures_util::stream::iter(keys)
            .map(|key| async move {
                let exists: bool = inner.query(cmd("EXISTS").arg(kind.record_key(&key))).await?;
                Ok::<_, StoreError>(exists.then_some(key))
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(present.into_iter().flatten().collect())
    }

    async fn create(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        crate::within_bounds(kind, key, fields)?;
        let inner = &self.inner;
        // Index first: a reader skips the entry until the record is there.
        inner.query::<()>(cmd("SADD").arg(kind.index_key()).arg(key)).await?;
        let mut args: Vec<&[u8]> = vec![b"0"];
        for (name, value) in fields.iter().filter(|(name, _)| name.as_str() != REVISION_FIELD) {
            args.extend([name.as_bytes(), value.as_bytes()]);
        }
        let created: Option<String> = inner.script(&scripts().create, &kind.record_key(key), &args).await?;
        if created.is_none() {
            return Err(StoreError::Conflict { kind, key: key.to_owned() });
        }
        inner.announce(vec![record_event(kind, key)]).await;
        Ok(())
    }

    async fn put(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        crate::within_bounds(kind, key, fields)?;
        let inner = &self.inner;
        inner.query::<()>(cmd("SADD").arg(kind.index_key()).arg(key)).await?;
        inner.write("put", kind, key, None, 0, fields).await?;
        inner.announce(vec![record_event(kind, key)]).await;
        Ok(())
    }

    async fn delete(&self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        // Record first: an index entry never outlives it for a reader.
        let deleted: i64 = inner.script(&scripts().delete, &kind.record_key(key), &[b""]).await?;
        inner.query::<()>(cmd("SREM").arg(kind.index_key()).arg(key)).await?;
        if deleted > 0 {
            inner.announce(vec![record_event(kind, key)]).await;
        }
        Ok(deleted > 0)
    }

    async fn blob(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.query(cmd("GET").arg(key.as_str())).await
    }

    async fn put_blob(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut command = cmd("SET");
        command.arg(key.as_str()).arg(value);
        if let Some(ttl) = ttl {
            command.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        self.inner.query::<()>(&command).await?;
        // Short-lived blobs (challenge answers) are read where they are needed, never followed.
        if ttl.is_none() {
            self.inner.announce(vec![Change::Blob { key: key.clone() }]).await;
        }
        Ok(())
    }

    async fn delete_blob(&self, key: &Key) -> Result<bool, StoreError> {
        let ttl: i64 = self.inner.script(&scripts().delete_blob, key.as_str(), &[]).await?;
        if ttl == -1 {
            self.inner.announce(vec![Change::Blob { key: key.clone() }]).await;
        }
        Ok(ttl != -2)
    }

    async fn blob_keys(&self) -> Result<Vec<Key>, StoreError> {
        let inner = &self.inner;
        let strings = inner.link.scan("string").await?;
        // Lasting ones only: leases, counters and challenge answers all have a time to live.
        let lasting: Vec<_> = futures_util::stream::iter(strings)
            .filter(|key| std::future::ready(key != VERSION_COUNTER))
            .map(|key| async move {
                let ttl: i64 = inner.query(cmd("PTTL").arg(&key)).await?;
                Ok::<_, StoreError>((ttl == -1).then_some(key))
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(lasting.into_iter().flatten().map(Key::listed).collect())
    }

    async fn count(&self, key: &Key, window: Duration) -> Result<u64, StoreError> {
        let window = (window.as_millis().max(1) as u64).to_string();
        self.inner.script(&scripts().count, key.as_str(), &[window.as_bytes()]).await
    }

    async fn acquire(&self, name: &Key, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let lease = Lease::new(name);
        let command = cmd("SET")
            .arg(name.as_str())
            .arg(&lease.token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .clone();
        let taken: Option<String> = self.inner.query(&command).await?;
        Ok(taken.map(|_| lease))
    }

    async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let ttl = (ttl.as_millis().max(1) as u64).to_string();
        let done: i64 =
            self.inner.script(&scripts().refresh, &lease.name, &[lease.token.as_bytes(), ttl.as_bytes()]).await?;
        Ok(done == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let done: i64 = self.inner.script(&scripts().release, &lease.name, &[lease.token.as_bytes()]).await?;
        Ok(done == 1)
    }

    async fn replace_at(
        &self,
        kind: Kind,
        key: &str,
        new_key: &str,
        fields: &Fields,
        expected: Option<Revision>,
    ) -> Result<Revision, StoreError> {
        crate::within_bounds(kind, new_key, fields)?;
        let inner = &self.inner;
        if key == new_key {
            let written = inner.write("replace", kind, key, expected, 0, fields).await?;
            let revision = store_err_for(kind, key, written)?;
            inner.announce(vec![record_event(kind, key)]).await;
            return Ok(revision);
        }
        if inner.read(kind, new_key).await?.is_some() {
            return Err(StoreError::Conflict { kind, key: new_key.to_owned() });
        }
        // Take the old record (its revision moves on, so a concurrent compare-and-set of it
        // fails), write the new one, then delete the old one: cut short, both exist.
        let claimed = store_err_for(kind, key, inner.write("claim", kind, key, expected, 0, fields).await?)?;
        inner.query::<()>(cmd("SADD").arg(kind.index_key()).arg(new_key)).await?;
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + fields.len() * 2);
        let least = (claimed.0 + 1).to_string();
        args.push(least.as_bytes());
        for (name, value) in fields.iter().filter(|(name, _)| name.as_str() != REVISION_FIELD) {
            args.extend([name.as_bytes(), value.as_bytes()]);
        }
        let created: Option<String> = inner.script(&scripts().create, &kind.record_key(new_key), &args).await?;
        let Some(revision) = created else { return Err(StoreError::Conflict { kind, key: new_key.to_owned() }) };
        let claimed = claimed.0.to_string();
        inner.script::<i64>(&scripts().delete, &kind.record_key(key), &[claimed.as_bytes()]).await?;
        inner.query::<()>(cmd("SREM").arg(kind.index_key()).arg(key)).await?;
        inner.announce(vec![record_event(kind, key), record_event(kind, new_key)]).await;
        Ok(Revision(revision.parse().unwrap_or(0)))
    }

    async fn write_version(&self) -> Result<Option<u64>, StoreError> {
        Ok(Some(self.inner.query::<Option<u64>>(cmd("GET").arg(VERSION_COUNTER)).await?.unwrap_or(0)))
    }

    async fn memory_used(&self) -> Result<Option<u64>, StoreError> {
        let info: String = self.inner.query(cmd("INFO").arg("memory")).await?;
        Ok(info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.query::<()>(&cmd("PING")).await
    }

    async fn clock_ms(&self) -> Result<u64, StoreError> {
        let (seconds, micros): (u64, u64) = self.inner.query(&cmd("TIME")).await?;
        Ok(seconds * 1000 + micros / 1000)
    }
}

/// How far ahead of the lowest version not seen a version is remembered.
const MAX_AHEAD: u64 = 65_536;

/// Which announced versions a node has seen, to find the ones it missed.
#[derive(Debug)]
struct Versions {
    /// The lowest version not seen yet.
    next: u64,
    /// Versions above `next` seen already (announcements may arrive out of order).
    ahead: BTreeSet<u64>,
    /// The counter as read at the previous check: every version up to it should have
    /// arrived by the next check.
    due: Option<u64>,
}

impl Versions {
    fn new(current: u64) -> Self {
        Self { next: current + 1, ahead: BTreeSet::new(), due: None }
    }

    fn saw(&mut self, version: u64) {
        // Far ahead of the counter is not a version anyone counted: memory stays bounded
        // whatever is published.
        if version >= self.next && version - self.next < MAX_AHEAD && self.ahead.len() < MAX_AHEAD as usize {
            self.ahead.insert(version);
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        }
    }

    /// The counter reads `current`: whether something was missed (then it starts over
    /// from `current`).
    fn check(&mut self, current: u64) -> bool {
        let missed = current + 1 < self.next || self.due.is_some_and(|due| self.next <= due);
        if missed {
            *self = Self::new(current);
        } else {
            self.due = (current >= self.next).then_some(current);
        }
        missed
    }
}

/// Announces other nodes' writes as they arrive, and [`Change::Resync`] when some were
/// missed, when Redis comes back, and every [`RESYNC_EVERY`]. Ends when the store is
/// dropped.
async fn follow(weak: Weak<Inner>, mut pushed: mpsc::UnboundedReceiver<PushInfo>, start: u64) {
    let mut versions = Versions::new(start);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
    let mut lost = false;
    loop {
        tokio::select! {
            push = pushed.recv() => {
                let Some(push) = push else { return };
                let Some(inner) = weak.upgrade() else { return };
                match push.kind {
                    PushKind::Message | PushKind::SMessage => on_message(&inner, &push.data, &mut versions),
                    PushKind::Disconnection
                        if !std::mem::replace(&mut lost, true) => {
                            tracing::warn!(store = %inner.url, "lost the connection to Redis; serving what is in memory");
                        }
                    _ => {}
                }
            }
            _ = check.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                match inner.query::<Option<u64>>(cmd("GET").arg(VERSION_COUNTER)).await {
                    Ok(current) => {
                        let current = current.unwrap_or(0);
                        if std::mem::take(&mut lost) {
                            tracing::info!(store = %inner.url, "Redis is back; re-reading everything");
                            versions = Versions::new(current);
                            let _ = inner.changes.send(Change::Resync);
                        } else if versions.check(current) {
                            tracing::debug!(current, "missed a change announcement; re-reading everything");
                            let _ = inner.changes.send(Change::Resync);
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut lost, true) {
                            tracing::warn!(store = %inner.url, error = %e, "Redis does not answer; serving what is in memory");
                        }
                        inner.link.find_master().await;
                    }
                }
            }
            _ = resync.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                let store = RedisStore { inner };
                if let Err(e) = store.repair().await {
                    tracing::debug!(error = %e, "repairing the index failed; trying again at the next resync");
                }
                let _ = store.inner.changes.send(Change::Resync);
            }
        }
    }
}

/// One message on the channel: its events (unless this process wrote them; it announced
/// them already), and its version. A message that is not understood is dropped, its
/// version not counted as seen: if it stood for a real write, the next check finds that
/// version missed and resyncs, once, however many such messages arrive.
fn on_message(inner: &Inner, data: &[Value], versions: &mut Versions) {
    // data: [channel, payload] (or [pattern, channel, payload]).
    let Some(Value::BulkString(payload)) = data.last() else { return };
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(payload) else {
        tracing::debug!("an unreadable message on the change channel; ignored");
        return;
    };
    let Some(changes) = crate::decode_changes(&message["changes"]) else {
        tracing::debug!("a change message that is not understood; ignored");
        return;
    };
    if let Some(version) = message["v"].as_u64() {
        versions.saw(version);
    }
    if message["from"].as_str() == Some(inner.id.as_str()) {
        return;
    }
    for change in changes {
        let _ = inner.changes.send(change);
    }
}

#[cfg(test)]
mod tests {
    use super::Versions;

    #[test]
    fn versions_find_what_was_missed() {
        let mut v = Versions::new(10);
        // Out of order is fine.
        v.saw(12);
        v.saw(11);
        assert!(!v.check(12));
        assert!(!v.check(12));
        // 13 was counted but never announced: due at this check, missed at the next.
        assert!(!v.check(13));
        assert!(v.check(13));
        // It arrives late, within a check: fine.
        assert!(!v.check(14));
        v.saw(14);
        assert!(!v.check(14));
        // The counter went backwards (someone flushed the database).
        assert!(v.check(2));
        assert_eq!(v.next, 3);
        // Made-up versions far ahead are not remembered.
        for made_up in (0..100_000u64).map(|i| 1_000_000 + i) {
            v.saw(made_up);
        }
        assert!(v.ahead.is_empty());
        for near in 4..100_000u64 {
            v.saw(near);
        }
        assert!(v.ahead.len() <= super::MAX_AHEAD as usize);
    }
}
