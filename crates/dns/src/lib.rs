//! DNS providers for ACME DNS-01: a [`DnsProvider`] trait and its clients.
//!
//! - [`Cloudflare`] (API v4): an API token (Bearer), or the legacy e-mail and global API key;
//!   TXT content quoted; `success` checked.
//! - [`DigitalOcean`] (API v2): a Bearer token; integer record ids; 204 on delete.
//! - [`Porkbun`] (API v3): the keys in the JSON body; `status` checked; ids as numbers or
//!   strings; records deleted by id, never by name and type (that would remove the other value
//!   a wildcard order puts at the same name).
//! - [`Rfc2136`]: dynamic updates signed with TSIG, for BIND, Knot, PowerDNS, Technitium.
//! - [`Webhook`]: `POST present/cleanup` to an admin's URL (lego's `httpreq`).
//! - [`Exec`]: a program the configuration names, run as `PROGRAM present|cleanup FQDN VALUE`
//!   (lego's `exec`).
//! - [`AcmeDns`]: an acme-dns server that `_acme-challenge` names are delegated to.
//!
//! Every client takes its base URL with the version path (so tests point it at a fake) and
//! a timeout for each request. Errors keep the provider's own message.

mod acmedns;
mod cloudflare;
mod digitalocean;
pub mod exec;
mod http;
pub mod lookup;
mod porkbun;
mod rfc2136;
mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use portico_model::dns::parents;

pub use acmedns::AcmeDns;
pub use cloudflare::{Auth as CloudflareAuth, Cloudflare};
pub use digitalocean::DigitalOcean;
pub use exec::Exec;
pub use http::client_tls;
pub use porkbun::Porkbun;
pub use rfc2136::Rfc2136;
pub use webhook::Webhook;

/// A zone at a provider: its name and the provider's id for it (the name again where the
/// provider has no other id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// `example.com`.
    pub name: String,
    /// The provider's id (Cloudflare's zone id; the name for DigitalOcean and Porkbun).
    pub id: String,
}

/// A record a provider created, to delete by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordId(pub String);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The credentials were refused; the provider's message.
    #[error("{provider} refused the credentials: {message}")]
    Unauthorized {
        /// The provider type.
        provider: &'static str,
        /// What it said.
        message: String,
    },
    /// The provider answered with an error; its message.
    #[error("{provider} answered {status}: {message}")]
    Provider {
        /// The provider type.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// What it said.
        message: String,
    },
    /// The provider could not be reached, or did not answer in time.
    #[error("cannot reach {provider}: {message}")]
    Unreachable {
        /// The provider type.
        provider: &'static str,
        /// Why.
        message: String,
    },
    /// The provider's answer did not have the documented shape.
    #[error("{provider} answered something unexpected: {message}")]
    Unexpected {
        /// The provider type.
        provider: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The stored provider record cannot make a client.
    #[error("{0}")]
    Config(String),
}

/// A DNS provider account, as ACME DNS-01 needs it.
#[async_trait]
pub trait DnsProvider: Send + Sync + fmt::Debug {
    /// The provider type (`Cloudflare`, `DigitalOcean`, `PorkBun`).
    fn kind(&self) -> &'static str;
    /// Checks the credentials with the provider.
    async fn verify(&self) -> Result<(), DnsError>;
    /// Every zone of the account (every page).
    async fn zones(&self) -> Result<Vec<Zone>, DnsError>;
    /// The zone `name` is in: tries `name`, then each parent, as the provider knows them.
    async fn zone_of(&self, name: &str) -> Result<Option<Zone>, DnsError> {
        let zones = self.zones().await?;
        Ok(enclosing(name, zones.iter().map(|z| z.name.as_str()))
            .and_then(|found| zones.iter().find(|z| z.name == found).cloned()))
    }
    /// Creates a TXT record `fqdn` (`_acme-challenge.example.com`, no trailing dot) in
    /// `zone` holding `value`; returns its id.
    async fn create_txt(&self, zone: &Zone, fqdn: &str, value: &str) -> Result<RecordId, DnsError>;
    /// Deletes a record by id.
    async fn delete(&self, zone: &Zone, id: &RecordId) -> Result<(), DnsError>;
    /// For a provider that answers at one delegated name (acme-dns): that name. Every
    /// `_acme-challenge` name must then be a CNAME to it, checked before an order is placed.
    fn delegated_to(&self) -> Option<&str> {
        None
    }
}

