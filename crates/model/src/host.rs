//! A proxied host, with the seed's field names, and its string-map form in the store.
//!
//! The store keeps every record as a map of string fields, as the seed's Redis hashes do
//! (`targetPort=8080`, `forcessl=true`). [`Host::from_fields`] and [`Host::to_fields`] convert
//! between that form and typed values; fields this version does not know are kept as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::access::Access;
use crate::behaviour::{ErrorPages, HeaderRules, HostKind, Hsts, parse_error_pages};
use crate::body::FieldError;
use crate::name::{HostPattern, Hostname, NameError};
use crate::record::Stamps;
use crate::upstream::{Balance, HealthCheck, Upstream, parse_targets};

/// A record as the store keeps it: field name to string value.
pub type Fields = BTreeMap<String, String>;

/// Where a host's traffic goes: an IP address or host name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    ip: String,
    port: u16,
    /// `ip:port` (IPv6 in brackets), made once and shared: every proxied request names it.
    authority: Arc<str>,
}

impl Target {
    /// Validates a target: `ip` is an IPv4 address, an IPv6 address or a host name; the port
    /// is 1–65535.
    pub fn new(ip: &str, port: u16) -> Result<Self, FieldError> {
        if port == 0 {
            return Err(FieldError::invalid("targetPort", "must be from 1 to 65535"));
        }
        let ip = ip.trim();
        let ip = ip.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(ip);
        if ip.is_empty() {
            return Err(FieldError::Missing("ip"));
        }
        let ip = match ip.parse::<IpAddr>() {
            Ok(addr) => addr.to_string(),
            Err(_) => Hostname::parse(ip)
                .map_err(|e: NameError| FieldError::invalid("ip", format!("not an IP address or host name: {e}")))?
                .to_string(),
        };
        let authority = if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
        Ok(Self { ip, port, authority: authority.into() })
    }

    /// The address or name, without brackets.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as used in a URI authority (IPv6 in brackets).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The same as shared text: a reference, not a copy.
    pub fn shared_authority(&self) -> Arc<str> {
        self.authority.clone()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.authority)
    }
}

/// A proxied host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host pattern this record serves.
    pub host: HostPattern,
    /// Where requests go: never empty for a host that forwards (`kind` proxy); empty for a
    /// redirect or static host given none. The first is the seed's `ip`/`targetPort`.
    pub targets: Vec<Upstream>,
    /// How requests are shared among the targets.
    pub balance: Balance,
    /// Active health checks of the targets, if any.
    pub health_check: Option<HealthCheck>,
    /// Who may reach it.
    pub access: Access,
    /// Redirect plain HTTP to HTTPS.
    pub forcessl: bool,
    /// Speak TLS to the target.
    pub targetssl: bool,
    /// What it answers with: forwarding to its targets, a redirect, a static answer.
    pub kind: HostKind,
    /// Header rules on requests to its targets and on its answers.
    pub headers: HeaderRules,
    /// Strict-Transport-Security on its HTTPS answers.
    pub hsts: Option<Hsts>,
    /// Its pages for Portico's own error answers, by status or `default`.
    pub error_pages: ErrorPages,
    /// Its answers are compressed (zstd, brotli, gzip) for clients that accept it.
    pub compress: bool,
    /// Who created and last changed it, and when.
    pub stamps: Stamps,
    /// Fields this version does not interpret (`is_cache`, `wildcard_*`, …), kept as they are.
    pub extra: Fields,
}

const KNOWN: [&str; 21] = [
    "kind",
    "passthrough",
    "compress",
    "redirect",
    "static",
    "headers",
    "hsts",
    "errorPages",
    "basicAuth",
    "allow",
    "deny",
    "forwardAuth",
    "rateLimit",
    "host",
    "ip",
    "targetPort",
    "targets",
    "balance",
    "healthCheck",
    "forcessl",
    "targetssl",
];

/// The field holding the settings of a host of `kind` (`redirect`, `static`, `passthrough`;
/// for any other kind, a field no record has).
fn kind_settings_field(kind: &str) -> &'static str {
    match kind {
        "redirect" => "redirect",
        "static" => "static",
        "passthrough" => "passthrough",
        _ => "",
    }
}

