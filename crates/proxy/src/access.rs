//! The access phase: a host's `allow`/`deny` lists, `rateLimit`, `basicAuth` and
//! `forwardAuth`, in that order, for the client's address as
//! [`client_address`](portico_model::access::client_address) finds it.
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
use portico_model::Host;
use portico_model::access::{BasicUser, ForwardAuth, RateLimit};
use portico_model::limiter::{FailureLimiter, address_key};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::forward::{Scheme, strip_hop_by_hop};
use crate::pool::Pool;
use crate::response::{BoxError, ProxyBody, page};

/// Client addresses followed per host for rate limits before idle ones are forgotten (one
/// host's flood of addresses never touches another host's buckets).
const MAX_BUCKETS: usize = 16_384;
/// Verified basic-auth credentials remembered (Argon2 is slow on purpose: it runs once per
/// user and password, not per request).
const MAX_VERIFIED: usize = 4096;
/// How long a verified password is remembered.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Wrong basic-auth passwords per client address (IPv6: per /64), over a minute, before it
/// gets 429 without a check.
const FAILURES_PER_ADDRESS: usize = 10;
/// Wrong basic-auth passwords per host, from every address together, over a minute, before
/// addresses that never passed there get 429 (those that did keep getting in).
const FAILURES_PER_HOST: usize = 100;
/// The window those count over.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Password checks waiting for a thread, beyond those running, before more are refused
/// with 503 at once instead of queued without bound.
const CHECKS_WAITING: usize = 32;

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
/// cannot double its rate by using both): rate-limit buckets, verified passwords, failed
/// ones, and the few threads that may check passwords at once.
#[derive(Debug)]
pub struct Guard {
    buckets: Mutex<HashMap<Arc<str>, HashMap<IpAddr, Bucket>>>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// The key of the remembered credentials' hashes (random per process: what is kept in
    /// memory cannot be checked against guesses offline).
    secret: [u8; 32],
    failures: FailureLimiter,
    /// Checks admitted: running or waiting for one of `running`.
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// A hash unknown user names are checked against, so they cost what a known one does.
    stand_in: tokio::sync::OnceCell<Arc<str>>,
}

impl Default for Guard {
    fn default() -> Self {
        // Half the CPUs at most check passwords; the rest keep proxying.
        let running = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let mut secret = [0u8; 32];
        if getrandom::fill(&mut secret).is_err() {
            // No randomness: remember nothing rather than keep guessable keys.
            tracing::warn!("no random source: verified basic-auth passwords are not remembered");
        }
        Self {
            buckets: Mutex::default(),
            verified: Mutex::default(),
            secret,
            failures: FailureLimiter::new(FAILURE_WINDOW, FAILURES_PER_HOST, FAILURES_PER_ADDRESS),
            admitted: Arc::new(Semaphore::new(running + CHECKS_WAITING)),
            running: Arc::new(Semaphore::new(running)),
            stand_in: tokio::sync::OnceCell::new(),
        }
    }
}

