//! The certificate manager: cache, on-demand gate, single-flight issuance, backoff.
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
use portico_store::{Followed, Key, Kind, Store, Subscription, keys};
use tokio_util::sync::CancellationToken;

use crate::internal::make_fallback;
use crate::status::CertState;
use crate::{
    CertError, DnsAccount, IssueError, Issuer, Loaded, Plan, Progress, SolverKind, Step, StoredCert, load_or_create,
    now_secs,
};

/// Decides which names may get a certificate: those a host pattern matches.
pub trait NamePolicy: Send + Sync + fmt::Debug {
    /// The host pattern that gives `name` (normalised) a certificate, if one matches.
    fn owner(&self, name: &str) -> Option<Owner>;
    /// The certificate names renewed whether or not anyone asked for them: every name a
    /// pattern without wildcards names, and every `*.zone` pattern (a wildcard certificate).
    fn explicit_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether a host has exactly this pattern (`*.example.com`).
    fn has_pattern(&self, _pattern: &str) -> bool {
        false
    }
}

/// The host pattern a name's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The pattern as stored (`*.example.com`, or the name itself).
    pub pattern: String,
    /// Whether the pattern has no `*` or `**`: the operator asked for this very name. Names
    /// under wildcard patterns are chosen by whoever sends a ClientHello.
    pub explicit: bool,
}

/// Routing decides certificates: a name may have one when a host pattern matches it.
impl NamePolicy for portico_model::Routes {
    fn owner(&self, name: &str) -> Option<Owner> {
        let table = self.snapshot();
        let (pattern, _) = table.lookup(name)?;
        Some(Owner { pattern: pattern.to_string(), explicit: literal(pattern) })
    }

    fn explicit_names(&self) -> Vec<String> {
        self.snapshot().iter().filter(|(p, _)| literal(p) || one_wildcard(p)).map(|(p, _)| p.to_string()).collect()
    }

    fn has_pattern(&self, pattern: &str) -> bool {
        portico_model::HostPattern::parse(pattern).is_ok_and(|p| self.snapshot().get(&p).is_some())
    }
}

/// Whether a pattern is `*.` followed by literal labels: one wildcard certificate covers it.
fn one_wildcard(pattern: &portico_model::HostPattern) -> bool {
    let mut labels = pattern.labels();
    matches!(labels.next(), Some(portico_model::PatternLabel::One))
        && labels.all(|l| matches!(l, portico_model::PatternLabel::Literal(_)))
}

/// Whether a pattern has no wildcard label.
fn literal(pattern: &portico_model::HostPattern) -> bool {
    pattern.labels().all(|l| matches!(l, portico_model::PatternLabel::Literal(_)))
}

/// The one-label wildcard name that would cover `name` (`*.example.com` for
/// `app.example.com`); none for a name of fewer than three labels.
pub fn covering_wildcard(name: &str) -> Option<String> {
    let (_, parent) = name.split_once('.')?;
    parent.contains('.').then(|| format!("*.{parent}"))
}

/// How long an issuance lease lives unless its holder refreshes it (it does, every third of
/// this, while it issues).
const ISSUE_LEASE_TTL: Duration = Duration::from_secs(10);

/// Tunables of issuance and renewal.
#[derive(Debug, Clone)]
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
    /// Where decisions, certificates' state and jobs are counted.
    pub metrics: Arc<portico_metrics::Metrics>,
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
            metrics: Arc::new(portico_metrics::Metrics::new()),
        }
    }
}

/// Why a name gets no certificate of its own.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("in failure backoff until {0}")]
    Backoff(i64),
    #[error("the issuance rate limit ({0}) is reached")]
    RateLimited(Budget),
    #[error("the cap of certificates per {0} is reached")]
    Capped(&'static str),
    #[error("another node is issuing and did not finish in time")]
    Busy,
    #[error(transparent)]
    Failed(#[from] CertError),
}

impl Refused {
    /// The decision's label in `portico_certificate_decisions_total`.
    fn label(&self) -> &'static str {
        match self {
            Self::Backoff(_) => "backoff",
            Self::RateLimited(_) => "rate_limited",
            Self::Capped(_) => "capped",
            Self::Busy => "busy",
            Self::Failed(_) => "failed",
        }
    }
}