/// Access settings of the seed's later versions (field-name prefixes), which Portico does not
/// enforce.
const SEED_ACCESS: [&str; 5] = ["ip_allow", "ip_deny", "basicauth_", "ratelimit_", "sso_"];

/// The first of the seed's access settings `fields` turns on, if any (a value that is empty,
/// `false`, `0` or an empty list turns nothing on).
fn seed_access_field(fields: &Fields) -> Option<&'static str> {
    let off = |v: &str| matches!(v.trim(), "" | "false" | "0" | "null" | "[]" | "{}" | "__NONE__");
    SEED_ACCESS.into_iter().find(|prefix| fields.iter().any(|(k, v)| k.starts_with(prefix) && !off(v)))
}

/// Whether a field a host record may carry from elsewhere (the seed's later versions keep
/// basic-auth passwords and SSO secrets in the host) is a secret: never shown.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "credential", "basicauth"].iter().any(|word| name.contains(word))
}

impl Host {
    /// A new host record, created by `created_by` at `now_ms`, with the seed's bookkeeping
    /// fields (`updated_by = "__NONE__"`, `is_cache` and `is_wildcard` false).
    pub fn new(
        host: HostPattern,
        target: Target,
        forcessl: bool,
        targetssl: bool,
        created_by: &str,
        now_ms: i64,
    ) -> Self {
        let mut new = Self::without_target(host, forcessl, targetssl, created_by, now_ms);
        new.targets.push(Upstream::new(target));
        new
    }

    /// A new host record with no target yet (one that does not forward, or is given its
    /// targets next), as [`Host::new`] makes one otherwise.
    pub fn without_target(host: HostPattern, forcessl: bool, targetssl: bool, created_by: &str, now_ms: i64) -> Self {
        Self {
            host,
            targets: Vec::new(),
            balance: Balance::default(),
            health_check: None,
            access: Access::default(),
            forcessl,
            targetssl,
            kind: HostKind::Proxy,
            headers: HeaderRules::default(),
            hsts: None,
            error_pages: ErrorPages::new(),
            compress: false,
            stamps: Stamps::new(created_by, now_ms),
            extra: [("is_cache", "false"), ("is_wildcard", "false")].map(|(k, v)| (k.to_owned(), v.to_owned())).into(),
        }
    }

    /// Whether its targets' health is followed (several targets, or active checks): a host
    /// with one target and no checks sends every request to it and keeps no state; a redirect
    /// or static host sends none (the targets it had are kept, unused).
    pub fn health_followed(&self) -> bool {
        self.kind.forwards() && (self.targets.len() > 1 || self.health_check.is_some())
    }

    /// The first target: the seed's `ip`/`targetPort` (none for a redirect or static host
    /// given no target).
    pub fn target(&self) -> Option<&Target> {
        self.targets.first().map(|u| &u.target)
    }

    /// Makes `target` the first target (what a seed client's `ip`/`targetPort` change means),
    /// keeping the first entry's weight; an entry further down for the same target is dropped.
    pub fn set_first_target(&mut self, target: Target) {
        if self.targets.is_empty() {
            self.targets.push(Upstream::new(target));
        } else {
            put_first(&mut self.targets, target);
        }
    }

