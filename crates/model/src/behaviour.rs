//! What a host does beside forwarding, and how its answers are dressed: its [`HostKind`]
//! (proxy, redirect, static answer, TLS passthrough), header rules, HSTS, error pages and
//! compression. Each is a host field of its own (`kind`, `redirect`, `static`,
//! `passthrough`, `headers`, `hsts`, `errorPages`, `compress`), stored as JSON text like
//! `healthCheck`, absent when it says nothing, so a proxy host's record stays the seed's.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::body::FieldError;
use crate::name::Hostname;

/// What a host answers with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostKind {
    /// Forwards to its targets (the seed's only kind).
    #[default]
    Proxy,
    /// Redirects every request.
    Redirect(Redirect),
    /// Answers every request with one fixed answer (a 404 host, a maintenance page).
    Static(StaticAnswer),
    /// Forwards the TLS connections for its names to its targets unterminated, chosen by the
    /// ClientHello's SNI (Traefik's `HostSNI`, nginx's `ssl_preread`): the targets hold the
    /// certificates, and Portico never gets one for these names.
    Passthrough(Passthrough),
}

impl HostKind {
    /// `proxy`, `redirect`, `static` or `passthrough`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Redirect(_) => "redirect",
            Self::Static(_) => "static",
            Self::Passthrough(_) => "passthrough",
        }
    }

    /// Whether connections or requests go to targets (a proxy or passthrough host).
    pub fn forwards(&self) -> bool {
        matches!(self, Self::Proxy | Self::Passthrough(_))
    }

    /// Whether TLS for its names is forwarded unterminated.
    pub fn is_passthrough(&self) -> bool {
        matches!(self, Self::Passthrough(_))
    }

    /// The kind named `kind`, with its settings from `settings`: the field named as the kind
    /// (`redirect`, `static`, `passthrough`), as JSON.
    pub fn parse<'a>(kind: &str, settings: impl Fn(&str) -> Option<&'a Value>) -> Result<Self, FieldError> {
        match kind {
            "proxy" => Ok(Self::Proxy),
            "redirect" => {
                let spec = settings("redirect").filter(|v| !v.is_null()).ok_or(FieldError::Missing("redirect"))?;
                Ok(Self::Redirect(Redirect::parse(spec)?))
            }
            "static" => Ok(Self::Static(StaticAnswer::parse(settings("static").unwrap_or(&Value::Null))?)),
            "passthrough" => {
                Ok(Self::Passthrough(Passthrough::parse(settings("passthrough").unwrap_or(&Value::Null))?))
            }
            _ => Err(FieldError::invalid("kind", "must be proxy, redirect, static or passthrough")),
        }
    }

    /// Its settings as the API shows them and the record keeps them (under the field named
    /// as the kind): none for a proxy host, nor for a passthrough host with the defaults.
    pub fn settings_json(&self) -> Option<Value> {
        match self {
            Self::Proxy => None,
            Self::Redirect(redirect) => Some(redirect.to_json()),
            Self::Static(answer) => Some(answer.to_json()),
            Self::Passthrough(pass) => (*pass != Passthrough::default()).then(|| pass.to_json()),
        }
    }
}

/// How a passthrough host's connections reach its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Passthrough {
    /// A PROXY protocol (v1) header naming the client goes first to the target.
    pub proxy_protocol: bool,
}

impl Passthrough {
    /// From `{proxyProtocol}` (false unless given); `null` is the default.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: &str| FieldError::invalid("passthrough", reason);
        match value {
            Value::Null => Ok(Self::default()),
            Value::Object(spec) => match spec.get("proxyProtocol") {
                None | Some(Value::Null) => Ok(Self::default()),
                Some(Value::Bool(proxy_protocol)) => Ok(Self { proxy_protocol: *proxy_protocol }),
                Some(_) => Err(bad("proxyProtocol must be true or false")),
            },
            _ => Err(bad("must be an object {proxyProtocol}")),
        }
    }

    /// The API's form.
    pub fn to_json(&self) -> Value {
        json!({"proxyProtocol": self.proxy_protocol})
    }
}