/// How an issuance was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A handshake for a name with no usable certificate.
    OnDemand,
    /// The renewal scheduler found the name due.
    Renewal,
    /// Someone asked for a new certificate now (`PUT /api/host/:item/renew`).
    Forced,
}

/// Which issuance budget an issuance draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Budget {
    /// Explicit hosts, and renewals asked for through the API.
    Explicit,
    /// Names under wildcard patterns.
    Pattern,
    /// The renewal scheduler.
    Renewal,
}

impl Budget {
    /// Its name in the store's counter keys.
    fn key(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::Pattern => "pattern",
            Self::Renewal => "renewal",
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Explicit => "explicit hosts",
            Self::Pattern => "names under wildcard patterns",
            Self::Renewal => "renewals",
        })
    }
}

/// A certificate in memory, and whether it has been served since it was loaded.
#[derive(Debug)]
struct Cached {
    loaded: Arc<Loaded>,
    used: AtomicBool,
}

/// A name under a wildcard pattern that holds a certificate, for the caps.
#[derive(Debug)]
struct Held {
    pattern: String,
    domain: String,
}

/// Names whose refusal was logged in the last minute, at most this many (a flood of names
/// beyond it is not logged name by name).
const QUIET_NAMES: usize = 10_000;

/// Certificates for the TLS acceptor; see the crate documentation.
pub struct Certs {
    store: Arc<dyn Store>,
    issuer: Arc<dyn Issuer>,
    policy: Arc<dyn NamePolicy>,
    settings: CertSettings,
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
        f.debug_struct("Certs").field("issuer", &self.issuer.kind()).finish_non_exhaustive()
    }
}

