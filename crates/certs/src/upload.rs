//! Certificates an admin brings (a company CA's, a commercial one): checked before anything is
//! stored, then stored as any other (`<name>:latest`, so every node serves it, and the seed's
//! layout), with a `Cert` record whose issuer is [`UPLOADED`]: never renewed, an alert when a
//! third of its life is left. Removing it returns the name to automatic certificates.

use std::time::{Duration, SystemTime};

use portico_model::{FieldError, HostPattern};
use portico_store::{Kind, Store, StoreError, keys};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::manager::{literal, one_wildcard};
use crate::status::CertState;
use crate::{Loaded, Meta, StoredCert, now_secs};

/// The issuer recorded for an uploaded certificate.
pub const UPLOADED: &str = "uploaded";

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The name, chain or key is not acceptable (each fault names its field: `host`,
    /// `fullchain_pem`, `privkey_pem`).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an upload stored: the certificate's name and the leaf's names and validity.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The name it is stored under (a host name, or `*.zone`).
    pub name: String,
    /// The leaf's names and validity.
    pub meta: Meta,
}

/// Checks `fullchain_pem` and `privkey_pem` for `host` at `now`: the name is one a
/// certificate can cover (a host name or `*.zone`), the chain parses and runs leaf first with
/// each certificate signed by the next, the key is the leaf's, the leaf covers the name and is
/// valid now. Returns the name, what to store and what to serve.
pub fn check(
    host: &str,
    fullchain_pem: &str,
    privkey_pem: &str,
    now: i64,
) -> Result<(String, StoredCert, Loaded), Vec<FieldError>> {
    let refused = |field: &'static str, message: String| vec![FieldError::Refused { field, message }];
    let pattern = HostPattern::parse(host).map_err(|e| refused("host", format!("host is invalid: {e}")))?;
    let name = pattern.as_str().to_owned();
    if name.parse::<std::net::IpAddr>().is_ok() || !(literal(&pattern) || one_wildcard(&pattern)) {
        return Err(refused(
            "host",
            format!("host must be a host name or a `*.zone` pattern for a certificate to cover it, not {name}"),
        ));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(fullchain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| refused("fullchain_pem", format!("fullchain_pem is not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(refused("fullchain_pem", "fullchain_pem holds no PEM certificate".into()));
    }
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| {
                refused("fullchain_pem", format!("fullchain_pem's certificate {} does not parse: {e}", i + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pair) in parsed.windows(2).enumerate() {
        let (cert, issuer) = (&pair[0], &pair[1]);
        if cert.issuer().as_raw() != issuer.subject().as_raw()
            || cert.verify_signature(Some(issuer.public_key())).is_err()
        {
            return Err(refused(
                "fullchain_pem",
                format!(
                    "fullchain_pem is out of order: certificate {} ({}) is not issued by certificate {} ({}); \
                     the leaf comes first, then its issuer, then that one's",
                    i + 1,
                    cert.subject(),
                    i + 2,
                    issuer.subject()
                ),
            ));
        }
    }
    let key = PrivateKeyDer::from_pem_slice(privkey_pem.as_bytes())
        .map_err(|e| refused("privkey_pem", format!("privkey_pem is not a PEM private key: {e}")))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| refused("privkey_pem", format!("privkey_pem is not a usable key: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    if certified.keys_match().is_err() {
        return Err(refused("privkey_pem", "privkey_pem is not the key of fullchain_pem's first certificate".into()));
    }
    let meta = Meta::of(&chain[0]).map_err(|e| refused("fullchain_pem", format!("fullchain_pem: {e}")))?;
    if !meta.covers(&name) {
        return Err(refused(
            "fullchain_pem",
            format!("fullchain_pem's certificate is for {}, which does not cover {name}", meta.names.join(", ")),
        ));
    }
    if meta.not_after <= now {
        return Err(refused(
            "fullchain_pem",
            format!("fullchain_pem's certificate expired on {}", date(meta.not_after)),
        ));
    }
    if meta.not_before > now {
        return Err(refused(
            "fullchain_pem",
            format!("fullchain_pem's certificate is not valid before {}", date(meta.not_before)),
        ));
    }
    let stored = StoredCert::new(fullchain_pem.to_owned(), privkey_pem.to_owned())
        .map_err(|e| refused("fullchain_pem", format!("fullchain_pem: {e}")))?;
    let loaded = Loaded { key: std::sync::Arc::new(certified), meta };
    Ok((name, stored, loaded))
}

/// Checks an upload (see [`check`]) and stores it for `host`: every node serves it from its
/// next handshake (this one once its cache is told, [`crate::Certs::reload`]). The alert is
/// due when `alert_ratio` of its lifetime is left.
pub async fn upload(
    store: &dyn Store,
    host: &str,
    fullchain_pem: &str,
    privkey_pem: &str,
    alert_ratio: f64,
) -> Result<Uploaded, UploadError> {
    let (name, stored, loaded) = check(host, fullchain_pem, privkey_pem, now_secs()).map_err(UploadError::Invalid)?;
    let meta = loaded.meta;
    // The history goes on from the name's earlier certificates.
    let before = store.record(Kind::Cert, &name).await?.map(|f| CertState::from_fields(&f)).unwrap_or_default();
    let mut state = CertState {
        issuer: UPLOADED.to_owned(),
        not_after: meta.not_after,
        issued: meta.not_before,
        last_attempt: now_secs(),
        next_attempt: meta.renew_at(alert_ratio),
        step: UPLOADED.to_owned(),
        history: before.history,
        ..CertState::default()
    };
    state.note(now_secs(), format!("uploaded, issued by {}", meta.issuer));
    // The record first: a node that sees the new blob finds it is not to be renewed.
    store.put(Kind::Cert, &name, &state.to_fields()).await?;
    store.put_blob(&keys::cert_latest(&name), &stored.to_json(), None).await?;
    Ok(Uploaded { name, meta })
}

/// Whether `name`'s certificate is an uploaded one.
pub async fn is_uploaded(store: &dyn Store, name: &str) -> Result<bool, StoreError> {
    Ok(store.record(Kind::Cert, name).await?.is_some_and(|f| f.get("issuer").is_some_and(|i| i == UPLOADED)))
}

/// Removes the uploaded certificate of `name` from the store (nodes forget it as they see the
/// change): `false`, and nothing removed, when `name`'s certificate is not an uploaded one.
pub async fn remove(store: &dyn Store, name: &str) -> Result<bool, StoreError> {
    if !is_uploaded(store, name).await? {
        return Ok(false);
    }
    crate::stored::delete(store, name).await?;
    Ok(true)
}

/// A date for messages: `2027-03-01T12:00:00Z`.
pub fn date(secs: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCa;

    fn refusal(result: Result<(String, StoredCert, Loaded), Vec<FieldError>>) -> (String, String) {
        match result.map(|_| ()).unwrap_err().remove(0) {
            FieldError::Refused { field, message } => (field.to_owned(), message),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_whole_chain_whose_key_matches_and_covers_the_name_is_accepted_and_everything_else_says_why() {
        let now = now_secs();
        let root = TestCa::root("Test Root");
        let middle = root.intermediate("Test Intermediate");
        let (cert, key) = middle.leaf(&["app.test", "*.zone.test"], -60, 90 * 86400);
        let chain = format!("{cert}{}{}", middle.cert.pem(), root.cert.pem());

        let (name, stored, loaded) = check("App.Test", &chain, &key, now).unwrap();
        assert_eq!(name, "app.test");
        assert_eq!(stored.privkey_pem, key);
        assert_eq!(loaded.key.cert.len(), 3, "the whole chain is served");
        assert!(check("*.zone.test", &chain, &key, now).is_ok(), "a wildcard certificate for its pattern");

        let (field, message) = refusal(check("other.test", &chain, &key, now));
        assert_eq!(field, "fullchain_pem");
        assert!(message.contains("does not cover other.test"), "{message}");

        let swapped = format!("{}{cert}{}", middle.cert.pem(), root.cert.pem());
        let (field, message) = refusal(check("app.test", &swapped, &key, now));
        assert_eq!(field, "fullchain_pem");
        assert!(message.contains("out of order"), "{message}");
        // The right names in the right order, but the intermediate is another CA's key with
        // the same name: the signature gives it away.
        let impostor = root.intermediate("Test Intermediate");
        let forged = format!("{cert}{}", impostor.cert.pem());
        assert!(refusal(check("app.test", &forged, &key, now)).1.contains("out of order"));

        let (_, other_key) = middle.leaf(&["app.test"], -60, 60);
        let (field, message) = refusal(check("app.test", &chain, &other_key, now));
        assert_eq!(field, "privkey_pem");
        assert!(message.contains("not the key"), "{message}");
        assert_eq!(refusal(check("app.test", &chain, "not a key", now)).0, "privkey_pem");
        assert_eq!(refusal(check("app.test", "", &key, now)).0, "fullchain_pem");

        let (old, old_key) = middle.leaf(&["app.test"], -200, -100);
        let (field, message) = refusal(check("app.test", &old, &old_key, now));
        assert_eq!(field, "fullchain_pem");
        assert!(message.contains("expired on"), "{message}");

        for pattern in ["**.test", "api.*.test", "127.0.0.1"] {
            assert_eq!(refusal(check(pattern, &chain, &key, now)).0, "host", "{pattern}");
        }
        let (_, message) = refusal(check("app.test", &chain, &key.replacen('\n', "\n#", 1), now));
        assert!(!message.contains("PRIVATE KEY"), "a refusal never shows the key: {message}");
    }
}