/// The longest of `zones` that `name` is in (itself, or a suffix at a label boundary).
pub fn enclosing<'a>(name: &str, zones: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    zones
        .into_iter()
        .filter(|zone| name == *zone || name.strip_suffix(zone).is_some_and(|rest| rest.ends_with('.')))
        .max_by_key(|zone| zone.len())
}

/// `name` and each of its parents with at least two labels, longest first.
pub(crate) fn candidates(name: &str) -> impl Iterator<Item = &str> {
    parents(name).filter(|n| n.contains('.'))
}

/// The zones a `kind` account names (`"a.com, b.com."`), for a provider that cannot list
/// them: lowercase, without trailing dots; at least one.
pub(crate) fn zone_list(kind: &str, text: &str) -> Result<Vec<String>, DnsError> {
    let zones: Vec<String> = text
        .split(',')
        .map(|z| z.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|z| !z.is_empty())
        .collect();
    if zones.is_empty() {
        return Err(DnsError::Config(format!("the {kind} provider needs its zones (comma-separated)")));
    }
    Ok(zones)
}

/// A provider told to put a value at a name (`present`) and to take it back (`cleanup`),
/// that cannot list zones (the account names them) nor be asked anything without changing a
/// record: a webhook, a program. Its first issuance tells whether it works.
#[async_trait]
pub(crate) trait Hook: Send + Sync + fmt::Debug {
    /// The provider type.
    fn kind(&self) -> &'static str;
    /// The zones its account names.
    fn zones(&self) -> &[String];
    /// `present` or `cleanup` the TXT `value` at `fqdn`.
    async fn act(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError>;
}

#[async_trait]
impl<T: Hook> DnsProvider for T {
    fn kind(&self) -> &'static str {
        Hook::kind(self)
    }

    async fn verify(&self) -> Result<(), DnsError> {
        Ok(())
    }

    async fn zones(&self) -> Result<Vec<Zone>, DnsError> {
        Ok(Hook::zones(self).iter().map(|z| Zone { id: z.clone(), name: z.clone() }).collect())
    }

    async fn create_txt(&self, _zone: &Zone, fqdn: &str, value: &str) -> Result<RecordId, DnsError> {
        self.act("present", fqdn, value).await?;
        // What `cleanup` needs: the name and the value.
        Ok(RecordId(serde_json::json!([fqdn, value]).to_string()))
    }

    async fn delete(&self, _zone: &Zone, id: &RecordId) -> Result<(), DnsError> {
        let bad = || DnsError::Config(format!("{} record id {:?}", Hook::kind(self), id.0));
        let parsed: Vec<String> = serde_json::from_str(&id.0).map_err(|_| bad())?;
        let [fqdn, value] = <[String; 2]>::try_from(parsed).map_err(|_| bad())?;
        self.act("cleanup", &fqdn, &value).await
    }
}

/// The part of `fqdn` before `zone` (`_acme-challenge` of `_acme-challenge.example.com`;
/// empty at the apex).
pub(crate) fn relative<'a>(fqdn: &'a str, zone: &str) -> &'a str {
    if fqdn == zone {
        return "";
    }
    fqdn.strip_suffix(zone).and_then(|rest| rest.strip_suffix('.')).unwrap_or(fqdn)
}

/// Where the providers' APIs are, and how long one request may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Cloudflare's API with its version path.
    pub cloudflare: String,
    /// DigitalOcean's API (the client adds `/v2`).
    pub digitalocean: String,
    /// Porkbun's API with its version path.
    pub porkbun: String,
    /// The longest one request may take (and one run of an Exec provider's program).
    pub timeout: Duration,
    /// The programs Exec providers may name (`dns.exec.NAME = "/path/to/program"`).
    pub exec: BTreeMap<String, std::path::PathBuf>,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            cloudflare: "https://api.cloudflare.com/client/v4".into(),
            digitalocean: "https://api.digitalocean.com".into(),
            porkbun: "https://api.porkbun.com/api/json/v3".into(),
            timeout: Duration::from_secs(30),
            exec: BTreeMap::new(),
        }
    }
}

/// Posts `body` as JSON to `url` (`http://` or `https://`, the web's roots) within
/// `timeout`: how Portico tells an operator's webhook about its certificates
/// (`tls.notify_url`), with the providers' client. Any 2xx is done.
pub async fn post_json(url: &str, body: &serde_json::Value, timeout: Duration) -> Result<(), DnsError> {
    const WHO: &str = "tls.notify_url";
    let answer = http::Http::new(WHO, url, timeout).send(::http::Method::POST, "", &[], Some(body)).await?;
    if answer.status.is_success() {
        return Ok(());
    }
    Err(DnsError::Provider { provider: WHO, status: answer.status.as_u16(), message: answer.text.trim().to_owned() })
}