    /// Reads a host from its stored string fields (the seed's Redis hash layout).
    pub fn from_fields(fields: &Fields) -> Result<Self, FieldError> {
        let text = |name: &'static str| fields.get(name).map(String::as_str);
        let host = text("host").ok_or(FieldError::Missing("host"))?;
        let host = HostPattern::parse(host).map_err(|e| FieldError::invalid("host", e))?;
        let json = |name: &'static str| -> Result<Option<serde_json::Value>, FieldError> {
            text(name)
                .map(|t| serde_json::from_str(t).map_err(|_| FieldError::invalid(name, "is not JSON")))
                .transpose()
        };
        let kind = match text("kind") {
            None => HostKind::Proxy,
            Some(kind) => {
                let settings = json(kind_settings_field(kind))?;
                HostKind::parse(kind, |_| settings.as_ref())?
            }
        };
        // `targets` as JSON text; the seed's `ip`/`targetPort` are its first entry (a seed
        // client that changed them changed the first target). A host that does not forward
        // may have none.
        let first = match (text("ip"), text("targetPort")) {
            (Some(ip), Some(port)) => Some(Target::new(ip, parse_port(port)?)?),
            (None, _) if !kind.forwards() => None,
            (_, None) if !kind.forwards() => None,
            (None, _) => return Err(FieldError::Missing("ip")),
            (_, None) => return Err(FieldError::Missing("targetPort")),
        };
        let mut targets = match text("targets") {
            Some(list) => {
                let list: serde_json::Value =
                    serde_json::from_str(list).map_err(|_| FieldError::invalid("targets", "is not JSON"))?;
                parse_targets(&list)?
            }
            None => first.iter().cloned().map(Upstream::new).collect(),
        };
        if let Some(first) = first {
            put_first(&mut targets, first);
        }
        let balance = text("balance").map_or(Ok(Balance::default()), Balance::parse)?;
        let health_check = match text("healthCheck") {
            Some(check) => Some(HealthCheck::parse(
                &serde_json::from_str(check).map_err(|_| FieldError::invalid("healthCheck", "is not JSON"))?,
            )?),
            None => None,
        };
        let access = Access::from_fields(|name| fields.get(name).cloned())?;
        if let Some(field) = seed_access_field(fields) {
            return Err(FieldError::invalid(
                field,
                "is an access setting of the seed's later versions that Portico does not enforce: the host is \
                 not routed (rather than served open) until it is removed or replaced by allow, deny, \
                 basicAuth, rateLimit or forwardAuth",
            ));
        }
        let flag = |name: &'static str, default: bool| text(name).map_or(Ok(default), |v| parse_flag(name, v));
        let headers = json("headers")?.map_or(Ok(HeaderRules::default()), |v| HeaderRules::parse(&v))?;
        let hsts = json("hsts")?.map(|v| Hsts::parse(&v)).transpose()?;
        let error_pages = json("errorPages")?.map_or(Ok(ErrorPages::new()), |v| parse_error_pages(&v))?;
        Ok(Self {
            host,
            targets,
            balance,
            health_check,
            access,
            forcessl: flag("forcessl", true)?,
            targetssl: flag("targetssl", false)?,
            kind,
            headers,
            hsts,
            error_pages,
            compress: flag("compress", false)?,
            stamps: Stamps::read(fields),
            extra: crate::record::other_fields(fields, &KNOWN),
        })
    }

    /// The stored string fields, as the seed writes them.
    pub fn to_fields(&self) -> Fields {
        let mut fields = self.extra.clone();
        let mut put = |k: &str, v: String| fields.insert(k.to_owned(), v);
        put("host", self.host.to_string());
        if let Some(target) = self.target() {
            put("ip", target.ip().to_owned());
            put("targetPort", target.port().to_string());
        }
        // Written only when they say more than `ip`/`targetPort` and the defaults do, so a
        // seed host's record stays exactly the seed's.
        if self.targets.len() > 1 || self.targets.first().is_some_and(|u| u.weight != 1) {
            let list: Vec<serde_json::Value> = self.targets.iter().map(Upstream::to_json).collect();
            put("targets", serde_json::Value::Array(list).to_string());
        }
        if self.balance != Balance::default() {
            put("balance", self.balance.as_str().to_owned());
        }
        if let Some(check) = &self.health_check {
            put("healthCheck", check.to_json().to_string());
        }
        for (field, value) in self.access.to_fields() {
            put(field, value);
        }
        put("forcessl", self.forcessl.to_string());
        put("targetssl", self.targetssl.to_string());
        if self.kind != HostKind::Proxy {
            put("kind", self.kind.as_str().to_owned());
        }
        if let Some(settings) = self.kind.settings_json() {
            put(self.kind.as_str(), settings.to_string());
        }
        if !self.headers.is_empty() {
            put("headers", self.headers.to_json().to_string());
        }
        if let Some(hsts) = &self.hsts {
            put("hsts", hsts.to_json().to_string());
        }
        if !self.error_pages.is_empty() {
            put("errorPages", serde_json::to_string(&self.error_pages).unwrap_or_default());
        }
        if self.compress {
            put("compress", "true".into());
        }
        for (field, value) in self.stamps.fields() {
            put(field, value);
        }
        fields
    }
}

