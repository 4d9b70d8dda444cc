//! Several issuers in order (`[[tls.issuers]]`): a certificate comes from the first that
//! issues it, so one CA's outage, rate limit or refusal of a name is not the end of
//! automatic HTTPS. A renewal asks the CA that issued the certificate first, while it works.
//! The internal CA, when listed, is the last resort for names public CAs refuse or that are
//! not public at all; a public name never gets a certificate browsers do not trust because a
//! public CA was briefly away.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{IssueError, Issuer, Plan, Progress, StoredCert};

/// The ACME problems by which a CA refuses the names themselves (not an outage).
const NAME_REFUSED: [&str; 3] = [
    "urn:ietf:params:acme:error:rejectedIdentifier",
    "urn:ietf:params:acme:error:unsupportedIdentifier",
    "urn:ietf:params:acme:error:caa",
];

/// Issuers tried in order.
#[derive(Debug)]
pub struct Issuers {
    list: Vec<Arc<dyn Issuer>>,
}

impl Issuers {
    /// The issuers in the order they are tried; there is at least one.
    pub fn new(list: Vec<Arc<dyn Issuer>>) -> Self {
        assert!(!list.is_empty(), "at least one issuer");
        Self { list }
    }

    /// The order for `plan`: the CA that issued the certificate it replaces first, then the
    /// rest as configured. Not the internal CA: it stays the last resort, so a name it took
    /// over goes back to a public CA once one issues for it.
    fn ordered(&self, plan: &Plan) -> Vec<&Arc<dyn Issuer>> {
        let previous = self
            .list
            .iter()
            .find(|i| i.kind() != crate::internal::ID && plan.issued_by.as_deref() == Some(i.id().as_str()));
        previous.into_iter().chain(self.list.iter().filter(|i| previous.is_none_or(|p| !Arc::ptr_eq(p, i)))).collect()
    }
}

/// Whether no public CA would issue for `name`: a name under no suffix of the Public Suffix
/// List (`.internal`, `.lan`, `.test`, `.local`, a single label), under RFC 8375's
/// `home.arpa`, or a private, loopback or link-local address.
pub fn not_public(name: &str) -> bool {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
        };
    }
    let name = name.trim_start_matches("*.").trim_end_matches('.');
    !name.contains('.') || name.ends_with(".home.arpa") || !psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known())
}

