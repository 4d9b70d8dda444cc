//! The certificates' metrics: each certificate's dates and failures, issuances started, ACME
//! orders, and what handshakes' names got. Registered by [`Metrics::register`] into the
//! node's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::CertState;

/// A certificate's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `app.example.com`, `*.example.com`.
    pub name: String,
}

/// A certificate's name and the CA that issued it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaLabels {
    /// `app.example.com`, `*.example.com`.
    pub name: String,
    /// The issuer's directory URL, or `internal`.
    pub ca: String,
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

/// An on-demand certificate decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `memory`, `store`, `issued`, `unknown_name`, `backoff`, `rate_limited`, `capped`,
    /// `busy`, `failed`.
    pub decision: &'static str,
}

/// The certificates' metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `portico_certificate_not_after_seconds{name}`: the certificate's end, Unix seconds.
    pub cert_not_after: Family<CertLabels, Gauge>,
    /// `portico_certificate_issued_seconds{name}`: when it was issued (its lifetime's start).
    pub cert_issued: Family<CertLabels, Gauge>,
    /// `portico_certificate_next_renewal_seconds{name}`: when it is due, Unix seconds.
    pub cert_next_renewal: Family<CertLabels, Gauge>,
    /// `portico_certificate_failures{name}`: consecutive failed attempts.
    pub cert_failures: Family<CertLabels, Gauge>,
    /// `portico_certificate_renewal_failing{name}`: 1 while the certificate has a third of its
    /// life left or less and will not be renewed: renewals keep failing, or it was uploaded
    /// (never renewed by Portico).
    pub cert_renewal_failing: Family<CertLabels, Gauge>,
    /// `portico_certificate_ca{name, ca}`: 1, labelled with the CA that issued the certificate
    /// (its ACME directory URL, or `internal`).
    pub cert_ca: Family<CaLabels, Gauge>,
    /// The CA each certificate's `cert_ca` series names, to drop it when another CA issues.
    cas: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// `portico_certificate_attempts_total{issuer, kind}`: issuances and renewals started.
    pub cert_attempts: Family<AttemptLabels, Counter>,
    /// `portico_acme_orders_total{result, challenge}`.
    pub acme_orders: Family<OrderLabels, Counter>,
    /// `portico_certificate_decisions_total{decision}`: what a handshake's name got.
    pub decisions: Family<DecisionLabels, Counter>,
}

impl Metrics {
    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portico_certificate_not_after_seconds",
            "When each certificate expires (Unix time)",
            self.cert_not_after.clone(),
        );
        registry.register(
            "portico_certificate_issued_seconds",
            "When each certificate was issued (Unix time)",
            self.cert_issued.clone(),
        );
        registry.register(
            "portico_certificate_next_renewal_seconds",
            "When each certificate is next tried (Unix time)",
            self.cert_next_renewal.clone(),
        );
        registry.register(
            "portico_certificate_failures",
            "Consecutive failed attempts per certificate",
            self.cert_failures.clone(),
        );
        registry.register(
            "portico_certificate_renewal_failing",
            "1 per certificate with a third of its life left or less that is not being renewed (renewals failing, or uploaded)",
            self.cert_renewal_failing.clone(),
        );
        registry.register(
            "portico_certificate_ca",
            "1 per certificate, labelled with the CA that issued it (its ACME directory, or internal)",
            self.cert_ca.clone(),
        );
        registry.register(
            "portico_certificate_attempts",
            "Certificate issuances and renewals started, by issuer",
            self.cert_attempts.clone(),
        );
        registry.register("portico_acme_orders", "ACME orders, by result and challenge type", self.acme_orders.clone());
        registry.register(
            "portico_certificate_decisions",
            "What a TLS handshake's name got: from memory, the store, a new certificate, or the fallback and why",
            self.decisions.clone(),
        );
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

    /// Sets a certificate's gauges from its state at `now` (Unix seconds).
    pub fn certificate(&self, name: &str, state: &CertState, now: i64) {
        let labels = CertLabels { name: name.to_owned() };
        if state.not_after > 0 {
            self.cert_not_after.get_or_create(&labels).set(state.not_after);
        }
        if state.issued > 0 {
            self.cert_issued.get_or_create(&labels).set(state.issued);
        }
        self.cert_next_renewal.get_or_create(&labels).set(state.next_attempt);
        self.cert_failures.get_or_create(&labels).set(i64::from(state.failures));
        self.cert_renewal_failing.get_or_create(&labels).set(i64::from(state.renewal_failing(now)));
        if !state.ca.is_empty() {
            let before = self.cas.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), state.ca.clone());
            if let Some(before) = before.filter(|b| *b != state.ca) {
                self.cert_ca.remove(&CaLabels { name: name.to_owned(), ca: before });
            }
            self.cert_ca.get_or_create(&CaLabels { name: name.to_owned(), ca: state.ca.clone() }).set(1);
        }
    }

    /// Forgets a certificate that is gone.
    pub fn forget_certificate(&self, name: &str) {
        let labels = CertLabels { name: name.to_owned() };
        self.cert_not_after.remove(&labels);
        self.cert_issued.remove(&labels);
        self.cert_next_renewal.remove(&labels);
        self.cert_failures.remove(&labels);
        self.cert_renewal_failing.remove(&labels);
        if let Some(ca) = self.cas.lock().unwrap_or_else(|e| e.into_inner()).remove(name) {
            self.cert_ca.remove(&CaLabels { name: name.to_owned(), ca });
        }
    }
}
