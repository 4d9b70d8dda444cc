//! The data plane's metrics: requests, bytes, connections, tunnels, TLS handshakes, and the
//! routing table's rebuilds. Registered by [`Metrics::register`] into the node's registry.

use std::fmt;
use std::sync::Arc;

use portico_metrics::seconds;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

/// A TLS handshake's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
    /// Why it failed (`timeout`, `error`), or `none`.
    pub reason: &'static str,
}

/// A stream's bytes, one way.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The stream's listening address.
    pub stream: String,
    /// `in` (from clients) or `out` (to clients).
    pub direction: &'static str,
}

/// A stream's listening address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamName {
    /// The stream's listening address.
    pub stream: String,
}

/// A stream's target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamTarget {
    /// The stream's listening address.
    pub stream: String,
    /// The target's address.
    pub target: String,
}

/// The protocols requests are labelled with.
const PROTOCOLS: [&str; 4] = ["HTTP/1.1", "HTTP/2.0", "HTTP/3.0", "HTTP/1.0"];

/// The upper bounds (milliseconds) of the overview's latency buckets; a last one takes the rest.
pub const LATENCY_BOUNDS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// What the API's overview reads of this process's traffic, counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests answered.
    pub requests: u64,
    /// Of them, by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub statuses: [u64; 5],
    /// Of them, by duration: at most each of [`LATENCY_BOUNDS_MS`], then longer.
    pub latency: [u64; LATENCY_BOUNDS_MS.len() + 1],
}

