//! Solvers: they show the CA control of names by putting out the answers to an order's
//! challenges where the CA will look, then take them back. Every answer is out before the
//! CA is told to look (a wildcard and its zone put two DNS-01 values at one name).
//!
//! - [`StoreSolver`]: HTTP-01 tokens and TLS-ALPN-01 digests go to the store, with a time to
//!   live, so whichever node the CA reaches answers.
//! - [`DnsSolver`]: DNS-01 TXT records through the zone's DNS provider, waited for until the
//!   servers that matter serve them, following an `_acme-challenge` CNAME delegation.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use instant_acme::{ChallengeType, KeyAuthorization};
use portico_dns::{DnsProvider, RecordId, Zone};
use portico_store::{Key, Store, keys};

use crate::acme::{Challenge, DnsSettings};
use crate::challenge::CHALLENGE_TTL;
use crate::{DnsAccount, IssueError, Progress, Step};

/// What one pending authorization wants answered.
pub(crate) struct Wanted {
    /// The name (a wildcard's without `*.`).
    pub name: String,
    /// The challenge's token.
    pub token: String,
    /// Its key authorization.
    pub key_authorization: KeyAuthorization,
}

/// Puts out the answers to an order's challenges, and takes them back.
#[async_trait]
pub(crate) trait Solver: Send + Sync {
    /// The challenge type it answers.
    fn challenge(&self) -> ChallengeType;
    /// Its name in logs and errors.
    fn label(&self) -> &'static str;
    /// Puts out every answer; they are all where the CA will look when it returns.
    async fn present(&self, wanted: &[Wanted], progress: &dyn Progress) -> Result<(), IssueError>;
    /// Takes back everything it put out (after success and after failure alike).
    async fn clean_up(&self, name: &str);
    /// Checks, before an order is placed, what must be in place for `names` (a delegated
    /// `_acme-challenge` CNAME); an order that cannot succeed is never placed.
    async fn check(&self, _names: &[String]) -> Result<(), IssueError> {
        Ok(())
    }
}

/// HTTP-01 and TLS-ALPN-01 answers in the store.
pub(crate) struct StoreSolver {
    store: Arc<dyn Store>,
    kind: Challenge,
    published: Mutex<Vec<Key>>,
}

impl StoreSolver {
    pub(crate) fn new(store: Arc<dyn Store>, kind: Challenge) -> Self {
        Self { store, kind, published: Mutex::default() }
    }
}

#[async_trait]
impl Solver for StoreSolver {
    fn challenge(&self) -> ChallengeType {
        self.kind.acme()
    }

    fn label(&self) -> &'static str {
        self.kind.as_str()
    }

    async fn present(&self, wanted: &[Wanted], _progress: &dyn Progress) -> Result<(), IssueError> {
        for answer in wanted {
            let (key, value) = match self.kind {
                Challenge::Http01 => {
                    (keys::http01(&answer.name, &answer.token), answer.key_authorization.as_str().as_bytes().to_vec())
                }
                Challenge::TlsAlpn01 => {
                    (keys::tls_alpn01(&answer.name), answer.key_authorization.digest().as_ref().to_vec())
                }
            };
            self.store.put_blob(&key, &value, Some(CHALLENGE_TTL)).await.map_err(|e| IssueError::caused_by(&e))?;
            self.published.lock().unwrap_or_else(|e| e.into_inner()).push(key);
            tracing::info!(name = answer.name, challenge = self.kind.as_str(), "ACME challenge ready");
        }
        Ok(())
    }

    async fn clean_up(&self, name: &str) {
        let published = std::mem::take(&mut *self.published.lock().unwrap_or_else(|e| e.into_inner()));
        for key in published {
            if let Err(e) = self.store.delete_blob(&key).await {
                tracing::debug!(name, error = %e, "cannot remove a challenge answer; it expires by itself");
            }
        }
    }
}

/// DNS-01 through a DNS provider account.
pub(crate) struct DnsSolver {
    dns: Box<dyn DnsProvider>,
    settings: DnsSettings,
    domain: String,
    published: Mutex<Vec<(Zone, RecordId)>>,
}

fn failed(step: &str, e: &dyn std::fmt::Display) -> IssueError {
    IssueError::local(format!("DNS-01, {step}: {e}"))
}

impl DnsSolver {
    /// The resolvers DNS-01 asks: `tls.dns_resolvers`, or the system's.
    fn resolvers(&self) -> Vec<std::net::SocketAddr> {
        if self.settings.resolvers.is_empty() {
            portico_dns::lookup::system_resolvers()
        } else {
            self.settings.resolvers.clone()
        }
    }

