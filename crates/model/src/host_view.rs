//! A host as the API shows it ([`HostView`]): every field typed, user names but never a
//! password or hash, and the stored record's other fields (the seed's `is_cache`,
//! `is_wildcard`, ...) kept, flags and numbers as such.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::dns::DomainView;
use crate::host::{Host, is_secret_field};
use crate::record::Stamps;

/// A host as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Host))]
pub struct HostView {
    /// The pattern: labels, each literal, `*` (one label) or `**` (one or more).
    host: String,
    /// The first target's address (the seed's field); absent for a redirect or static host
    /// without targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    /// The first target's port (the seed's field).
    #[serde(rename = "targetPort", skip_serializing_if = "Option::is_none")]
    target_port: Option<u16>,
    /// Every target, the first one `ip`/`targetPort`.
    targets: Vec<TargetView>,
    /// How requests are shared: `round_robin`, `least_conn`, `ip_hash`, ...
    balance: &'static str,
    #[serde(rename = "healthCheck", skip_serializing_if = "Option::is_none")]
    health_check: Option<HealthCheckView>,
    /// Basic-auth users: their names only.
    #[serde(rename = "basicAuth", skip_serializing_if = "Vec::is_empty")]
    basic_auth: Vec<UserName>,
    /// Addresses or networks let in (all others refused); absent: everyone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow: Vec<String>,
    /// Addresses or networks refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    deny: Vec<String>,
    #[serde(rename = "forwardAuth", skip_serializing_if = "Option::is_none")]
    forward_auth: Option<ForwardAuthView>,
    #[serde(rename = "rateLimit", skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitView>,
    /// Plain HTTP is redirected to HTTPS.
    forcessl: bool,
    /// Targets are spoken to over TLS.
    targetssl: bool,
    /// `proxy` (forwards to its targets), `redirect`, `static` or `passthrough` (TLS
    /// forwarded to its targets unterminated).
    kind: &'static str,
    /// A redirect host's `{url, code, keepPath}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    redirect: Option<Value>,
    /// A static host's `{status, contentType, body}`.
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    static_answer: Option<Value>,
    /// A passthrough host's `{proxyProtocol}` (always shown for a passthrough host).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    passthrough: Option<Value>,
    /// Header rules: `{request: {set, add, remove}, response: {…}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    headers: Option<Value>,
    /// Strict-Transport-Security on HTTPS answers: `{maxAge, includeSubDomains, preload}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    hsts: Option<Value>,
    /// Pages for Portico's own error answers, by status (`"502"`) or `"default"`.
    #[serde(rename = "errorPages", skip_serializing_if = "BTreeMap::is_empty")]
    error_pages: BTreeMap<String, String>,
    /// Answers are compressed (zstd, brotli, gzip) for clients that accept it (default false).
    compress: bool,
    #[serde(flatten)]
    stamps: Stamps,
    /// The stored record's other fields that are not secrets.
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
    /// When read: the managed zone the host is in, with its provider (`null` when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<DomainView>))]
    domain: Option<Option<DomainView>>,
}

/// One target.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetView {
    /// An IP address or a host name.
    ip: String,
    port: u16,
    /// Its share of the traffic (1–100).
    weight: u16,
    /// `GET /api/host/{item}` only, from a node that proxies: its view of the target,
    /// `healthy`, `ejected` (failed connections; tried again after a back-off of at most
    /// 30 s), `down` (failing its health checks) or `unknown` (no traffic yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<&'static str>,
    /// With `health`: failures in a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
    /// With `health`: the last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<Option<String>>,
}

/// A node's view of a target's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetReport {
    /// `healthy`, `ejected` (failed connections; tried again after a back-off of at most
    /// 30 s), `down` (failing its health checks) or `unknown` (no traffic yet).
    pub health: &'static str,
    /// Failures in a row.
    pub failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

/// `GET path` every `interval`; `unhealthy` failures in a row take a target out, `healthy`
/// passes put it back.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheckView {
    path: String,
    /// A duration: `10s`, `1m`.
    interval: String,
    /// The status a healthy target answers.
    expect: u16,
    unhealthy: u32,
    healthy: u32,
}

/// A basic-auth user, as shown: the name.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserName {
    username: String,
}

/// A forward-auth service: asked before each request; 2xx lets it through.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForwardAuthView {
    url: String,
    /// Headers of the service's answer copied onto the request.
    #[serde(rename = "copyHeaders")]
    copy_headers: Vec<String>,
}

/// A token bucket per client address.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimitView {
    #[serde(rename = "perSecond")]
    per_second: f64,
    burst: u32,
}