/// What checking a request's basic-auth credentials came to.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// A listed user with the right password.
    Right,
    /// None, an unknown user, or a wrong password.
    Wrong,
    /// Too many wrong ones from this address or for this host: wait this many seconds.
    Limited(u64),
    /// Too many checks under way: refused without one.
    Busy,
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
    /// The request's method.
    pub method: &'a http::Method,
    /// The request's URI.
    pub uri: &'a http::Uri,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
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
        if !access.basic_auth.is_empty() {
            match self.authorized(asking.headers, asking.client, asking.pattern, &access.basic_auth).await {
                Credentials::Right => {}
                Credentials::Wrong => {
                    let what = "this host needs a user name and password";
                    let mut answer = page(StatusCode::UNAUTHORIZED, what, asking.request_id);
                    let realm = format!("Basic realm=\"{}\", charset=\"UTF-8\"", asking.pattern.replace('"', ""));
                    if let Ok(value) = HeaderValue::from_str(&realm) {
                        answer.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                    }
                    return Verdict::Answer(answer);
                }
                Credentials::Limited(wait) => {
                    let what = "too many wrong passwords from this address; try again later";
                    let mut answer = page(StatusCode::TOO_MANY_REQUESTS, what, asking.request_id);
                    answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.max(1)));
                    return Verdict::Answer(answer);
                }
                Credentials::Busy => {
                    let what = "too many password checks at once; try again shortly";
                    let mut answer = page(StatusCode::SERVICE_UNAVAILABLE, what, asking.request_id);
                    answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                    return Verdict::Answer(answer);
                }
            }
        }
        match &access.forward_auth {
            Some(auth) => self.forward_auth(auth, asking).await,
            None => Verdict::Pass(Vec::new()),
        }
    }

    /// Takes a token from the client's bucket, or says how long until one is there. Each host
    /// has its own buckets; IPv6 clients are counted by their /64.
    fn take(&self, pattern: &Arc<str>, client: IpAddr, limit: &RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let client = address_key(client);
        let burst = f64::from(limit.burst);
        let mut hosts = lock(&self.buckets);
        let buckets = match hosts.get_mut(pattern) {
            Some(buckets) => buckets,
            None => hosts.entry(pattern.clone()).or_default(),
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&client) {
            // Forget the buckets that have refilled: a full bucket is the same as none.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * limit.per_second < burst);
            if buckets.len() >= MAX_BUCKETS {
                // Still full of busy clients: start over rather than grow (a flood of new
                // addresses gets each a fresh bucket, the memory stays bounded).
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * limit.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second).max(Duration::from_secs(1)))
        }
    }

    /// Forgets the rate-limit buckets of hosts that are gone.
    pub fn retain_hosts(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.buckets).retain(|pattern, _| keep(pattern));
    }

    /// Checks the request's `Authorization: Basic` against `users`: remembered right answers
    /// first (no Argon2 per request), then the failure limits, then one check on the bounded
    /// pool; an unknown name is checked against a stand-in hash, so it costs the same.
    async fn authorized(&self, headers: &HeaderMap, client: IpAddr, pattern: &str, users: &[BasicUser]) -> Credentials {
        let Some((username, password)) = basic_credentials(headers) else { return Credentials::Wrong };
        let user = users.iter().find(|u| u.username == username);
        let key: [u8; 32] = Sha256::new()
            .chain_update(self.secret)
            .chain_update(user.map_or("", |u| u.hash.as_str()).as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let now = Instant::now();
        if user.is_some() && lock(&self.verified).get(&key).is_some_and(|at| now.duration_since(*at) < VERIFIED_FOR) {
            return Credentials::Right;
        }
        if let Err(wait) = self.failures.check(client, pattern) {
            return Credentials::Limited(wait);
        }
        let Ok(_admitted) = self.admitted.clone().try_acquire_owned() else { return Credentials::Busy };
        let hash = match user {
            Some(user) => Arc::from(user.hash.as_str()),
            None => match self.stand_in().await {
                Some(hash) => hash,
                None => return Credentials::Wrong,
            },
        };
        let Ok(_running) = self.running.clone().acquire_owned().await else { return Credentials::Busy };
        let ok = tokio::task::spawn_blocking(move || portico_model::record::verify_password(&password, &hash).0)
            .await
            .unwrap_or(false);
        if ok && user.is_some() {
            self.failures.succeeded(client, pattern);
            let mut verified = lock(&self.verified);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
            verified.insert(key, now);
            return Credentials::Right;
        }
        self.failures.failed(client, pattern);
        Credentials::Wrong
    }

    /// The stand-in hash, made once on a blocking thread.
    async fn stand_in(&self) -> Option<Arc<str>> {
        let made = self.stand_in.get_or_try_init(|| async {
            let mut seed = [0u8; 24];
            getrandom::fill(&mut seed).map_err(|_| ())?;
            let password = seed.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let hash = tokio::task::spawn_blocking(move || portico_model::record::hash_password(&password))
                .await
                .map_err(|_| ())?
                .map_err(|_| ())?;
            Ok::<_, ()>(Arc::from(hash))
        });
        made.await.ok().cloned()
    }

    /// Asks the forward-auth service: 2xx passes (with `copyHeaders` taken from its answer),
    /// anything else is answered to the client as the service answered it.
    async fn forward_auth(&self, auth: &ForwardAuth, asking: &Asking<'_>) -> Verdict {
        match tokio::time::timeout(asking.timeout, ask(auth, asking)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                if AUTH_FAILURES_SAID.due() {
                    tracing::warn!(url = %auth.shown_url(), error = %e, "the forward-auth service failed (said at most once a minute)");
                }
                Verdict::Answer(page(
                    StatusCode::BAD_GATEWAY,
                    "the authentication service could not be asked",
                    asking.request_id,
                ))
            }
            Err(_) => {
                if AUTH_FAILURES_SAID.due() {
                    tracing::warn!(url = %auth.shown_url(), "the forward-auth service did not answer in time (said at most once a minute)");
                }
                let what = "the authentication service did not answer in time";
                Verdict::Answer(page(StatusCode::GATEWAY_TIMEOUT, what, asking.request_id))
            }
        }
    }
}

/// Forward-auth failures are logged at most this often, so a failing service under load is
/// not a log line per request.
static AUTH_FAILURES_SAID: portico_model::limiter::Rarely =
    portico_model::limiter::Rarely::new(Duration::from_secs(60));

