//! Portico's metrics, in Prometheus' text format (`GET /metrics` on `[metrics] listen`).
//!
//! One [`Metrics`] is made at start and passed to every part that records (the proxy, the
//! certificates, the routing table, the store through [`MeteredStore`], the background
//! jobs): no global registry. The proxy records requests from the same outcome record that
//! writes the access log, so the two never disagree.
//!
//! Every metric is named `portico_…`; the dashboard and alert rules in `deploy/` use these
//! names, and a test checks they all exist.

mod store;

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use store::MeteredStore;

/// Labels of a request: the host pattern that routed it (`-` when none did), the status
/// class (`2xx` … `5xx`), the protocol (`HTTP/1.1`, `HTTP/2.0`). Built for every request
/// without allocating: the pattern is shared with the routing table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The host pattern.
    pub host: Arc<str>,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: &'static str,
    /// The HTTP version.
    pub protocol: &'static str,
}

/// A request's protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// The HTTP version.
    pub protocol: &'static str,
}

/// A certificate's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `app.example.com`, `*.example.com`.
    pub name: String,
}

/// A certificate attempt's issuer and kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The issuer's kind: `acme` or `internal`.
    pub issuer: &'static str,
    /// `issue` (a name's first certificate, or one after it was lost) or `renew`.
    pub kind: &'static str,
}

/// An ACME order's outcome and challenge type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrderLabels {
    /// `valid` or `failed`.
    pub result: &'static str,
    /// `http-01`, `tls-alpn-01`, `dns-01`.
    pub challenge: &'static str,
}

/// A store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `record`, `records`, `write`, `blob`, `lease`, …
    pub op: &'static str,
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

/// A TLS handshake's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
    /// Why it failed (`timeout`, `error`), or `none`.
    pub reason: &'static str,
}

/// An on-demand certificate decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `memory`, `store`, `issued`, `unknown_name`, `backoff`, `rate_limited`, `capped`,
    /// `busy`, `failed`.
    pub decision: &'static str,
}

/// Seconds buckets from 0.5 ms to about 65 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The protocols requests are labelled with.
const PROTOCOLS: [&str; 3] = ["HTTP/1.1", "HTTP/2.0", "HTTP/1.0"];

