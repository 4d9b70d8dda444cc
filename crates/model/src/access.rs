//! Who may reach a host: `basicAuth`, `allow`/`deny` lists, `forwardAuth` (an
//! authentication service asked about every request) and `rateLimit` (per client address).
//! Plain values, their stored string form and their API form; the proxy enforces them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::body::FieldError;
use crate::host::Target;

/// A host's access policy; empty (the default) lets everyone in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Users who may pass, with their password hashes (Argon2id, or a seed's bcrypt).
    pub basic_auth: Vec<BasicUser>,
    /// Only these addresses may pass (when not empty).
    pub allow: Vec<IpNet>,
    /// These may not (deny wins over allow).
    pub deny: Vec<IpNet>,
    /// An authentication service that decides about each request.
    pub forward_auth: Option<ForwardAuth>,
    /// Requests per client address.
    pub rate_limit: Option<RateLimit>,
}

/// A basic-auth user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicUser {
    /// The user name.
    pub username: String,
    /// The password's hash (a PHC string, or a bcrypt `$2b$…` hash).
    pub hash: String,
}

/// Headers `copyHeaders` may not name: hop-by-hop ones (about one connection), those that
/// frame the message, and `Host` (which routed it). Copying one from the auth service's
/// answer onto the request could smuggle a second request to the target.
const NOT_COPIED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// A forward-auth service: `url` is asked with the request's method, URI and headers; a 2xx
/// lets the request through with `copy_headers` copied from its answer onto the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuth {
    /// `http://` or `https://` URL of the service.
    pub url: String,
    /// Headers of the service's 2xx answer copied onto the request (`Remote-User`, …), as
    /// given.
    pub copy_headers: Vec<String>,
    /// The same, as header names (read once, not per request).
    pub header_names: Vec<http::HeaderName>,
    /// Where the service is.
    pub target: Target,
    /// What each question is sent to: the URL without user name or password, its host as
    /// `target` spells it (built once, not per request).
    pub request_uri: http::Uri,
}

/// A token bucket per client address: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second, on average (0.01 to 100,000).
    pub per_second: f64,
    /// The bucket's size: requests allowed at once (1 to 100,000).
    pub burst: u32,
}

impl Eq for RateLimit {}

/// The fields an access policy is stored in (each JSON text in the host's record).
pub const FIELDS: [&str; 5] = ["basicAuth", "allow", "deny", "forwardAuth", "rateLimit"];

fn invalid(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError::Invalid { field, reason: reason.into() }
}

impl Access {
    /// Whether it lets everyone in, unlimited.
    pub fn is_open(&self) -> bool {
        *self == Access::default()
    }

    /// Whether `client` may pass the address lists (deny wins; an empty allow list allows all).
    pub fn admits(&self, client: IpAddr) -> bool {
        admits(&self.allow, &self.deny, client)
    }