/// Where a redirect host sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// An absolute `http(s)://` URL, or a host name (the request's scheme is kept).
    pub url: String,
    /// 301, 302, 307 or 308.
    pub code: u16,
    /// The request's path and query are appended to `url`.
    pub keep_path: bool,
}

impl Redirect {
    /// From `{url, code, keepPath}` (`code` 301 and `keepPath` true unless given).
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: &str| FieldError::invalid("redirect", reason);
        let spec = value.as_object().ok_or_else(|| bad("must be an object {url, code, keepPath}"))?;
        let url = spec.get("url").and_then(Value::as_str).map(str::trim).unwrap_or_default();
        if url.is_empty() {
            return Err(bad("needs url: an http(s) URL or a host name"));
        }
        let url = if url.contains("://") {
            let uri: http::Uri = url.parse().map_err(|_| bad("url is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(bad("url must start with http:// or https:// and name a host"));
            }
            url.trim_end_matches('/').to_owned()
        } else {
            Hostname::parse(url).map_err(|e| bad(&format!("url is neither a URL nor a host name: {e}")))?.to_string()
        };
        let code = match spec.get("code") {
            None | Some(Value::Null) => 301,
            Some(code) => match code.as_u64() {
                Some(code @ (301 | 302 | 307 | 308)) => code as u16,
                _ => return Err(bad("code must be 301, 302, 307 or 308")),
            },
        };
        let keep_path = match spec.get("keepPath") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(keep)) => *keep,
            Some(_) => return Err(bad("keepPath must be true or false")),
        };
        Ok(Self { url, code, keep_path })
    }

    /// The API's form.
    pub fn to_json(&self) -> Value {
        json!({"url": self.url, "code": self.code, "keepPath": self.keep_path})
    }

    /// Where a request for `path_and_query` over `scheme` goes.
    pub fn location(&self, scheme: &str, path_and_query: &str) -> String {
        let base = if self.url.contains("://") { self.url.clone() } else { format!("{scheme}://{}", self.url) };
        if self.keep_path && path_and_query != "/" { format!("{base}{path_and_query}") } else { format!("{base}/") }
    }
}

/// The one answer a static host gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAnswer {
    /// 200 to 599 (not 1xx, not 204/304, which carry no body: use 200).
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: String,
    /// The body, at most [`MAX_PAGE`] bytes.
    pub body: String,
}

/// The largest static body or error page: 64 KiB.
pub const MAX_PAGE: usize = 64 * 1024;

impl StaticAnswer {
    /// From `{status, contentType, body}` (200, `text/html; charset=utf-8` and empty unless
    /// given); `null` is all three defaults.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: &str| FieldError::invalid("static", reason);
        let empty = Map::new();
        let spec = match value {
            Value::Null => &empty,
            Value::Object(spec) => spec,
            _ => return Err(bad("must be an object {status, contentType, body}")),
        };
        let status = match spec.get("status") {
            None | Some(Value::Null) => 200,
            Some(s) => match s.as_u64() {
                Some(s @ 200..=599) if !matches!(s, 204 | 205 | 304) => s as u16,
                _ => return Err(bad("status must be from 200 to 599, and not 204, 205 or 304")),
            },
        };
        let content_type = match spec.get("contentType") {
            None | Some(Value::Null) => "text/html; charset=utf-8".to_owned(),
            Some(Value::String(t)) if http::HeaderValue::from_str(t).is_ok() && !t.trim().is_empty() => {
                t.trim().to_owned()
            }
            Some(_) => return Err(bad("contentType must be a media type such as text/plain")),
        };
        let body = match spec.get("body") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(b)) if b.len() <= MAX_PAGE => b.clone(),
            Some(Value::String(_)) => return Err(bad("body is longer than 64 KiB")),
            Some(_) => return Err(bad("body must be text")),
        };
        Ok(Self { status, content_type, body })
    }

    /// The API's form.
    pub fn to_json(&self) -> Value {
        json!({"status": self.status, "contentType": self.content_type, "body": self.body})
    }
}

