//! acme-dns (joohoi/acme-dns): a small DNS server that only serves `_acme-challenge` TXT
//! records, updated over HTTP with credentials that can change nothing else. The admin
//! registers once (`POST /register` returns `username`, `password`, `subdomain`,
//! `fulldomain`) and delegates each name's `_acme-challenge` with a CNAME to `fulldomain`;
//! Portico then posts `{"subdomain", "txt"}` to `/update` with `X-Api-User` and `X-Api-Key`.
//! acme-dns keeps the two newest values and has no delete: cleanup is nothing.

use std::time::Duration;

use async_trait::async_trait;
use http::Method;
use serde_json::json;

use crate::http::Http;
use crate::{DnsError, DnsProvider, RecordId, Zone};

const KIND: &str = "AcmeDns";

/// An acme-dns registration.
pub struct AcmeDns {
    http: Http,
    username: String,
    password: String,
    subdomain: String,
    fulldomain: String,
    zones: Vec<String>,
}

impl std::fmt::Debug for AcmeDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeDns")
            .field("http", &self.http)
            .field("fulldomain", &self.fulldomain)
            .field("zones", &self.zones)
            .finish_non_exhaustive()
    }
}

/// A registration's fields, as `/register` returns them.
pub struct Registration<'a> {
    /// `X-Api-User`.
    pub username: &'a str,
    /// `X-Api-Key` (a secret).
    pub password: &'a str,
    /// The registration's subdomain (a UUID).
    pub subdomain: &'a str,
    /// Where `_acme-challenge` names point: `<subdomain>.<acme-dns domain>`.
    pub fulldomain: &'a str,
}

impl AcmeDns {
    /// A client of the acme-dns server at `server` for `registration`, used for `zones`
    /// (comma-separated: the domains whose `_acme-challenge` names are delegated to it).
    pub fn new(
        server: &str,
        registration: &Registration<'_>,
        zones: &str,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let zones = crate::zone_list(KIND, zones)?;
        Ok(Self {
            http: Http::for_account_url(KIND, "server", server, timeout)?,
            username: registration.username.to_owned(),
            password: registration.password.to_owned(),
            subdomain: registration.subdomain.to_owned(),
            fulldomain: registration.fulldomain.trim_end_matches('.').to_ascii_lowercase(),
            zones,
        })
    }

    /// Sets one of the registration's two TXT values.
    async fn update(&self, value: &str) -> Result<(), DnsError> {
        let headers = [("x-api-user", self.username.as_str()), ("x-api-key", self.password.as_str())];
        let body = json!({"subdomain": self.subdomain, "txt": value});
        let answer = self.http.send(Method::POST, "/update", &headers, Some(&body)).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        // acme-dns answers `{"error": "forbidden"}`, `{"error": "bad_txt"}`, ...
        let message = answer.json["error"].as_str().map_or_else(|| answer.text.trim().to_owned(), str::to_owned);
        if answer.status.as_u16() == 401 || answer.status.as_u16() == 403 {
            return Err(DnsError::Unauthorized { provider: KIND, message });
        }
        Err(DnsError::Provider { provider: KIND, status: answer.status.as_u16(), message })
    }
}

#[async_trait]
impl DnsProvider for AcmeDns {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Sets a placeholder value (acme-dns keeps the two newest; a challenge's own values come
    /// after it): wrong credentials are refused now, not at the first issuance.
    async fn verify(&self) -> Result<(), DnsError> {
        self.update(&"A".repeat(43)).await
    }

    async fn zones(&self) -> Result<Vec<Zone>, DnsError> {
        Ok(self.zones.iter().map(|z| Zone { id: z.clone(), name: z.clone() }).collect())
    }

    fn delegated_to(&self) -> Option<&str> {
        Some(&self.fulldomain)
    }

    async fn create_txt(&self, _zone: &Zone, _fqdn: &str, value: &str) -> Result<RecordId, DnsError> {
        self.update(value).await?;
        Ok(RecordId(self.subdomain.clone()))
    }

    /// acme-dns has no delete: the next challenge's values replace these.
    async fn delete(&self, _zone: &Zone, _id: &RecordId) -> Result<(), DnsError> {
        Ok(())
    }
}
