//! Portico's certificates.
//!
//! [`Certs`] answers "which certificate for this name?" for the TLS acceptor: memory, then the
//! store, then the on-demand gate (a host pattern must match the name; never an IP literal,
//! never a name in failure backoff; a global issuance rate), then one issuance per name
//! (single-flight in the process, a store lease across nodes), then serve. Names that are
//! denied or failing, and clients without SNI, get the fallback certificate: self-signed,
//! generated once, persisted, and never another host's certificate.
//!
//! Issuers: [`acme::AcmeIssuer`] (RFC 8555 through instant-acme; HTTP-01 answered from
//! tokens in the store, TLS-ALPN-01 in the acceptor) and [`internal::InternalCa`] (a root
//! kept in the store), in order with fallback through [`issuers::Issuers`] (`tls.issuers`).
//! [`renew`] keeps certificates fresh.

pub mod acme;
pub mod challenge;
pub mod internal;
pub mod issuers;
mod manager;
pub mod metrics;
pub mod renew;
mod solve;
pub mod status;
pub mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod upload;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use portico_store::{Key, Store, StoreError};

pub use manager::{CertSettings, Certs, NamePolicy, Owner, covering_wildcard};
pub use portico_dns::Endpoints as DnsEndpoints;
pub use portico_dns::client_tls;
pub use stored::{Loaded, Meta, StoredCert};

/// The cause of an error, kept as it came (its text is read with
/// [`portico_model::report::chain`] when logged or written into a certificate's
/// `last_error`).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Something went wrong with a certificate: a kind, and the cause where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Material (a stored certificate, its key or chain, the internal CA) does not parse or
    /// cannot be used.
    #[error("{what} is not usable")]
    Unusable {
        /// What it is.
        what: &'static str,
        /// Why not.
        #[source]
        source: Cause,
    },
    /// A certificate, key or record could not be made.
    #[error("cannot make {what}")]
    Make {
        /// What it is.
        what: String,
        /// Why not.
        #[source]
        source: Cause,
    },
    /// A setting is wrong.
    #[error("{key}: {problem}")]
    Setting {
        /// The setting's key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
        /// The error behind it, if any.
        #[source]
        source: Option<Cause>,
    },
    /// Another process holds a lock for longer than one may wait.
    #[error("another process holds {lock} for too long")]
    Busy {
        /// The lock.
        lock: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Issuance failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
}

impl CertError {
    /// `what` does not parse or cannot be used, because of `source`.
    pub fn unusable(what: &'static str, source: impl Into<Cause>) -> Self {
        Self::Unusable { what, source: source.into() }
    }

    /// `what` could not be made, because of `source`.
    pub fn make(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Make { what: what.into(), source: source.into() }
    }
}

/// Why an issuance failed: an ACME problem (its type and detail), or something local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueError {
    /// The ACME problem type (`urn:ietf:params:acme:error:…`), when the CA sent one.
    pub problem: Option<String>,
    /// What happened.
    pub detail: String,
}

impl IssueError {
    /// A failure without an ACME problem document.
    pub fn local(detail: impl Into<String>) -> Self {
        Self { problem: None, detail: detail.into() }
    }

    /// A local failure from an error and its causes, as the text `last_error` keeps.
    pub fn caused_by(e: &(dyn std::error::Error + 'static)) -> Self {
        Self::local(portico_model::report::chain(e))
    }
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Some(problem) => write!(f, "{problem}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl std::error::Error for IssueError {}

/// What one issuance makes: the certificate's name (its key in the store: `<cert>:latest`,
/// its `Cert` record, its lease), the names it covers, and how the CA is shown control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `app.example.com`, or `*.example.com` for a wildcard.
    pub cert: String,
    /// The names it covers, `cert` first (`*.example.com` and `example.com`).
    pub sans: Vec<String>,
    /// How control of the names is shown.
    pub solver: SolverKind,
    /// Who issued the certificate this one replaces ([`Issuer::id`]), tried first while it
    /// works; `None` for a first certificate.
    pub issued_by: Option<String>,
}

impl Plan {
    /// A certificate for one name, shown by HTTP-01 or TLS-ALPN-01.
    pub fn single(name: &str) -> Self {
        Self { cert: name.to_owned(), sans: vec![name.to_owned()], solver: SolverKind::Http, issued_by: None }
    }
}

/// How control of a plan's names is shown to the CA (the ACME issuer turns it into a
/// solver that puts the answers out through the store or a DNS provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SolverKind {
    /// HTTP-01 and TLS-ALPN-01 (the preferred first), answered by any node from the store.
    Http,
    /// DNS-01 through a DNS provider account.
    Dns(DnsAccount),
}

/// A DNS provider account that manages a plan's zone: the seed's `DnsProvider` record and
/// the `Domain` that links the zone to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAccount {
    /// The provider account (its `Debug` never shows the credentials).
    pub provider: portico_model::dns::Provider,
    /// The managed domain the names are in.
    pub domain: String,
}

