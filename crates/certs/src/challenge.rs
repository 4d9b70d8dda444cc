//! ACME challenge answers, shared through the store so that any node can answer them.
//!
//! HTTP-01: the key authorization at `<name>:challenge:<token>`, answered by the HTTP
//! listener at `/.well-known/acme-challenge/<token>`. TLS-ALPN-01: the key authorization's
//! SHA-256 at `<name>:tls-alpn-01`, answered in the TLS acceptor with a self-signed
//! certificate carrying the acmeIdentifier extension (RFC 8737).

use std::sync::Arc;
use std::time::Duration;

use portico_store::{Store, keys};
use rcgen::{CertificateParams, CustomExtension};
use rustls::sign::CertifiedKey;

use crate::internal::self_signed;
use crate::{CertError, StoredCert};

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 requests.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// How long challenge answers stay in the store (an order that takes longer fails anyway).
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// The answer to an HTTP-01 request for `name`, if a challenge is pending.
pub async fn http01_answer(store: &dyn Store, name: &str, token: &str) -> Result<Option<String>, CertError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Ok(None);
    }
    let blob = store.blob(&keys::http01(name, token)).await?;
    Ok(blob.and_then(|b| String::from_utf8(b).ok()))
}

/// The certificate answering a TLS-ALPN-01 validation for `name`, if a challenge is pending.
pub async fn tls_alpn01_cert(store: &dyn Store, name: &str) -> Result<Option<Arc<CertifiedKey>>, CertError> {
    let Some(digest) = store.blob(&keys::tls_alpn01(name)).await? else {
        return Ok(None);
    };
    let mut params = CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| CertError::make(format!("a TLS-ALPN-01 certificate for {name}"), e))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
    let (cert_pem, key_pem) = self_signed(&params, "the TLS-ALPN-01 certificate")?;
    Ok(Some(StoredCert::new(cert_pem, key_pem)?.load()?.key))
}