impl Certs {
    /// A manager over `store`, issuing with `issuer` for the names `policy` allows. Reads (or
    /// makes, once) the fallback certificate.
    pub async fn new(
        store: Arc<dyn Store>,
        issuer: Arc<dyn Issuer>,
        policy: Arc<dyn NamePolicy>,
        settings: CertSettings,
    ) -> Result<Arc<Self>, CertError> {
        let fallback = load_or_create(store.as_ref(), &keys::fallback_cert(), async || make_fallback()).await?;
        let fallback = Arc::new(StoredCert::from_json(&fallback)?.load()?);
        let certs = Self {
            store,
            issuer,
            policy,
            settings,
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
        self.issuer.kind()
    }

    /// The host pattern `name`'s certificate comes from.
    pub fn owner(&self, name: &str) -> Option<Owner> {
        let mut owner = self.policy.owner(name)?;
        // A wildcard certificate (`*.zone`) belongs to that very pattern, and is renewed
        // like an explicit host's.
        if name.starts_with("*.") {
            if owner.pattern != name {
                return None;
            }
            owner.explicit = true;
        }
        Some(owner)
    }

    /// The certificate that covers `name`, which `owner` gives one: the wildcard `*.zone`
    /// for a name under a `*.zone` host, and for `zone` itself when such a host exists, if a
    /// DNS provider manages the zone; else the name's own.
    async fn cert_for(&self, name: &str, owner: &Owner) -> Result<(String, Owner), CertError> {
        let wildcard = match owner.pattern.strip_prefix("*.") {
            Some(parent) if !parent.contains('*') && name.split_once('.').is_some_and(|(_, rest)| rest == parent) => {
                Some(owner.pattern.clone())
            }
            _ if self.policy.has_pattern(&format!("*.{name}")) => Some(format!("*.{name}")),
            _ => None,
        };
        if let Some(wildcard) = wildcard
            && self.dns_account(&wildcard[2..]).await?.is_some()
        {
            return Ok((wildcard.clone(), Owner { pattern: wildcard, explicit: true }));
        }
        Ok((name.to_owned(), owner.clone()))
    }

    /// The DNS provider account that manages `zone` (the seed's `Domain` → `DnsProvider`
    /// link: [`zones_of`](portico_model::dns::zones_of) is the rule). Reads the domain
    /// records `zone` could be in, longest first, not all of them: a handshake for a name
    /// under a wildcard host asks this.
    pub async fn dns_account(&self, zone: &str) -> Result<Option<DnsAccount>, CertError> {
        for domain in portico_model::dns::zones_of(zone) {
            let Some(fields) = self.store.record(Kind::Domain, domain).await? else { continue };
            let Some(provider_id) = fields.get("dnsProvider_id") else { return Ok(None) };
            let Some(provider) = self.store.record(Kind::DnsProvider, provider_id).await? else { return Ok(None) };
            let provider = portico_model::dns::Provider::from_fields(provider_id, &provider);
            return Ok(Some(DnsAccount { provider, domain: domain.to_owned() }));
        }
        Ok(None)
    }

    /// The certificates a host pattern owns: an exact name's own; a `*.zone` pattern's
    /// wildcard certificate when a DNS provider manages the zone; otherwise the certificates
    /// of the names under it that have one.
    pub async fn certificates_of(&self, pattern: &portico_model::HostPattern) -> Result<Vec<String>, CertError> {
        let text = pattern.to_string();
        if literal(pattern) {
            return Ok(vec![text]);
        }
        if one_wildcard(pattern) && self.dns_account(&text[2..]).await?.is_some() {
            return Ok(vec![text]);
        }
        let only: portico_model::HostTable<()> = [(pattern.clone(), ())].into_iter().collect();
        Ok(self.store.keys(Kind::Cert).await?.into_iter().filter(|name| only.lookup(name).is_some()).collect())
    }

    /// What an issuance of the certificate `cert` makes: a wildcard covers its zone too and
    /// goes through the zone's DNS provider.
    pub async fn plan(&self, cert: &str) -> Result<Plan, CertError> {
        let Some(zone) = cert.strip_prefix("*.") else { return Ok(Plan::single(cert)) };
        let solver = match self.dns_account(zone).await? {
            Some(account) => SolverKind::Dns(account),
            // Without one only an issuer that needs no challenge (the internal CA) can; the
            // ACME issuer says why not.
            None => SolverKind::Http,
        };
        Ok(Plan { cert: cert.to_owned(), sans: vec![cert.to_owned(), zone.to_owned()], solver })
    }

    /// The fallback certificate: self-signed, for no real name.
    pub fn fallback(&self) -> &Arc<Loaded> {
        &self.fallback
    }

    /// The certificate in memory for `name`, unless it has expired.
    pub fn cached(&self, name: &str) -> Option<Arc<Loaded>> {
        self.cached_entry(name).map(|c| c.loaded.clone())
    }

    fn cached_entry(&self, name: &str) -> Option<Arc<Cached>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.get(name).filter(|c| c.loaded.meta.not_after > now_secs()).cloned()
    }

