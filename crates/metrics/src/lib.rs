//! Portico's metrics, in Prometheus' text format (`GET /metrics` on `[metrics] listen`).
//!
//! Each component keeps its own metrics and registers them into the node's registry:
//! `portico_proxy::Metrics` (requests, connections, handshakes, routing),
//! `portico_certs::Metrics` (certificates, orders, decisions), `portico_store::metered::Metrics`
//! (store operations, identity), and [`Jobs`] here (background jobs). No global registry, and
//! no component compiles against another's vocabulary; this crate holds what they share: the
//! [`Exposition`] that encodes the registry, the latency buckets ([`seconds`]), [`Open`].
//!
//! Every metric is named `portico_…`; the dashboard and alert rules in `deploy/` use these
//! names, and a test checks they all exist.

use std::fmt;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;

/// Seconds buckets from 0.5 ms to about 65 s.
pub fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// A registry every component registered into, encoded for `GET /metrics`.
pub struct Exposition(Mutex<Registry>);

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

impl Exposition {
    /// Serves what `registry` holds.
    pub fn new(registry: Registry) -> Self {
        Self(Mutex::new(registry))
    }

    /// Every metric in Prometheus' text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// A background job's run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `renewal`, `dns_sync`.
    pub job: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// A background job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobName {
    /// `renewal`, `dns_sync`.
    pub job: &'static str,
}

/// Background jobs' runs and run times (the renewal sweep, DNS domain syncs). Cloned
/// handles count into the same families.
#[derive(Debug, Clone)]
pub struct Jobs {
    /// `portico_job_runs_total{job, result}`.
    pub job_runs: Family<JobLabels, Counter>,
    /// `portico_job_duration_seconds{job}`.
    pub job_duration: Family<JobName, Histogram, fn() -> Histogram>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self { job_runs: Family::default(), job_duration: Family::new_with_constructor(seconds) }
    }
}

impl Jobs {
    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("portico_job_runs", "Background job runs, by job and result", self.job_runs.clone());
        registry.register("portico_job_duration_seconds", "Background job run time, by job", self.job_duration.clone());
    }

    /// Counts one run of a background job.
    pub fn job(&self, job: &'static str, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "failed" };
        self.job_runs.get_or_create(&JobLabels { job, result }).inc();
        self.job_duration.get_or_create(&JobName { job }).observe(seconds);
    }

    /// Runs one pass of a background job, counting it (a pass that returns an error failed).
    pub async fn run_job<T, E>(&self, job: &'static str, run: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = run.await;
        self.job(job, result.is_ok(), started.elapsed().as_secs_f64());
        result
    }
}

/// A gauge held one higher while this lives (an open connection, a tunnel).
#[derive(Debug)]
pub struct Open(Gauge);

impl Open {
    /// Raises `gauge` by one until dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_open_gauges_show_in_the_text_format() {
        let mut registry = Registry::default();
        let jobs = Jobs::default();
        jobs.register(&mut registry);
        let open = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("portico_test_open", "open things", open.clone());
        let exposition = Exposition::new(registry);
        jobs.job("renewal", false, 0.1);
        let held = Open::new(&open);
        let text = exposition.encode();
        assert!(text.contains("portico_job_runs_total{job=\"renewal\",result=\"failed\"} 1"), "{text}");
        assert!(text.contains("portico_test_open 1"), "{text}");
        drop(held);
        assert!(exposition.encode().contains("portico_test_open 0"));
    }
}
