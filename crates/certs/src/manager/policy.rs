//! Which names get a certificate (the host patterns that own them) and what an issuance of
//! one makes (a name's own certificate, or its zone's wildcard through a DNS provider).

use super::*;

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

/// Routing decides certificates: a name may have one when a host pattern matches it, but
/// for a passthrough host (its targets hold its certificates: Portico never sees its TLS).
impl NamePolicy for portico_model::Routes {
    fn owner(&self, name: &str) -> Option<Owner> {
        let table = self.snapshot();
        let (pattern, _) = table.lookup(name).filter(|(_, host)| !host.kind.is_passthrough())?;
        Some(Owner { pattern: pattern.to_string(), explicit: literal(pattern) })
    }

    fn explicit_names(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .filter(|(p, host)| (literal(p) || one_wildcard(p)) && !host.kind.is_passthrough())
            .map(|(p, _)| p.to_string())
            .collect()
    }

    fn has_pattern(&self, pattern: &str) -> bool {
        portico_model::HostPattern::parse(pattern)
            .is_ok_and(|p| self.snapshot().get(&p).is_some_and(|host| !host.kind.is_passthrough()))
    }
}

/// Whether a pattern is `*.` followed by literal labels: one wildcard certificate covers it.
pub(crate) fn one_wildcard(pattern: &portico_model::HostPattern) -> bool {
    let mut labels = pattern.labels();
    matches!(labels.next(), Some(portico_model::PatternLabel::One))
        && labels.all(|l| matches!(l, portico_model::PatternLabel::Literal(_)))
}

/// Whether a pattern has no wildcard label.
pub(crate) fn literal(pattern: &portico_model::HostPattern) -> bool {
    pattern.labels().all(|l| matches!(l, portico_model::PatternLabel::Literal(_)))
}

/// The one-label wildcard name that would cover `name` (`*.example.com` for
/// `app.example.com`); none for a name of fewer than three labels.
pub fn covering_wildcard(name: &str) -> Option<String> {
    let (_, parent) = name.split_once('.')?;
    parent.contains('.').then(|| format!("*.{parent}"))
}

impl Certs {
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
    pub(super) async fn cert_for(&self, name: &str, owner: &Owner) -> Result<(String, Owner), CertError> {
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
        Ok(Plan { cert: cert.to_owned(), sans: vec![cert.to_owned(), zone.to_owned()], solver, issued_by: None })
    }
}
