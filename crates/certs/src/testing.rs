//! A certificate authority of one's own, for tests (built with the `testing` feature): the
//! certificates an admin would bring.

/// A certificate authority for tests: a root, or an intermediate under another.
pub struct TestCa {
    /// Its certificate.
    pub cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A root CA named `name`.
    pub fn root(name: &str) -> Self {
        Self::made(name, None)
    }

    /// An intermediate CA named `name`, issued by `self`.
    pub fn intermediate(&self, name: &str) -> Self {
        Self::made(name, Some(self))
    }

    fn made(name: &str, parent: Option<&Self>) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = match parent {
            Some(p) => params.signed_by(&key, &p.issuer).expect("an intermediate"),
            None => params.self_signed(&key).expect("a root"),
        };
        Self { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    /// A leaf for `names`, valid from `from` to `until` seconds from now (negative: in the
    /// past): its certificate's PEM and its key's.
    pub fn leaf(&self, names: &[&str], from: i64, until: i64) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("leaf parameters");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(from);
        params.not_after = now + time::Duration::seconds(until);
        let key = rcgen::KeyPair::generate().expect("a key");
        (params.signed_by(&key, &self.issuer).expect("a leaf").pem(), key.serialize_pem())
    }
}
