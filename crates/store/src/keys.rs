//! The one place that names things in storage: record kinds and their keys.
//!
//! Kinds keep the seed's model names (`Host`, `User`, `AuthToken`, `DnsProvider`, `Domain`),
//! which its Redis key layout uses: index set `proxy_<Kind>`, record hash
//! `proxy_<Kind>_<key>`.

use std::fmt;

/// The seed's key prefix.
pub const PREFIX: &str = "proxy_";

/// The Redis channel on which every write is announced (a JSON object: the counter value
/// `v`, the writing process `from`, and the `changes`).
pub const EVENTS_CHANNEL: &str = "proxy_events";

/// The Redis counter bumped (`INCR`) with every announced write, so that a reader can tell
/// it missed one, and any writer (a script) can make every node re-read.
pub const VERSION_COUNTER: &str = "proxy_version";

/// The field of a record's Redis hash that holds its revision. Seed records have none
/// (revision 0); it is never shown as one of the record's fields.
pub const REVISION_FIELD: &str = "_rev";

/// A kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// A proxied host, keyed by its pattern.
    Host,
    /// A user, keyed by user name.
    User,
    /// A session token, keyed by its SHA-256.
    AuthToken,
    /// A DNS provider account, keyed by id.
    DnsProvider,
    /// A DNS zone managed by a provider, keyed by domain.
    Domain,
    /// A managed certificate's state (issuer, expiry, attempts, backoff), keyed by name. Its
    /// PEMs live in the `<name>:latest` blob.
    Cert,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [Kind::Host, Kind::User, Kind::AuthToken, Kind::DnsProvider, Kind::Domain, Kind::Cert];

    /// The seed's model name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Host => "Host",
            Kind::User => "User",
            Kind::AuthToken => "AuthToken",
            Kind::DnsProvider => "DnsProvider",
            Kind::Domain => "Domain",
            Kind::Cert => "Cert",
        }
    }

    /// The Redis index set of this kind: `proxy_Host`.
    pub fn index_key(self) -> String {
        format!("{PREFIX}{}", self.name())
    }

    /// The Redis hash of one record: `proxy_Host_app.example.com`.
    pub fn record_key(self, key: &str) -> String {
        format!("{PREFIX}{}_{key}", self.name())
    }

    /// The embedded store's table for this kind.
    pub(crate) fn table_name(self) -> &'static str {
        match self {
            Kind::Host => "record/Host",
            Kind::User => "record/User",
            Kind::AuthToken => "record/AuthToken",
            Kind::DnsProvider => "record/DnsProvider",
            Kind::Domain => "record/Domain",
            Kind::Cert => "record/Cert",
        }
    }
}

/// The blob holding a name's current certificate, in lua-resty-auto-ssl's layout
/// (`<name>:latest`, a JSON object with `fullchain_pem`, `privkey_pem`, `cert_pem`, `expiry`).
pub fn cert_latest(name: &str) -> String {
    format!("{name}:latest")
}

/// The blob answering an HTTP-01 challenge (`<name>:challenge:<token>`, the key
/// authorization), readable by every node.
pub fn http01(name: &str, token: &str) -> String {
    format!("{name}:challenge:{token}")
}

/// The blob answering a TLS-ALPN-01 challenge for `name` (the key authorization's digest).
pub fn tls_alpn01(name: &str) -> String {
    format!("{name}:tls-alpn-01")
}

/// When `name`'s certificate was last served (seconds since the epoch, as text): names under
/// wildcard patterns are renewed only when used since they were issued.
pub fn cert_used(name: &str) -> String {
    format!("portico:cert-used:{name}")
}

/// The cluster-wide counter of issuances started from `budget` (`explicit`, `pattern`,
/// `renewal`) in the minute `minute` (minutes since the epoch).
pub fn issue_rate(budget: &str, minute: i64) -> String {
    format!("portico:issue-rate:{budget}:{minute}")
}

/// The lock held while a certificate for `name` is issued or renewed.
pub fn issue_lock(name: &str) -> String {
    format!("portico:issue:{name}")
}

/// The lock held while users are deleted or demoted, so that two admins removing each other
/// at once cannot leave none.
pub fn users_lock() -> String {
    "portico:lock:users".to_owned()
}

/// The blob that holds the store's identity marker (`{"id", "adopted"}`).
pub fn store_identity() -> String {
    portico("store-identity")
}

/// The lock taken while a first identity marker is written.
pub fn store_identity_lock() -> String {
    portico("store-identity-init")
}

/// Portico's own blobs: the ACME account (per directory), the internal CA, the fallback
/// certificate.
pub fn portico(what: &str) -> String {
    format!("portico:{what}")
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_key_layout() {
        assert_eq!(Kind::Host.index_key(), "proxy_Host");
        assert_eq!(Kind::Host.record_key("*.example.com"), "proxy_Host_*.example.com");
        assert_eq!(Kind::DnsProvider.record_key("0123456789abcdef"), "proxy_DnsProvider_0123456789abcdef");
        assert_eq!(cert_latest("*.example.com"), "*.example.com:latest");
    }
}
