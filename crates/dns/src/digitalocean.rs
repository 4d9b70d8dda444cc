//! DigitalOcean API v2 (base `https://api.digitalocean.com`; the paths start with `/v2`).

use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::http::Http;
use crate::{DnsError, DnsProvider, RecordId, Zone, candidates, relative};

const KIND: &str = "DigitalOcean";

/// A DigitalOcean account.
pub struct DigitalOcean {
    http: Http,
    token: String,
}

impl std::fmt::Debug for DigitalOcean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitalOcean").field("http", &self.http).finish_non_exhaustive()
    }
}

impl DigitalOcean {
    /// A client for the API at `base`.
    pub fn new(base: &str, token: String, timeout: Duration) -> Self {
        Self { http: Http::new(KIND, base, timeout), token }
    }

    /// Calls the API; `None` for a 404 (a name that is not a zone).
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Option<Value>, DnsError> {
        let bearer = format!("Bearer {}", self.token);
        let answer = self.http.send(method, &format!("/v2{path}"), &[("authorization", &bearer)], body).await?;
        if answer.status.is_success() {
            return Ok(Some(answer.json));
        }
        if answer.status == StatusCode::NOT_FOUND && answer.json["id"] == "not_found" {
            return Ok(None);
        }
        if answer.json.is_null() {
            return Err(self.http.not_json(&answer));
        }
        let message = answer.json["message"].as_str().unwrap_or("error").to_owned();
        if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN {
            return Err(DnsError::Unauthorized { provider: KIND, message });
        }
        Err(DnsError::Provider { provider: KIND, status: answer.status.as_u16(), message })
    }

    fn zone(value: &Value) -> Option<Zone> {
        let name = value["name"].as_str()?.to_owned();
        Some(Zone { id: name.clone(), name })
    }
}

#[async_trait]
impl DnsProvider for DigitalOcean {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn verify(&self) -> Result<(), DnsError> {
        self.call(Method::GET, "/domains?per_page=1", None).await.map(|_| ())
    }

    async fn zones(&self) -> Result<Vec<Zone>, DnsError> {
        let mut zones = Vec::new();
        let mut page = 1;
        loop {
            let Some(body) = self.call(Method::GET, &format!("/domains?page={page}&per_page=200"), None).await? else {
                break;
            };
            let results = body["domains"].as_array().cloned().unwrap_or_default();
            zones.extend(results.iter().filter_map(Self::zone));
            if results.is_empty() || body["links"]["pages"]["next"].as_str().is_none() {
                break;
            }
            page += 1;
        }
        Ok(zones)
    }

    async fn zone_of(&self, name: &str) -> Result<Option<Zone>, DnsError> {
        // `GET /v2/domains/{name}` is 404 unless the name is a zone.
        for candidate in candidates(name) {
            if let Some(body) = self.call(Method::GET, &format!("/domains/{candidate}"), None).await?
                && let Some(zone) = Self::zone(&body["domain"])
            {
                return Ok(Some(zone));
            }
        }
        Ok(None)
    }

    async fn create_txt(&self, zone: &Zone, fqdn: &str, value: &str) -> Result<RecordId, DnsError> {
        let name = match relative(fqdn, &zone.name) {
            "" => "@",
            name => name,
        };
        let body = json!({"type": "TXT", "name": name, "data": value, "ttl": 30});
        let answer = self.call(Method::POST, &format!("/domains/{}/records", zone.name), Some(&body)).await?;
        answer.and_then(|a| a["domain_record"]["id"].as_u64()).map(|id| RecordId(id.to_string())).ok_or_else(|| {
            DnsError::Unexpected { provider: KIND, message: "no integer record id in the answer".into() }
        })
    }

    async fn delete(&self, zone: &Zone, id: &RecordId) -> Result<(), DnsError> {
        match self.call(Method::DELETE, &format!("/domains/{}/records/{id}", zone.name), None).await? {
            Some(_) => Ok(()),
            // Gone already: what a delete wants.
            None => Ok(()),
        }
    }
}