#[async_trait]
impl Issuer for Issuers {
    fn kind(&self) -> &'static str {
        self.list[0].kind()
    }

    fn id(&self) -> String {
        self.list[0].id()
    }

    async fn issue(&self, plan: &Plan, progress: &dyn Progress) -> Result<StoredCert, IssueError> {
        let mut failed: Vec<(String, IssueError)> = Vec::new();
        for issuer in self.ordered(plan) {
            let last_resort = issuer.kind() == crate::internal::ID && !failed.is_empty();
            if last_resort
                && !plan.sans.iter().all(|n| not_public(n))
                && !failed.iter().all(|(_, e)| e.problem.as_deref().is_some_and(|p| NAME_REFUSED.contains(&p)))
            {
                let why = "not used: a public name the CAs above did not refuse by name";
                tracing::info!(name = plan.cert, "{why}");
                failed.push((issuer.id(), IssueError::local(why)));
                continue;
            }
            match issuer.issue(plan, progress).await {
                Ok(cert) => {
                    if !failed.is_empty() {
                        tracing::warn!(
                            name = plan.cert,
                            issuer = issuer.id(),
                            after = failed.len(),
                            "certificate issued by a fallback issuer"
                        );
                    }
                    return Ok(cert);
                }
                Err(e) => {
                    tracing::warn!(name = plan.cert, issuer = issuer.id(), error = %e,
                        "issuer failed; trying the next one");
                    failed.push((issuer.id(), e));
                }
            }
        }
        let detail = failed.iter().map(|(id, e)| format!("{id}: {e}")).collect::<Vec<_>>().join("; ");
        // The problem type of the last CA that gave one, for the status.
        let problem = failed.iter().rev().find_map(|(_, e)| e.problem.clone());
        Err(IssueError { problem, detail: format!("every issuer failed: {detail}") })
    }

    async fn renewal_window(&self, cert: &StoredCert) -> Result<Option<(i64, i64)>, IssueError> {
        let issuer = self.list.iter().find(|i| cert.issuer.as_deref() == Some(i.id().as_str()));
        match issuer {
            Some(issuer) => issuer.renewal_window(cert).await,
            // Issued by a CA no longer listed: it is not asked.
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::NoProgress;

    /// An issuer that fails with `problem`, or issues, and counts its calls.
    #[derive(Debug)]
    struct Fake {
        id: &'static str,
        kind: &'static str,
        fails: Option<&'static str>,
        calls: Mutex<u32>,
    }

    fn fake(id: &'static str, kind: &'static str, fails: Option<&'static str>) -> Arc<Fake> {
        Arc::new(Fake { id, kind, fails, calls: Mutex::new(0) })
    }

    #[async_trait]
    impl Issuer for Fake {
        fn kind(&self) -> &'static str {
            self.kind
        }
        fn id(&self) -> String {
            self.id.to_owned()
        }
        async fn issue(&self, plan: &Plan, _: &dyn Progress) -> Result<StoredCert, IssueError> {
            *self.calls.lock().unwrap() += 1;
            match self.fails {
                Some(problem) => {
                    Err(IssueError { problem: Some(problem.into()), detail: format!("{} says no", self.id) })
                }
                None => {
                    let key = rcgen::KeyPair::generate().unwrap();
                    let cert = rcgen::CertificateParams::new(plan.sans.clone()).unwrap().self_signed(&key).unwrap();
                    Ok(StoredCert::new(cert.pem(), key.serialize_pem()).unwrap().issued_by(self.id.to_owned()))
                }
            }
        }
    }

    fn calls(f: &Fake) -> u32 {
        *f.calls.lock().unwrap()
    }

    const DOWN: &str = "urn:ietf:params:acme:error:serverInternal";
    const REFUSED: &str = "urn:ietf:params:acme:error:rejectedIdentifier";

    #[tokio::test]
    async fn the_next_issuer_when_one_fails_and_the_previous_one_first() {
        let (a, b) = (fake("https://a/dir", "acme", Some(DOWN)), fake("https://b/dir", "acme", None));
        let issuers = Issuers::new(vec![a.clone(), b.clone()]);
        let cert = issuers.issue(&Plan::single("app.example.com"), &NoProgress).await.unwrap();
        assert_eq!(cert.issuer.as_deref(), Some("https://b/dir"));
        assert_eq!((calls(&a), calls(&b)), (1, 1));
        // A renewal asks the CA that issued the certificate first.
        let renewal = Plan { issued_by: Some("https://b/dir".into()), ..Plan::single("app.example.com") };
        issuers.issue(&renewal, &NoProgress).await.unwrap();
        assert_eq!((calls(&a), calls(&b)), (1, 2), "the first CA is not asked while the second works");
        // Every one failing: each is named, and the last problem kept.
        let all_down = Issuers::new(vec![a.clone(), fake("https://c/dir", "acme", Some(REFUSED))]);
        let e = all_down.issue(&Plan::single("app.example.com"), &NoProgress).await.unwrap_err();
        assert!(e.detail.contains("https://a/dir: ") && e.detail.contains("https://c/dir: "), "{e}");
        assert_eq!(e.problem.as_deref(), Some(REFUSED));
    }

    #[tokio::test]
    async fn the_internal_ca_only_for_names_public_cas_refuse_or_cannot_have() {
        let internal = fake("internal", "internal", None);
        let down = Issuers::new(vec![fake("https://a/dir", "acme", Some(DOWN)), internal.clone()]);
        let e = down.issue(&Plan::single("app.example.com"), &NoProgress).await.unwrap_err();
        assert_eq!(calls(&internal), 0, "a CA outage");
        assert!(e.detail.contains("internal: not used: a public name"), "why, in the last error: {e}");
        assert_eq!(e.problem.as_deref(), Some(DOWN), "the CA's problem is kept");
        let cert = down.issue(&Plan::single("nas.home.arpa"), &NoProgress).await.unwrap();
        assert_eq!(cert.issuer.as_deref(), Some("internal"), "a name that is not public");
        let refused = Issuers::new(vec![fake("https://a/dir", "acme", Some(REFUSED)), internal.clone()]);
        assert!(refused.issue(&Plan::single("app.example.com"), &NoProgress).await.is_ok(), "a refused name");
        assert_eq!(calls(&internal), 2);
        // Its renewal asks the public CA first again (the name may be allowed by now).
        let public = fake("https://b/dir", "acme", None);
        let back = Issuers::new(vec![public.clone(), internal.clone()]);
        let renewal = Plan { issued_by: Some("internal".into()), ..Plan::single("app.example.com") };
        let cert = back.issue(&renewal, &NoProgress).await.unwrap();
        assert_eq!((cert.issuer.as_deref(), calls(&public), calls(&internal)), (Some("https://b/dir"), 1, 2));
        for (name, private) in [
            ("app.test", true),
            ("printer", true),
            ("10.0.0.7", true),
            ("8.8.8.8", false),
            ("*.example.org", false),
            ("nas.lan", true),
            ("db.internal", true),
            ("pi.local", true),
            ("app.example.co.uk", false),
            ("a.b.github.io", false),
            ("*.x.corp", true),
            ("example.com", false),
        ] {
            assert_eq!(not_public(name), private, "{name}");
        }
    }
}
