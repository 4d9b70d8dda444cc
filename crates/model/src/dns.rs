//! DNS providers and the domains (zones) they manage, as the seed keeps them: the provider
//! types and their credential fields, and the zone rule (a name belongs to the longest
//! managed zone it is in).

use crate::Hostname;

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
}

/// Every provider type.
pub const PROVIDERS: [ProviderType; 4] = [
    ProviderType { name: "Cloudflare", display_name: "CloudFlare", credentials: &[("token", "API Token")] },
    ProviderType { name: "DigitalOcean", display_name: "DigitalOcean", credentials: &[("token", "API Token")] },
    ProviderType {
        name: "PorkBun",
        display_name: "PorkBun",
        credentials: &[("apiKey", "API Key"), ("secretApiKey", "Secret API Key")],
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
    },
];

/// The credential fields that are secrets: never shown.
pub const SECRET_FIELDS: [&str; 4] = ["token", "apiKey", "secretApiKey", "secret"];

/// The provider type stored as `name`.
pub fn provider_type(name: &str) -> Option<&'static ProviderType> {
    PROVIDERS.iter().find(|p| p.name == name)
}

/// The zone among `zones` that `name` belongs to: the longest one that is `name` itself or a
/// suffix of it at a label boundary (`a.b.example.com` is in `example.com`, not in
/// `ample.com`).
pub fn zone_of<'a>(name: &Hostname, zones: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.as_str();
    zones
        .into_iter()
        .filter(|zone| name == *zone || name.strip_suffix(zone).is_some_and(|rest| rest.ends_with('.')))
        .max_by_key(|zone| zone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_managed_zone_wins_at_label_boundaries() {
        let zones = ["example.com", "dev.example.com", "ample.com"];
        let zone = |n: &str| zone_of(&Hostname::parse(n).unwrap(), zones);
        assert_eq!(zone("a.b.example.com"), Some("example.com"));
        assert_eq!(zone("x.dev.example.com"), Some("dev.example.com"));
        assert_eq!(zone("example.com"), Some("example.com"));
        assert_eq!(zone("ample.com"), Some("ample.com"));
        assert_eq!(zone("other.org"), None);
        assert!(SECRET_FIELDS.iter().all(|f| PROVIDERS.iter().any(|p| p.credentials.iter().any(|(c, _)| c == f))));
        assert!(provider_type("PorkBun").is_some() && provider_type("Route53").is_none());
    }
}
