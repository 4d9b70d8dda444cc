//! DNS providers and the domains (zones) they manage, as the seed keeps them: the provider
//! types and their credential fields, and the zone rule (a name belongs to the longest
//! managed zone it is in).

use std::collections::{BTreeMap, HashMap};

use crate::body::{Body, FieldError, required, string, whole_number};
use crate::record::{Stamps, other_fields, stored_fields};
use crate::{Fields, Host, Hostname};

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
pub const PROVIDERS: [ProviderType; 7] = [
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
    // Any DNS, through a webhook of the admin's (lego's `httpreq` convention): it cannot
    // list zones, so the account names them.
    ProviderType {
        name: "Webhook",
        display_name: "Webhook (POST present/cleanup)",
        credentials: &[
            ("url", "Webhook URL"),
            ("secret", "Shared secret (Bearer)"),
            ("zones", "Zones (comma-separated)"),
        ],
        color: "6b46c1",
        glyph: "&#xf0c1;",
    },
    // Any DNS, through a program of the admin's (lego's `exec` convention): the API names a
    // program the configuration file lists (`dns.exec.NAME`), never a path.
    ProviderType {
        name: "Exec",
        display_name: "Program (present/cleanup FQDN VALUE)",
        credentials: &[
            ("program", "Program name (dns.exec.NAME in the configuration)"),
            ("zones", "Zones (comma-separated)"),
        ],
        color: "2d3748",
        glyph: "&#xf120;",
    },
    // acme-dns: `_acme-challenge` names delegated by CNAME to a registration's `fulldomain`;
    // the fields are what acme-dns's `/register` returns.
    ProviderType {
        name: "AcmeDns",
        display_name: "acme-dns (delegated _acme-challenge)",
        credentials: &[
            ("server", "acme-dns server URL"),
            ("username", "Username"),
            ("password", "Password"),
            ("subdomain", "Subdomain"),
            ("fulldomain", "Full domain (the CNAME target)"),
            ("zones", "Zones (comma-separated)"),
        ],
        color: "2b6cb0",
        glyph: "&#xf0c1;",
    },
];

/// The credential fields that are secrets: never shown.
pub const SECRET_FIELDS: [&str; 5] = ["token", "apiKey", "secretApiKey", "secret", "password"];

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
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderDisplay {
    #[serde(rename = "displayName")]
    display_name: &'static str,
    /// A Font Awesome glyph (an HTML character reference), as the seed's UI shows it.
    #[serde(rename = "displayIconUni")]
    display_icon_uni: &'static str,
    /// An icon: an SVG `data:` URL.
    #[serde(rename = "displayIconHtml")]
    display_icon_html: String,
    fields: std::collections::BTreeMap<&'static str, CredentialField>,
}

/// A credential field, as the seed's UI reads it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CredentialField {
    /// Always `string`.
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "isRequired")]
    is_required: bool,
    /// A secret: never shown back.
    #[serde(rename = "isPrivate")]
    is_private: bool,
    #[serde(rename = "displayName")]
    display_name: &'static str,
}

/// A provider type as `OPTIONS /api/dns` lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DnsProviderType))]
pub struct ProviderTypeInfo {
    /// The stored name (`dnsProvider`).
    name: &'static str,
    #[serde(flatten)]
    display: ProviderDisplay,
}

impl ProviderType {
    /// How a UI shows this type.
    pub fn display(&self) -> ProviderDisplay {
        let initial = self.display_name.get(..1).unwrap_or("?");
        let icon = format!(
            "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Ccircle cx='16' cy='16' r='16' fill='%23{}'/%3E%3Ctext x='16' y='22' font-size='17' font-family='sans-serif' text-anchor='middle' fill='white'%3E{initial}%3C/text%3E%3C/svg%3E",
            self.color
        );
        let fields = self
            .credentials
            .iter()
            .map(|(key, display_name)| {
                let is_private = SECRET_FIELDS.contains(key);
                (*key, CredentialField { kind: "string", is_required: true, is_private, display_name })
            })
            .collect();
        ProviderDisplay {
            display_name: self.display_name,
            display_icon_uni: self.glyph,
            display_icon_html: icon,
            fields,
        }
    }

