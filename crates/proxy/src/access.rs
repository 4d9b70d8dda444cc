//! The access phase: a host's `allow`/`deny` lists, `rateLimit`, `basicAuth` and
//! `forwardAuth`, in that order, for the client's address as [`client_address`] finds it.
//! A host without a policy never gets here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use ipnet::IpNet;
use portico_model::Host;
use portico_model::access::{BasicUser, ForwardAuth, RateLimit};
use sha2::{Digest, Sha256};

use crate::forward::{Scheme, strip_hop_by_hop};
use crate::pool::Pool;
use crate::response::{BoxError, ProxyBody, page};

/// Client addresses followed per host for rate limits before idle ones are forgotten.
const MAX_BUCKETS: usize = 65_536;
/// Verified basic-auth credentials remembered (Argon2 is slow on purpose: it runs once per
/// user and password, not per request).
const MAX_VERIFIED: usize = 4096;
/// How long a verified password is remembered.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// The client's address: the peer's, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy (all trusted: the leftmost).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else { return peer };
        for hop in text.split(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed list cannot be read from the right: trust none of it.
                Err(_) => return peer,
            }
        }
    }
    hops.iter().rev().find(|ip| !is_trusted(ip)).or(hops.first()).copied().unwrap_or(peer)
}

/// What the access phase decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on; with headers to set on the request (from forward auth: `None` removes what
    /// the client sent under a name the service did not answer with).
    Pass(Vec<(HeaderName, Option<HeaderValue>)>),
    /// Answer this instead.
    Answer(Response<ProxyBody>),
}

/// State the access phase keeps, one per process (shared by its listeners, so a client
/// cannot double its rate by using both): rate-limit buckets and verified passwords.
#[derive(Debug, Default)]
pub struct Guard {
    buckets: Mutex<HashMap<(Arc<str>, IpAddr), Bucket>>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request as the access phase sees it.
#[derive(Debug)]
pub struct Asking<'a> {
    /// The pattern that routed it.
    pub pattern: &'a Arc<str>,
    /// The client's address.
    pub client: IpAddr,
    /// Method, URI and headers.
    pub parts: &'a http::request::Parts,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The authority it was routed by.
    pub authority: &'a str,
    /// Opens connections (to a forward-auth service).
    pub pool: &'a Pool,
    /// How long a forward-auth service has to answer.
    pub timeout: Duration,
    /// The request's id (on refusal pages).
    pub request_id: &'a str,
}

impl Guard {
    /// Runs `host`'s policy on a request.
    pub async fn check(&self, host: &Host, asking: &Asking<'_>) -> Verdict {
        let access = &host.access;
        if !access.admits(asking.client) {
            return Verdict::Answer(page(
                StatusCode::FORBIDDEN,
                "this address may not use this host",
                asking.request_id,
            ));
        }
        if let Some(limit) = &access.rate_limit
            && let Err(wait) = self.take(asking.pattern, asking.client, limit)
        {
            let what = "too many requests from this address; slow down";
            let mut answer = page(StatusCode::TOO_MANY_REQUESTS, what, asking.request_id);
            answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
            return Verdict::Answer(answer);
        }
        if !access.basic_auth.is_empty() && !self.authorized(asking, &access.basic_auth).await {
            let mut answer =
                page(StatusCode::UNAUTHORIZED, "this host needs a user name and password", asking.request_id);
            let realm = format!("Basic realm=\"{}\", charset=\"UTF-8\"", asking.pattern.replace('"', ""));
            if let Ok(value) = HeaderValue::from_str(&realm) {
                answer.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
            return Verdict::Answer(answer);
        }
        match &access.forward_auth {
            Some(auth) => self.forward_auth(auth, asking).await,
            None => Verdict::Pass(Vec::new()),
        }
    }

    /// Takes a token from the client's bucket, or says how long until one is there.
    fn take(&self, pattern: &Arc<str>, client: IpAddr, limit: &RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let burst = f64::from(limit.burst);
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&(pattern.clone(), client)) {
            // Forget the buckets that have refilled: a full bucket is the same as none.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * limit.per_second < burst);
            if buckets.len() >= MAX_BUCKETS {
                // Still full of busy clients: start over rather than grow (a flood of new
                // addresses gets each a fresh bucket, the memory stays bounded).
                buckets.clear();
            }
        }
        let bucket = buckets.entry((pattern.clone(), client)).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * limit.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second).max(Duration::from_secs(1)))
        }
    }

    /// Whether the request's `Authorization: Basic` names one of `users` with its password.
    async fn authorized(&self, asking: &Asking<'_>, users: &[BasicUser]) -> bool {
        let Some((username, password)) = basic_credentials(&asking.parts.headers) else { return false };
        let Some(user) = users.iter().find(|u| u.username == username) else { return false };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.hash.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let now = Instant::now();
        if lock(&self.verified).get(&key).is_some_and(|at| now.duration_since(*at) < VERIFIED_FOR) {
            return true;
        }
        let hash = user.hash.clone();
        let ok = tokio::task::spawn_blocking(move || portico_model::record::verify_password(&password, &hash).0)
            .await
            .unwrap_or(false);
        if ok {
            let mut verified = lock(&self.verified);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
            verified.insert(key, now);
        }
        ok
    }

    /// Asks the forward-auth service: 2xx passes (with `copyHeaders` taken from its answer),
    /// anything else is answered to the client as the service answered it.
    async fn forward_auth(&self, auth: &ForwardAuth, asking: &Asking<'_>) -> Verdict {
        match tokio::time::timeout(asking.timeout, ask(auth, asking)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                tracing::warn!(url = %auth.url, error = %e, "the forward-auth service failed");
                Verdict::Answer(page(
                    StatusCode::BAD_GATEWAY,
                    "the authentication service could not be asked",
                    asking.request_id,
                ))
            }
            Err(_) => {
                tracing::warn!(url = %auth.url, "the forward-auth service did not answer in time");
                let what = "the authentication service did not answer in time";
                Verdict::Answer(page(StatusCode::GATEWAY_TIMEOUT, what, asking.request_id))
            }
        }
    }
}