/// HTTP Strict Transport Security, sent on HTTPS answers only (RFC 6797).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// Seconds browsers remember to use HTTPS only.
    pub max_age: u64,
    /// For every subdomain too.
    pub include_subdomains: bool,
    /// Asks to be in browsers' preload lists (which want a year or more and subdomains).
    pub preload: bool,
}

impl Hsts {
    /// From `{maxAge, includeSubDomains, preload}` (a year, false, false unless given).
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: &str| FieldError::invalid("hsts", reason);
        let spec = value.as_object().ok_or_else(|| bad("must be an object {maxAge, includeSubDomains, preload}"))?;
        let max_age = match spec.get("maxAge") {
            None | Some(Value::Null) => 31_536_000,
            Some(v) => v
                .as_u64()
                .filter(|s| *s <= 10 * 31_536_000)
                .ok_or_else(|| bad("maxAge must be seconds, at most ten years"))?,
        };
        let flag = |key: &str| match spec.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(&format!("{key} must be true or false"))),
        };
        let (include_subdomains, preload) = (flag("includeSubDomains")?, flag("preload")?);
        if preload && (!include_subdomains || max_age < 31_536_000) {
            return Err(bad("preload needs includeSubDomains and a maxAge of a year (31536000) or more"));
        }
        Ok(Self { max_age, include_subdomains, preload })
    }

    /// The API's form.
    pub fn to_json(&self) -> Value {
        json!({"maxAge": self.max_age, "includeSubDomains": self.include_subdomains, "preload": self.preload})
    }

    /// The header's value.
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

/// Headers no rule may touch: hop-by-hop ones, and those the proxy itself must own.
const UNTOUCHABLE: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The placeholders a header rule's value may use.
pub const PLACEHOLDERS: [&str; 4] = ["client_ip", "request_id", "host", "scheme"];

/// Set, add and remove headers, one direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderOps {
    /// Replaced (or added) with this value.
    pub set: Vec<(String, String)>,
    /// Added beside any the message has.
    pub add: Vec<(String, String)>,
    /// Removed.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether it does nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn parse(direction: &str, value: &Value) -> Result<Self, FieldError> {
        let bad = |reason: String| FieldError::invalid("headers", format!("{direction}: {reason}"));
        let empty = Map::new();
        let spec = match value {
            Value::Null => &empty,
            Value::Object(spec) => spec,
            _ => return Err(bad("must be an object {set, add, remove}".into())),
        };
        let name = |name: &str| -> Result<String, FieldError> {
            let lower = name.trim().to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(bad(format!("{name:?} is not a header name")));
            }
            if UNTOUCHABLE.contains(&lower.as_str()) {
                return Err(bad(format!(
                    "{name} is the proxy's own (hop-by-hop, Host or Content-Length): no rule may change it"
                )));
            }
            Ok(lower)
        };
        let pairs = |key: &str| -> Result<Vec<(String, String)>, FieldError> {
            let mut out = Vec::new();
            match spec.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(map)) => {
                    for (header, value) in map {
                        let value = value.as_str().ok_or_else(|| bad(format!("{key}.{header} must be text")))?;
                        check_template(value).map_err(|e| bad(format!("{key}.{header}: {e}")))?;
                        out.push((name(header)?, value.to_owned()));
                    }
                }
                Some(_) => return Err(bad(format!("{key} must be an object of header names to values"))),
            }
            Ok(out)
        };
        let (set, add) = (pairs("set")?, pairs("add")?);
        let remove = match spec.get("remove") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| n.as_str().ok_or_else(|| bad("remove must list header names".into())).and_then(name))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("remove must be a list of header names".into())),
        };
        if set.len() + add.len() + remove.len() > 50 {
            return Err(bad("more than 50 rules".into()));
        }
        Ok(Self { set, add, remove })
    }

    fn to_json(&self) -> Value {
        let map = |pairs: &[(String, String)]| {
            Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
        };
        json!({"set": map(&self.set), "add": map(&self.add), "remove": self.remove})
    }
}