/// Every metric Portico records.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests counted, all labels together (for the API's overview).
    served: std::sync::atomic::AtomicU64,
    /// Whether requests are counted: only when something can read them (a metrics listener).
    per_request: bool,
    /// `request_duration`'s histogram for each protocol, once one was seen: observed without
    /// the family's lock and hashing.
    durations: [std::sync::OnceLock<Histogram>; PROTOCOLS.len()],
    /// The host label of requests no pattern routed.
    unrouted: Arc<str>,
    /// `portico_http_requests_total{host, status, protocol}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `portico_http_request_duration_seconds{protocol}`: from the request head to the last
    /// byte of the response.
    pub request_duration: Family<ProtocolLabels, Histogram, fn() -> Histogram>,
    /// `portico_upstream_response_seconds`: from forwarding to the target's response head.
    pub upstream_duration: Histogram,
    /// `portico_http_response_bytes_total`: response body bytes sent.
    pub response_bytes: Counter,
    /// `portico_http_request_bytes_total`: request body bytes received (as declared).
    pub request_bytes: Counter,
    /// `portico_connections_open`: client connections open now.
    pub connections_open: Gauge,
    /// `portico_tunnels_open`: upgraded connections (WebSocket) being relayed now.
    pub tunnels_open: Gauge,
    /// `portico_tls_handshakes_total{result, reason}`.
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// `portico_certificate_not_after_seconds{name}`: the certificate's end, Unix seconds.
    pub cert_not_after: Family<CertLabels, Gauge>,
    /// `portico_certificate_issued_seconds{name}`: when it was issued (its lifetime's start).
    pub cert_issued: Family<CertLabels, Gauge>,
    /// `portico_certificate_next_renewal_seconds{name}`: when it is due, Unix seconds.
    pub cert_next_renewal: Family<CertLabels, Gauge>,
    /// `portico_certificate_failures{name}`: consecutive failed attempts.
    pub cert_failures: Family<CertLabels, Gauge>,
    /// `portico_certificate_attempts_total{issuer, kind}`: issuances and renewals started.
    pub cert_attempts: Family<AttemptLabels, Counter>,
    /// `portico_acme_orders_total{result, challenge}`.
    pub acme_orders: Family<OrderLabels, Counter>,
    /// `portico_certificate_decisions_total{decision}`: what a handshake's name got.
    pub decisions: Family<DecisionLabels, Counter>,
    /// `portico_routes_hosts`: patterns in the routing table.
    pub routes_hosts: Gauge,
    /// `portico_routes_rebuild_seconds`: reading hosts and swapping the table.
    pub routes_rebuild: Histogram,
    /// `portico_routes_change_delay_seconds`: from a host's write (its `updated_on`, by the
    /// writer's clock, on any node) to the routing table that includes it; from when this
    /// process heard of the change for deletions and writes without a fresh stamp.
    pub routes_change_delay: Histogram,
    /// `portico_store_operation_seconds{op}`.
    pub store_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// `portico_store_memory_bytes`: memory the store's server uses (Redis), read every 15 s.
    pub store_memory: Gauge,
    /// `portico_store_errors_total{op}`.
    pub store_errors: Family<OpLabels, Counter>,
    /// `portico_store_identity_lost`: 1 while the store lost its identity marker (wiped or
    /// replaced) and is not followed.
    pub store_identity_lost: Gauge,
    /// `portico_job_runs_total{job, result}`.
    pub job_runs: Family<JobLabels, Counter>,
    /// `portico_job_duration_seconds{job}`.
    pub job_duration: Family<JobName, Histogram, fn() -> Histogram>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            served: std::sync::atomic::AtomicU64::new(0),
            per_request: true,
            durations: Default::default(),
            unrouted: Arc::from("-"),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds),
            upstream_duration: seconds(),
            response_bytes: Counter::default(),
            request_bytes: Counter::default(),
            connections_open: Gauge::default(),
            tunnels_open: Gauge::default(),
            handshakes: Family::default(),
            cert_not_after: Family::default(),
            cert_issued: Family::default(),
            cert_next_renewal: Family::default(),
            cert_failures: Family::default(),
            cert_attempts: Family::default(),
            acme_orders: Family::default(),
            decisions: Family::default(),
            routes_hosts: Gauge::default(),
            routes_rebuild: seconds(),
            routes_change_delay: seconds(),
            store_seconds: Family::new_with_constructor(seconds),
            store_errors: Family::default(),
            store_memory: Gauge::default(),
            store_identity_lost: Gauge::default(),
            job_runs: Family::default(),
            job_duration: Family::new_with_constructor(seconds),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "portico_http_requests",
                "Requests answered, by host pattern, status class and protocol",
                m.requests.clone(),
            );
            r.register(
                "portico_http_request_duration_seconds",
                "Time from a request's head to its response's last byte",
                m.request_duration.clone(),
            );
            r.register(
                "portico_upstream_response_seconds",
                "Time from forwarding a request to the target's response head",
                m.upstream_duration.clone(),
            );
            r.register("portico_http_response_bytes", "Response body bytes sent to clients", m.response_bytes.clone());
            r.register(
                "portico_http_request_bytes",
                "Request body bytes clients declared (Content-Length)",
                m.request_bytes.clone(),
            );
            r.register("portico_connections_open", "Client connections open now", m.connections_open.clone());
            r.register("portico_tunnels_open", "Upgraded connections (WebSocket) relayed now", m.tunnels_open.clone());
            r.register("portico_tls_handshakes", "TLS handshakes, by result and failure reason", m.handshakes.clone());
            r.register(
                "portico_certificate_not_after_seconds",
                "When each certificate expires (Unix time)",
                m.cert_not_after.clone(),
            );
            r.register(
                "portico_certificate_issued_seconds",
                "When each certificate was issued (Unix time)",
                m.cert_issued.clone(),
            );
            r.register(
                "portico_certificate_next_renewal_seconds",
                "When each certificate is next tried (Unix time)",
                m.cert_next_renewal.clone(),
            );
            r.register(
                "portico_certificate_failures",
                "Consecutive failed attempts per certificate",
                m.cert_failures.clone(),
            );
            r.register(
                "portico_certificate_attempts",
                "Certificate issuances and renewals started, by issuer",
                m.cert_attempts.clone(),
            );
            r.register("portico_acme_orders", "ACME orders, by result and challenge type", m.acme_orders.clone());
            r.register(
                "portico_certificate_decisions",
                "What a TLS handshake's name got: from memory, the store, a new certificate, or the fallback and why",
                m.decisions.clone(),
            );
            r.register("portico_routes_hosts", "Host patterns in the routing table", m.routes_hosts.clone());
            r.register(
                "portico_routes_rebuild_seconds",
                "Time to rebuild or patch the routing table",
                m.routes_rebuild.clone(),
            );
            r.register(
                "portico_routes_change_delay_seconds",
                "Time from a host's write to routing by it",
                m.routes_change_delay.clone(),
            );
            r.register(
                "portico_store_operation_seconds",
                "Store operations' latency, by operation",
                m.store_seconds.clone(),
            );
            r.register("portico_store_errors", "Store operations that failed, by operation", m.store_errors.clone());
            r.register(
                "portico_store_memory_bytes",
                "Memory the store's server uses (Redis used_memory)",
                m.store_memory.clone(),
            );
            r.register(
                "portico_store_identity_lost",
                "1 while the store lost its identity marker (wiped or replaced) and is not followed",
                m.store_identity_lost.clone(),
            );
            r.register("portico_job_runs", "Background job runs, by job and result", m.job_runs.clone());
            r.register("portico_job_duration_seconds", "Background job run time, by job", m.job_duration.clone());
        }
        m
    }

    /// Every metric in Prometheus' text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// The same metrics, counting requests only when `on`: without a metrics listener nobody
    /// reads them, and the data plane is spared their cost (certificate, store and job
    /// metrics are kept either way).
    pub fn counting_requests(mut self, on: bool) -> Self {
        self.per_request = on;
        self
    }

    /// Whether requests are counted (see [`Metrics::counting_requests`]).
    pub fn counts_requests(&self) -> bool {
        self.per_request
    }

    /// Counts one request's outcome: `host` the pattern that routed it (none: `-`).
    pub fn request(&self, host: Option<&Arc<str>>, status: u16, protocol: &'static str, seconds: f64, bytes: u64) {
        if !self.per_request {
            return;
        }
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let host = host.unwrap_or(&self.unrouted).clone();
        self.requests.get_or_create(&RequestLabels { host, status, protocol }).inc();
        let family = || self.request_duration.get_or_create(&ProtocolLabels { protocol }).clone();
        match PROTOCOLS.iter().position(|p| *p == protocol) {
            Some(i) => self.durations[i].get_or_init(family).observe(seconds),
            None => family().observe(seconds),
        }
        self.response_bytes.inc_by(bytes);
        self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests counted so far (none unless [`Metrics::counts_requests`]).
    pub fn requests_served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts the time a target took to send its response head.
    pub fn upstream(&self, seconds: f64) {
        if self.per_request {
            self.upstream_duration.observe(seconds);
        }
    }

    /// Counts a request body's declared length.
    pub fn request_body(&self, bytes: u64) {
        if self.per_request {
            self.request_bytes.inc_by(bytes);
        }
    }

    /// Counts one TLS handshake: `failure` is why it failed (`timeout`, `error`, …).
    pub fn handshake(&self, failure: Option<&'static str>) {
        let labels = match failure {
            None => HandshakeLabels { result: "ok", reason: "none" },
            Some(reason) => HandshakeLabels { result: "failed", reason },
        };
        self.handshakes.get_or_create(&labels).inc();
    }

    /// Counts one on-demand decision.
    pub fn decision(&self, decision: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { decision }).inc();
    }

    /// Counts one issuance (`renewal`: a renewal) started with `issuer`.
    pub fn attempt(&self, issuer: &'static str, renewal: bool) {
        let kind = if renewal { "renew" } else { "issue" };
        self.cert_attempts.get_or_create(&AttemptLabels { issuer, kind }).inc();
    }

    /// Counts one ACME order.
    pub fn order(&self, ok: bool, challenge: &'static str) {
        let result = if ok { "valid" } else { "failed" };
        self.acme_orders.get_or_create(&OrderLabels { result, challenge }).inc();
    }

    /// Sets a certificate's gauges (times in Unix seconds; 0: unknown).
    pub fn certificate(&self, name: &str, issued: i64, not_after: i64, next_attempt: i64, failures: u32) {
        let labels = CertLabels { name: name.to_owned() };
        if not_after > 0 {
            self.cert_not_after.get_or_create(&labels).set(not_after);
        }
        if issued > 0 {
            self.cert_issued.get_or_create(&labels).set(issued);
        }
        self.cert_next_renewal.get_or_create(&labels).set(next_attempt);
        self.cert_failures.get_or_create(&labels).set(i64::from(failures));
    }

    /// Forgets a certificate that is gone.
    pub fn forget_certificate(&self, name: &str) {
        let labels = CertLabels { name: name.to_owned() };
        self.cert_not_after.remove(&labels);
        self.cert_issued.remove(&labels);
        self.cert_next_renewal.remove(&labels);
        self.cert_failures.remove(&labels);
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

/// Adds one to a gauge until dropped (an open connection, a tunnel).
pub struct Open(Gauge);

impl Open {
    /// Counts one more in `gauge`.
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
    fn the_text_format_has_every_family() {
        let m = Metrics::new();
        m.request(Some(&Arc::from("*.example.com")), 204, "HTTP/1.1", 0.01, 10);
        m.handshake(Some("timeout"));
        let text = m.encode();
        assert!(
            text.contains("portico_http_requests_total{host=\"*.example.com\",status=\"2xx\",protocol=\"HTTP/1.1\"} 1"),
            "{text}"
        );
        assert!(text.contains("portico_tls_handshakes_total{result=\"failed\",reason=\"timeout\"} 1"), "{text}");
        assert!(text.contains("# TYPE portico_routes_hosts gauge"), "{text}");
        let _open = Open::new(&m.connections_open);
        assert!(m.encode().contains("portico_connections_open 1"));
    }
}

#[cfg(test)]
mod deploy {
    use std::collections::BTreeSet;

    use super::Metrics;

    /// Every sample name the registry can produce: each family's, and a histogram's
    /// `_bucket`, `_sum` and `_count`.
    fn known() -> BTreeSet<String> {
        // A family shows only once it has a sample: give each one.
        let m = Metrics::new();
        m.request(Some(&std::sync::Arc::from("a.test")), 200, "HTTP/1.1", 0.1, 1);
        m.handshake(None);
        m.certificate("a.test", 1, 2, 3, 0);
        m.order(true, "http-01");
        m.decision("memory");
        m.job("renewal", true, 0.1);
        let op = super::OpLabels { op: "record" };
        m.store_seconds.get_or_create(&op).observe(0.001);
        m.store_errors.get_or_create(&op).inc();
        let text = m.encode();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            let mut words = line.split(' ');
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                names.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                if kind == "counter" && !name.ends_with("_total") {
                    names.insert(format!("{name}_total"));
                }
            }
        }
        names
    }

    /// The `portico_…` names a text uses.
    fn used(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("portico_") {
            let start = i + at;
            let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            names.insert(text[start..end].to_owned());
            i = end;
        }
        names
    }

    #[test]
    fn the_dashboard_and_the_alert_rules_use_only_metrics_that_exist() {
        let known = known();
        assert!(known.contains("portico_http_requests_total"), "{known:?}");
        for (file, text) in [
            ("deploy/grafana-dashboard.json", include_str!("../../../deploy/grafana-dashboard.json")),
            ("deploy/prometheus-rules.yml", include_str!("../../../deploy/prometheus-rules.yml")),
        ] {
            let used = used(text);
            assert!(used.len() >= 4, "{file} uses hardly any metric: {used:?}");
            let unknown: Vec<&String> = used.difference(&known).collect();
            assert!(unknown.is_empty(), "{file} names metrics that do not exist: {unknown:?}");
        }
        // The dashboard is JSON Grafana can import: a title and panels with queries.
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana-dashboard.json")).expect("JSON");
        assert_eq!(dashboard["title"], "Portico");
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| p.len() >= 10 && p.iter().all(|p| p["targets"][0]["expr"].is_string()))
        );
    }
}