/// One forward-auth request, on a new connection.
async fn ask(auth: &ForwardAuth, asking: &Asking<'_>) -> Result<Verdict, BoxError> {
    let mut sender = asking.pool.one_off(&auth.target, auth.tls).await?;
    let parts = asking.parts;
    let mut request = Request::builder().method(parts.method.clone()).uri(auth.path.as_str());
    let headers = request.headers_mut().ok_or("a request without headers")?;
    // The request's own headers, but for the connection's and the body's (there is none).
    headers.extend(parts.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
    strip_hop_by_hop(headers);
    for name in [header::CONTENT_LENGTH, header::EXPECT] {
        headers.remove(name);
    }
    headers.insert(header::HOST, HeaderValue::from_str(auth.target.authority())?);
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    headers.insert("x-forwarded-method", HeaderValue::from_str(parts.method.as_str())?);
    headers.insert("x-forwarded-uri", HeaderValue::from_str(uri)?);
    headers.insert("x-forwarded-host", HeaderValue::from_str(asking.authority)?);
    headers.insert("x-forwarded-proto", HeaderValue::from_static(asking.scheme.as_str()));
    headers.insert("x-forwarded-for", HeaderValue::from_str(&asking.client.to_string())?);
    let request = request.body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if response.status().is_success() {
        let copied =
            auth.header_names.iter().map(|name| (name.clone(), response.headers().get(name).cloned())).collect();
        return Ok(Verdict::Pass(copied));
    }
    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Ok(Verdict::Answer(Response::from_parts(head, body.map_err(BoxError::from).boxed_unsync())))
}

/// `Authorization: Basic` user name and password.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_address(peer, &xff("198.51.100.1"), &trusted), peer, "an untrusted peer's header is ignored");
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_address(proxy, &xff("198.51.100.1"), &trusted), "198.51.100.1".parse::<IpAddr>().unwrap());
        // Read from the right, skipping trusted hops; what a client wrote itself on the left
        // is not believed.
        assert_eq!(
            client_address(proxy, &xff("1.2.3.4, 198.51.100.1, 10.0.0.7"), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, &xff("10.0.0.5"), &trusted), "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(proxy, &xff("nonsense"), &trusted), proxy);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn rate_limit_memory_stays_bounded_under_a_flood_of_addresses() {
        let guard = Guard::default();
        let pattern: Arc<str> = "flood.test".into();
        let limit = RateLimit { per_second: 1.0, burst: 2 };
        for i in 0..(MAX_BUCKETS as u32 + 5000) {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            // Every new address gets its burst.
            assert!(guard.take(&pattern, client, &limit).is_ok());
            assert!(lock(&guard.buckets).len() <= MAX_BUCKETS);
        }
        // One address keeps its own limit meanwhile.
        let client = IpAddr::from([192, 0, 2, 1]);
        assert!(guard.take(&pattern, client, &limit).is_ok());
        assert!(guard.take(&pattern, client, &limit).is_ok());
        let wait = guard.take(&pattern, client, &limit).unwrap_err();
        assert!(wait >= Duration::from_secs(1));
    }

    #[test]
    fn basic_credentials_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Basic YW5uOnNlY3JldDpwYXJ0".parse().unwrap());
        assert_eq!(basic_credentials(&headers), Some(("ann".into(), "secret:part".into())));
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }
}
