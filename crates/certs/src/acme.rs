//! The ACME issuer (RFC 8555, through instant-acme): Let's Encrypt by default, or any CA's
//! directory, with External Account Binding and extra roots to trust for the ACME server.
//!
//! The account is created once per directory and kept in the store. Challenge answers go to
//! the store (HTTP-01 tokens, TLS-ALPN-01 digests) so that whichever node the CA reaches can
//! answer. The preferred challenge is tried first; if validation fails, the other one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, ExternalAccountKey, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use portico_store::{Store, keys};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::solve::{DnsSolver, Solver, StoreSolver, Wanted};
use crate::{CertError, IssueError, Issuer, Plan, Progress, SolverKind, Step, StoredCert, load_or_create};

/// The challenges Portico answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01, on the HTTP listener (port 80 for public CAs).
    Http01,
    /// TLS-ALPN-01, in the TLS acceptor (port 443 for public CAs).
    TlsAlpn01,
}

impl Challenge {
    pub(crate) fn acme(self) -> ChallengeType {
        match self {
            Self::Http01 => ChallengeType::Http01,
            Self::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Http01 => Self::TlsAlpn01,
            Self::TlsAlpn01 => Self::Http01,
        }
    }

    /// The name in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// External Account Binding credentials, as the CA hands them out.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    /// The key identifier.
    pub kid: String,
    /// The HMAC key, base64url as CAs publish it.
    pub hmac_key: String,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Settings of the ACME issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address for the account.
    pub email: Option<String>,
    /// External Account Binding, for CAs that require it.
    pub eab: Option<Eab>,
    /// PEM files of extra roots to trust for the ACME server (private CAs, tests).
    pub ca_roots: Vec<PathBuf>,
    /// The profile new orders ask for (`draft-ietf-acme-profiles`), when the CA offers it.
    pub profile: Option<String>,
    /// The challenge tried first.
    pub challenge: Challenge,
    /// DNS-01: the providers' APIs and where to watch for the records.
    pub dns: DnsSettings,
}

/// How DNS-01 reaches the providers and checks that records are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// The providers' APIs.
    pub endpoints: portico_dns::Endpoints,
    /// Servers (`ip:port`) that must serve the challenge records before the CA is told to
    /// look; none: the zone's authoritative servers.
    pub resolvers: Vec<std::net::SocketAddr>,
    /// How long records may take to be served.
    pub propagation_timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            endpoints: portico_dns::Endpoints::default(),
            resolvers: Vec::new(),
            propagation_timeout: Duration::from_secs(120),
        }
    }
}

/// Issues certificates from an ACME CA.
pub struct AcmeIssuer {
    store: Arc<dyn Store>,
    settings: AcmeSettings,
    /// Where orders are counted.
    metrics: Arc<crate::metrics::Metrics>,
    account: OnceCell<Account>,
}

impl std::fmt::Debug for AcmeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeIssuer").field("directory", &self.settings.directory).finish_non_exhaustive()
    }
}

/// How often the order is polled: soon at first (a local or fast CA validates in tens of
/// milliseconds), then backing off.
fn polling() -> RetryPolicy {
    RetryPolicy::new().initial_delay(Duration::from_millis(15)).backoff(1.5).timeout(Duration::from_secs(60))
}

fn acme_error(e: instant_acme::Error) -> IssueError {
    match e {
        instant_acme::Error::Api(problem) => IssueError {
            problem: problem.r#type.clone(),
            detail: problem.detail.clone().unwrap_or_else(|| "the ACME server reported a problem".into()),
        },
        other => IssueError::local(format!("ACME: {other}")),
    }
}

