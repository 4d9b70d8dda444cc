//! The certificate manager, [`Certs`]: what a handshake is served, and how a certificate is
//! obtained. Its seams are its modules: `policy` (which names get one, and the plan of an
//! issuance), `cache` (memory and store), `gate` (budgets, caps, backoff), `issue` (flights,
//! leases, the issuer's order and its recorded progress), `follow` (other nodes' changes).
//! This module holds the struct, its settings, the handshake's path (`resolve`) and the
//! entry points the renewal scheduler and the API use.
//!
//! Names under wildcard patterns are chosen by whoever sends a ClientHello, so they get a
//! budget of their own: a rate apart from the one explicit hosts and renewals share (each
//! has its own), and caps on how many certificates one pattern and one registered domain
//! hold. They are renewed only when used since they were issued. All of it is checked in
//! memory before any store write, and refusals are logged once per name a minute.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portico_model::Hostname;
use portico_model::report::chain;
use portico_store::{Followed, Key, Kind, Store, Subscription, keys};
use tokio_util::sync::CancellationToken;

use crate::internal::make_fallback;
use crate::status::CertState;
use crate::{
    CertError, DnsAccount, IssueError, Issuer, Loaded, Plan, Progress, SolverKind, Step, StoredCert, load_or_create,
    now_secs,
};

mod cache;
mod follow;
mod gate;
mod issue;
mod policy;

use cache::Cached;
use gate::{Budget, Held, Mode, Refused};
pub use policy::{NamePolicy, Owner, covering_wildcard};
pub(crate) use policy::{literal, one_wildcard};

/// Tunables of issuance and renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct CertSettings {
    /// Renew when this fraction of a certificate's lifetime remains.
    pub renew_remaining_ratio: f64,
    /// Longest one issuance may take before it counts as failed.
    pub issue_timeout: Duration,
    /// First failure backoff; it doubles per consecutive failure...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// Issuances started per minute by this process for explicit hosts, and apart from them
    /// for renewals (protects the CA account).
    pub max_issuances_per_minute: usize,
    /// Issuances started per minute for names under wildcard patterns: a budget of their own,
    /// so a flood of made-up names never holds up an explicit host or a renewal.
    pub max_pattern_issuances_per_minute: usize,
    /// Certificates held at once for names under one wildcard pattern.
    pub max_certs_per_pattern: usize,
    /// Certificates held at once for names under wildcard patterns in one registered domain
    /// (Let's Encrypt issues 50 new certificates per registered domain a week).
    pub max_certs_per_domain: usize,
    /// Where a certificate's renewal starting or stopping to fail is posted (`tls.notify_url`).
    pub notify_url: Option<String>,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            renew_remaining_ratio: 1.0 / 3.0,
            issue_timeout: Duration::from_secs(90),
            backoff_min: Duration::from_secs(60),
            backoff_max: Duration::from_secs(6 * 3600),
            max_issuances_per_minute: 60,
            max_pattern_issuances_per_minute: 20,
            max_certs_per_pattern: 20,
            max_certs_per_domain: 50,
            notify_url: None,
        }
    }
}

/// Certificates for the TLS acceptor; see the crate documentation.
pub struct Certs {
    store: Arc<dyn Store>,
    /// Replaced whole by a reload; an issuance under way keeps the one it started with.
    issuer: RwLock<Arc<dyn Issuer>>,
    policy: Arc<dyn NamePolicy>,
    /// Replaced whole by a reload.
    settings: arc_swap::ArcSwap<CertSettings>,
    /// Where decisions and certificates' state are counted.
    metrics: Arc<crate::metrics::Metrics>,
    cache: RwLock<HashMap<String, Arc<Cached>>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Issuances started in the last minute, per budget.
    started: Mutex<HashMap<Budget, VecDeque<Instant>>>,
    /// Names under wildcard patterns that hold a certificate.
    held: Mutex<HashMap<String, Held>>,
    /// When a refusal was last logged, per name.
    quiet: Mutex<HashMap<String, Instant>>,
    /// Explicit names found without a stored certificate to take on: looked for once per
    /// process, not at every sweep.
    looked_for: Mutex<HashSet<String>>,
    fallback: Arc<Loaded>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs").field("issuer", &self.issuer().kind()).finish_non_exhaustive()
    }
}

