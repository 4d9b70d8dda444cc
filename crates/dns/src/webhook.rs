//! A webhook that changes DNS records for Portico (lego's `httpreq` convention): `POST
//! <url>/present` and `POST <url>/cleanup`, each with `{"fqdn", "value"}` (the name with its
//! trailing dot) and `Authorization: Bearer <secret>`; any 2xx is done. The webhook cannot
//! list zones: the account names them.

use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode};
use serde_json::json;

use crate::DnsError;
use crate::http::Http;

const KIND: &str = "Webhook";

/// A webhook account.
pub struct Webhook {
    http: Http,
    secret: String,
    zones: Vec<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("http", &self.http).field("zones", &self.zones).finish_non_exhaustive()
    }
}

impl Webhook {
    /// A client for the webhook at `url` (`http://` or `https://`), for `zones`
    /// (comma-separated).
    pub fn new(url: &str, secret: String, zones: &str, timeout: Duration) -> Result<Self, DnsError> {
        let zones = crate::zone_list(KIND, zones)?;
        Ok(Self { http: Http::for_account_url(KIND, "url", url, timeout)?, secret, zones })
    }

    /// Posts `{"fqdn", "value"}` to `<url>/<action>`.
    async fn post(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let bearer = format!("Bearer {}", self.secret);
        let body = json!({"fqdn": format!("{fqdn}."), "value": value});
        let answer =
            self.http.send(Method::POST, &format!("/{action}"), &[("authorization", &bearer)], Some(&body)).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let message = match answer.json.get("error").or_else(|| answer.json.get("message")).and_then(|m| m.as_str()) {
            Some(message) => message.to_owned(),
            None => answer.text.chars().take(200).collect(),
        };
        if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN {
            return Err(DnsError::Unauthorized { provider: KIND, message });
        }
        Err(DnsError::Provider { provider: KIND, status: answer.status.as_u16(), message })
    }
}

#[async_trait]
impl crate::Hook for Webhook {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn zones(&self) -> &[String] {
        &self.zones
    }

    async fn act(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.post(action, fqdn, value).await
    }
}