    /// Reads the stored form (the record's fields, JSON text each).
    pub fn from_fields(text: impl Fn(&str) -> Option<String>) -> Result<Self, FieldError> {
        let json = |field: &'static str| -> Result<Option<Value>, FieldError> {
            text(field).map(|t| serde_json::from_str(&t).map_err(|_| invalid(field, "is not JSON"))).transpose()
        };
        let mut access = Access::default();
        let users = match json("basicAuth")? {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(users)) => users,
            // Anything else would be no protection at all: refused, so the host is not routed.
            Some(_) => return Err(invalid("basicAuth", "must be a list of users")),
        };
        {
            for user in users {
                let username = user.get("username").and_then(Value::as_str).unwrap_or_default();
                let hash = user.get("hash").and_then(Value::as_str).unwrap_or_default();
                access.basic_auth.push(BasicUser { username: username.to_owned(), hash: hash.to_owned() });
            }
        }
        if let Some(list) = json("allow")? {
            access.allow = parse_nets("allow", &list)?;
        }
        if let Some(list) = json("deny")? {
            access.deny = parse_nets("deny", &list)?;
        }
        if let Some(spec) = json("forwardAuth")? {
            access.forward_auth = Some(ForwardAuth::parse(&spec)?);
        }
        if let Some(spec) = json("rateLimit")? {
            access.rate_limit = Some(RateLimit::parse(&spec)?);
        }
        Ok(access)
    }

    /// The stored form: `(field, JSON text)` for each part that is set.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.basic_auth.is_empty() {
            let users: Vec<Value> =
                self.basic_auth.iter().map(|u| json!({"username": u.username, "hash": u.hash})).collect();
            out.push(("basicAuth", Value::Array(users).to_string()));
        }
        let nets = |list: &[IpNet]| Value::Array(list.iter().map(|n| json!(n.to_string())).collect()).to_string();
        if !self.allow.is_empty() {
            out.push(("allow", nets(&self.allow)));
        }
        if !self.deny.is_empty() {
            out.push(("deny", nets(&self.deny)));
        }
        if let Some(auth) = &self.forward_auth {
            out.push(("forwardAuth", auth.to_json().to_string()));
        }
        if let Some(limit) = &self.rate_limit {
            out.push(("rateLimit", limit.to_json().to_string()));
        }
        out
    }

    /// Applies the API's fields (`null` or `[]` clears one). `basicAuth` entries are
    /// `{username, hash}` here (the API hashes passwords before), or `{username}` alone to
    /// keep that user's current hash.
    pub fn apply(&mut self, body: &Map<String, Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let current = self.basic_auth.clone();
        apply_field(body, "basicAuth", &mut self.basic_auth, |v| users(&current, v), &mut errors);
        apply_field(body, "allow", &mut self.allow, |v| parse_nets("allow", v), &mut errors);
        apply_field(body, "deny", &mut self.deny, |v| parse_nets("deny", v), &mut errors);
        apply_field(body, "forwardAuth", &mut self.forward_auth, or_null(ForwardAuth::parse), &mut errors);
        apply_field(body, "rateLimit", &mut self.rate_limit, or_null(RateLimit::parse), &mut errors);
        errors
    }
}

/// Applies one field of an update to `slot`: nothing when the body lacks the field, else
/// what `parse` makes of its value (a refusal goes to `errors`, and the slot stays).
pub(crate) fn apply_field<T>(
    body: &Map<String, Value>,
    key: &str,
    slot: &mut T,
    parse: impl FnOnce(&Value) -> Result<T, FieldError>,
    errors: &mut Vec<FieldError>,
) {
    if let Some(value) = body.get(key) {
        match parse(value) {
            Ok(parsed) => *slot = parsed,
            Err(e) => errors.push(e),
        }
    }
}

/// `parse` for a field that `null` removes.
pub(crate) fn or_null<T>(
    parse: impl FnOnce(&Value) -> Result<T, FieldError>,
) -> impl FnOnce(&Value) -> Result<Option<T>, FieldError> {
    move |value| if value.is_null() { Ok(None) } else { parse(value).map(Some) }
}

/// `basicAuth` entries, `{username, hash}` or `{username}` keeping that user's hash in
/// `current`; `null` is none.
fn users(current: &[BasicUser], value: &Value) -> Result<Vec<BasicUser>, FieldError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let list = value.as_array().ok_or_else(|| invalid("basicAuth", "must be a list of {username, password}"))?;
    if list.len() > 1000 {
        return Err(invalid("basicAuth", "has more than 1000 users"));
    }
    let mut users: Vec<BasicUser> = Vec::with_capacity(list.len());
    for item in list {
        let username = item.get("username").and_then(Value::as_str).unwrap_or_default();
        if username.is_empty()
            || username.len() > 200
            || username.contains(':')
            || username.chars().any(char::is_control)
        {
            return Err(invalid("basicAuth", "every user needs a username: 1 to 200 characters, no ':'"));
        }
        if users.iter().any(|u| u.username == username) {
            return Err(invalid("basicAuth", format!("{username} is listed twice")));
        }
        let hash = match item.get("hash").and_then(Value::as_str) {
            Some(hash) => match crate::record::hash_problem(hash) {
                None => hash.to_owned(),
                Some(problem) => return Err(invalid("basicAuth", format!("{username}: the hash {problem}"))),
            },
            None => match current.iter().find(|u| u.username == username) {
                Some(existing) => existing.hash.clone(),
                None => return Err(invalid("basicAuth", format!("{username} needs a password"))),
            },
        };
        users.push(BasicUser { username: username.to_owned(), hash });
    }
    Ok(users)
}

