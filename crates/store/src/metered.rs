//! The store's metrics, and a store that records them: every operation timed, its errors
//! counted. Registered by [`Metrics::register`] into the node's registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{Change, Fields, Key, Kind, Lease, Revision, Store, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `record`, `records`, `write`, `blob`, `lease`, …
    pub op: &'static str,
}

/// The store's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// `portico_store_operation_seconds{op}`.
    pub store_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// `portico_store_memory_bytes`: memory the store's server uses (Redis), read every 15 s.
    pub store_memory: Gauge,
    /// `portico_store_errors_total{op}`.
    pub store_errors: Family<OpLabels, Counter>,
    /// `portico_store_identity_lost`: 1 while the store lost its identity marker (wiped or
    /// replaced) and is not followed.
    pub store_identity_lost: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            store_seconds: Family::new_with_constructor(portico_metrics::seconds),
            store_memory: Gauge::default(),
            store_errors: Family::default(),
            store_identity_lost: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_store_operation_seconds",
            "Store operations' latency, by operation",
            self.store_seconds.clone(),
        );
        registry.register(
            "portico_store_memory_bytes",
            "Memory the store's server uses (Redis used_memory)",
            self.store_memory.clone(),
        );
        registry.register(
            "portico_store_errors",
            "Store operations that failed, by operation",
            self.store_errors.clone(),
        );
        registry.register(
            "portico_store_identity_lost",
            "1 while the store lost its identity marker (wiped or replaced) and is not followed",
            self.store_identity_lost.clone(),
        );
    }
}

/// Wraps a store: every operation is timed (`portico_store_operation_seconds{op}`) and its
/// failures counted (`portico_store_errors_total{op}`).
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let labels = OpLabels { op };
        self.metrics.store_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.store_errors.get_or_create(&labels).inc();
        }
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn record(&self, kind: Kind, key: &str) -> Result<Option<Fields>, StoreError> {
        self.timed("record", self.inner.record(kind, key)).await
    }
    async fn record_at(&self, kind: Kind, key: &str) -> Result<Option<(Fields, Revision)>, StoreError> {
        self.timed("record", self.inner.record_at(kind, key)).await
    }
    async fn records(&self, kind: Kind) -> Result<Vec<(String, Fields)>, StoreError> {
        self.timed("records", self.inner.records(kind)).await
    }
    async fn keys(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.timed("keys", self.inner.keys(kind)).await
    }
    async fn create(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        self.timed("write", self.inner.create(kind, key, fields)).await
    }
    async fn replace_at(
        &self,
        kind: Kind,
        key: &str,
        new_key: &str,
        fields: &Fields,
        expected: Option<Revision>,
    ) -> Result<Revision, StoreError> {
        self.timed("write", self.inner.replace_at(kind, key, new_key, fields, expected)).await
    }
    async fn put(&self, kind: Kind, key: &str, fields: &Fields) -> Result<(), StoreError> {
        self.timed("write", self.inner.put(kind, key, fields)).await
    }
    async fn delete(&self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        self.timed("write", self.inner.delete(kind, key)).await
    }
    async fn blob(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.timed("blob", self.inner.blob(key)).await
    }
    async fn put_blob(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.timed("blob_write", self.inner.put_blob(key, value, ttl)).await
    }
    async fn delete_blob(&self, key: &Key) -> Result<bool, StoreError> {
        self.timed("blob_write", self.inner.delete_blob(key)).await
    }
    async fn blob_keys(&self) -> Result<Vec<Key>, StoreError> {
        self.timed("blob_keys", self.inner.blob_keys()).await
    }
    async fn count(&self, key: &Key, window: Duration) -> Result<u64, StoreError> {
        self.timed("count", self.inner.count(key, window)).await
    }
    async fn acquire(&self, name: &Key, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        self.timed("lease", self.inner.acquire(name, ttl)).await
    }
    async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        self.timed("lease", self.inner.refresh(lease, ttl)).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.timed("lease", self.inner.release(lease)).await
    }
    async fn memory_used(&self) -> Result<Option<u64>, StoreError> {
        self.timed("info", self.inner.memory_used()).await
    }
    async fn write_version(&self) -> Result<Option<u64>, StoreError> {
        self.timed("version", self.inner.write_version()).await
    }
    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
    async fn clock_ms(&self) -> Result<u64, StoreError> {
        self.timed("info", self.inner.clock_ms()).await
    }
}
