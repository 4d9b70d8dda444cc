//! Passwords, tokens, the caller extractor, the login rate limit and the first admin.
//!
//! - Passwords: Argon2id for new hashes; the seed's bcrypt (`$2a$`/`$2b$`) hashes verify and
//!   are replaced by Argon2id on the next successful login.
//! - Tokens: 256 random bits, shown once, stored only as their SHA-256 (the record key), with
//!   an expiry. Session tokens come from login and end with logout or a password change.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use std::time::Duration;

use axum::extract::FromRequestParts;
use http::HeaderMap;
use http::request::Parts;
use ipnet::IpNet;
use portico_model::limiter::FailureLimiter;
use portico_model::record;
use portico_model::user::{NewUser, User, password_problem};
use portico_store::{Fields, Kind, Store};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, FieldError};
use crate::state::Api;

pub use portico_model::user::Role;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// User name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Key of the token used (its SHA-256), to revoke it on logout.
    pub token_key: String,
}

impl Caller {
    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::Forbidden("this action needs the admin role")) }
    }
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let token = presented_token(parts).ok_or(ApiError::LoginFailed)?;
        Caller::of_token_key(api, token_key(token)).await
    }
}

impl Caller {
    /// The holder of the token with this store key, if the token is valid (not revoked, not
    /// expired, its user still there); else `LoginFailed`.
    pub async fn of_token_key(api: &Api, token_key: String) -> Result<Caller, ApiError> {
        let record = api.store.record(Kind::AuthToken, &token_key).await?.ok_or(ApiError::LoginFailed)?;
        let valid = record.get("is_valid").is_none_or(|v| v == "true");
        if !valid || expires_on(&record) <= portico_store::now_ms() {
            return Err(ApiError::LoginFailed);
        }
        let username = record.get("created_by").cloned().ok_or(ApiError::LoginFailed)?;
        // A token whose user is gone is worthless (the seed crashed with a 500 here).
        let user = api.store.record(Kind::User, &username).await?.ok_or(ApiError::LoginFailed)?;
        Ok(Caller { role: Role::of(&user), username, token_key })
    }
}

/// The token from `auth-token` (the seed's header) or `Authorization: Bearer`.
pub(crate) fn presented_token(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get("auth-token").and_then(|v| v.to_str().ok()) {
        return Some(v.trim()).filter(|t| !t.is_empty());
    }
    let value = parts.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// A new token: 32 random bytes as 64 hex characters.
pub fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::Internal("no randomness available"))?;
    Ok(hex(&bytes))
}