/// An `X-Forwarded-For` that cannot be read where it matters: an entry that is not an
/// address stands between the trusted proxies and the first untrusted address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("X-Forwarded-For has an entry that is not an address")]
pub struct UnreadableForwardedFor;

/// The client's address: the peer's, unless the peer is one of the `trusted` proxies; then
/// `X-Forwarded-For` is walked from the right (the entries trusted proxies appended), skipping
/// trusted addresses, and the first untrusted one is the client. Entries left of it were
/// written by the client and prove nothing, so they are never read. When every entry is
/// trusted, the leftmost is the client (an internal one); with no header, the peer.
///
/// An entry that is not an address (garbage, `1.2.3.4:80`, non-ASCII) met before any
/// untrusted address ends the walk with an error: taking the proxy itself as the client
/// would let anyone pass an `allow` list written for the proxy's network.
pub fn client_address(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, UnreadableForwardedFor> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let values: Vec<&[u8]> = headers.get_all("x-forwarded-for").iter().map(http::HeaderValue::as_bytes).collect();
    let mut leftmost = None;
    for entry in values.iter().rev().flat_map(|value| value.split(|b| *b == b',').rev()) {
        let text = std::str::from_utf8(entry).map_err(|_| UnreadableForwardedFor)?.trim();
        let ip = canonical(text.parse::<IpAddr>().map_err(|_| UnreadableForwardedFor)?);
        if !is_trusted(&ip) {
            return Ok(ip);
        }
        leftmost = Some(ip);
    }
    Ok(leftmost.unwrap_or(peer))
}

/// Whether `client` passes an `allow` and a `deny` list: deny wins, an empty allow list allows
/// all (a host's access lists and a stream's alike).
pub fn admits(allow: &[IpNet], deny: &[IpNet], client: IpAddr) -> bool {
    let client = canonical(client);
    !deny.iter().any(|net| net.contains(&client)) && (allow.is_empty() || allow.iter().any(|net| net.contains(&client)))
}

/// An IPv4 address inside IPv6 (`::ffff:10.0.0.1`) as the IPv4 address lists name it.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A list of addresses (`10.0.0.1`) and networks (`10.0.0.0/8`).
pub fn parse_nets(field: &'static str, value: &Value) -> Result<Vec<IpNet>, FieldError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let list = value.as_array().ok_or_else(|| invalid(field, "must be a list of addresses and networks"))?;
    list.iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(|| invalid(field, "must be a list of addresses and networks"))?;
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(field, format!("{text:?} is not an address or a network (10.0.0.0/8)")))
        })
        .collect()
}

impl ForwardAuth {
    /// The URL as logs may show it: no user name or password, no query (where API keys go).
    pub fn shown_url(&self) -> String {
        let uri = &self.request_uri;
        format!("{}://{}{}", uri.scheme_str().unwrap_or("http"), self.target.authority(), uri.path())
    }