    /// The type as `OPTIONS /api/dns` lists it.
    pub fn info(&self) -> ProviderTypeInfo {
        ProviderTypeInfo { name: self.name, display: self.display() }
    }
}

/// A DNS provider account as the API shows it: its type's display, never its credentials.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = DnsProvider))]
pub struct ProviderView {
    id: String,
    name: String,
    #[serde(rename = "dnsProvider")]
    kind: String,
    #[serde(flatten)]
    display: Option<ProviderDisplay>,
    /// The zones it manages (in listings and reads, not in a write's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    domains: Option<Vec<DomainView>>,
    #[serde(flatten)]
    stamps: Stamps,
    /// Its other stored fields that are not secrets (`propagationTimeout`; an RFC 2136
    /// account's server, key name, algorithm and zones), as stored.
    #[serde(flatten)]
    other: BTreeMap<String, String>,
}

impl ProviderView {
    /// The stored account `fields`, kept under `key`, without its zones.
    pub fn of(key: &str, fields: &Fields) -> Self {
        let account = Provider::from_fields(key, fields);
        let mut other = public_fields(&account.other);
        if let Some(seconds) = account.propagation_timeout {
            other.insert(PROPAGATION.to_owned(), seconds.to_string());
        }
        Self {
            display: account.provider_type().map(ProviderType::display),
            id: account.id,
            name: account.name,
            kind: account.kind,
            domains: None,
            stamps: account.stamps,
            other,
        }
    }
}

/// A managed zone as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Domain))]
pub struct DomainView {
    domain: String,
    #[serde(rename = "dnsProvider_id")]
    provider_id: String,
    #[serde(rename = "zoneId", skip_serializing_if = "Option::is_none")]
    zone_id: Option<String>,
    /// When a zone is read on its own: the provider that manages it (a DNS provider without
    /// its `domains`; `null` when it is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    provider: Option<Option<Box<ProviderView>>>,
    #[serde(flatten)]
    stamps: Stamps,
    /// Its other stored fields that are not secrets, as stored.
    #[serde(flatten)]
    other: BTreeMap<String, String>,
}

/// The stored fields of a zone that its own fields name.
const DOMAIN_FIELDS: [&str; 3] = ["domain", "dnsProvider_id", "zoneId"];

impl DomainView {
    /// The stored zone `fields`, kept under `key`, without its provider.
    pub fn of(key: &str, fields: &Fields) -> Self {
        Self {
            domain: fields.get("domain").cloned().unwrap_or_else(|| key.to_owned()),
            provider_id: fields.get("dnsProvider_id").cloned().unwrap_or_default(),
            zone_id: fields.get("zoneId").cloned(),
            provider: None,
            stamps: Stamps::read(fields),
            other: public_fields(&other_fields(fields, &DOMAIN_FIELDS)),
        }
    }
}