/// Puts `target` in the first entry of a non-empty list (keeping that entry's weight) and
/// drops any later entry for the same target.
pub(crate) fn put_first(targets: &mut Vec<Upstream>, target: Target) {
    targets[0].target = target;
    let mut first = true;
    let kept = targets[0].target.clone();
    targets.retain(|u| {
        let keep = first || u.target != kept;
        first = false;
        keep
    });
}

/// A port from its text form (`"8080"`), 1–65535.
pub fn parse_port(text: &str) -> Result<u16, FieldError> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(FieldError::invalid("targetPort", "must be a whole number from 1 to 65535")),
    }
}

fn parse_flag(field: &'static str, text: &str) -> Result<bool, FieldError> {
    match text.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(FieldError::invalid(field, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_access_settings_portico_does_not_enforce_keep_the_host_closed() {
        assert!(Host::from_fields(&seed_hash()).is_ok());
        for (field, value) in [
            ("ip_deny", "203.0.113.0/24"),
            ("ip_allow", "[\"10.0.0.0/8\"]"),
            ("basicauth_user", "ann"),
            ("basicauth_password", "secret"),
            ("ratelimit_rps", "10"),
            ("sso_enabled", "true"),
            ("basicAuth", "{\"username\": \"ann\", \"hash\": \"x\"}"),
        ] {
            let mut fields = seed_hash();
            fields.insert(field.into(), value.into());
            assert!(Host::from_fields(&fields).is_err(), "{field}={value} would be served open");
        }
        // Settings that turn nothing on are harmless.
        let mut fields = seed_hash();
        fields.insert("ip_deny".into(), "".into());
        fields.insert("sso_enabled".into(), "false".into());
        fields.insert("ratelimit_rps".into(), "0".into());
        assert!(Host::from_fields(&fields).is_ok());
    }

    fn seed_hash() -> Fields {
        [
            ("created_by", "admin"),
            ("created_on", "1735689600000"),
            ("updated_by", "__NONE__"),
            ("updated_on", "1735689600001"),
            ("host", "app.example.com"),
            ("ip", "10.0.0.5"),
            ("targetPort", "8080"),
            ("forcessl", "true"),
            ("targetssl", "false"),
            ("is_cache", "false"),
            ("is_wildcard", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn seed_hash_round_trips() {
        let host = Host::from_fields(&seed_hash()).unwrap();
        assert_eq!(host.host.as_str(), "app.example.com");
        assert_eq!(host.target().unwrap().authority(), "10.0.0.5:8080");
        assert_eq!(host.targets.len(), 1);
        assert!(host.forcessl && !host.targetssl);
        assert_eq!(host.stamps.created_on, 1_735_689_600_000);
        assert_eq!(host.extra.get("is_wildcard").map(String::as_str), Some("false"));
        assert_eq!(host.to_fields(), seed_hash());
    }

    #[test]
    fn bad_fields_name_the_field() {
        let mut f = seed_hash();
        f.insert("targetPort".into(), "70000".into());
        assert_eq!(Host::from_fields(&f).unwrap_err().field(), "targetPort");
        let mut f = seed_hash();
        f.insert("ip".into(), "not an ip!".into());
        assert_eq!(Host::from_fields(&f).unwrap_err().field(), "ip");
        let mut f = seed_hash();
        f.insert("forcessl".into(), "maybe".into());
        assert_eq!(Host::from_fields(&f).unwrap_err().field(), "forcessl");
        let mut f = seed_hash();
        f.remove("host");
        assert_eq!(Host::from_fields(&f).unwrap_err(), FieldError::Missing("host"));
    }

    #[test]
    fn targets_accept_ipv4_ipv6_and_names() {
        assert_eq!(Target::new("127.0.0.1", 80).unwrap().authority(), "127.0.0.1:80");
        assert_eq!(Target::new("::1", 80).unwrap().authority(), "[::1]:80");
        assert_eq!(Target::new("[::1]", 80).unwrap().authority(), "[::1]:80");
        assert_eq!(Target::new("Backend.Internal", 80).unwrap().authority(), "backend.internal:80");
        assert!(Target::new("a b", 80).is_err());
        assert!(Target::new("127.0.0.1", 0).is_err());
    }
}
