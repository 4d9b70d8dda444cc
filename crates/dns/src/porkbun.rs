//! Porkbun API v3 (base `https://api.porkbun.com/api/json/v3`): every call a POST with the
//! keys in the JSON body.

use std::time::Duration;

use async_trait::async_trait;
use http::Method;
use serde_json::{Value, json};

use crate::http::Http;
use crate::{DnsError, DnsProvider, RecordId, Zone, relative};

const KIND: &str = "PorkBun";

/// A Porkbun account.
pub struct Porkbun {
    http: Http,
    key: String,
    secret: String,
}

impl std::fmt::Debug for Porkbun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Porkbun").field("http", &self.http).finish_non_exhaustive()
    }
}

impl Porkbun {
    /// A client for the API at `base` (with its version path).
    pub fn new(base: &str, key: String, secret: String, timeout: Duration) -> Self {
        Self { http: Http::new(KIND, base, timeout), key, secret }
    }

    async fn call(&self, path: &str, mut body: Value) -> Result<Value, DnsError> {
        body["apikey"] = self.key.clone().into();
        body["secretapikey"] = self.secret.clone().into();
        let answer = self.http.send(Method::POST, path, &[], Some(&body)).await?;
        if answer.json.is_null() {
            return Err(self.http.not_json(&answer));
        }
        if answer.json["status"] == "SUCCESS" && answer.status.is_success() {
            return Ok(answer.json);
        }
        let message = answer.json["message"].as_str().unwrap_or("error").to_owned();
        if message.contains("Invalid API key") || answer.status.as_u16() == 401 || answer.status.as_u16() == 403 {
            return Err(DnsError::Unauthorized { provider: KIND, message });
        }
        Err(DnsError::Provider { provider: KIND, status: answer.status.as_u16(), message })
    }
}

/// An id as Porkbun sends it: a number (`create`) or a string (`retrieve`).
fn lenient_id(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[async_trait]
impl DnsProvider for Porkbun {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn verify(&self) -> Result<(), DnsError> {
        self.call("/ping", json!({})).await.map(|_| ())
    }

    async fn zones(&self) -> Result<Vec<Zone>, DnsError> {
        // `listAll` answers up to 1,000 domains from index `start`.
        let mut zones = Vec::new();
        loop {
            let body = self.call("/domain/listAll", json!({"start": zones.len().to_string()})).await?;
            let page: Vec<Zone> = body["domains"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|d| d["domain"].as_str())
                        .map(|name| Zone { name: name.to_owned(), id: name.to_owned() })
                        .collect()
                })
                .unwrap_or_default();
            let full = page.len() >= 1000;
            zones.extend(page);
            if !full {
                break;
            }
        }
        Ok(zones)
    }

    async fn create_txt(&self, zone: &Zone, fqdn: &str, value: &str) -> Result<RecordId, DnsError> {
        let body = json!({"name": relative(fqdn, &zone.name), "type": "TXT", "content": value, "ttl": "600"});
        let answer = self.call(&format!("/dns/create/{}", zone.name), body).await?;
        lenient_id(&answer["id"])
            .map(RecordId)
            .ok_or_else(|| DnsError::Unexpected { provider: KIND, message: "no record id in the answer".into() })
    }

    async fn delete(&self, zone: &Zone, id: &RecordId) -> Result<(), DnsError> {
        // By id: deleting by name and type would also remove the other value at that name.
        self.call(&format!("/dns/delete/{}/{id}", zone.name), json!({})).await.map(|_| ())
    }
}