/// A client for a stored provider record (the seed's `DnsProvider` fields: `dnsProvider`
/// and the type's credential fields).
pub fn client(fields: &BTreeMap<String, String>, endpoints: &Endpoints) -> Result<Box<dyn DnsProvider>, DnsError> {
    let kind = fields.get("dnsProvider").map(String::as_str).unwrap_or_default();
    let field = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
    let missing = |what: &str| DnsError::Config(format!("the {kind} provider needs {what}"));
    match kind.to_ascii_lowercase().as_str() {
        "cloudflare" => {
            let auth = match (field("token"), field("email"), field("apiKey")) {
                (Some(token), _, _) => cloudflare::Auth::Token(token),
                (None, Some(email), Some(key)) => cloudflare::Auth::GlobalKey { email, key },
                _ => return Err(missing("token (or email and apiKey)")),
            };
            Ok(Box::new(Cloudflare::new(&endpoints.cloudflare, auth, endpoints.timeout)))
        }
        "digitalocean" => {
            let token = field("token").ok_or_else(|| missing("token"))?;
            Ok(Box::new(DigitalOcean::new(&endpoints.digitalocean, token, endpoints.timeout)))
        }
        "porkbun" => {
            let (key, secret) =
                field("apiKey").zip(field("secretApiKey")).ok_or_else(|| missing("apiKey and secretApiKey"))?;
            Ok(Box::new(Porkbun::new(&endpoints.porkbun, key, secret, endpoints.timeout)))
        }
        "rfc2136" => {
            let get = |name: &str| field(name).ok_or_else(|| missing("server, keyName, algorithm, secret and zones"));
            Ok(Box::new(Rfc2136::new(
                &get("server")?,
                &get("keyName")?,
                &get("algorithm")?,
                &get("secret")?,
                &get("zones")?,
                endpoints.timeout.min(Duration::from_secs(10)),
            )?))
        }
        "webhook" => {
            let get = |name: &str| field(name).ok_or_else(|| missing("url, secret and zones"));
            Ok(Box::new(Webhook::new(&get("url")?, get("secret")?, &get("zones")?, endpoints.timeout)?))
        }
        "exec" => {
            let get = |name: &str| field(name).ok_or_else(|| missing("program and zones"));
            Ok(Box::new(Exec::new(&get("program")?, &endpoints.exec, &get("zones")?, endpoints.timeout)?))
        }
        "acmedns" => {
            let get = |name: &str| {
                field(name).ok_or_else(|| missing("server, username, password, subdomain, fulldomain and zones"))
            };
            let (username, password, subdomain, fulldomain) =
                (get("username")?, get("password")?, get("subdomain")?, get("fulldomain")?);
            let registration = acmedns::Registration {
                username: &username,
                password: &password,
                subdomain: &subdomain,
                fulldomain: &fulldomain,
            };
            Ok(Box::new(AcmeDns::new(&get("server")?, &registration, &get("zones")?, endpoints.timeout)?))
        }
        _ => Err(DnsError::Config(format!("unknown DNS provider type {kind:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_names() {
        assert_eq!(
            candidates("_acme-challenge.a.example.com").collect::<Vec<_>>(),
            ["_acme-challenge.a.example.com", "a.example.com", "example.com"]
        );
        assert_eq!(
            enclosing("x.dev.example.com", ["example.com", "dev.example.com", "ample.com"]),
            Some("dev.example.com")
        );
        assert_eq!(enclosing("example.org", ["example.com"]), None);
        let managed = ["example.com", "dev.example.com", "ample.com"];
        assert_eq!(enclosing("a.b.example.com", managed), Some("example.com"));
        assert_eq!(enclosing("example.com", managed), Some("example.com"));
        assert_eq!(enclosing("ample.com", managed), Some("ample.com"));
        // Looking the parents up one by one, longest first, finds the same zone.
        let first = |name| parents(name).find(|p| managed.contains(p));
        assert_eq!(first("x.dev.example.com"), Some("dev.example.com"));
        assert_eq!(first("a.b.example.com"), Some("example.com"));
        assert_eq!(first("other.org"), None);
        assert_eq!(relative("_acme-challenge.example.com", "example.com"), "_acme-challenge");
        assert_eq!(relative("_acme-challenge.dev.example.com", "example.com"), "_acme-challenge.dev");
        assert_eq!(relative("example.com", "example.com"), "");
    }
}