    fn parse(value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: &str| invalid("forwardAuth", reason);
        let url = value.get("url").and_then(Value::as_str).ok_or_else(|| bad("url is required"))?;
        let uri: http::Uri = url.parse().map_err(|_| bad("url is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad("url must be an http:// or https:// URL"));
        }
        let tls = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let target = Target::new(host, uri.port_u16().unwrap_or(if tls { 443 } else { 80 }))
            .map_err(|e| bad(&format!("url: {e}")))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = if tls { "https" } else { "http" };
        let request_uri =
            format!("{scheme}://{}{path}", target.authority()).parse().map_err(|_| bad("url is not a URL"))?;
        let not_names = || bad("copyHeaders must be a list of header names");
        let copy_headers: Vec<String> = match value.get("copyHeaders") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                list.iter().map(|h| h.as_str().map(str::to_owned).ok_or_else(not_names)).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(not_names()),
        };
        let header_names: Vec<http::HeaderName> = copy_headers
            .iter()
            .map(|h| http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| not_names()))
            .collect::<Result<_, _>>()?;
        if let Some(name) = header_names.iter().find(|n| NOT_COPIED.contains(&n.as_str())) {
            return Err(bad(&format!(
                "copyHeaders cannot name {name}: it is about one connection or the message's framing, not the request"
            )));
        }
        Ok(Self { url: url.to_owned(), copy_headers, header_names, target, request_uri })
    }

    fn to_json(&self) -> Value {
        json!({ "url": self.url, "copyHeaders": self.copy_headers })
    }
}

impl RateLimit {
    fn parse(value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: &str| invalid("rateLimit", reason);
        let per_second = value
            .get("perSecond")
            .and_then(Value::as_f64)
            .filter(|r| (0.01..=100_000.0).contains(r))
            .ok_or_else(|| bad("perSecond must be a number from 0.01 to 100000"))?;
        let burst = match value.get("burst") {
            None | Some(Value::Null) => (per_second.ceil() as u32).max(1),
            Some(b) => b
                .as_u64()
                .filter(|b| (1..=100_000).contains(b))
                .ok_or_else(|| bad("burst must be a whole number from 1 to 100000"))? as u32,
        };
        Ok(Self { per_second, burst })
    }

    fn to_json(self) -> Value {
        json!({ "perSecond": self.per_second, "burst": self.burst })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let mut access = Access::default();
        assert!(access.apply(&body(json!({"allow": ["10.0.0.0/8", "192.0.2.7"], "deny": ["10.9.0.0/16"]}))).is_empty());
        assert!(access.admits("10.1.2.3".parse().unwrap()));
        assert!(access.admits("192.0.2.7".parse().unwrap()));
        assert!(access.admits("::ffff:10.1.2.3".parse().unwrap()), "IPv4 in IPv6 is the IPv4 address");
        assert!(!access.admits("10.9.1.1".parse().unwrap()), "deny wins");
        assert!(!access.admits("172.16.0.1".parse().unwrap()));
        let mut open = Access::default();
        open.apply(&body(json!({"deny": ["172.16.0.0/12"]})));
        assert!(open.admits("8.8.8.8".parse().unwrap()));
        assert!(!open.admits("172.16.0.1".parse().unwrap()));
    }

    fn xff(values: &[&[u8]]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", http::HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("203.0.113.9");
        let proxy = ip("10.0.0.2");
        assert_eq!(client_address(peer, &xff(&[b"198.51.100.1"]), &trusted), Ok(peer), "an untrusted peer's header");
        assert_eq!(client_address(proxy, &xff(&[b"198.51.100.1"]), &trusted), Ok(ip("198.51.100.1")));
        // From the right, skipping trusted hops; what the client wrote on the left is not read.
        let hops = xff(&[b"1.2.3.4, 198.51.100.1, 10.0.0.7"]);
        assert_eq!(client_address(proxy, &hops, &trusted), Ok(ip("198.51.100.1")));
        // Several header lines are one list, in order.
        let lines = xff(&[b"1.2.3.4", b"198.51.100.1", b"10.0.0.7"]);
        assert_eq!(client_address(proxy, &lines, &trusted), Ok(ip("198.51.100.1")));
        assert_eq!(client_address(proxy, &xff(&[b"10.0.0.5"]), &trusted), Ok(ip("10.0.0.5")), "all trusted");
        assert_eq!(client_address(proxy, &xff(&[b"::ffff:198.51.100.1"]), &trusted), Ok(ip("198.51.100.1")));
        assert_eq!(client_address(proxy, &http::HeaderMap::new(), &trusted), Ok(proxy), "no header");
    }