/// The fields of `fields` that are not secrets.
fn public_fields(fields: &Fields) -> BTreeMap<String, String> {
    fields.iter().filter(|(k, _)| !crate::is_secret_field(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A DNS provider account (the seed's `DnsProvider` record): a name, the provider type, its
/// credentials, and how long its records take to be served.
#[derive(Clone, PartialEq, Eq)]
pub struct Provider {
    /// The record's id (its key).
    pub id: String,
    /// What the admin calls it.
    pub name: String,
    /// The stored provider type (`dnsProvider`), one of [`PROVIDERS`] for any account
    /// Portico made.
    pub kind: String,
    /// Seconds DNS-01 waits at most for its records to be served (`propagationTimeout`),
    /// instead of `dns.propagation_timeout`.
    pub propagation_timeout: Option<u64>,
    /// Who made and last changed the record, and when.
    pub stamps: Stamps,
    /// The credentials, and fields this version does not know, as stored.
    pub other: Fields,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Provider").field("id", &self.id).field("name", &self.name).field("kind", &self.kind).finish()
    }
}

/// The stored field that holds [`Provider::propagation_timeout`].
const PROPAGATION: &str = "propagationTimeout";
const PROVIDER_FIELDS: [&str; 4] = ["id", "name", "dnsProvider", PROPAGATION];

impl Provider {
    /// A new account from the API's `{name, dnsProvider, <credentials>, propagationTimeout?}`,
    /// with id `id`, made by `created_by` at `now_ms`. Every credential field of the type is
    /// required; a Cloudflare account may give `email` and `apiKey` (the Global API Key)
    /// instead of `token`. Every bad field is reported.
    pub fn from_json(body: &Body, id: String, created_by: &str, now_ms: i64) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = required(body, "name", &mut errors);
        let kind = required(body, "dnsProvider", &mut errors).and_then(|k| {
            let found = provider_type(&k);
            if found.is_none() {
                let names: Vec<&str> = PROVIDERS.iter().map(|p| p.name).collect();
                let message = format!("dnsProvider must be one of {}", names.join(", "));
                errors.push(FieldError::refused("dnsProvider", message));
            }
            found
        });
        let mut other = Fields::new();
        let global_key = kind.is_some_and(|p| p.name == "Cloudflare") && !body.contains_key("token");
        if global_key {
            // Cloudflare's legacy alternative to an API token: the account e-mail and the
            // Global API Key.
            for key in ["email", "apiKey"] {
                if let Some(value) = string(body, key, &mut errors) {
                    other.insert(key.to_owned(), value);
                }
            }
            if other.len() < 2 && !errors.iter().any(|e| matches!(e.field(), "email" | "apiKey")) {
                let message = "token is required (or email and apiKey, the Global API Key)";
                errors.push(FieldError::refused("token", message));
            }
        } else if let Some(p) = kind {
            for (key, _) in p.credentials {
                if let Some(value) = required(body, key, &mut errors) {
                    other.insert((*key).to_owned(), value);
                }
            }
        }
        let propagation_timeout = propagation_timeout(body, &mut errors);
        match (name, kind) {
            (Some(name), Some(kind)) if errors.is_empty() => Ok(Self {
                id,
                name,
                kind: kind.name.to_owned(),
                propagation_timeout,
                stamps: Stamps::new(created_by, now_ms),
                other,
            }),
            _ => Err(errors),
        }
    }

    /// Applies an update's fields (`name`, credentials, `propagationTimeout`; the type cannot
    /// change). Returns the credential fields it changed, which the caller checks with the
    /// provider before storing. On error the account may be partly changed: discard it.
    pub fn apply_json(&mut self, body: &Body) -> Result<Vec<&'static str>, Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(seconds) = propagation_timeout(body, &mut errors) {
            self.propagation_timeout = Some(seconds);
        }
        if let Some(name) = string(body, "name", &mut errors) {
            self.name = name;
        }
        if body.contains_key("dnsProvider") {
            errors.push(FieldError::refused("dnsProvider", "dnsProvider cannot change; add a new provider instead"));
        }
        let mut changed = Vec::new();
        for (key, _) in self.provider_type().map_or(&[][..], |p| p.credentials) {
            if let Some(value) = string(body, key, &mut errors) {
                self.other.insert((*key).to_owned(), value);
                changed.push(*key);
            }
        }
        if errors.is_empty() { Ok(changed) } else { Err(errors) }
    }

    /// A stored account, keyed `key`.
    pub fn from_fields(key: &str, fields: &Fields) -> Self {
        Self {
            id: fields.get("id").cloned().unwrap_or_else(|| key.to_owned()),
            name: fields.get("name").cloned().unwrap_or_default(),
            kind: fields.get("dnsProvider").cloned().unwrap_or_default(),
            propagation_timeout: fields.get(PROPAGATION).and_then(|t| t.trim().parse().ok()),
            stamps: Stamps::read(fields),
            other: other_fields(fields, &PROVIDER_FIELDS),
        }
    }

    /// The stored record (what a DNS client is made from).
    pub fn to_fields(&self) -> Fields {
        let known = [("id", self.id.clone()), ("name", self.name.clone()), ("dnsProvider", self.kind.clone())];
        let timeout = self.propagation_timeout.map(|seconds| (PROPAGATION, seconds.to_string()));
        stored_fields(&self.other, known.into_iter().chain(timeout), &self.stamps)
    }

    /// Its provider type, if this version knows it.
    pub fn provider_type(&self) -> Option<&'static ProviderType> {
        provider_type(&self.kind)
    }

    /// The field a refusal of its credentials is reported on: its first credential.
    pub fn credential_field(&self) -> &'static str {
        let given = |key: &&str| self.other.contains_key(*key);
        let keys = self.provider_type().map_or(&[][..], |p| p.credentials).iter().map(|(k, _)| *k);
        keys.chain(["email", "apiKey"]).find(given).unwrap_or("dnsProvider")
    }
}

