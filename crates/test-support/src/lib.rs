//! Test harness for Portico: the `portico` process under test, fake upstreams on loopback,
//! clients, and waiting helpers.
//!
//! Everything binds `127.0.0.1:0` and reports the real address; child processes are guards
//! that kill and reap on drop; files live in a `TempDir`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod backend;
pub mod client;
pub mod pebble;
pub mod portico;
pub mod tls;

use std::time::{Duration, Instant};

pub use backend::Backend;
pub use portico::Portico;

/// Polls `check` until it returns `Some`, or panics after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