    #[test]
    fn a_forged_forwarded_for_never_makes_the_proxy_the_client() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let proxy = ip("127.0.0.1");
        // Garbage left of the real client is never read.
        for value in [&b"garbage, 203.0.113.9"[..], b"1.2.3.4:80, 203.0.113.9", b"\xc3\xa9, 203.0.113.9"] {
            assert_eq!(client_address(proxy, &xff(&[value]), &trusted), Ok(ip("203.0.113.9")), "{value:?}");
        }
        // Garbage where the trusted proxy's own entry should be: no address can be believed.
        for value in [&b"garbage"[..], b"1.2.3.4:80", b"\xc3\xa9", b"203.0.113.9, garbage", b"", b"127.0.0.2, x"] {
            assert_eq!(client_address(proxy, &xff(&[value]), &trusted), Err(UnreadableForwardedFor), "{value:?}");
        }
    }

    #[test]
    fn stored_and_shown_forms() {
        let mut access = Access::default();
        let hash = crate::record::hash_password("pw-123456").unwrap();
        let errors = access.apply(&body(json!({
            "basicAuth": [{"username": "ann", "hash": hash}],
            "forwardAuth": {"url": "http://127.0.0.1:9091/api/verify", "copyHeaders": ["Remote-User"]},
            "rateLimit": {"perSecond": 5, "burst": 10},
        })));
        assert!(errors.is_empty(), "{errors:?}");
        let fields: std::collections::BTreeMap<&str, String> = access.to_fields().into_iter().collect();
        let back = Access::from_fields(|f| fields.get(f).cloned()).unwrap();
        assert_eq!(back, access);
        // A user listed without a password keeps the hash.
        assert!(access.apply(&body(json!({"basicAuth": [{"username": "ann"}]}))).is_empty());
        assert_eq!(access.basic_auth[0].hash, back.basic_auth[0].hash);
    }

    #[test]
    fn a_forward_auth_url_is_logged_without_credentials_or_query() {
        let mut access = Access::default();
        let url = "https://user:hunter2@auth.test:9443/verify?api_key=s3cret&rd=x";
        assert!(access.apply(&body(json!({"forwardAuth": {"url": url}}))).is_empty());
        let shown = access.forward_auth.unwrap().shown_url();
        assert_eq!(shown, "https://auth.test:9443/verify");
    }

    #[test]
    fn bad_input_names_the_field() {
        for (input, field) in [
            (json!({"forwardAuth": {"url": "http://a", "copyHeaders": ["Transfer-Encoding"]}}), "forwardAuth"),
            (
                json!({"forwardAuth": {"url": "http://a", "copyHeaders": ["Remote-User", "content-length"]}}),
                "forwardAuth",
            ),
            (json!({"forwardAuth": {"url": "http://a", "copyHeaders": ["Connection"]}}), "forwardAuth"),
            (json!({"forwardAuth": {"url": "http://a", "copyHeaders": ["Host"]}}), "forwardAuth"),
            (json!({"allow": ["10.0.0.0/33"]}), "allow"),
            (json!({"deny": "10.0.0.1"}), "deny"),
            (json!({"basicAuth": [{"username": "bob"}]}), "basicAuth"),
            (json!({"basicAuth": [{"username": "a:b", "hash": "$2b$10$x"}]}), "basicAuth"),
            (json!({"basicAuth": [{"username": "bob", "hash": "plain"}]}), "basicAuth"),
            (json!({"forwardAuth": {"url": "ftp://x"}}), "forwardAuth"),
            (json!({"forwardAuth": {"url": "http://a", "copyHeaders": ["bad header"]}}), "forwardAuth"),
            (json!({"rateLimit": {"perSecond": 0}}), "rateLimit"),
            (json!({"rateLimit": {"perSecond": 1, "burst": 0}}), "rateLimit"),
        ] {
            let errors = Access::default().apply(&body(input.clone()));
            assert_eq!(errors.first().map(FieldError::field), Some(field), "{input}");
        }
    }
}