    /// Where the challenge record for `record` (`_acme-challenge.<name>`) goes: the name its
    /// CNAME points to, if any, and the zone there. A provider that answers at one delegated
    /// name (acme-dns) needs the CNAME to point there, and says what to add when it does not.
    async fn target(&self, resolvers: &[std::net::SocketAddr], record: &str) -> Result<(String, Zone), IssueError> {
        let dns = self.dns.as_ref();
        let target = portico_dns::lookup::follow_cname(resolvers, record).await.unwrap_or_else(|_| record.to_owned());
        if let Some(to) = dns.delegated_to() {
            if target != to {
                return Err(failed(
                    "checking the delegation",
                    &format!(
                        "{record} is not a CNAME to {to} (it leads to {target}): add the record \
                         `{record}. CNAME {to}.` to your zone"
                    ),
                ));
            }
            // The zone served by the delegated server: the name's parent.
            let zone = to.split_once('.').map_or(to, |(_, parent)| parent);
            return Ok((target.clone(), Zone { id: to.to_owned(), name: zone.to_owned() }));
        }
        let zone = dns.zone_of(&target).await.map_err(|e| failed("finding the zone", &e))?.ok_or_else(|| {
            failed("finding the zone", &format!("{} manages no zone that holds {target}", dns.kind()))
        })?;
        Ok((target, zone))
    }

    pub(crate) fn new(account: &DnsAccount, settings: &DnsSettings) -> Result<Self, IssueError> {
        let dns = portico_dns::client(&account.provider.to_fields(), &settings.endpoints)
            .map_err(|e| failed("provider", &e))?;
        let mut settings = settings.clone();
        // A provider whose records take longer to be served says so on its record.
        if let Some(secs) = account.provider.propagation_timeout {
            settings.propagation_timeout = std::time::Duration::from_secs(secs.clamp(1, 3600));
        }
        Ok(Self { dns, settings, domain: account.domain.clone(), published: Mutex::default() })
    }
}

#[async_trait]
impl Solver for DnsSolver {
    fn challenge(&self) -> ChallengeType {
        ChallengeType::Dns01
    }

    fn label(&self) -> &'static str {
        "dns-01"
    }

    async fn present(&self, wanted: &[Wanted], progress: &dyn Progress) -> Result<(), IssueError> {
        let dns = self.dns.as_ref();
        let resolvers = self.resolvers();
        // Publish, at the name an `_acme-challenge` CNAME points to, if any.
        let mut targets: Vec<(String, Zone, Vec<String>)> = Vec::new();
        for answer in wanted {
            let record = format!("_acme-challenge.{}", answer.name);
            let value = answer.key_authorization.dns_value();
            let (target, zone) = self.target(&resolvers, &record).await?;
            if target != record {
                tracing::info!(name = answer.name, from = record, to = target, "DNS-01 follows the CNAME delegation");
            }
            let id = dns.create_txt(&zone, &target, &value).await.map_err(|e| failed("creating the TXT record", &e))?;
            tracing::info!(name = answer.name, provider = dns.kind(), record = target, id = %id, "DNS-01 record published");
            self.published.lock().unwrap_or_else(|e| e.into_inner()).push((zone.clone(), id));
            match targets.iter_mut().find(|(t, _, _)| *t == target) {
                Some((_, _, values)) => values.push(value),
                None => targets.push((target, zone, vec![value])),
            }
        }
        progress.step(Step::RecordsPublished).await;
        progress.step(Step::WaitingForDns).await;
        // Wait until the records are served where the CA will look.
        for (target, zone, values) in &targets {
            let servers = if self.settings.resolvers.is_empty() {
                let zone = if zone.name.is_empty() { self.domain.clone() } else { zone.name.clone() };
                portico_dns::lookup::authoritative(&resolvers, &zone)
                    .await
                    .map_err(|e| failed("finding the authoritative servers", &e))?
            } else {
                self.settings.resolvers.clone()
            };
            portico_dns::lookup::wait_for_txt(&servers, target, values, self.settings.propagation_timeout)
                .await
                .map_err(|e| failed("waiting for DNS", &e))?;
        }
        tracing::info!(records = wanted.len(), "DNS-01 records served; asking the CA to validate");
        Ok(())
    }

    async fn check(&self, names: &[String]) -> Result<(), IssueError> {
        if self.dns.delegated_to().is_none() {
            return Ok(());
        }
        let resolvers = self.resolvers();
        let mut records: Vec<String> =
            names.iter().map(|n| format!("_acme-challenge.{}", n.trim_start_matches("*."))).collect();
        records.dedup();
        for record in records {
            self.target(&resolvers, &record).await?;
        }
        Ok(())
    }

    async fn clean_up(&self, name: &str) {
        let published = std::mem::take(&mut *self.published.lock().unwrap_or_else(|e| e.into_inner()));
        for (zone, id) in published {
            match self.dns.delete(&zone, &id).await {
                Ok(()) => tracing::info!(name, provider = self.dns.kind(), record = %id, "DNS-01 record removed"),
                Err(e) => tracing::warn!(name, provider = self.dns.kind(), record = %id, error = %e,
                    "cannot remove a DNS-01 record; remove it by hand"),
            }
        }
    }
}