impl Certs {
    /// A manager over `store`, issuing with `issuer` for the names `policy` allows, as
    /// `settings` say, counting into `metrics`. Reads (or makes, once) the fallback
    /// certificate.
    pub async fn new(
        store: Arc<dyn Store>,
        issuer: Arc<dyn Issuer>,
        policy: Arc<dyn NamePolicy>,
        settings: CertSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, CertError> {
        let fallback = load_or_create(store.as_ref(), &keys::fallback_cert(), async || make_fallback()).await?;
        let fallback = Arc::new(StoredCert::from_json(&fallback)?.load()?);
        let certs = Self {
            store,
            issuer: RwLock::new(issuer),
            policy,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            metrics,
            cache: RwLock::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            started: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            quiet: Mutex::new(HashMap::new()),
            looked_for: Mutex::default(),
            fallback,
        };
        for name in certs.store.keys(Kind::Cert).await? {
            if let Some(owner) = certs.owner(&name) {
                certs.hold(&name, &owner);
            }
        }
        Ok(Arc::new(certs))
    }

    /// The issuer now.
    pub(crate) fn issuer(&self) -> Arc<dyn Issuer> {
        self.issuer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The settings now (no reference count taken: the handshake's path reads them).
    pub(crate) fn settings(&self) -> arc_swap::Guard<Arc<CertSettings>> {
        self.settings.load()
    }

    /// Issues with `issuer` and decides by `settings` from now on (a reload): certificates
    /// held stay; an issuance under way finishes with the issuer it started with.
    pub fn reconfigure(&self, issuer: Arc<dyn Issuer>, settings: CertSettings) {
        *self.issuer.write().unwrap_or_else(|e| e.into_inner()) = issuer;
        self.settings.store(Arc::new(settings));
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The answer to an ACME HTTP-01 request for `name`, if a challenge is pending (any node
    /// may have published it).
    pub async fn http01_answer(&self, name: &str, token: &str) -> Result<Option<String>, CertError> {
        crate::challenge::http01_answer(self.store.as_ref(), name, token).await
    }

    /// The certificate answering a TLS-ALPN-01 validation for `name`, if a challenge is
    /// pending.
    pub async fn tls_alpn01_cert(&self, name: &str) -> Result<Option<Arc<rustls::sign::CertifiedKey>>, CertError> {
        crate::challenge::tls_alpn01_cert(self.store.as_ref(), name).await
    }

    /// The issuer's kind (`acme`, `internal`).
    pub fn issuer_kind(&self) -> &'static str {
        self.issuer().kind()
    }

    /// The fallback certificate: self-signed, for no real name.
    pub fn fallback(&self) -> &Arc<Loaded> {
        &self.fallback
    }

    /// The certificate held in memory for a ClientHello's SNI (the name's own, or a wildcard
    /// one that covers it), for a handshake that cannot wait (QUIC's); `None` when this
    /// process holds none yet ([`Certs::resolve`] gets one).
    pub fn resolve_held(&self, sni: &str) -> Option<Arc<Loaded>> {
        let name = Hostname::parse(sni).ok()?;
        let name = name.as_str();
        if let Some(cached) = self.cached_entry(name) {
            return Some(cached.loaded.clone());
        }
        let wildcard = covering_wildcard(name)?;
        self.cached_entry(&wildcard).filter(|c| c.loaded.meta.covers(name)).map(|c| c.loaded.clone())
    }

    /// The certificate to serve for a ClientHello's SNI: memory → store → gate → issuance.
    /// `None` means the fallback certificate: no SNI, or the name is an IP literal, unknown, or
    /// failing.
    pub async fn resolve(&self, sni: Option<&str>) -> Option<Arc<Loaded>> {
        let name = Hostname::parse(sni?).ok()?;
        let name = name.as_str();
        if name.parse::<IpAddr>().is_ok() {
            return None;
        }
        if let Some(cached) = self.cached_entry(name) {
            if !cached.used.swap(true, Ordering::Relaxed) {
                self.mark_used(name);
            }
            self.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        // A wildcard certificate in memory that covers the name (one the seed stored as
        // `*.zone:latest`).
        if let Some(wildcard) = covering_wildcard(name)
            && let Some(cached) = self.cached_entry(&wildcard)
            && cached.loaded.meta.covers(name)
        {
            self.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        let Some(owner) = self.policy.owner(name) else {
            tracing::debug!(name, "no host matches this name: serving the fallback certificate");
            self.metrics.decision("unknown_name");
            return None;
        };
        let (cert, owner) = match self.cert_for(name, &owner).await {
            Ok(planned) => planned,
            Err(e) => {
                tracing::warn!(name, error = %chain(&e), "cannot plan a certificate: serving the fallback certificate");
                return None;
            }
        };
        if cert != name
            && let Some(cached) = self.cached_entry(&cert)
        {
            self.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        self.on_demand(&cert, name, &owner).await
    }

    /// Gets `cert` for a handshake that asked for `asked` (counted and logged when it is
    /// refused): the fallback certificate's `None` then.
    async fn on_demand(&self, cert: &str, asked: &str, owner: &Owner) -> Option<Arc<Loaded>> {
        match self.obtain(cert, Mode::OnDemand, owner).await {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                self.metrics.decision(e.label());
                self.log_refusal(asked, &e);
                None
            }
        }
    }

    /// The certificate for a ClientHello without SNI that reached the address `ip` (a client
    /// asking for `https://203.0.113.5/`): an IP address certificate (RFC 8738) when a host
    /// is exactly that address, got on demand like a name's; `None` (the fallback
    /// certificate) otherwise.
    pub async fn resolve_address(&self, ip: IpAddr) -> Option<Arc<Loaded>> {
        let name = ip.to_string();
        if let Some(cached) = self.cached_entry(&name) {
            self.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        // Only a host of exactly this address: no pattern covers one.
        let owner = self.policy.owner(&name).filter(|o| o.explicit && o.pattern == name)?;
        self.on_demand(&name, &name, &owner).await
    }

    /// Issues a new certificate for `name` now, whatever its state (the API's renew); not
    /// for an uploaded certificate, which its admin replaces or removes.
    pub async fn renew_now(&self, name: &str) -> Result<Arc<Loaded>, CertError> {
        if crate::upload::is_uploaded(self.store.as_ref(), name).await? {
            return Err(CertError::Issue(IssueError::local(format!(
                "the certificate of {name} was uploaded and is never renewed by Portico: upload a new one, \
                 or remove it (DELETE /api/cert/{name}) to return to automatic certificates"
            ))));
        }
        let owner = self.policy.owner(name).unwrap_or(Owner { pattern: name.to_owned(), explicit: true });
        self.obtain(name, Mode::Forced, &owner).await.map_err(refused_to_error)
    }

    /// Renews `name` if it is (still) due; used by the renewal scheduler.
    pub(crate) async fn renew_due(&self, name: &str, owner: &Owner) -> Result<Arc<Loaded>, CertError> {
        self.obtain(name, Mode::Renewal, owner).await.map_err(refused_to_error)
    }

    /// The stored state of `name`'s certificate.
    pub async fn state(&self, name: &str) -> Result<Option<CertState>, CertError> {
        Ok(self.store.record(Kind::Cert, name).await?.map(|f| CertState::from_fields(&f)))
    }

    /// Asks the CA for `name`'s renewal window (ARI) and moves the next attempt into it, at a
    /// random moment, when that is earlier. Returns the state as stored.
    pub(crate) async fn consult_ari(&self, name: &str) -> Result<CertState, CertError> {
        let now = now_secs();
        let window = match self.store.blob(&keys::cert_latest(name)).await? {
            Some(bytes) => match self.issuer().renewal_window(&StoredCert::from_json(&bytes)?).await {
                Ok(window) => window,
                Err(e) => {
                    tracing::debug!(name, error = %e, "cannot read the CA's renewal information");
                    None
                }
            },
            None => None,
        };
        // The state as it is now (an issuance may have finished meanwhile).
        let mut state = self.state(name).await?.unwrap_or_default();
        state.ari_checked = now;
        if let Some((start, end)) = window {
            let at = pick_in_window(start, end, fastrand::f64()).max(now);
            if at < state.next_attempt {
                tracing::info!(
                    name,
                    window_start = start,
                    window_end = end,
                    renew_at = at,
                    "the CA's renewal window moves this renewal earlier"
                );
                state.next_attempt = at;
            }
        }
        self.store.put(Kind::Cert, name, &state.to_fields()).await?;
        Ok(state)
    }

    /// Records and logs, once, that the uploaded certificate `name` has a third of its life
    /// left: Portico never renews it.
    pub(crate) async fn alert_uploaded(&self, name: &str, mut state: CertState) -> Result<(), CertError> {
        let expires = crate::upload::date(state.not_after);
        tracing::warn!(
            name,
            not_after = %expires,
            "an uploaded certificate expires soon and is never renewed by Portico: upload a new one"
        );
        state.last_error = format!(
            "the uploaded certificate expires on {expires} and is never renewed automatically: upload a new one, \
             or remove it to return to automatic certificates"
        );
        state.step = "expiring".to_owned();
        state.note(now_secs(), "a third of its life left, not renewed (uploaded)");
        self.store.put(Kind::Cert, name, &state.to_fields()).await?;
        Ok(())
    }

    /// Tells the operator once when `name`'s certificate starts failing to renew with a third
    /// of its life left (or its uploaded certificate nears its end), and once when that is
    /// over: a log line, its history, and a post to `tls.notify_url` (`{"event": "failing" |
    /// "recovered", "name", "not_after", "error"}`). Returns the state as stored.
    pub(crate) async fn alert_on_change(
        &self,
        name: &str,
        mut state: CertState,
        now: i64,
    ) -> Result<CertState, CertError> {
        if state.renewal_failing(now) == state.alerted {
            return Ok(state);
        }
        // The state as it is now (an issuance may have finished since it was read).
        if let Some(current) = self.state(name).await? {
            state = current;
        }
        let failing = state.renewal_failing(now);
        if failing == state.alerted {
            return Ok(state);
        }
        state.alerted = failing;
        let expires = crate::upload::date(state.not_after);
        // An uploaded certificate's alert is noted by `alert_uploaded`.
        let noted = state.issuer != crate::upload::UPLOADED;
        let event = if failing {
            tracing::warn!(name, not_after = %expires, error = state.last_error,
                "a certificate near its end is not being renewed");
            if noted {
                state.note(now, format!("renewal failing, expires {expires}"));
            }
            "failing"
        } else {
            tracing::info!(name, not_after = %expires, "a certificate's renewal alert is over");
            if noted {
                state.note(now, "renewal alert over");
            }
            "recovered"
        };
        self.store.put(Kind::Cert, name, &state.to_fields()).await?;
        if let Some(url) = self.settings().notify_url.clone() {
            let error = if failing { state.last_error.clone() } else { String::new() };
            let body = serde_json::json!({ "event": event, "name": name, "not_after": expires, "error": error });
            let name = name.to_owned();
            // The sweep does not wait on the operator's webhook.
            tokio::spawn(async move {
                if let Err(e) = portico_dns::post_json(&url, &body, Duration::from_secs(10)).await {
                    tracing::warn!(name, error = %e, "cannot post the certificate alert to tls.notify_url");
                }
            });
        }
        Ok(state)
    }

    /// Removes the uploaded certificate of `name`, returning it to automatic certificates
    /// (the next handshake gets one). `Ok(false)` when `name`'s certificate is not an
    /// uploaded one (nothing is removed).
    pub async fn remove_uploaded(&self, name: &str) -> Result<bool, CertError> {
        if !crate::upload::remove(self.store.as_ref(), name).await? {
            return Ok(false);
        }
        self.dropped(name);
        tracing::info!(name, "removed an uploaded certificate: the name gets automatic certificates again");
        Ok(true)
    }

    /// Removes `name`'s certificate and state (its host is gone and it has expired).
    pub(crate) async fn remove(&self, name: &str) -> Result<(), CertError> {
        crate::stored::delete(self.store.as_ref(), name).await?;
        self.dropped(name);
        Ok(())
    }

    /// Forgets everything held in memory of `name`'s certificate (it was removed).
    fn dropped(&self, name: &str) {
        self.forget(name);
        self.unhold(name);
        self.metrics.forget_certificate(name);
    }

    /// The fraction of a certificate's lifetime left when it is renewed (or, uploaded, its
    /// admin is told).
    pub fn renew_remaining_ratio(&self) -> f64 {
        self.settings().renew_remaining_ratio
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The policy's explicit names.
    pub(crate) fn explicit_names(&self) -> Vec<String> {
        self.policy.explicit_names()
    }
}
/// A moment in `[start, end)` chosen by `unit` (uniform in `[0, 1)`), as RFC 9773 asks of
/// clients so that renewals spread over the window; `start` when the window is empty.
fn pick_in_window(start: i64, end: i64, unit: f64) -> i64 {
    start + ((end - start).max(0) as f64 * unit.clamp(0.0, 1.0)) as i64
}

fn refused_to_error(refused: Refused) -> CertError {
    match refused {
        Refused::Failed(e) => e,
        other => CertError::Issue(IssueError::caused_by(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::pick_in_window;

    #[test]
    fn renewal_moments_spread_over_the_window() {
        assert_eq!(pick_in_window(100, 200, 0.0), 100);
        assert_eq!(pick_in_window(100, 200, 0.5), 150);
        assert!(pick_in_window(100, 200, 0.999_999) < 200);
        assert_eq!(pick_in_window(100, 50, 0.7), 100, "an empty window means its start");
    }
}