/// Checks a header rule's value: placeholders known, and a valid header value once they are
/// replaced (no line breaks).
fn check_template(value: &str) -> Result<(), String> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("a { without its }")?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "{{{name}}} is not a placeholder ({})",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err("is not a valid header value (line breaks or control characters)".into());
    }
    Ok(())
}

/// A value with its placeholders replaced by `fill`'s answers.
pub fn fill_template(value: &str, fill: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if PLACEHOLDERS.contains(&&after[..close]) => {
                out.push_str(&fill(&after[..close]));
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Header rules of a host: on requests to its targets, and on its answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    /// On requests sent to the targets.
    pub request: HeaderOps,
    /// On every answer of the host.
    pub response: HeaderOps,
}

impl HeaderRules {
    /// Whether it does nothing.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }

    /// From `{request: {set, add, remove}, response: {…}}`; `null` is none.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        match value {
            Value::Null => Ok(Self::default()),
            Value::Object(spec) => {
                if let Some(other) = spec.keys().find(|k| !matches!(k.as_str(), "request" | "response")) {
                    return Err(FieldError::invalid("headers", format!("{other} is neither request nor response")));
                }
                Ok(Self {
                    request: HeaderOps::parse("request", spec.get("request").unwrap_or(&Value::Null))?,
                    response: HeaderOps::parse("response", spec.get("response").unwrap_or(&Value::Null))?,
                })
            }
            _ => Err(FieldError::invalid("headers", "must be an object {request, response}")),
        }
    }

    /// The API's form.
    pub fn to_json(&self) -> Value {
        json!({"request": self.request.to_json(), "response": self.response.to_json()})
    }
}

/// Pages for errors, by status (`"502"`) or `"default"`.
pub type ErrorPages = BTreeMap<String, String>;

/// From `{"502": "<html>…", "default": "…"}`; `null` is none.
pub fn parse_error_pages(value: &Value) -> Result<ErrorPages, FieldError> {
    let bad = |reason: String| FieldError::invalid("errorPages", reason);
    let spec = match value {
        Value::Null => return Ok(ErrorPages::new()),
        Value::Object(spec) => spec,
        _ => return Err(bad("must be an object from a status (\"502\") or \"default\" to an HTML page".into())),
    };
    let mut pages = ErrorPages::new();
    for (key, page) in spec {
        let status_ok = key.parse::<u16>().is_ok_and(|s| (400..=599).contains(&s));
        if key != "default" && !status_ok {
            return Err(bad(format!("{key} is neither a status from 400 to 599 nor default")));
        }
        let page = page.as_str().ok_or_else(|| bad(format!("{key} must be an HTML page (text)")))?;
        if page.len() > MAX_PAGE {
            return Err(bad(format!("{key} is longer than 64 KiB")));
        }
        pages.insert(key.clone(), page.to_owned());
    }
    Ok(pages)
}

/// The page of `pages` for `status`: its own, else the default.
pub fn error_page(pages: &ErrorPages, status: u16) -> Option<&str> {
    pages.get(&status.to_string()).or_else(|| pages.get("default")).map(String::as_str)
}

