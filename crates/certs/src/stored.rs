//! A certificate as it is stored (lua-resty-auto-ssl's `<name>:latest` JSON, so the seed's
//! certificates keep serving) and as rustls serves it.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::CertError;

/// lua-resty-auto-ssl's certificate JSON. `expiry` is the leaf's notAfter in seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCert {
    /// The leaf and its intermediates, PEM.
    pub fullchain_pem: String,
    /// The private key, PEM (PKCS#8).
    pub privkey_pem: String,
    /// The leaf alone, PEM.
    #[serde(default)]
    pub cert_pem: String,
    /// The leaf's notAfter, seconds since the epoch.
    #[serde(default)]
    pub expiry: i64,
    /// Who issued it ([`crate::Issuer::id`]: the ACME directory URL, or `internal`); absent
    /// in certificates the seed stored and in uploaded ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl StoredCert {
    /// From a chain and a key as an issuer hands them over.
    pub fn new(fullchain_pem: String, privkey_pem: String) -> Result<Self, CertError> {
        let leaf = chain(&fullchain_pem)?.swap_remove(0);
        let meta = Meta::of(&leaf)?;
        let cert_pem = pem_block("CERTIFICATE", &leaf);
        Ok(Self { fullchain_pem, privkey_pem, cert_pem, expiry: meta.not_after, issuer: None })
    }

    /// The same, recorded as issued by `issuer` ([`crate::Issuer::id`]).
    pub fn issued_by(self, issuer: String) -> Self {
        Self { issuer: Some(issuer), ..self }
    }

    /// Parses the stored JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CertError> {
        serde_json::from_slice(bytes).map_err(|e| CertError::unusable("a stored certificate", e))
    }

    /// The JSON to store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> Result<Vec<u8>, CertError> {
        Ok(chain(&self.fullchain_pem)?.swap_remove(0).to_vec())
    }

    /// What rustls serves, and the leaf's names and validity.
    pub fn load(&self) -> Result<Loaded, CertError> {
        let chain = chain(&self.fullchain_pem)?;
        let meta = Meta::of(&chain[0])?;
        let key = PrivateKeyDer::from_pem_slice(self.privkey_pem.as_bytes())
            .map_err(|e| CertError::unusable("the private key's PEM", e))?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| CertError::unusable("the private key", e))?;
        Ok(Loaded { key: Arc::new(CertifiedKey::new(chain, signing)), meta })
    }
}

/// The certificates of a PEM chain, leaf first; an error when there is none.
fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::unusable("the chain's PEM", e))?;
    if chain.is_empty() {
        return Err(CertError::unusable("the chain", "it holds no certificate"));
    }
    Ok(chain)
}

/// Deletes everything stored of the certificate `name`: the certificate, the note of its
/// use, its record.
pub(crate) async fn delete(store: &dyn portico_store::Store, name: &str) -> Result<(), portico_store::StoreError> {
    use portico_store::keys;
    store.delete_blob(&keys::cert_latest(name)).await?;
    store.delete_blob(&keys::cert_used(name)).await?;
    store.delete(portico_store::Kind::Cert, name).await?;
    Ok(())
}

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's names and validity.
    pub meta: Meta,
}

/// A leaf certificate's names and validity (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// DNS names and IP addresses (as text) of the subjectAltName extension.
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The public key's kind and size: `ECDSA P-256`, `RSA 2048`, or `other`.
    pub key: String,
    /// Start of validity.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
}

impl Meta {
    /// Reads the leaf (first certificate) of a PEM chain.
    pub fn of_chain(pem: &str) -> Result<Self, CertError> {
        Self::of(&chain(pem)?[0])
    }

    /// Reads a DER certificate.
    pub fn of(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::unusable("the certificate", e))?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        // An IP address certificate's (RFC 8738), as the address's text.
                        GeneralName::IPAddress(bytes) => ip_text(bytes),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let key = match cert.public_key().parsed() {
            Ok(k @ PublicKey::EC(_)) => format!("ECDSA P-{}", k.key_size()),
            Ok(k @ PublicKey::RSA(_)) => format!("RSA {}", k.key_size()),
            _ => "other".to_owned(),
        };
        let validity = cert.validity();
        Ok(Self {
            names,
            issuer: cert.issuer().to_string(),
            key,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// Whether the certificate names `host` (exactly, or through a `*.` name one label up).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }

    /// The moment renewal is due: when `ratio` of the lifetime remains.
    pub fn renew_at(&self, ratio: f64) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0) as f64;
        self.not_after - (lifetime * ratio) as i64
    }
}

/// An IP address SAN's octets as text (`203.0.113.5`, `2001:db8::1`).
fn ip_text(octets: &[u8]) -> Option<String> {
    match octets.len() {
        4 => <[u8; 4]>::try_from(octets).ok().map(|a| std::net::Ipv4Addr::from(a).to_string()),
        16 => <[u8; 16]>::try_from(octets).ok().map(|a| std::net::Ipv6Addr::from(a).to_string()),
        _ => None,
    }
}

/// One PEM block.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_certificate_says_what_it_is_and_keeps_why() {
        let e = StoredCert::from_json(b"{not json").unwrap_err();
        assert!(matches!(e, CertError::Unusable { what: "a stored certificate", .. }), "{e:?}");
        let cause = std::error::Error::source(&e).expect("the parser's error is kept");
        assert!(cause.downcast_ref::<serde_json::Error>().is_some(), "{cause:?}");
        let text = portico_model::report::chain(&e);
        assert!(text.starts_with("a stored certificate is not usable: key must be a string"), "{text}");
        let e = StoredCert::new("no PEM here".into(), String::new()).and_then(|s| s.load()).unwrap_err();
        assert!(matches!(e, CertError::Unusable { .. }), "{e:?}");
    }

    fn meta(names: &[&str]) -> Meta {
        Meta {
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            issuer: String::new(),
            key: String::new(),
            not_before: 0,
            not_after: 90,
        }
    }

    #[test]
    fn covers_exact_and_one_label_wildcards() {
        let m = meta(&["a.example.test", "*.w.example.test"]);
        assert!(m.covers("a.example.test"));
        assert!(m.covers("x.w.example.test"));
        assert!(!m.covers("w.example.test"));
        assert!(!m.covers("y.x.w.example.test"));
        assert!(!m.covers("b.example.test"));
    }

    #[test]
    fn renewal_is_due_when_a_third_remains() {
        assert_eq!(meta(&[]).renew_at(1.0 / 3.0), 60);
    }

    #[test]
    fn round_trip_through_the_seed_json() {
        let made = rcgen::generate_simple_self_signed(vec!["rt.example.test".to_owned()]).unwrap();
        let stored = StoredCert::new(made.cert.pem(), made.signing_key.serialize_pem()).unwrap();
        assert_eq!(stored.cert_pem.trim(), made.cert.pem().trim());
        let back = StoredCert::from_json(&stored.to_json()).unwrap();
        let loaded = back.load().unwrap();
        assert_eq!(loaded.meta.names, vec!["rt.example.test"]);
        assert_eq!(loaded.meta.key, "ECDSA P-256");
        assert_eq!(loaded.meta.not_after, back.expiry);
        assert!(StoredCert::from_json(b"{}").is_err());
    }
}