impl AcmeIssuer {
    /// An issuer for `settings.directory`. Nothing is contacted until the first issuance.
    pub fn new(
        store: Arc<dyn Store>,
        settings: AcmeSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, CertError> {
        if let Some(eab) = &settings.eab {
            decode_hmac(&eab.hmac_key)?;
        }
        for path in &settings.ca_roots {
            read_roots(path)?;
        }
        Ok(Self { store, settings, metrics, account: OnceCell::new() })
    }

    fn http_client(&self) -> Result<Box<dyn instant_acme::HttpClient>, IssueError> {
        let mut roots = rustls::RootCertStore::empty();
        for path in &self.settings.ca_roots {
            for cert in read_roots(path).map_err(|e| IssueError::caused_by(&e))? {
                roots.add(cert).map_err(|e| IssueError::local(format!("{}: {e}", path.display())))?;
            }
        }
        let tls = portico_dns::client_tls(roots);
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build::<_, BodyWrapper<Bytes>>(connector);
        Ok(Box::new(Deadline(client)))
    }

    /// The account: restored from the store, or created once (under a store lock) and kept.
    async fn account(&self) -> Result<&Account, IssueError> {
        self.account
            .get_or_try_init(|| async {
                let digest = Sha256::digest(self.settings.directory.as_bytes());
                let key = keys::acme_account(&hex(&digest[..8]));
                let made = load_or_create(self.store.as_ref(), &key, async || {
                    let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                    let eab = match &self.settings.eab {
                        Some(eab) => Some(ExternalAccountKey::new(eab.kid.clone(), &decode_hmac(&eab.hmac_key)?)),
                        None => None,
                    };
                    let new =
                        NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                    let builder = Account::builder_with_http(self.http_client()?);
                    let (_, credentials) = builder
                        .create(&new, self.settings.directory.clone(), eab.as_ref())
                        .await
                        .map_err(acme_error)?;
                    tracing::info!(directory = %self.settings.directory, "ACME account created");
                    serde_json::to_vec(&credentials).map_err(|e| CertError::make("the ACME account record", e))
                })
                .await
                .map_err(|e| match e {
                    CertError::Issue(issue) => issue,
                    other => IssueError::caused_by(&other),
                })?;
                let credentials: AccountCredentials = serde_json::from_slice(&made)
                    .map_err(|e| IssueError::local(format!("the stored ACME account does not parse: {e}")))?;
                Account::builder_with_http(self.http_client()?).from_credentials(credentials).await.map_err(acme_error)
            })
            .await
    }

    async fn order(
        &self,
        account: &Account,
        plan: &Plan,
        challenge: Challenge,
        progress: &dyn Progress,
    ) -> Result<StoredCert, IssueError> {
        let name = plan.cert.as_str();
        let solver: Box<dyn Solver> = match &plan.solver {
            SolverKind::Http => Box::new(StoreSolver::new(self.store.clone(), challenge)),
            SolverKind::Dns(account) => Box::new(DnsSolver::new(account, &self.settings.dns)?),
        };
        solver.check(&plan.sans).await?;
        let identifiers: Vec<Identifier> = plan.sans.iter().map(|n| identifier(n)).collect();
        let mut offered: Vec<&str> = account.profiles().map(|p| p.name).collect();
        offered.sort_unstable();
        let addresses = identifiers.iter().any(|i| matches!(i, Identifier::Ip(_)));
        let profile = order_profile(self.settings.profile.as_deref(), &offered, &self.settings.directory, addresses)?;
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(profile) = &profile {
            new_order = new_order.profile(profile);
        }
        let mut order = account.new_order(&new_order).await.map_err(acme_error)?;
        tracing::info!(name, order = order.url(), challenge = solver.label(), "ACME order created");
        progress.step(Step::Ordered).await;
        let result = match self.validate(&mut order, solver.as_ref(), progress).await {
            Ok(()) => self.finish(&mut order, plan, solver.challenge(), progress).await,
            Err(e) => Err(e),
        };
        solver.clean_up(name).await;
        self.metrics.order(result.is_ok(), solver.label());
        result
    }

    /// Has `solver` put out the answers to every pending authorization, then tells the CA to
    /// look.
    async fn validate(
        &self,
        order: &mut instant_acme::Order,
        solver: &dyn Solver,
        progress: &dyn Progress,
    ) -> Result<(), IssueError> {
        let kind = solver.challenge();
        let mut wanted = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme_error)?;
            let Some(name) = pending_name(&authz)? else { continue };
            if authz.wildcard && kind != ChallengeType::Dns01 {
                return Err(IssueError::local(format!(
                    "no DNS provider manages {name}: a wildcard certificate needs DNS-01 (add the provider and its domain)"
                )));
            }
            let handle = authz
                .challenge(kind.clone())
                .ok_or_else(|| IssueError::local(format!("the CA offers no {} challenge", solver.label())))?;
            wanted.push(Wanted { name, token: handle.token.clone(), key_authorization: handle.key_authorization() });
        }
        solver.present(&wanted, progress).await?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme_error)?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let mut handle = authz
                .challenge(kind.clone())
                .ok_or_else(|| IssueError::local(format!("the CA offers no {} challenge", solver.label())))?;
            handle.set_ready().await.map_err(acme_error)?;
        }
        progress.step(Step::Validating).await;
        Ok(())
    }

    /// Waits for the order, finalizes it with a new key, and downloads the chain.
    async fn finish(
        &self,
        order: &mut instant_acme::Order,
        plan: &Plan,
        challenge: ChallengeType,
        progress: &dyn Progress,
    ) -> Result<StoredCert, IssueError> {
        let name = plan.cert.as_str();
        let status = order.poll_ready(&polling()).await.map_err(acme_error)?;
        if status != OrderStatus::Ready {
            return Err(self.why_invalid(order, challenge).await);
        }
        progress.step(Step::Finalizing).await;
        let key = KeyPair::generate().map_err(|e| IssueError::local(format!("cannot make a key: {e}")))?;
        let csr = CertificateParams::new(plan.sans.clone())
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| IssueError::local(format!("cannot make the CSR: {e}")))?;
        order.finalize_csr(csr.der()).await.map_err(acme_error)?;
        let chain = order.poll_certificate(&polling()).await.map_err(acme_error)?;
        tracing::info!(name, "ACME certificate downloaded");
        StoredCert::new(chain, key.serialize_pem()).map_err(|e| IssueError::caused_by(&e))
    }

    /// The problem of the challenge that failed, as the CA reports it.
    async fn why_invalid(&self, order: &mut instant_acme::Order, challenge: ChallengeType) -> IssueError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            let problem = authz.challenges.iter().filter(|c| c.r#type == challenge).find_map(|c| c.error.clone());
            if let Some(problem) = problem {
                return acme_error(instant_acme::Error::Api(problem));
            }
        }
        IssueError::local("the ACME order became invalid")
    }
}

