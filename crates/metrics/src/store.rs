//! A store that times every operation and counts its errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use portico_store::{Change, Fields, Key, Kind, Lease, Revision, Store, StoreError};
use tokio::sync::broadcast;

use crate::{Metrics, OpLabels};

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