/// The data plane's metrics.
pub struct Metrics {
    /// Requests by status class and by duration, all hosts together (for the API's overview;
    /// their sum is the requests served).
    statuses: [std::sync::atomic::AtomicU64; 5],
    latency: [std::sync::atomic::AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    /// Whether requests are counted: only when something can read them (a metrics listener).
    per_request: bool,
    /// `request_duration`'s histogram for each protocol, once one was seen: observed without
    /// the family's lock and hashing.
    durations: [std::sync::OnceLock<Histogram>; PROTOCOLS.len()],
    /// The host label of requests no pattern routed.
    unrouted: Arc<str>,
    /// `portico_http_requests_total{host, status, protocol}`.
    pub requests: Family<RequestLabels, Counter>,
    /// The counters of `requests` already made, found by a faster hash than the family's
    /// (SipHash cost some 400 instructions a request): the same counters, shared.
    request_counters: std::sync::RwLock<std::collections::HashMap<RequestLabels, Counter, foldhash::fast::RandomState>>,
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
    /// `portico_connections_parked`: HTTP/1 client connections idle between requests and
    /// holding no HTTP state or buffers (a share of `portico_connections_open`).
    pub connections_parked: Gauge,
    /// `portico_tls_handshakes_total{result, reason}`.
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// `portico_routes_hosts`: patterns in the routing table.
    pub routes_hosts: Gauge,
    /// `portico_routes_rebuild_seconds`: reading hosts and swapping the table.
    pub routes_rebuild: Histogram,
    /// `portico_routes_change_delay_seconds`: from a host's write (its `updated_on`, by the
    /// writer's clock, on any node) to the routing table that includes it; from when this
    /// process heard of the change for deletions and writes without a fresh stamp.
    pub routes_change_delay: Histogram,
    /// `portico_stream_bytes_total{stream, direction}`: bytes a stream carried.
    pub stream_bytes: Family<StreamLabels, Counter>,
    /// `portico_stream_connections_open{stream}`: a stream's connections now.
    pub stream_connections: Family<StreamName, Gauge>,
    /// `portico_stream_target_up{stream, target}`: 1 while a checked stream's target passes
    /// its checks, 0 once they mark it down.
    pub stream_target_up: Family<StreamTarget, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("per_request", &self.per_request).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            statuses: Default::default(),
            latency: Default::default(),
            per_request: true,
            durations: Default::default(),
            unrouted: Arc::from("-"),
            requests: Family::default(),
            request_counters: Default::default(),
            request_duration: Family::new_with_constructor(seconds),
            upstream_duration: seconds(),
            response_bytes: Counter::default(),
            request_bytes: Counter::default(),
            connections_open: Gauge::default(),
            tunnels_open: Gauge::default(),
            connections_parked: Gauge::default(),
            handshakes: Family::default(),
            routes_hosts: Gauge::default(),
            routes_rebuild: seconds(),
            routes_change_delay: seconds(),
            stream_bytes: Family::default(),
            stream_connections: Family::default(),
            stream_target_up: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_stream_bytes",
            "Bytes streams carried, by stream (its listening address) and direction (in: from clients)",
            self.stream_bytes.clone(),
        );
        registry.register(
            "portico_stream_connections_open",
            "Connections of each stream open now",
            self.stream_connections.clone(),
        );
        registry.register(
            "portico_stream_target_up",
            "Whether each target of a stream with health checks passes them (1) or is down (0)",
            self.stream_target_up.clone(),
        );
        registry.register(
            "portico_http_requests",
            "Requests answered, by host pattern, status class and protocol",
            self.requests.clone(),
        );
        registry.register(
            "portico_http_request_duration_seconds",
            "Time from a request's head to its response's last byte",
            self.request_duration.clone(),
        );
        registry.register(
            "portico_upstream_response_seconds",
            "Time from forwarding a request to the target's response head",
            self.upstream_duration.clone(),
        );
        registry.register(
            "portico_http_response_bytes",
            "Response body bytes sent to clients",
            self.response_bytes.clone(),
        );
        registry.register(
            "portico_http_request_bytes",
            "Request body bytes clients declared (Content-Length)",
            self.request_bytes.clone(),
        );
        registry.register("portico_connections_open", "Client connections open now", self.connections_open.clone());
        registry.register(
            "portico_connections_parked",
            "HTTP/1 client connections idle between requests, holding no buffers",
            self.connections_parked.clone(),
        );
        registry.register(
            "portico_tunnels_open",
            "Upgraded connections (WebSocket) relayed now",
            self.tunnels_open.clone(),
        );
        registry.register(
            "portico_tls_handshakes",
            "TLS handshakes, by result and failure reason",
            self.handshakes.clone(),
        );
        registry.register("portico_routes_hosts", "Host patterns in the routing table", self.routes_hosts.clone());
        registry.register(
            "portico_routes_rebuild_seconds",
            "Time to rebuild or patch the routing table",
            self.routes_rebuild.clone(),
        );
        registry.register(
            "portico_routes_change_delay_seconds",
            "Time from a host's write to routing by it",
            self.routes_change_delay.clone(),
        );
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
        let class = usize::from(status.clamp(100, 599) / 100 - 1);
        let status = ["1xx", "2xx", "3xx", "4xx", "5xx"][class];
        self.statuses[class].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ms = seconds * 1000.0;
        let bucket = LATENCY_BOUNDS_MS.iter().position(|&bound| ms <= bound as f64).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = host.unwrap_or(&self.unrouted).clone();
        let labels = RequestLabels { host, status, protocol };
        let known = self.request_counters.read().unwrap_or_else(|e| e.into_inner()).get(&labels).map(Counter::inc);
        if known.is_none() {
            let counter = self.requests.get_or_create(&labels).clone();
            counter.inc();
            self.request_counters.write().unwrap_or_else(|e| e.into_inner()).insert(labels, counter);
        }
        let family = || self.request_duration.get_or_create(&ProtocolLabels { protocol }).clone();
        match PROTOCOLS.iter().position(|p| *p == protocol) {
            Some(i) => self.durations[i].get_or_init(family).observe(seconds),
            None => family().observe(seconds),
        }
        self.response_bytes.inc_by(bytes);
    }

    /// Requests counted so far (none unless [`Metrics::counts_requests`]).
    pub fn requests_served(&self) -> u64 {
        self.statuses.iter().map(|n| n.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Requests counted so far, by status class and duration (none unless
    /// [`Metrics::counts_requests`]).
    pub fn traffic(&self) -> Traffic {
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        Traffic {
            requests: self.requests_served(),
            statuses: self.statuses.each_ref().map(read),
            latency: self.latency.each_ref().map(read),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_handshakes_in_the_text_format() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let exposition = portico_metrics::Exposition::new(registry);
        m.request(Some(&Arc::from("*.example.com")), 204, "HTTP/1.1", 0.01, 10);
        m.handshake(Some("timeout"));
        let text = exposition.encode();
        assert!(
            text.contains("portico_http_requests_total{host=\"*.example.com\",status=\"2xx\",protocol=\"HTTP/1.1\"} 1"),
            "{text}"
        );
        assert!(text.contains("portico_tls_handshakes_total{result=\"failed\",reason=\"timeout\"} 1"), "{text}");
        assert!(text.contains("# TYPE portico_routes_hosts gauge"), "{text}");
        let _open = portico_metrics::Open::new(&m.connections_open);
        assert!(exposition.encode().contains("portico_connections_open 1"));
        assert_eq!(m.requests_served(), 1);
    }
}