impl HostView {
    /// `host` as the API shows it, without its zone.
    pub fn of(host: &Host) -> Self {
        let access = &host.access;
        let nets = |list: &[ipnet::IpNet]| list.iter().map(ToString::to_string).collect();
        Self {
            host: host.host.to_string(),
            ip: host.target().map(|t| t.ip().to_owned()),
            target_port: host.target().map(crate::Target::port),
            targets: host
                .targets
                .iter()
                .map(|u| TargetView {
                    ip: u.target.ip().to_owned(),
                    port: u.target.port(),
                    weight: u.weight,
                    health: None,
                    failures: None,
                    last_error: None,
                })
                .collect(),
            balance: host.balance.as_str(),
            health_check: host.health_check.as_ref().map(|c| HealthCheckView {
                path: c.path.clone(),
                interval: humantime::format_duration(c.interval).to_string(),
                expect: c.expect,
                unhealthy: c.unhealthy,
                healthy: c.healthy,
            }),
            basic_auth: access.basic_auth.iter().map(|u| UserName { username: u.username.clone() }).collect(),
            allow: nets(&access.allow),
            deny: nets(&access.deny),
            forward_auth: access
                .forward_auth
                .as_ref()
                .map(|a| ForwardAuthView { url: a.url.clone(), copy_headers: a.copy_headers.clone() }),
            rate_limit: access.rate_limit.map(|l| RateLimitView { per_second: l.per_second, burst: l.burst }),
            forcessl: host.forcessl,
            targetssl: host.targetssl,
            kind: host.kind.as_str(),
            redirect: match &host.kind {
                crate::HostKind::Redirect(r) => Some(r.to_json()),
                _ => None,
            },
            static_answer: match &host.kind {
                crate::HostKind::Static(a) => Some(a.to_json()),
                _ => None,
            },
            passthrough: match &host.kind {
                crate::HostKind::Passthrough(p) => Some(p.to_json()),
                _ => None,
            },
            headers: (!host.headers.is_empty()).then(|| host.headers.to_json()),
            hsts: host.hsts.as_ref().map(crate::behaviour::Hsts::to_json),
            error_pages: host.error_pages.clone(),
            compress: host.compress,
            stamps: host.stamps.clone(),
            other: host
                .extra
                .iter()
                .filter(|(k, _)| !is_secret_field(k))
                .map(|(k, v)| (k.clone(), typed(k, v)))
                .collect(),
            domain: None,
        }
    }

    /// With each target's health as this node sees it (`health`, in the targets' order).
    pub fn with_health(mut self, health: Vec<TargetReport>) -> Self {
        for (target, report) in self.targets.iter_mut().zip(health) {
            target.health = Some(report.health);
            target.failures = Some(report.failures);
            target.last_error = Some(report.last_error);
        }
        self
    }

    /// With the seed's `domain` relation: the managed zone it is in (`None`: in none).
    pub fn in_zone(mut self, zone: Option<DomainView>) -> Self {
        self.domain = Some(zone);
        self
    }
}

/// A stored field's value as the API shows it: a flag as a boolean, the seed's
/// `wildcard_expires` as a number, anything else as text.
fn typed(name: &str, value: &str) -> Value {
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ if name == "wildcard_expires" => value.parse::<i64>().map_or_else(|_| Value::from(value), Value::from),
        _ => Value::from(value),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::access::Access;

    #[test]
    fn a_host_shows_its_fields_typed_and_never_a_password_hash() {
        let mut host = Host::from_json(
            json!({"host": "app.test", "ip": "10.0.0.1", "targetPort": "8080", "healthCheck": {"path": "/up"}})
                .as_object()
                .unwrap(),
            "ann",
            7,
        )
        .unwrap();
        let hash = crate::record::hash_password("pw-123456").unwrap();
        let mut access = Access::default();
        let policy = json!({"basicAuth": [{"username": "ann", "hash": hash}], "rateLimit": {"perSecond": 5}});
        assert!(access.apply(policy.as_object().unwrap()).is_empty());
        host.access = access;
        host.extra.insert("wildcard_expires".into(), "1700000000".into());
        host.extra.insert("sso_secret".into(), "hidden".into());
        let shown = serde_json::to_value(HostView::of(&host)).unwrap();
        assert_eq!((shown["targetPort"].clone(), shown["forcessl"].clone()), (json!(8080), json!(true)));
        assert_eq!(shown["basicAuth"], json!([{"username": "ann"}]));
        assert_eq!(shown["rateLimit"], json!({"perSecond": 5.0, "burst": 5}));
        assert_eq!(shown["healthCheck"]["interval"], "5s", "the default interval");
        assert_eq!(
            (shown["is_wildcard"].clone(), shown["wildcard_expires"].clone()),
            (json!(false), json!(1_700_000_000))
        );
        assert_eq!(shown["created_on"], json!(7));
        let text = shown.to_string();
        assert!(!text.contains("argon2") && !text.contains("hidden") && shown.get("domain").is_none(), "{text}");
        let zoned = serde_json::to_value(HostView::of(&host).in_zone(None)).unwrap();
        assert_eq!(zoned["domain"], Value::Null, "a read says it is in no zone");
    }
}
