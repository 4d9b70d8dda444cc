//! The one HTTP client the provider clients share: JSON in, status and JSON out, with a
//! deadline per request. `https://` with the web's roots, or `http://` (a test's fake).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::DnsError;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A JSON client for one provider.
#[derive(Clone)]
pub(crate) struct Http {
    provider: &'static str,
    base: String,
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

/// An answer: the status and the body, parsed as JSON when it is JSON (`Null` otherwise).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub json: serde_json::Value,
    /// The body's start, for errors when it is not JSON (Porkbun's 503 is an HTML page).
    pub text: String,
}

/// The TLS configuration of Portico's clients (DNS provider APIs, the ACME server, targets
/// whose certificates are checked): *ring*, trusting the web PKI's roots and `extra`.
pub fn client_tls(extra: rustls::RootCertStore) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    roots.roots.extend(extra.roots);
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

impl Http {
    pub(crate) fn new(provider: &'static str, base: &str, timeout: Duration) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(rustls::RootCertStore::empty()))
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Self { provider, base: base.trim_end_matches('/').to_owned(), client, timeout }
    }

    /// A client for an account's own `field`, a URL that must be `http://` or `https://`
    /// (a webhook's, an acme-dns server's).
    pub(crate) fn for_account_url(
        provider: &'static str,
        field: &str,
        url: &str,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let parsed: http::Uri = url
            .parse()
            .map_err(|_| DnsError::Config(format!("the {provider} provider's {field} is not a URL: {url}")))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
            return Err(DnsError::Config(format!(
                "the {provider} provider's {field} must start with http:// or https://"
            )));
        }
        Ok(Self::new(provider, url, timeout))
    }

    /// Sends `method path` (the path after the base, with its query) with `headers` and an
    /// optional JSON body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, DnsError> {
        let unreachable = |message: String| DnsError::Unreachable { provider: self.provider, message };
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| DnsError::Config(format!("{} request: {e}", self.provider)))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
            Ok::<_, DnsError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        Ok(Answer { status, json, text })
    }

    /// An answer that is not JSON as an error (a proxy's or a maintenance page).
    pub(crate) fn not_json(&self, answer: &Answer) -> DnsError {
        DnsError::Provider {
            provider: self.provider,
            status: answer.status.as_u16(),
            message: answer.text.trim().to_owned(),
        }
    }
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("base", &self.base).finish_non_exhaustive()
    }
}
