//! Cloudflare API v4 (base `https://api.cloudflare.com/client/v4`).

use std::time::Duration;

use async_trait::async_trait;
use http::Method;
use serde_json::{Value, json};

use crate::http::{Answer, Http};
use crate::{DnsError, DnsProvider, RecordId, Zone, candidates};

const KIND: &str = "Cloudflare";

/// How a Cloudflare client authenticates.
#[derive(Clone)]
pub enum Auth {
    /// An API token (needs Zone:Read and DNS:Edit): `Authorization: Bearer`.
    Token(String),
    /// The legacy account e-mail and Global API Key (`X-Auth-Email`, `X-Auth-Key`).
    GlobalKey {
        /// The account's e-mail address.
        email: String,
        /// The Global API Key.
        key: String,
    },
}

/// A Cloudflare account.
#[derive(Debug)]
pub struct Cloudflare {
    http: Http,
    auth: Auth,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Token(_) => "Token(…)",
            Auth::GlobalKey { .. } => "GlobalKey(…)",
        })
    }
}

impl Cloudflare {
    /// A client for the API at `base` (with its version path).
    pub fn new(base: &str, auth: Auth, timeout: Duration) -> Self {
        Self { http: Http::new(KIND, base, timeout), auth }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, DnsError> {
        let bearer;
        let headers: Vec<(&str, &str)> = match &self.auth {
            Auth::Token(token) => {
                bearer = format!("Bearer {token}");
                vec![("authorization", bearer.as_str())]
            }
            Auth::GlobalKey { email, key } => vec![("x-auth-email", email.as_str()), ("x-auth-key", key.as_str())],
        };
        let answer = self.http.send(method, path, &headers, body).await?;
        self.check(answer)
    }

    /// The body, if `success` is true; otherwise the error Cloudflare described.
    fn check(&self, answer: Answer) -> Result<Value, DnsError> {
        if answer.json.is_null() {
            return Err(self.http.not_json(&answer));
        }
        if answer.json["success"] == true && answer.status.is_success() {
            return Ok(answer.json);
        }
        let errors = answer.json["errors"].as_array().cloned().unwrap_or_default();
        let message = errors
            .iter()
            .map(|e| {
                let chained: Vec<String> = e["error_chain"]
                    .as_array()
                    .map(|c| c.iter().filter_map(|x| x["message"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let head = format!("{} ({})", e["message"].as_str().unwrap_or("error"), e["code"]);
                if chained.is_empty() { head } else { format!("{head}: {}", chained.join("; ")) }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let message = if message.is_empty() { answer.text.trim().to_owned() } else { message };
        // 10000: "Authentication error"; 9109: "Invalid access token"; 6003: bad auth headers.
        let auth_code = errors.iter().any(|e| matches!(e["code"].as_u64(), Some(10000 | 9109 | 6003 | 9106)));
        if auth_code || matches!(answer.status.as_u16(), 401 | 403) {
            return Err(DnsError::Unauthorized { provider: KIND, message });
        }
        Err(DnsError::Provider { provider: KIND, status: answer.status.as_u16(), message })
    }

    fn zone(value: &Value) -> Option<Zone> {
        Some(Zone { name: value["name"].as_str()?.to_owned(), id: value["id"].as_str()?.to_owned() })
    }
}

#[async_trait]
impl DnsProvider for Cloudflare {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn verify(&self) -> Result<(), DnsError> {
        self.call(Method::GET, "/zones?per_page=5", None).await.map(|_| ())
    }

    async fn zones(&self) -> Result<Vec<Zone>, DnsError> {
        let mut zones = Vec::new();
        for page in 1.. {
            let body = self.call(Method::GET, &format!("/zones?page={page}&per_page=50"), None).await?;
            let results = body["result"].as_array().cloned().unwrap_or_default();
            zones.extend(results.iter().filter_map(Self::zone));
            let pages = body["result_info"]["total_pages"].as_u64().unwrap_or(1);
            if results.is_empty() || page >= pages {
                break;
            }
        }
        Ok(zones)
    }

    async fn zone_of(&self, name: &str) -> Result<Option<Zone>, DnsError> {
        // `name=` is an exact match: try the name, then each parent.
        for candidate in candidates(name) {
            let body = self.call(Method::GET, &format!("/zones?name={candidate}&per_page=5"), None).await?;
            if let Some(zone) = body["result"].as_array().and_then(|r| r.first()).and_then(Self::zone) {
                return Ok(Some(zone));
            }
        }
        Ok(None)
    }

    async fn create_txt(&self, zone: &Zone, fqdn: &str, value: &str) -> Result<RecordId, DnsError> {
        // Cloudflare's TXT content is a quoted character string.
        let body = json!({"type": "TXT", "name": fqdn, "content": format!("\"{value}\""), "ttl": 120});
        let answer = self.call(Method::POST, &format!("/zones/{}/dns_records", zone.id), Some(&body)).await?;
        answer["result"]["id"]
            .as_str()
            .map(|id| RecordId(id.to_owned()))
            .ok_or_else(|| DnsError::Unexpected { provider: KIND, message: "no record id in the answer".into() })
    }

    async fn delete(&self, zone: &Zone, id: &RecordId) -> Result<(), DnsError> {
        self.call(Method::DELETE, &format!("/zones/{}/dns_records/{id}", zone.id), None).await.map(|_| ())
    }
}