/// `propagationTimeout`, if given: whole seconds, 1 to 3600, as a number or a string.
fn propagation_timeout(body: &Body, errors: &mut Vec<FieldError>) -> Option<u64> {
    whole_number(body, PROPAGATION, 1..=3600, "a number of seconds from 1 to 3600", errors)
}

/// A managed zone (the seed's `Domain` record): a domain whose records a provider account
/// writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The zone's name (the record's key).
    pub domain: Hostname,
    /// The [`Provider`] that manages it (`dnsProvider_id`).
    pub provider_id: String,
    /// The provider's id for the zone, if it has one (`zoneId`).
    pub zone_id: Option<String>,
    /// Who made and last changed the record, and when.
    pub stamps: Stamps,
}

impl Domain {
    /// A zone `domain` of account `provider_id`, linked by `by` at `now_ms`.
    pub fn new(domain: Hostname, provider_id: String, zone_id: Option<String>, by: &str, now_ms: i64) -> Self {
        Self { domain, provider_id, zone_id, stamps: Stamps::new(by, now_ms) }
    }

    /// A new zone from the API's `{domain, dnsProvider_id, zoneId?}` (whether the account
    /// exists is the caller's to check). Every bad field is reported.
    pub fn from_json(body: &Body, by: &str, now_ms: i64) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let domain = required(body, "domain", &mut errors)
            .and_then(|d| Hostname::parse(&d).map_err(|e| errors.push(FieldError::invalid("domain", e))).ok());
        let provider_id = required(body, "dnsProvider_id", &mut errors);
        let zone_id = string(body, "zoneId", &mut errors);
        match (domain, provider_id) {
            (Some(domain), Some(provider_id)) if errors.is_empty() => {
                Ok(Self::new(domain, provider_id, zone_id, by, now_ms))
            }
            _ => Err(errors),
        }
    }

    /// The stored record.
    pub fn to_fields(&self) -> Fields {
        let known = [("domain", self.domain.to_string()), ("dnsProvider_id", self.provider_id.clone())];
        let zone = self.zone_id.clone().map(|z| ("zoneId", z));
        stored_fields(&Fields::new(), known.into_iter().chain(zone), &self.stamps)
    }
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
    pub fn provider(&self, id: &str, fields: &Fields) -> ProviderView {
        let mut view = ProviderView::of(id, fields);
        let mine = self.domains.iter().filter(|(_, d)| d.get("dnsProvider_id").is_some_and(|p| p == id));
        view.domains = Some(mine.map(|(key, d)| DomainView::of(key, d)).collect());
        view
    }

    /// A zone with its provider.
    pub fn zone(&self, key: &str, fields: &Fields) -> DomainView {
        let mut view = DomainView::of(key, fields);
        let provider = fields.get("dnsProvider_id").and_then(|id| Some((id, self.providers.get(id)?)));
        view.provider = Some(provider.map(|(id, p)| Box::new(ProviderView::of(id, p))));
        view
    }

    /// The managed zone a host name or pattern is in, with its provider
    /// ([`zones_of`] is the rule).
    pub fn zone_of(&self, pattern: &str) -> Option<DomainView> {
        zones_of(pattern).find_map(|zone| {
            let at = self.domains.binary_search_by(|(key, _)| key.as_str().cmp(zone)).ok()?;
            let (key, fields) = &self.domains[at];
            Some(self.zone(key, fields))
        })
    }

    /// A host as the API shows it, with the seed's `domain` relation: the managed zone it is
    /// in, with that zone's provider (`null` when it is in none).
    pub fn host_with_domain(&self, host: &Host) -> crate::host_view::HostView {
        crate::host_view::HostView::of(host).in_zone(self.zone_of(host.host.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn providers_and_their_secret_fields() {
        assert!(SECRET_FIELDS.iter().all(|f| PROVIDERS.iter().any(|p| p.credentials.iter().any(|(c, _)| c == f))));
        assert!(provider_type("PorkBun").is_some() && provider_type("Route53").is_none());
    }

    fn body(value: Value) -> Body {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_new_provider_needs_its_type_and_credentials() {
        let errors =
            Provider::from_json(&body(json!({"dnsProvider": "Route53", "propagationTimeout": 0})), "i".into(), "a", 1)
                .unwrap_err();
        assert_eq!(
            errors.iter().map(FieldError::field).collect::<Vec<_>>(),
            ["name", "dnsProvider", "propagationTimeout"]
        );
        let errors = Provider::from_json(
            &body(json!({"name": "p", "dnsProvider": "PorkBun", "apiKey": "k"})),
            "i".into(),
            "a",
            1,
        )
        .unwrap_err();
        assert_eq!(errors.iter().map(ToString::to_string).collect::<Vec<_>>(), ["secretApiKey is required"]);
        let global = json!({"name": "cf", "dnsProvider": "Cloudflare", "email": "a@b.c", "apiKey": "k", "propagationTimeout": "30"});
        let cf = Provider::from_json(&body(global), "id1".into(), "ann", 5).unwrap();
        assert_eq!((cf.credential_field(), cf.propagation_timeout), ("email", Some(30)));
        assert!(!format!("{cf:?}").contains("a@b.c"), "credentials stay out of logs");
        let stored = cf.to_fields();
        assert_eq!(Provider::from_fields("id1", &stored), cf);
        let shown = serde_json::to_value(ProviderView::of("id1", &stored)).unwrap();
        assert!(shown.get("apiKey").is_none() && shown["displayName"] == "CloudFlare", "{shown}");
        assert_eq!((shown["email"].as_str(), shown["propagationTimeout"].as_str()), (Some("a@b.c"), Some("30")));
        assert_eq!(shown["created_on"], json!(5), "times as numbers");
    }

    #[test]
    fn an_update_names_the_credentials_it_changes_and_never_the_type() {
        let new = json!({"name": "do", "dnsProvider": "DigitalOcean", "token": "t1"});
        let mut account = Provider::from_json(&body(new), "id".into(), "ann", 1).unwrap();
        assert_eq!(account.clone().apply_json(&body(json!({"name": "renamed"}))), Ok(vec![]));
        assert_eq!(account.apply_json(&body(json!({"token": "t2"}))), Ok(vec!["token"]));
        assert_eq!(account.other["token"], "t2");
        let errors = account.apply_json(&body(json!({"dnsProvider": "PorkBun", "name": 3}))).unwrap_err();
        assert_eq!(errors.iter().map(FieldError::field).collect::<Vec<_>>(), ["name", "dnsProvider"]);
    }

    #[test]
    fn a_new_domain_is_a_valid_name_of_an_account() {
        let d =
            Domain::from_json(&body(json!({"domain": "Example.Test", "dnsProvider_id": "p", "zoneId": "z"})), "a", 1)
                .unwrap();
        assert_eq!((d.domain.as_str(), d.to_fields()["zoneId"].as_str()), ("example.test", "z"));
        let errors = Domain::from_json(&body(json!({"domain": "bad name"})), "a", 1).unwrap_err();
        assert_eq!(errors.iter().map(FieldError::field).collect::<Vec<_>>(), ["domain", "dnsProvider_id"]);
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
