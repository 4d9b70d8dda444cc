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
    /// An entry of the audit log (a change made through the API), keyed by its time in
    /// milliseconds (13 digits) and a random suffix, so that keys sort by time.
    Audit,
    /// A TCP or UDP stream (a listening port forwarded to targets), keyed by its id.
    Stream,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Host,
        Kind::User,
        Kind::AuthToken,
        Kind::DnsProvider,
        Kind::Domain,
        Kind::Cert,
        Kind::Audit,
        Kind::Stream,
    ];

    /// The seed's model name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Host => "Host",
            Kind::User => "User",
            Kind::AuthToken => "AuthToken",
            Kind::DnsProvider => "DnsProvider",
            Kind::Domain => "Domain",
            Kind::Cert => "Cert",
            Kind::Audit => "Audit",
            Kind::Stream => "Stream",
        }
    }

    /// The kind whose seed model name is `name` ([`Kind::name`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
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
            Kind::Audit => "record/Audit",
            Kind::Stream => "record/Stream",
        }
    }
}

/// The key of a blob, a lock or a counter. Only this module builds one, so every name
/// Portico stores things under is one of the functions below, and a store's listing
/// ([`Store::blob_keys`](crate::Store::blob_keys)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lock held while this blob is made, once across every process sharing the store.
    pub fn lock(&self) -> Key {
        Key(format!("{}:lock", self.0))
    }

    /// The name whose certificate this blob holds, if it is a [`cert_latest`] key.
    pub fn certificate_name(&self) -> Option<&str> {
        self.0.strip_suffix(":latest")
    }

    /// A key a store listed (or announced).
    pub(crate) fn listed(key: String) -> Key {
        Key(key)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The blob holding a name's current certificate, in lua-resty-auto-ssl's layout
/// (`<name>:latest`, a JSON object with `fullchain_pem`, `privkey_pem`, `cert_pem`, `expiry`).
pub fn cert_latest(name: &str) -> Key {
    Key(format!("{name}:latest"))
}

/// The blob answering an HTTP-01 challenge (`<name>:challenge:<token>`, the key
/// authorization), readable by every node.
pub fn http01(name: &str, token: &str) -> Key {
    Key(format!("{name}:challenge:{token}"))
}

/// The blob answering a TLS-ALPN-01 challenge for `name` (the key authorization's digest).
pub fn tls_alpn01(name: &str) -> Key {
    Key(format!("{name}:tls-alpn-01"))
}

/// When `name`'s certificate was last served (seconds since the epoch, as text): names under
/// wildcard patterns are renewed only when used since they were issued.
pub fn cert_used(name: &str) -> Key {
    portico(&format!("cert-used:{name}"))
}

/// The cluster-wide counter of issuances started from `budget` (`explicit`, `pattern`,
/// `renewal`) in the minute `minute` (minutes since the epoch).
pub fn issue_rate(budget: &str, minute: i64) -> Key {
    portico(&format!("issue-rate:{budget}:{minute}"))
}

/// The lock held while a certificate for `name` is issued or renewed.
pub fn issue_lock(name: &str) -> Key {
    portico(&format!("issue:{name}"))
}

/// The lock held while users are deleted or demoted, so that two admins removing each other
/// at once cannot leave none.
pub fn users_lock() -> Key {
    portico("lock:users")
}

/// The lock held while a stream is written through the API, so that a listening address is
/// checked free and taken in one step across the cluster.
pub fn streams_lock() -> Key {
    portico("lock:streams")
}

/// The blob that holds the store's identity marker (`{"id", "adopted"}`).
pub fn store_identity() -> Key {
    portico("store-identity")
}

/// The lock taken while a first identity marker is written.
pub fn store_identity_lock() -> Key {
    portico("store-identity-init")
}

/// The ACME account registered with one directory (`directory` names it: a short digest of
/// its URL).
pub fn acme_account(directory: &str) -> Key {
    portico(&format!("acme-account:{directory}"))
}

/// The internal CA's root (certificate and key).
pub fn internal_ca() -> Key {
    portico("internal-ca")
}

/// The certificate served for names Portico has none for.
pub fn fallback_cert() -> Key {
    portico("fallback-cert")
}

/// Portico's own blobs, locks and counters live under `portico:`.
fn portico(what: &str) -> Key {
    Key(format!("portico:{what}"))
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
        assert_eq!(cert_latest("*.example.com").as_str(), "*.example.com:latest");
        assert_eq!(fallback_cert().lock().as_str(), "portico:fallback-cert:lock");
    }
}