/// The store key of a token: its SHA-256 in hex.
pub fn token_key(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token just issued: the token itself (shown once), its store key and its record.
#[derive(Debug)]
pub struct Issued {
    /// The token.
    pub token: String,
    /// Its SHA-256, the record's key.
    pub key: String,
    /// The stored record.
    pub fields: Fields,
}

/// Stores a new token for `username`, valid for `ttl`.
pub async fn issue_token(
    store: &dyn Store,
    username: &str,
    kind: &str,
    name: Option<&str>,
    ttl: Duration,
) -> Result<Issued, ApiError> {
    let token = new_token()?;
    let now = portico_store::now_ms();
    let expires_on = now.saturating_add(ttl.as_millis() as u64).to_string();
    let own = [("expires_on", expires_on), ("is_valid", "true".to_owned()), ("kind", kind.to_owned())];
    let fields = record::new_record(username, now, own.into_iter().chain(name.map(|n| ("name", n.to_owned()))));
    let key = token_key(&token);
    store.create(Kind::AuthToken, &key, &fields).await?;
    Ok(Issued { token, key, fields })
}

/// When a token record expires, in milliseconds since the epoch (0 if unreadable).
fn expires_on(fields: &Fields) -> u64 {
    fields.get("expires_on").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Deletes every token record `doomed` picks (given its key and fields). Returns how many
/// went.
pub async fn delete_tokens(store: &dyn Store, doomed: impl Fn(&str, &Fields) -> bool) -> Result<usize, ApiError> {
    let mut deleted = 0;
    for (key, fields) in store.records(Kind::AuthToken).await? {
        if doomed(&key, &fields) {
            store.delete(Kind::AuthToken, &key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes every token record expired by the store's clock (one clock for every node,
/// Redis's), so logins do not pile them up and no node with a wrong clock deletes tokens
/// that are still good.
pub async fn sweep_expired(store: &dyn Store) -> Result<usize, ApiError> {
    let now = store.clock_ms().await?;
    delete_tokens(store, |_, fields| expires_on(fields) <= now).await
}

/// Deletes every token of `username`, sessions and API tokens alike, except the one whose
/// key is `keep`: after a password change nothing issued under the old password stays valid.
pub async fn revoke_tokens(store: &dyn Store, username: &str, keep: Option<&str>) -> Result<usize, ApiError> {
    delete_tokens(store, |key, fields| record::token_of(fields, username) && Some(key) != keep).await
}

/// Whether `password` is `user`'s, and whether the hash should be replaced (see
/// [`verify_password`]). For an unknown user a stand-in hash is verified all the same, so a
/// wrong name takes as long as a wrong password and does not tell which names exist.
pub async fn check_credentials(user: Option<&Fields>, password: String) -> (bool, bool) {
    if let Some(hash) = user.and_then(|u| u.get("password")) {
        return verify_password(password, hash.clone()).await;
    }
    if let Ok(stand_in) = STAND_IN.get_or_try_init(|| async { hash_password(new_token()?).await }).await {
        verify_password(password, stand_in.clone()).await;
    }
    (false, false)
}

/// The hash an unknown user's password is checked against, made on first need.
static STAND_IN: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The client's address: the peer's, or, when the peer is one of the `trusted` proxies, the
/// nearest address in `X-Forwarded-For` that is not (`portico_model::access::client_address`);
/// a header that cannot be read there is a 400, never the proxy taken for the client.
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Result<IpAddr, ApiError> {
    portico_model::access::client_address(peer.ip(), headers, trusted).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// Hashes a password with Argon2id (on a blocking thread: it is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || record::hash_password(&password))
        .await
        .map_err(|_| ApiError::Internal("password hashing task failed"))?
        .map_err(|_| ApiError::Internal("password hashing failed"))
}

/// Whether `password` matches `hash` (Argon2 PHC string or a seed bcrypt hash), and whether
/// the hash should be replaced by a fresh Argon2id one.
pub async fn verify_password(password: String, hash: String) -> (bool, bool) {
    tokio::task::spawn_blocking(move || record::verify_password(&password, &hash)).await.unwrap_or((false, false))
}

/// Failed logins per client address and per user name: the model's limiter, with the user
/// name as its scope.
#[derive(Debug)]
pub struct LoginLimiter(FailureLimiter);

impl LoginLimiter {
    /// At most `per_user` failures per user name and `per_address` per client address within
    /// `window`.
    pub fn new(window: Duration, per_user: usize, per_address: usize) -> Self {
        Self(FailureLimiter::new(window, per_user, per_address))
    }

    /// Records a successful login: `username` is not locked out from `address` from now on.
    pub fn succeeded(&self, address: IpAddr, username: &str) {
        self.0.succeeded(address, username);
    }

    /// `Err(TooManyRequests)` if either key is over its limit.
    pub fn check(&self, address: IpAddr, username: &str) -> Result<(), ApiError> {
        self.0.check(address, username).map_err(ApiError::TooManyRequests)
    }

    /// Records a failed login.
    pub fn failed(&self, address: IpAddr, username: &str) {
        self.0.failed(address, username);
    }
}

/// Creates the first admin on an empty store: user `admin` with `password` if given, else a
/// random one, written to `<data_dir>/initial-admin-password` (mode 0600) and logged once.
pub async fn bootstrap_admin(store: &dyn Store, data_dir: &Path, password: Option<String>) -> Result<(), ApiError> {
    if !store.keys(Kind::User).await?.is_empty() {
        return Ok(());
    }
    if let Some(problem) = password.as_deref().and_then(|p| password_problem("PORTICO_ADMIN_PASSWORD", p)) {
        let message = format!("PORTICO_ADMIN_PASSWORD: {problem}");
        return Err(ApiError::Validation(vec![FieldError::refused("PORTICO_ADMIN_PASSWORD", message)]));
    }
    let generated = password.is_none();
    let password = match password {
        Some(p) => p,
        None => new_token()?[..24].to_owned(),
    };
    let hash = hash_password(password.clone()).await?;
    let new = NewUser { username: "admin".to_owned(), password: String::new(), role: Role::Admin };
    let admin = User::new(new, hash, "portico", portico_store::now_ms() as i64);
    match store.create(Kind::User, "admin", &admin.to_fields()).await {
        Ok(()) => {}
        // Another node of the cluster got there first.
        Err(portico_store::StoreError::Conflict { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if generated {
        let file = data_dir.join("initial-admin-password");
        write_secret_file(&file, &password).map_err(|_| ApiError::Internal("cannot write initial-admin-password"))?;
        tracing::warn!(
            username = "admin",
            password = %password,
            file = %file.display(),
            "created the first admin with a random password; change it after logging in"
        );
    } else {
        tracing::info!(username = "admin", "created the first admin with the password from PORTICO_ADMIN_PASSWORD");
    }
    Ok(())
}

fn write_secret_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_and_seed_bcrypt_hashes_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(verify_password("correct horse".into(), hash.clone()).await, (true, false));
        assert_eq!(verify_password("wrong".into(), hash).await, (false, false));
        let seed = bcrypt::hash("proxyadmin2", 4).unwrap();
        assert_eq!(verify_password("proxyadmin2".into(), seed.clone()).await, (true, true));
        assert_eq!(verify_password("nope".into(), seed).await, (false, false));
        assert_eq!(verify_password("x".into(), "garbage".into()).await, (false, false));
    }

    #[test]
    fn tokens_are_256_bit_and_hashed() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().unwrap());
        assert_eq!(token_key(&t).len(), 64);
        assert_ne!(token_key(&t), t);
    }

    #[test]
    fn the_login_limiter_answers_429_with_the_wait() {
        let l = LoginLimiter::new(Duration::from_secs(60), 3, 5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            l.check(a, "alice").unwrap();
            l.failed(a, "alice");
        }
        assert!(matches!(l.check(a, "alice"), Err(ApiError::TooManyRequests(s)) if s > 0 && s <= 61));
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        h.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        let via_proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(client_address(via_proxy, &h, &trusted).unwrap(), "203.0.113.7".parse::<IpAddr>().unwrap());
        let direct: SocketAddr = "192.0.2.4:5000".parse().unwrap();
        assert_eq!(client_address(direct, &h, &trusted).unwrap(), "192.0.2.4".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_address(via_proxy, &h, &[]).unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "nothing trusted"
        );
        assert_eq!(
            client_address(via_proxy, &HeaderMap::new(), &trusted).unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_user_costs_a_hash_verification_too() {
        assert!(!STAND_IN.initialized());
        assert_eq!(check_credentials(None, "whatever".into()).await, (false, false));
        assert!(STAND_IN.initialized(), "an unknown name was checked against the stand-in hash");
        let hash = hash_password("right password".into()).await.unwrap();
        let user: Fields = [("password".to_owned(), hash)].into_iter().collect();
        assert_eq!(check_credentials(Some(&user), "right password".into()).await, (true, false));
        assert_eq!(check_credentials(Some(&user), "wrong".into()).await, (false, false));
    }
}
