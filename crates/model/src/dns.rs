//! DNS providers and the domains (zones) they manage, as the seed keeps them: the provider
//! types and their credential fields, and the zone rule (a name belongs to the longest
//! managed zone it is in).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::record::public_json;
use crate::{Fields, Host};

/// A provider type: its key in `dnsProvider`, display name and credential fields.
#[derive(Debug)]
pub struct ProviderType {
    /// The stored name (`dnsProvider`).
    pub name: &'static str,
    /// The seed UI's display name.
    pub display_name: &'static str,
    /// Credential fields: stored name and display name. Those in [`SECRET_FIELDS`] are
    /// never shown.
    pub credentials: &'static [(&'static str, &'static str)],
    /// The colour of its icon in a UI (RGB hex, no `#`).
    pub color: &'static str,
    /// Its Font Awesome glyph, as the seed's UI shows it (an HTML character reference).
    pub glyph: &'static str,
}

/// Every provider type.
pub const PROVIDERS: [ProviderType; 4] = [
    ProviderType {
        name: "Cloudflare",
        display_name: "CloudFlare",
        credentials: &[("token", "API Token")],
        color: "f38020",
        glyph: "&#xe07d;",
    },
    ProviderType {
        name: "DigitalOcean",
        display_name: "DigitalOcean",
        credentials: &[("token", "API Token")],
        color: "0080ff",
        glyph: "&#xf391;",
    },
    ProviderType {
        name: "PorkBun",
        display_name: "PorkBun",
        credentials: &[("apiKey", "API Key"), ("secretApiKey", "Secret API Key")],
        color: "ef7878",
        glyph: "&#xf0ac;",
    },
    // RFC 2136 dynamic updates with TSIG (BIND, Knot, PowerDNS, Technitium): the protocol
    // cannot list zones, so the account names them.
    ProviderType {
        name: "RFC2136",
        display_name: "RFC 2136 (BIND, Knot, PowerDNS)",
        credentials: &[
            ("server", "Server (ip:port)"),
            ("keyName", "TSIG key name"),
            ("algorithm", "TSIG algorithm (hmac-sha256)"),
            ("secret", "TSIG secret (base64)"),
            ("zones", "Zones (comma-separated)"),
        ],
        color: "4a5568",
        glyph: "&#xf233;",
    },
];

/// The credential fields that are secrets: never shown.
pub const SECRET_FIELDS: [&str; 4] = ["token", "apiKey", "secretApiKey", "secret"];

/// `name` and each of its parents, longest first (`a.example.com`, `example.com`, `com`).
pub fn parents(name: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(name), |n| n.split_once('.').map(|(_, rest)| rest))
}

/// The zones a host name or pattern can be in, longest first; its managed zone is the
/// first of them that is a managed domain (a `Domain` record). For a pattern these are the
/// part after its last wildcard label and that part's parents: `*.a.example.com` and
/// `api.*.example.com` are in `example.com`'s zone when that is the managed one. The API
/// (which zone a host is in) and the certificate manager (which account solves a wildcard's
/// DNS-01 challenge) both ask this.
pub fn zones_of(pattern: &str) -> impl Iterator<Item = &str> {
    parents(pattern.rfind("*.").map_or(pattern, |at| &pattern[at + 2..]))
}

/// The provider type stored as `name`.
pub fn provider_type(name: &str) -> Option<&'static ProviderType> {
    PROVIDERS.iter().find(|p| p.name == name)
}

/// How a UI shows a provider type: its names, icon and credential fields (the seed's
/// `displayName`, `displayIconUni`, `displayIconHtml` as an SVG `data:` URL, `fields`).
pub fn display(p: &ProviderType) -> Map<String, Value> {
    let initial = p.display_name.get(..1).unwrap_or("?");
    let icon = format!(
        "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Ccircle cx='16' cy='16' r='16' fill='%23{}'/%3E%3Ctext x='16' y='22' font-size='17' font-family='sans-serif' text-anchor='middle' fill='white'%3E{initial}%3C/text%3E%3C/svg%3E",
        p.color
    );
    let mut out = Map::new();
    out.insert("displayName".into(), json!(p.display_name));
    out.insert("displayIconUni".into(), json!(p.glyph));
    out.insert("displayIconHtml".into(), json!(icon));
    out.insert("fields".into(), Value::Object(credential_specs(p)));
    out
}