/// An error page's text with `{status}` and `{request_id}` replaced (the id is letters,
/// digits and `-_.:` only, never markup).
pub fn fill_page(page: &str, status: u16, request_id: &str) -> String {
    page.replace("{status}", &status.to_string()).replace("{request_id}", request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_their_settings() {
        let redirect = json!({"url": "https://new.example.com/", "code": 308, "keepPath": false});
        let kind = HostKind::parse("redirect", |f| (f == "redirect").then_some(&redirect)).unwrap();
        let HostKind::Redirect(r) = &kind else { panic!("{kind:?}") };
        assert_eq!(r.location("http", "/a?b=1"), "https://new.example.com/");
        let keep = Redirect::parse(&json!({"url": "Other.Example.com"})).unwrap();
        assert_eq!((keep.code, keep.keep_path), (301, true));
        assert_eq!(keep.location("https", "/a?b=1"), "https://other.example.com/a?b=1");
        for bad in [json!({"url": "ftp://x"}), json!({"url": "https://x", "code": 303}), json!({"url": ""}), json!(5)] {
            assert_eq!(Redirect::parse(&bad).unwrap_err().field(), "redirect", "{bad}");
        }
        assert_eq!(HostKind::parse("redirect", |_| None).unwrap_err(), FieldError::Missing("redirect"));
        let gone = json!({"status": 404, "body": "gone"});
        let answer = HostKind::parse("static", |f| (f == "static").then_some(&gone)).unwrap();
        assert_eq!(
            answer,
            HostKind::Static(StaticAnswer {
                status: 404,
                content_type: "text/html; charset=utf-8".into(),
                body: "gone".into()
            })
        );
        assert!(StaticAnswer::parse(&json!({"status": 204})).is_err());
        assert!(StaticAnswer::parse(&json!({"body": "x".repeat(MAX_PAGE + 1)})).is_err());
        assert_eq!(HostKind::parse("passthrough", |_| None).unwrap(), HostKind::Passthrough(Passthrough::default()));
        let proxied = json!({"proxyProtocol": true});
        let pass = HostKind::parse("passthrough", |f| (f == "passthrough").then_some(&proxied)).unwrap();
        assert_eq!(pass.settings_json(), Some(proxied));
        assert_eq!(HostKind::Passthrough(Passthrough::default()).settings_json(), None, "the defaults are not stored");
        let bad = json!({"proxyProtocol": "yes"});
        assert_eq!(HostKind::parse("passthrough", |_| Some(&bad)).unwrap_err().field(), "passthrough");
        assert_eq!(HostKind::parse("mirror", |_| None).unwrap_err().field(), "kind");
    }

    #[test]
    fn header_rules_refuse_what_would_break_the_proxy() {
        let rules = HeaderRules::parse(&json!({
            "request": {"set": {"X-Real-Client": "{client_ip}"}, "remove": ["X-Debug"]},
            "response": {"add": {"X-Served-By": "portico {request_id}"}}
        }))
        .unwrap();
        assert_eq!(rules.request.set, vec![("x-real-client".to_owned(), "{client_ip}".to_owned())]);
        assert_eq!(rules.request.remove, vec!["x-debug".to_owned()]);
        for broken in [
            json!({"request": {"set": {"Host": "x"}}}),
            json!({"response": {"remove": ["Transfer-Encoding"]}}),
            json!({"request": {"add": {"Content-Length": "5"}}}),
            json!({"response": {"set": {"Connection": "close"}}}),
            json!({"request": {"set": {"X-A": "{password}"}}}),
            json!({"request": {"set": {"X-A": "a\r\nb"}}}),
            json!({"request": {"set": {"bad header": "x"}}}),
            json!({"sideways": {}}),
        ] {
            assert_eq!(HeaderRules::parse(&broken).unwrap_err().field(), "headers", "{broken}");
        }
        let filled = fill_template("{scheme}://{host} for {client_ip} {unknown}", |p| p.to_uppercase());
        assert_eq!(filled, "SCHEME://HOST for CLIENT_IP {unknown}");
        assert_eq!(HeaderRules::parse(&rules.to_json()).unwrap(), rules, "round trip");
    }

    #[test]
    fn hsts_and_error_pages() {
        let hsts = Hsts::parse(&json!({"maxAge": 63072000, "includeSubDomains": true, "preload": true})).unwrap();
        assert_eq!(hsts.header_value(), "max-age=63072000; includeSubDomains; preload");
        assert_eq!(Hsts::parse(&json!({})).unwrap().header_value(), "max-age=31536000");
        assert!(Hsts::parse(&json!({"preload": true})).is_err(), "preload needs subdomains");
        let pages = parse_error_pages(&json!({"502": "down {status} {request_id}", "default": "oops"})).unwrap();
        assert_eq!(fill_page(error_page(&pages, 502).unwrap(), 502, "abc"), "down 502 abc");
        assert_eq!(error_page(&pages, 404), Some("oops"));
        for bad in [json!({"200": "x"}), json!({"abc": "x"}), json!({"502": 5})] {
            assert_eq!(parse_error_pages(&bad).unwrap_err().field(), "errorPages");
        }
    }
}