#[async_trait]
impl Issuer for AcmeIssuer {
    fn kind(&self) -> &'static str {
        "acme"
    }

    fn id(&self) -> String {
        self.settings.directory.clone()
    }

    async fn renewal_window(&self, cert: &StoredCert) -> Result<Option<(i64, i64)>, IssueError> {
        let account = self.account().await?;
        let leaf = cert.leaf_der().map_err(|e| IssueError::caused_by(&e))?;
        let der = CertificateDer::from(leaf.as_slice());
        let id = instant_acme::CertificateIdentifier::try_from(&der).map_err(IssueError::local)?;
        match account.renewal_info(&id).await {
            Ok((info, _)) => {
                let window = info.suggested_window;
                Ok(Some((window.start.unix_timestamp(), window.end.unix_timestamp())))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(acme_error(e)),
        }
    }

    async fn issue(&self, plan: &Plan, progress: &dyn Progress) -> Result<StoredCert, IssueError> {
        let account = self.account().await?;
        // An address is validated over HTTP-01 (TLS-ALPN-01 for addresses needs a reverse
        // name in the SNI, which clients never send).
        let addresses = plan.sans.iter().any(|n| n.parse::<std::net::IpAddr>().is_ok());
        let first = if addresses { Challenge::Http01 } else { self.settings.challenge };
        let issued = match self.order(account, plan, first, progress).await {
            Ok(cert) => Ok(cert),
            // DNS-01 has no other challenge to fall back on; an address has none either.
            Err(e) if matches!(plan.solver, SolverKind::Dns(_)) || addresses => Err(e),
            Err(e) => {
                let second = first.other();
                tracing::warn!(name = plan.cert, challenge = first.as_str(), error = %e,
                    "ACME validation failed; trying {}", second.as_str());
                self.order(account, plan, second, progress).await
            }
        };
        issued.map(|cert| cert.issued_by(self.id()))
    }
}

/// An order's identifier for `name`: an IP address (RFC 8738) or a DNS name.
fn identifier(name: &str) -> Identifier {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(name.to_owned()),
    }
}

/// The profile Let's Encrypt issues six-day certificates under, the only one it issues IP
/// address certificates under.
const SHORT_LIVED: &str = "shortlived";

/// The profile an order asks for: the configured one, if the CA of `directory` offers it
/// (its directory's `meta.profiles`: an order asking for one it does not know would be
/// refused anyway, with less to go on); for `addresses` without one, `shortlived` where the
/// CA offers it.
fn order_profile(
    configured: Option<&str>,
    offered: &[&str],
    directory: &str,
    addresses: bool,
) -> Result<Option<String>, IssueError> {
    match configured {
        Some(profile) => check_profile(offered, directory, profile).map(|()| Some(profile.to_owned())),
        None if addresses && offered.contains(&SHORT_LIVED) => Ok(Some(SHORT_LIVED.to_owned())),
        None => Ok(None),
    }
}

/// The error when `profile` is not among the `offered` profiles of `directory`.
pub(crate) fn check_profile(offered: &[&str], directory: &str, profile: &str) -> Result<(), IssueError> {
    if offered.contains(&profile) {
        return Ok(());
    }
    let detail = if offered.is_empty() {
        format!("the CA at {directory} offers no certificate profiles: remove profile {profile:?} for it")
    } else {
        format!("the CA at {directory} does not offer the profile {profile:?} (it offers: {})", offered.join(", "))
    };
    Err(IssueError::local(detail))
}