/// The credential fields of a provider type, as the seed's UI reads them.
fn credential_specs(p: &ProviderType) -> Map<String, Value> {
    p.credentials
        .iter()
        .map(|(key, display)| {
            let private = SECRET_FIELDS.contains(key);
            let spec = json!({"type": "string", "isRequired": true, "isPrivate": private, "displayName": display});
            ((*key).to_owned(), spec)
        })
        .collect()
}

/// A provider as the API shows it: public fields and its type's info, never credentials.
pub fn provider_json(fields: &Fields) -> Map<String, Value> {
    let mut out = public_json(fields);
    if let Some(p) = fields.get("dnsProvider").and_then(|n| provider_type(n)) {
        out.extend(display(p));
    }
    out
}

/// Every DNS zone and provider, read once, to show what relates hosts, zones and providers:
/// a provider's `domains`, a zone's `provider`, a host's `domain` (the zone it is in).
#[derive(Debug)]
pub struct Zones {
    domains: Vec<(String, Fields)>,
    providers: HashMap<String, Fields>,
}

impl Zones {
    /// The relations among these zone (`Domain`) and provider (`DnsProvider`) records, each
    /// given as (key, fields).
    pub fn new(mut domains: Vec<(String, Fields)>, providers: Vec<(String, Fields)>) -> Self {
        domains.sort_by(|a, b| a.0.cmp(&b.0));
        Self { domains, providers: providers.into_iter().collect() }
    }

    /// A provider with its zones.
    pub fn provider(&self, id: &str, fields: &Fields) -> Map<String, Value> {
        let mut out = provider_json(fields);
        let domains = self
            .domains
            .iter()
            .filter(|(_, d)| d.get("dnsProvider_id").is_some_and(|p| p == id))
            .map(|(_, d)| Value::Object(public_json(d)))
            .collect();
        out.insert("domains".into(), Value::Array(domains));
        out
    }

    /// A zone with its provider.
    pub fn zone(&self, fields: &Fields) -> Value {
        let mut out = public_json(fields);
        let provider = fields.get("dnsProvider_id").and_then(|id| self.providers.get(id));
        out.insert("provider".into(), provider.map_or(Value::Null, |p| Value::Object(provider_json(p))));
        Value::Object(out)
    }

    /// The managed zone a host name or pattern is in, with its provider
    /// ([`zones_of`] is the rule).
    pub fn zone_of(&self, pattern: &str) -> Option<Value> {
        zones_of(pattern).find_map(|zone| {
            let at = self.domains.binary_search_by(|(key, _)| key.as_str().cmp(zone)).ok()?;
            Some(self.zone(&self.domains[at].1))
        })
    }

    /// A host as the API shows it, with the seed's `domain` relation: the managed zone it is
    /// in, with that zone's provider (`null` when it is in none).
    pub fn host_with_domain(&self, host: &Host) -> Value {
        let mut out = host.to_json();
        out.insert("domain".into(), self.zone_of(host.host.as_str()).unwrap_or(Value::Null));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_and_their_secret_fields() {
        assert!(SECRET_FIELDS.iter().all(|f| PROVIDERS.iter().any(|p| p.credentials.iter().any(|(c, _)| c == f))));
        assert!(provider_type("PorkBun").is_some() && provider_type("Route53").is_none());
    }

    #[test]
    fn zones_a_name_or_pattern_can_be_in() {
        let all = |p| zones_of(p).collect::<Vec<_>>();
        assert_eq!(all("a.example.com"), ["a.example.com", "example.com", "com"]);
        assert_eq!(all("*.a.example.com"), ["a.example.com", "example.com", "com"]);
        assert_eq!(all("api.*.example.com"), ["example.com", "com"]);
        assert_eq!(all("**.example.com"), ["example.com", "com"]);
        assert_eq!(all("*"), ["*"]);
    }
}
