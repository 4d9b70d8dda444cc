//! Test harness for Portico: the `portico` process under test, real Redis processes, fake
//! upstreams on loopback, clients, and waiting helpers.
//!
//! Without the default `app` feature only [`redis`] is built (no Tokio, nothing of the data
//! plane), for the store's own tests.
//!
//! Everything binds `127.0.0.1:0` and reports the real address; child processes are guards
//! that kill and reap on drop; files live in a `TempDir`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[cfg(feature = "app")]
pub mod backend;
#[cfg(feature = "app")]
pub mod client;
#[cfg(feature = "app")]
pub mod dns_fake;
#[cfg(feature = "app")]
pub mod knot;
#[cfg(feature = "app")]
pub mod netns;
#[cfg(feature = "app")]
pub mod pebble;
#[cfg(feature = "app")]
pub mod portico;
pub mod redis;
#[cfg(feature = "app")]
pub mod tls;

#[cfg(feature = "app")]
pub use backend::Backend;
#[cfg(feature = "app")]
pub use portico::Portico;
pub use redis::{RedisCluster, RedisSentinel, RedisServer};

/// Polls `check` until it returns `Some`, or panics after `deadline` with `what`.
#[cfg(feature = "app")]
pub async fn eventually<T, F, Fut>(deadline: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    use std::time::Instant;
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
