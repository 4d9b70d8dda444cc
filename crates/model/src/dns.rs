//! DNS providers and the domains (zones) they manage, as the seed keeps them: the provider
//! types and their credential fields, and the zone rule (a name belongs to the longest
//! managed zone it is in).

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