/// Where an issuance is, for the API's status (`GET /api/cert/:host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Chosen: the certificate, its names, its solver.
    Planned,
    /// The order is placed.
    Ordered,
    /// DNS-01 records are at the provider.
    RecordsPublished,
    /// Waiting until the records are served.
    WaitingForDns,
    /// The CA is validating.
    Validating,
    /// The CA is signing.
    Finalizing,
}

impl Step {
    /// Its name in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Ordered => "ordered",
            Self::RecordsPublished => "records published",
            Self::WaitingForDns => "waiting for DNS",
            Self::Validating => "validating",
            Self::Finalizing => "finalizing",
        }
    }
}

/// Told each step an issuance reaches.
#[async_trait]
pub trait Progress: Send + Sync {
    /// The issuance reached `step`.
    async fn step(&self, step: Step);
}

/// Progress nobody follows.
pub struct NoProgress;

#[async_trait]
impl Progress for NoProgress {
    async fn step(&self, _step: Step) {}
}

/// Issues certificates.
#[async_trait]
pub trait Issuer: Send + Sync + fmt::Debug {
    /// `acme` or `internal`, as `tls.issuer` names it.
    fn kind(&self) -> &'static str;

    /// Who issues, as recorded with each certificate ([`StoredCert::issuer`]): the ACME
    /// directory URL, or `internal`.
    fn id(&self) -> String {
        self.kind().to_owned()
    }

    /// A certificate as `plan` says, telling `progress` each step it reaches.
    async fn issue(&self, plan: &Plan, progress: &dyn Progress) -> Result<StoredCert, IssueError>;

    /// The CA's suggested renewal window for a certificate it issued (ACME Renewal
    /// Information, RFC 9773), as seconds since the epoch; `None` when the CA offers none.
    async fn renewal_window(&self, _cert: &StoredCert) -> Result<Option<(i64, i64)>, IssueError> {
        Ok(None)
    }
}

/// Reads the blob `key`, or makes it with `make` and stores it, once across every process
/// sharing the store (a lease lock guards the making).
pub(crate) async fn load_or_create(
    store: &dyn Store,
    key: &Key,
    make: impl AsyncFnOnce() -> Result<Vec<u8>, CertError>,
) -> Result<Vec<u8>, CertError> {
    if let Some(existing) = store.blob(key).await? {
        return Ok(existing);
    }
    let lock = key.lock();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(lease) = store.acquire(&lock, Duration::from_secs(30)).await? {
            let result = async {
                if let Some(existing) = store.blob(key).await? {
                    return Ok(existing);
                }
                let made = make().await?;
                store.put_blob(key, &made, None).await?;
                Ok(made)
            }
            .await;
            store.release(&lease).await?;
            return result;
        }
        if let Some(existing) = store.blob(key).await? {
            return Ok(existing);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CertError::Busy { lock: lock.to_string() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cryptography of Portico's TLS listeners and of the keys they serve with: aws-lc-rs,
/// whose X25519 is assembly, and which has the hybrid post-quantum X25519MLKEM768 key
/// exchange for clients that prefer it (browsers do). AES-128-GCM with SHA-256 comes first
/// (the listeners choose the suite by their own order): its TLS 1.3 key schedule hashes with
/// SHA-256, cheaper than AES-256's SHA-384. Measured with `bench/run`, a full handshake per
/// request cost 140 µs of server CPU with *ring* and the client's order, 128 with *ring* and
/// this order, 118 with aws-lc-rs and this order. Clients (ACME, DNS providers, targets) keep
/// *ring*.
pub fn server_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    (portico_store::now_ms() / 1000) as i64
}
