//! The internal CA (`tls.issuer = "internal"`): a root generated once and kept in the store,
//! issuing leaf certificates at once. For development, tests and private networks; clients
//! trust it through `portico ca export`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portico_store::{Store, keys};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::{CertError, IssueError, Issuer, Plan, Progress, StoredCert, load_or_create};

/// The root as stored (`portico:internal-ca`).
#[derive(Debug, Serialize, Deserialize)]
struct Root {
    cert_pem: String,
    key_pem: String,
}

/// An issuer that signs with its own root.
#[derive(Debug)]
pub struct InternalCa {
    store: Arc<dyn Store>,
    leaf_lifetime: Duration,
    root: OnceCell<Root>,
}

impl InternalCa {
    /// Leaf certificates last `leaf_lifetime`.
    pub fn new(store: Arc<dyn Store>, leaf_lifetime: Duration) -> Self {
        Self { store, leaf_lifetime, root: OnceCell::new() }
    }

    /// The root certificate (PEM) clients must trust; made on first use.
    pub async fn root_pem(&self) -> Result<String, CertError> {
        Ok(self.root().await?.cert_pem.clone())
    }

    async fn root(&self) -> Result<&Root, CertError> {
        self.root
            .get_or_try_init(|| async {
                let bytes = load_or_create(self.store.as_ref(), &keys::internal_ca(), async || make_root()).await?;
                serde_json::from_slice(&bytes).map_err(|e| CertError::unusable("the stored internal CA", e))
            })
            .await
    }
}

fn make_root() -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Portico Internal Root CA");
    params.distinguished_name.push(DnType::OrganizationName, "Portico");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ten_years(&mut params);
    let (cert_pem, key_pem) = self_signed(&params, "the internal CA")?;
    serde_json::to_vec(&Root { cert_pem, key_pem }).map_err(|e| CertError::make("the internal CA record", e))
}

/// Valid from an hour ago for ten years (the root and the fallback certificate).
fn ten_years(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
}

/// A new key and a certificate for it that it signs itself, both PEM. `what` names it in
/// errors.
pub(crate) fn self_signed(params: &CertificateParams, what: &str) -> Result<(String, String), CertError> {
    let invalid = |e: rcgen::Error| CertError::make(what, e);
    let key = KeyPair::generate().map_err(invalid)?;
    let cert = params.self_signed(&key).map_err(invalid)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The internal CA's [`Issuer::id`] and kind.
pub const ID: &str = "internal";

#[async_trait]
impl Issuer for InternalCa {
    fn kind(&self) -> &'static str {
        ID
    }

    async fn issue(&self, plan: &Plan, _progress: &dyn Progress) -> Result<StoredCert, IssueError> {
        let name = plan.cert.as_str();
        let root = self.root().await.map_err(|e| IssueError::caused_by(&e))?;
        let failed = |e: rcgen::Error| IssueError::local(format!("the internal CA cannot sign: {e}"));
        let ca_key = KeyPair::from_pem(&root.key_pem).map_err(failed)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root.cert_pem, ca_key).map_err(failed)?;
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(plan.sans.clone()).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(self.leaf_lifetime.as_secs() as i64);
        let cert = params.signed_by(&key, &issuer).map_err(failed)?;
        StoredCert::new(cert.pem(), key.serialize_pem())
            .map(|c| c.issued_by(self.id()))
            .map_err(|e| IssueError::caused_by(&e))
    }
}

/// The fallback certificate: self-signed, for no real name. Served to clients without SNI
/// and for names that get no certificate of their own.
pub(crate) fn make_fallback() -> Result<Vec<u8>, CertError> {
    let mut params = CertificateParams::new(vec!["portico.invalid".to_owned()])
        .map_err(|e| CertError::make("the fallback certificate", e))?;
    params.distinguished_name.push(DnType::CommonName, "Portico fallback certificate");
    ten_years(&mut params);
    let (cert_pem, key_pem) = self_signed(&params, "the fallback certificate")?;
    Ok(StoredCert::new(cert_pem, key_pem)?.to_json())
}