    fn remember(&self, name: &str, loaded: Arc<Loaded>) {
        let cached = Arc::new(Cached { loaded, used: AtomicBool::new(false) });
        self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), cached);
    }

    /// Notes in the store that `name`'s certificate was served (once per certificate and
    /// process, off the handshake's path): names under wildcard patterns are renewed only then.
    fn mark_used(&self, name: &str) {
        let (store, name) = (self.store.clone(), name.to_owned());
        tokio::spawn(async move {
            let now = now_secs().to_string();
            if let Err(e) = store.put_blob(&keys::cert_used(&name), now.as_bytes(), None).await {
                tracing::debug!(name, error = %e, "cannot note that a certificate was used");
            }
        });
    }

    /// When `name`'s certificate was last noted as served (seconds; 0 if never).
    pub(crate) async fn last_used(&self, name: &str) -> Result<i64, CertError> {
        let used = self.store.blob(&keys::cert_used(name)).await?;
        Ok(used.and_then(|b| String::from_utf8(b).ok()).and_then(|t| t.parse().ok()).unwrap_or(0))
    }

    /// Counts `name` against its pattern's and registered domain's caps (names under
    /// wildcard patterns only).
    fn hold(&self, name: &str, owner: &Owner) {
        if owner.explicit {
            return;
        }
        let domain = psl::domain_str(name).unwrap_or(name).to_owned();
        let held = Held { pattern: owner.pattern.clone(), domain };
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), held);
    }

    fn unhold(&self, name: &str) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// Whether a new certificate for `name` would break a cap: names under wildcard patterns
    /// only, and not those that hold one already (a renewal).
    fn capped(&self, name: &str, owner: &Owner) -> Result<(), Refused> {
        if owner.explicit {
            return Ok(());
        }
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains_key(name) {
            return Ok(());
        }
        let domain = psl::domain_str(name).unwrap_or(name);
        if held.values().filter(|h| h.pattern == owner.pattern).count() >= self.settings.max_certs_per_pattern {
            return Err(Refused::Capped("pattern"));
        }
        if held.values().filter(|h| h.domain == domain).count() >= self.settings.max_certs_per_domain {
            return Err(Refused::Capped("registered domain"));
        }
        Ok(())
    }

    /// Logs why `name` gets the fallback certificate, at most once a minute per name.
    fn log_refusal(&self, name: &str, refused: &Refused) {
        let now = Instant::now();
        let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        if quiet.get(name).is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60)) {
            return;
        }
        if quiet.len() >= QUIET_NAMES {
            quiet.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            if quiet.len() >= QUIET_NAMES {
                return;
            }
        }
        quiet.insert(name.to_owned(), now);
        drop(quiet);
        tracing::info!(name, reason = %refused, "no certificate for this name: serving the fallback certificate");
    }

    fn forget(&self, name: &str) {
        self.cache.write().unwrap_or_else(|e| e.into_inner()).remove(name);
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
            self.settings.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        // A wildcard certificate in memory that covers the name (one the seed stored as
        // `*.zone:latest`).
        if let Some(wildcard) = covering_wildcard(name)
            && let Some(cached) = self.cached_entry(&wildcard)
            && cached.loaded.meta.covers(name)
        {
            self.settings.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        let Some(owner) = self.policy.owner(name) else {
            tracing::debug!(name, "no host matches this name: serving the fallback certificate");
            self.settings.metrics.decision("unknown_name");
            return None;
        };
        let (cert, owner) = match self.cert_for(name, &owner).await {
            Ok(planned) => planned,
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot plan a certificate: serving the fallback certificate");
                return None;
            }
        };
        if cert != name
            && let Some(cached) = self.cached_entry(&cert)
        {
            self.settings.metrics.decision("memory");
            return Some(cached.loaded.clone());
        }
        match self.obtain(&cert, Mode::OnDemand, &owner).await {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                self.settings.metrics.decision(e.label());
                self.log_refusal(name, &e);
                None
            }
        }
    }

    /// Issues a new certificate for `name` now, whatever its state (the API's renew).
    pub async fn renew_now(&self, name: &str) -> Result<Arc<Loaded>, CertError> {
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
            Some(bytes) => match self.issuer.renewal_window(&StoredCert::from_json(&bytes)?.leaf_der()?).await {
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

    /// Removes `name`'s certificate and state (its host is gone and it has expired).
    pub(crate) async fn remove(&self, name: &str) -> Result<(), CertError> {
        self.store.delete_blob(&keys::cert_latest(name)).await?;
        self.store.delete_blob(&keys::cert_used(name)).await?;
        self.store.delete(Kind::Cert, name).await?;
        self.forget(name);
        self.unhold(name);
        self.settings.metrics.forget_certificate(name);
        Ok(())
    }

    /// The stored certificate of `name`, if it parses and has not expired.
    async fn stored(&self, name: &str) -> Result<Option<Arc<Loaded>>, CertError> {
        let Some(bytes) = self.store.blob(&keys::cert_latest(name)).await? else {
            return Ok(None);
        };
        match StoredCert::from_json(&bytes).and_then(|s| s.load()) {
            // Served only for names it covers (a seed deployment may hold one under the
            // wrong key).
            Ok(loaded) if !loaded.meta.covers(name) => {
                tracing::warn!(name, names = ?loaded.meta.names, "the certificate stored for this name does not cover it; it is not served");
                Ok(None)
            }
            Ok(loaded) if loaded.meta.not_after > now_secs() => Ok(Some(Arc::new(loaded))),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(name, error = %e, "the stored certificate is unusable; a new one will be issued");
                Ok(None)
            }
        }
    }

    /// Takes on the certificate stored for `name` that Portico does not manage yet (one
    /// the seed wrote as `<name>:latest`): records its state, so that it is renewed when due
    /// by its real expiry (the seed's wildcard certificates carry a made-up one). Returns
    /// whether there was one to take on.
    pub(crate) async fn adopt(&self, name: &str) -> Result<bool, CertError> {
        if self.looked_for.lock().unwrap_or_else(|e| e.into_inner()).contains(name) {
            return Ok(false);
        }
        let Some(loaded) = self.stored(name).await? else {
            self.looked_for.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
            return Ok(false);
        };
        let meta = &loaded.meta;
        let state = CertState {
            issuer: "imported".to_owned(),
            not_after: meta.not_after,
            issued: meta.not_before,
            next_attempt: meta.renew_at(self.settings.renew_remaining_ratio),
            ..CertState::default()
        };
        match self.store.create(Kind::Cert, name, &state.to_fields()).await {
            Ok(()) => {
                tracing::info!(name, not_after = meta.not_after, "took on a stored certificate");
                Ok(true)
            }
            // Another node took it on first.
            Err(portico_store::StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<portico_metrics::Metrics> {
        &self.settings.metrics
    }

    /// The policy's explicit names.
    pub(crate) fn explicit_names(&self) -> Vec<String> {
        self.policy.explicit_names()
    }

    /// Re-reads `name` from the store into memory (another node renewed it).
    pub async fn reload(&self, name: &str) {
        match self.stored(name).await {
            Ok(Some(loaded)) => self.remember(name, loaded),
            Ok(None) => self.forget(name),
            Err(e) => tracing::warn!(name, error = %e, "cannot re-read a certificate"),
        }
    }

    fn flight(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(name.to_owned()).or_default().clone()
    }

    fn end_flight(&self, name: &str) {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The budget an issuance of `name` in `mode` draws on.
    fn budget(mode: Mode, owner: &Owner) -> Budget {
        match mode {
            Mode::Renewal => Budget::Renewal,
            Mode::Forced => Budget::Explicit,
            Mode::OnDemand if owner.explicit => Budget::Explicit,
            Mode::OnDemand => Budget::Pattern,
        }
    }

    /// Issuances per minute `budget` allows.
    fn limit(&self, budget: Budget) -> usize {
        match budget {
            Budget::Explicit | Budget::Renewal => self.settings.max_issuances_per_minute,
            Budget::Pattern => self.settings.max_pattern_issuances_per_minute,
        }
    }

    /// Counts one more issuance from `budget` in the store, for this minute, and refuses it
    /// when the cluster as a whole has used the budget up (each node's own count, in memory,
    /// comes first and is cheaper).
    async fn cluster_rate(&self, budget: Budget) -> Result<(), Refused> {
        let key = keys::issue_rate(budget.key(), now_secs().div_euclid(60));
        let count = self.store.count(&key, Duration::from_secs(120)).await.map_err(CertError::from)?;
        if count > self.limit(budget) as u64 {
            return Err(Refused::RateLimited(budget));
        }
        Ok(())
    }

    /// Checks `budget`'s rate over the last minute; `take`: and counts one more issuance.
    fn rate(&self, budget: Budget, take: bool) -> Result<(), Refused> {
        let limit = self.limit(budget);
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let window = started.entry(budget).or_default();
        let now = Instant::now();
        while window.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            window.pop_front();
        }
        if window.len() >= limit {
            return Err(Refused::RateLimited(budget));
        }
        if take {
            window.push_back(now);
        }
        Ok(())
    }

    /// One issuance per name at a time in this process (waiters then find the result), one
    /// across nodes (a store lease).
    async fn obtain(&self, name: &str, mode: Mode, owner: &Owner) -> Result<Arc<Loaded>, Refused> {
        let flight = self.flight(name);
        let result = {
            let _turn = flight.lock().await;
            self.obtain_in_turn(name, mode, owner).await
        };
        self.end_flight(name);
        result
    }

    async fn obtain_in_turn(&self, name: &str, mode: Mode, owner: &Owner) -> Result<Arc<Loaded>, Refused> {
        if mode == Mode::OnDemand {
            if let Some(loaded) = self.cached(name) {
                return Ok(loaded);
            }
            if let Some(loaded) = self.stored(name).await? {
                self.remember(name, loaded.clone());
                self.settings.metrics.decision("store");
                return Ok(loaded);
            }
            // Then the stored wildcard certificate that covers it, as certmagic looks up.
            if let Some(wildcard) = covering_wildcard(name)
                && let Some(loaded) = self.stored(&wildcard).await?
                && loaded.meta.covers(name)
            {
                self.remember(&wildcard, loaded.clone());
                self.settings.metrics.decision("store");
                return Ok(loaded);
            }
        }
        let state = self.state(name).await?.unwrap_or_default();
        let now = now_secs();
        if mode == Mode::OnDemand && state.backing_off(now) {
            return Err(Refused::Backoff(state.next_attempt));
        }
        // The budget, in memory, before the first store write (the lease).
        let budget = Self::budget(mode, owner);
        if mode == Mode::OnDemand {
            self.capped(name, owner)?;
        }
        self.rate(budget, false)?;
        let lock = keys::issue_lock(name);
        let lease_ttl = ISSUE_LEASE_TTL;
        let deadline = tokio::time::Instant::now() + self.settings.issue_timeout;
        let lease = loop {
            if let Some(lease) = self.store.acquire(&lock, lease_ttl).await.map_err(CertError::from)? {
                break lease;
            }
            // Another node is issuing: take its result when it lands.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if mode != Mode::Forced
                && let Some(loaded) = self.stored(name).await?
                && self.state(name).await?.is_some_and(|s| s.last_attempt >= now)
            {
                self.remember(name, loaded.clone());
                return Ok(loaded);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Refused::Busy);
            }
        };
        // The lease lives a short while and is refreshed while the issuance runs: a node that
        // dies mid-issuance holds up the others for one lease time at most.
        let refresher = {
            let (store, lease, name) = (self.store.clone(), lease.clone(), name.to_owned());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ISSUE_LEASE_TTL / 3).await;
                    match store.refresh(&lease, ISSUE_LEASE_TTL).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                name,
                                "lost the issuance lease (the store was away too long); another node may issue too"
                            );
                            return;
                        }
                        Err(e) => tracing::debug!(name, error = %e, "cannot refresh the issuance lease; trying again"),
                    }
                }
            }))
        };
        let result = self.issue_locked(name, mode, budget, now).await;
        drop(refresher);
        if result.is_ok() {
            self.hold(name, owner);
        }
        if let Err(e) = self.store.release(&lease).await {
            tracing::warn!(name, error = %e, "cannot release the issuance lock; it expires by itself");
        }
        result
    }

    async fn issue_locked(&self, name: &str, mode: Mode, budget: Budget, started: i64) -> Result<Arc<Loaded>, Refused> {
        // What another node may have finished while this one waited for the lock.
        let state = self.state(name).await?.unwrap_or_default();
        match mode {
            Mode::OnDemand => {
                if let Some(loaded) = self.stored(name).await? {
                    self.remember(name, loaded.clone());
                    return Ok(loaded);
                }
                if state.backing_off(now_secs()) {
                    return Err(Refused::Backoff(state.next_attempt));
                }
            }
            Mode::Renewal if state.next_attempt > now_secs() || state.last_attempt >= started => {
                if let Some(loaded) = self.stored(name).await? {
                    self.remember(name, loaded.clone());
                    return Ok(loaded);
                }
            }
            _ => {}
        }
        self.rate(budget, true)?;
        self.cluster_rate(budget).await?;
        let verb = if mode == Mode::OnDemand { "issuing" } else { "renewing" };
        tracing::info!(name, issuer = self.issuer.kind(), "{verb} a certificate");
        self.settings.metrics.attempt(self.issuer.kind(), mode != Mode::OnDemand);
        let begun = Instant::now();
        let plan = self.plan(name).await?;
        let progress =
            Recorder { store: self.store.clone(), name: name.to_owned(), reached: Mutex::new(Step::Planned) };
        progress.step(Step::Planned).await;
        let issued = match tokio::time::timeout(self.settings.issue_timeout, self.issuer.issue(&plan, &progress)).await
        {
            Ok(result) => result,
            Err(_) => Err(IssueError::local(format!("issuance took longer than {:?}", self.settings.issue_timeout))),
        };
        let now = now_secs();
        match issued.and_then(|stored| {
            stored.load().map(|l| (stored, Arc::new(l))).map_err(|e| IssueError::local(e.to_string()))
        }) {
            Ok((stored, loaded)) => {
                self.store
                    .put_blob(&keys::cert_latest(name), &stored.to_json(), None)
                    .await
                    .map_err(CertError::from)?;
                let lifetime = (loaded.meta.not_after - loaded.meta.not_before).max(0);
                let jitter = fastrand::i64(0..=(lifetime / 20).max(0));
                let next = CertState {
                    issuer: self.issuer.kind().to_owned(),
                    not_after: loaded.meta.not_after,
                    issued: now,
                    last_attempt: now,
                    next_attempt: loaded.meta.renew_at(self.settings.renew_remaining_ratio) - jitter,
                    step: "issued".into(),
                    ..CertState::default()
                };
                self.store.put(Kind::Cert, name, &next.to_fields()).await.map_err(CertError::from)?;
                self.settings.metrics.certificate(name, next.issued, next.not_after, next.next_attempt, next.failures);
                if mode == Mode::OnDemand {
                    self.settings.metrics.decision("issued");
                }
                self.remember(name, loaded.clone());
                tracing::info!(
                    name,
                    issuer = self.issuer.kind(),
                    not_after = loaded.meta.not_after,
                    elapsed_ms = begun.elapsed().as_millis() as u64,
                    "certificate {}",
                    if mode == Mode::OnDemand { "issued" } else { "renewed" }
                );
                Ok(loaded)
            }
            Err(e) => {
                let failures = state.failures.saturating_add(1);
                let backoff = self.backoff(failures);
                let failed_step = progress.reached().as_str().to_owned();
                let next = CertState {
                    last_attempt: now,
                    next_attempt: now + backoff.as_secs() as i64,
                    failures,
                    last_error_type: e.problem.clone().unwrap_or_default(),
                    last_error: e.detail.clone(),
                    step: "failed".into(),
                    failed_step,
                    ..state
                };
                self.store.put(Kind::Cert, name, &next.to_fields()).await.map_err(CertError::from)?;
                self.settings.metrics.certificate(name, next.issued, next.not_after, next.next_attempt, next.failures);
                tracing::warn!(name, issuer = self.issuer.kind(), failures, retry_in_s = backoff.as_secs(),
                    error = %e, "certificate {} failed", if mode == Mode::OnDemand { "issuance" } else { "renewal" });
                Err(Refused::Failed(e.into()))
            }
        }
    }

    /// The backoff after `failures` consecutive failures: doubling from the minimum, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.settings.backoff_min.saturating_mul(factor).min(self.settings.backoff_max)
    }

    /// Gets the wildcard certificate of the host pattern `pattern` (`*.zone`) when a DNS
    /// provider manages its zone and there is none yet. Failures are recorded (backoff) and
    /// logged; handshakes try again.
    pub async fn prepare_wildcard(&self, pattern: &str) {
        if self.cached(pattern).is_some() || matches!(self.stored(pattern).await, Ok(Some(_))) {
            return;
        }
        match self.dns_account(&pattern[2..]).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(pattern, error = %e, "cannot look for the DNS provider of a wildcard host");
                return;
            }
        }
        let owner = Owner { pattern: pattern.to_owned(), explicit: true };
        if let Err(e) = self.obtain(pattern, Mode::OnDemand, &owner).await {
            self.log_refusal(pattern, &e);
        }
    }

    /// Follows the node's changes: certificates another node issued or renewed replace the
    /// ones in memory; a new `*.zone` host gets its wildcard certificate. Runs until
    /// `shutdown`.
    pub async fn follow_store(self: Arc<Self>, mut changes: Subscription, shutdown: CancellationToken) {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.next() => change,
            };
            match change {
                Some(Followed::Blob { key }) => self.blob_changed(&key).await,
                // A new `*.zone` host: its wildcard certificate is made now, not at the first
                // handshake (any node may start it; the lease makes it one order).
                Some(Followed::Record { kind: Kind::Host, key, now: Some(_) })
                    if key.starts_with("*.") && !key[2..].contains('*') =>
                {
                    let certs = self.clone();
                    tokio::spawn(async move { certs.prepare_wildcard(&key).await });
                }
                Some(Followed::Resync) => {
                    let names: Vec<String> =
                        self.cache.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    for name in names {
                        self.reload(&name).await;
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// A certificate blob another node wrote or removed: reloaded if held here, and the caps
    /// kept in step.
    async fn blob_changed(&self, key: &Key) {
        let Some(name) = key.certificate_name() else { return };
        let cached = self.cache.read().unwrap_or_else(|e| e.into_inner()).contains_key(name);
        if cached {
            self.reload(name).await;
        }
        // Another node issued or removed a certificate of a name under a wildcard pattern:
        // keep the caps in step (reading the store only when the reload above did not).
        let Some(owner) = self.owner(name).filter(|o| !o.explicit) else { return };
        let present = if cached {
            Some(self.cached(name).is_some())
        } else {
            self.store.blob(key).await.ok().map(|b| b.is_some())
        };
        match present {
            Some(true) => self.hold(name, &owner),
            Some(false) => self.unhold(name),
            None => {}
        }
    }
}

/// Records the steps an issuance reaches in the name's `Cert` record, for the API.
struct Recorder {
    store: Arc<dyn Store>,
    name: String,
    reached: Mutex<Step>,
}

impl Recorder {
    fn reached(&self) -> Step {
        *self.reached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Progress for Recorder {
    async fn step(&self, step: Step) {
        *self.reached.lock().unwrap_or_else(|e| e.into_inner()) = step;
        let written = async {
            let mut state = self
                .store
                .record(Kind::Cert, &self.name)
                .await?
                .map(|f| CertState::from_fields(&f))
                .unwrap_or_default();
            state.step = step.as_str().to_owned();
            self.store.put(Kind::Cert, &self.name, &state.to_fields()).await
        };
        // The status is a courtesy: an issuance does not fail for it.
        if let Err(e) = written.await {
            tracing::debug!(name = self.name, error = %e, "cannot record an issuance step");
        }
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
        other => CertError::Issue(IssueError::local(other.to_string())),
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