/// The DNS name an authorization is about while it is pending (for a wildcard, the name
/// without `*.`); `None` once valid; an error in any other state.
fn pending_name(authz: &instant_acme::AuthorizationState) -> Result<Option<String>, IssueError> {
    match authz.status {
        AuthorizationStatus::Valid => return Ok(None),
        AuthorizationStatus::Pending => {}
        status => return Err(IssueError::local(format!("the authorization is {status:?}"))),
    }
    match authz.identifier().identifier {
        Identifier::Dns(name) => Ok(Some(name.clone())),
        Identifier::Ip(ip) => Ok(Some(ip.to_string())),
        _ => Err(IssueError::local("the CA asks about an identifier that is neither a DNS name nor an address")),
    }
}

/// Every request to the CA gets [`REQUEST_TIMEOUT`]: a CA that stops answering fails the
/// order (and the name backs off) instead of holding the issuance forever.
struct Deadline<C>(C);

/// The longest one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl<C: instant_acme::HttpClient> instant_acme::HttpClient for Deadline<C> {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<instant_acme::BytesResponse, instant_acme::Error>> + Send>> {
        let pending = self.0.request(request);
        Box::pin(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, pending)
                .await
                .map_err(|_| instant_acme::Error::Other("the ACME server did not answer in time".into()))?
        })
    }
}

fn decode_hmac(key: &str) -> Result<Vec<u8>, CertError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key.trim_end_matches('=')).map_err(|e| CertError::Setting {
        key: "tls.acme_eab_hmac_key",
        problem: "not base64url".into(),
        source: Some(e.into()),
    })
}

fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let setting = |problem: String, source: Option<crate::Cause>| CertError::Setting {
        key: "tls.acme_ca_roots",
        problem,
        source,
    };
    let bytes = std::fs::read(path).map_err(|e| setting(format!("cannot read {}", path.display()), Some(e.into())))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| setting(format!("{} is not PEM", path.display()), Some(e.into())))?;
    if certs.is_empty() {
        return Err(setting(format!("{} holds no certificate", path.display()), None));
    }
    Ok(certs)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The profiles a directory document offers (`meta.profiles`), as a CA serves it.
    fn profiles(document: &str) -> Vec<String> {
        let directory: serde_json::Value = serde_json::from_str(document).unwrap();
        directory["meta"]["profiles"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    #[test]
    fn a_profile_is_asked_for_only_where_the_directory_offers_it() {
        // Let's Encrypt's directory as it is served, with its profiles.
        let letsencrypt = profiles(include_str!("../tests/data/letsencrypt-directory.json"));
        let offered: Vec<&str> = letsencrypt.iter().map(String::as_str).collect();
        let dir = "https://acme-v02.api.letsencrypt.org/directory";
        assert!(check_profile(&offered, dir, "shortlived").is_ok());
        assert!(check_profile(&offered, dir, "tlsserver").is_ok());
        let e = check_profile(&offered, dir, "six-days").unwrap_err().to_string();
        assert!(
            e.contains("does not offer the profile \"six-days\" (it offers: classic, shortlived, tlsserver)"),
            "{e}"
        );
        // A directory without profiles (Pebble 2.4's, most CAs'): refused, saying so.
        let none = profiles(r#"{"newNonce": "https://ca/nonce", "meta": {"termsOfService": "https://ca/tos"}}"#);
        assert!(none.is_empty());
        let e = check_profile(&[], "https://ca/dir", "shortlived").unwrap_err().to_string();
        assert!(e.contains("offers no certificate profiles: remove profile \"shortlived\""), "{e}");
        // An address certificate without a configured profile: the short-lived one where the
        // CA offers it (Let's Encrypt issues those only), none where it offers none.
        assert_eq!(order_profile(None, &offered, dir, true).unwrap().as_deref(), Some("shortlived"));
        assert_eq!(order_profile(None, &offered, dir, false).unwrap(), None);
        assert_eq!(order_profile(None, &[], "https://ca/dir", true).unwrap(), None);
        assert_eq!(order_profile(Some("classic"), &offered, dir, true).unwrap().as_deref(), Some("classic"));
        assert!(order_profile(Some("shortlived"), &[], "https://ca/dir", false).is_err());
    }

    #[test]
    fn an_address_is_an_ip_identifier_and_a_name_a_dns_one() {
        assert!(matches!(identifier("203.0.113.5"), Identifier::Ip(ip) if ip.to_string() == "203.0.113.5"));
        assert!(matches!(identifier("2001:db8::1"), Identifier::Ip(_)));
        assert!(matches!(identifier("app.example.com"), Identifier::Dns(n) if n == "app.example.com"));
    }
}