/// One forward-auth request, on a kept-alive connection to the service.
async fn ask(auth: &ForwardAuth, asking: &Asking<'_>) -> Result<Verdict, BoxError> {
    let mut request = Request::builder().method(asking.method.clone()).uri(auth.request_uri.clone());
    let headers = request.headers_mut().ok_or("a request without headers")?;
    // The request's own headers, but for the connection's and the body's (there is none).
    headers.extend(asking.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
    strip_hop_by_hop(headers);
    for name in [header::CONTENT_LENGTH, header::EXPECT] {
        headers.remove(name);
    }
    headers.insert(header::HOST, HeaderValue::from_str(auth.target.authority())?);
    let uri = asking.uri.path_and_query().map_or("/", |p| p.as_str());
    headers.insert("x-forwarded-method", HeaderValue::from_str(asking.method.as_str())?);
    headers.insert("x-forwarded-uri", HeaderValue::from_str(uri)?);
    headers.insert("x-forwarded-host", HeaderValue::from_str(asking.authority)?);
    headers.insert("x-forwarded-proto", HeaderValue::from_static(asking.scheme.as_str()));
    headers.insert("x-forwarded-for", HeaderValue::from_str(&asking.client.to_string())?);
    let request = request.body(Empty::<Bytes>::new())?;
    let response = asking.pool.ask(request).await?;
    // A 1xx (a 101 switching the client's connection to another protocol) is never relayed.
    if response.status().is_informational() {
        return Err(format!("the service answered {}", response.status()).into());
    }
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

    #[test]
    fn rate_limit_memory_stays_bounded_under_a_flood_of_addresses() {
        let guard = Guard::default();
        let pattern: Arc<str> = "flood.test".into();
        let limit = RateLimit { per_second: 1.0, burst: 2 };
        for i in 0..(MAX_BUCKETS as u32 + 5000) {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            // Every new address gets its burst.
            assert!(guard.take(&pattern, client, &limit).is_ok());
            assert!(lock(&guard.buckets)[&pattern].len() <= MAX_BUCKETS);
        }
        // One address keeps its own limit meanwhile.
        let client = IpAddr::from([192, 0, 2, 1]);
        assert!(guard.take(&pattern, client, &limit).is_ok());
        assert!(guard.take(&pattern, client, &limit).is_ok());
        let wait = guard.take(&pattern, client, &limit).unwrap_err();
        assert!(wait >= Duration::from_secs(1));
    }

    #[test]
    fn one_hosts_flood_of_addresses_leaves_another_hosts_limits_alone() {
        let guard = Guard::default();
        let (quiet, flooded): (Arc<str>, Arc<str>) = ("quiet.test".into(), "flooded.test".into());
        let limit = RateLimit { per_second: 0.01, burst: 1 };
        let client = IpAddr::from([192, 0, 2, 1]);
        assert!(guard.take(&quiet, client, &limit).is_ok());
        for i in 0..(MAX_BUCKETS as u32 + 10) {
            let _ = guard.take(&flooded, IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), &limit);
        }
        assert!(guard.take(&quiet, client, &limit).is_err(), "the quiet host's client is still limited");
        // Gone hosts are forgotten.
        guard.retain_hosts(|p| p == "quiet.test");
        assert_eq!(lock(&guard.buckets).len(), 1);
    }

    #[test]
    fn ipv6_clients_share_their_64s_bucket() {
        let guard = Guard::default();
        let pattern: Arc<str> = "v6.test".into();
        let limit = RateLimit { per_second: 0.01, burst: 1 };
        assert!(guard.take(&pattern, "2001:db8::1".parse().unwrap(), &limit).is_ok());
        assert!(guard.take(&pattern, "2001:db8::2".parse().unwrap(), &limit).is_err(), "same /64");
        assert!(guard.take(&pattern, "2001:db8:0:1::1".parse().unwrap(), &limit).is_ok(), "another /64");
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Basic {encoded}").parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn wrong_passwords_are_limited_and_checks_beyond_the_pool_refused() {
        let guard = Guard::default();
        let hash = portico_model::record::hash_password("right password").unwrap();
        let users = [BasicUser { username: "ann".into(), hash }];
        let (home, guesser) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([198, 51, 100, 7]));
        let right = basic("ann", "right password");
        assert_eq!(guard.authorized(&right, home, "h.test", &users).await, Credentials::Right);
        for i in 0..FAILURES_PER_ADDRESS {
            // Unknown names are checked (against the stand-in) and counted like wrong passwords.
            let headers = if i % 2 == 0 { basic("ann", "guess") } else { basic("nobody", "guess") };
            assert_eq!(guard.authorized(&headers, guesser, "h.test", &users).await, Credentials::Wrong);
        }
        // The next guess is not checked at all (a right answer already remembered would pass:
        // whoever sends it knows the password).
        let limited = guard.authorized(&basic("ann", "guess 11"), guesser, "h.test", &users).await;
        assert!(matches!(limited, Credentials::Limited(wait) if (1..=61).contains(&wait)), "{limited:?}");
        assert_eq!(guard.authorized(&right, home, "h.test", &users).await, Credentials::Right, "others still pass");
        // Every check slot taken: a new check is refused at once, a remembered one still passes.
        let held = guard.admitted.clone().try_acquire_many_owned(guard.admitted.available_permits() as u32).unwrap();
        let other = IpAddr::from([203, 0, 113, 5]);
        assert_eq!(guard.authorized(&basic("ann", "other"), other, "h.test", &users).await, Credentials::Busy);
        assert_eq!(guard.authorized(&right, other, "h.test", &users).await, Credentials::Right, "remembered");
        drop(held);
        assert_eq!(guard.authorized(&basic("ann", "other"), other, "h.test", &users).await, Credentials::Wrong);
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
