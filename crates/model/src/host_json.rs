//! Hosts from the API's JSON (`POST`/`PUT /api/host`, and the command line, which speaks
//! the same fields): a new host, or an update applied to one. Every field at fault is one
//! entry of the error, so a client sees everything it has to fix at once.

use serde_json::Value;

use crate::access::{Access, apply_field, or_null};
use crate::behaviour::{ErrorPages, HeaderRules, HostKind, Hsts, parse_error_pages};
use crate::body::{Body, FieldError, flag, port, required, string};
use crate::host::{Host, Target, put_first};
use crate::name::HostPattern;
use crate::record;
use crate::upstream::{Balance, HealthCheck, Upstream, parse_targets};

impl Host {
    /// A new host from the API's fields: `host`; `ip` and `targetPort`, or `targets` (whose
    /// first entry `ip`/`targetPort` then name, if given too); `forcessl` (true by default)
    /// and `targetssl` (false); `balance`, `healthCheck` and the access fields. Created by
    /// `created_by` at `now_ms`. `basicAuth` entries must carry hashes by now
    /// ([`hash_basic_auth`]).
    pub fn from_json(body: &Body, created_by: &str, now_ms: i64) -> Result<Host, Vec<FieldError>> {
        let mut errors = Vec::new();
        let pattern = required(body, "host", &mut errors).and_then(|text| parse_pattern(&text, &mut errors));
        let mut dress = Dress::default();
        errors.extend(dress.apply(body));
        // A host that does not forward needs no target.
        if !body.contains_key("targets") && dress.kind.forwards() {
            for key in ["ip", "targetPort"] {
                if body.get(key).is_none_or(Value::is_null) {
                    errors.push(FieldError::Missing(key));
                }
            }
        }
        let forcessl = flag(body, "forcessl", &mut errors).unwrap_or(true);
        let targetssl = flag(body, "targetssl", &mut errors).unwrap_or(false);
        let mut policy = Policy::default();
        errors.extend(policy.apply(body));
        let first = first_target(body, policy.targets.first().map(|u| &u.target), &mut errors);
        if let Some(first) = first {
            if policy.targets.is_empty() {
                policy.targets.push(Upstream::new(first));
            } else {
                put_first(&mut policy.targets, first);
            }
        }
        match pattern {
            Some(pattern) if errors.is_empty() && (!policy.targets.is_empty() || !dress.kind.forwards()) => {
                // The targets are the policy's (none for a host that does not forward).
                let mut host = Host::without_target(pattern, forcessl, targetssl, created_by, now_ms);
                policy.into_host(&mut host);
                dress.into_host(&mut host);
                let errors = host.unterminated_conflicts();
                if errors.is_empty() { Ok(host) } else { Err(errors) }
            }
            _ => Err(errors),
        }
    }

    /// Applies an update's fields (the API's names: `host` renames, `ip`/`targetPort` change
    /// the first target, `targets`, `balance` (`null` keeps it), `healthCheck` (`null`
    /// removes it), the access fields, `forcessl`, `targetssl`), as `PUT /api/host/{item}`
    /// does. On error the host may be partly changed: discard it.
    pub fn apply_json(&mut self, body: &Body) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(pattern) = string(body, "host", &mut errors).and_then(|text| parse_pattern(&text, &mut errors)) {
            self.host = pattern;
        }
        errors.extend(self.apply_policy_fields(body));
        let current = self.target().cloned();
        if let Some(first) = first_target(body, current.as_ref(), &mut errors) {
            self.set_first_target(first);
        }
        let mut dress = Dress::of(self);
        errors.extend(dress.apply(body));
        dress.into_host(self);
        if self.kind.forwards() && self.targets.is_empty() {
            errors.push(FieldError::Missing("ip"));
            errors.push(FieldError::Missing("targetPort"));
        }
        if let Some(v) = flag(body, "forcessl", &mut errors) {
            self.forcessl = v;
        }
        if let Some(v) = flag(body, "targetssl", &mut errors) {
            self.targetssl = v;
        }
        if errors.is_empty() {
            errors = self.unterminated_conflicts();
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// What a passthrough host cannot do, since it never sees a request (its TLS is not
    /// terminated): ask for a password or another service's verdict, limit requests, or
    /// rewrite, compress or dress answers. Only the address lists apply (per connection).
    pub fn unterminated_conflicts(&self) -> Vec<FieldError> {
        if !self.kind.is_passthrough() {
            return Vec::new();
        }
        let set = [
            ("basicAuth", !self.access.basic_auth.is_empty()),
            ("forwardAuth", self.access.forward_auth.is_some()),
            ("rateLimit", self.access.rate_limit.is_some()),
            ("headers", !self.headers.is_empty()),
            ("hsts", self.hsts.is_some()),
            ("errorPages", !self.error_pages.is_empty()),
            ("compress", self.compress),
        ];
        set.into_iter()
            .filter(|(_, on)| *on)
            .map(|(field, _)| {
                FieldError::refused(
                    field,
                    format!(
                        "a passthrough host forwards TLS unterminated and never sees a request: {field} cannot \
                         apply (only allow and deny do, per connection)"
                    ),
                )
            })
            .collect()
    }

    /// Applies an update's policy fields: `targets`, `balance` (`null` keeps it),
    /// `healthCheck` (`null` removes it) and the access fields (see [`Access::apply`]). Each
    /// refusal names its field; the fields it refuses stay as they were.
    pub fn apply_policy(&mut self, body: &Body) -> Vec<FieldError> {
        let mut errors = self.apply_policy_fields(body);
        if errors.is_empty() {
            errors = self.unterminated_conflicts();
        }
        errors
    }

    fn apply_policy_fields(&mut self, body: &Body) -> Vec<FieldError> {
        let mut policy = Policy::of(self);
        let errors = policy.apply(body);
        policy.into_host(self);
        errors
    }
}

/// Replaces the `password` of each `basicAuth` entry with its Argon2id hash, so that what is
/// applied and stored holds hashes only (an entry may give a `hash` itself: an Argon2 or a
/// seed's bcrypt hash). Slow on purpose: not on an async task's thread.
pub fn hash_basic_auth(body: &mut Body) -> Result<(), FieldError> {
    let Some(Value::Array(users)) = body.get_mut("basicAuth") else { return Ok(()) };
    for user in users.iter_mut() {
        let Some(entry) = user.as_object_mut() else { continue };
        let Some(password) = entry.remove("password") else { continue };
        let Some(password) = password.as_str().filter(|p| !p.is_empty()) else {
            return Err(FieldError::refused("basicAuth", "basicAuth: a password must be text"));
        };
        if let Some(problem) = crate::user::password_problem("basicAuth", password) {
            return Err(FieldError::refused("basicAuth", format!("basicAuth: {problem}")));
        }
        let hash = record::hash_password(password)
            .map_err(|_| FieldError::refused("basicAuth", "basicAuth: a password could not be hashed"))?;
        entry.insert("hash".into(), Value::String(hash));
    }
    Ok(())
}

/// A host's policy fields, apart from the host (a new host has none yet).
#[derive(Default)]
struct Policy {
    targets: Vec<Upstream>,
    balance: Balance,
    health_check: Option<HealthCheck>,
    access: Access,
}

impl Policy {
    fn of(host: &mut Host) -> Self {
        Self {
            targets: std::mem::take(&mut host.targets),
            balance: host.balance,
            health_check: host.health_check.take(),
            access: std::mem::take(&mut host.access),
        }
    }

    fn into_host(self, host: &mut Host) {
        host.targets = self.targets;
        host.balance = self.balance;
        host.health_check = self.health_check;
        host.access = self.access;
    }

    fn apply(&mut self, body: &Body) -> Vec<FieldError> {
        let mut errors = Vec::new();
        apply_field(body, "targets", &mut self.targets, parse_targets, &mut errors);
        let balance = self.balance;
        let policy = |value: &Value| match value {
            Value::Null => Ok(balance),
            value => Balance::parse(value.as_str().unwrap_or_default()),
        };
        apply_field(body, "balance", &mut self.balance, policy, &mut errors);
        apply_field(body, "healthCheck", &mut self.health_check, or_null(HealthCheck::parse), &mut errors);
        errors.extend(self.access.apply(body));
        errors
    }
}

/// A host's kind and how its answers are dressed: `kind` (with `redirect`, `static` and
/// `passthrough`),
/// `headers`, `hsts`, `errorPages` and `compress`; `null` removes `hsts`, `headers` and
/// `errorPages`.
#[derive(Default)]
struct Dress {
    kind: HostKind,
    headers: HeaderRules,
    hsts: Option<Hsts>,
    error_pages: ErrorPages,
    compress: bool,
}

impl Dress {
    fn of(host: &mut Host) -> Self {
        Self {
            kind: std::mem::take(&mut host.kind),
            headers: std::mem::take(&mut host.headers),
            hsts: host.hsts.take(),
            error_pages: std::mem::take(&mut host.error_pages),
            compress: host.compress,
        }
    }

    fn into_host(self, host: &mut Host) {
        host.kind = self.kind;
        host.headers = self.headers;
        host.hsts = self.hsts;
        host.error_pages = self.error_pages;
        host.compress = self.compress;
    }

    fn apply(&mut self, body: &Body) -> Vec<FieldError> {
        let mut errors = Vec::new();
        // `redirect`, `static` or `passthrough` alone changes the settings of a host of that
        // kind.
        let named = match body.get("kind") {
            None | Some(Value::Null) => {
                Some(self.kind.as_str()).filter(|kind| *kind != "proxy" && body.contains_key(*kind))
            }
            Some(Value::String(kind)) => Some(kind.as_str()),
            Some(_) => {
                errors.push(FieldError::invalid("kind", "must be proxy, redirect, static or passthrough"));
                None
            }
        };
        if let Some(kind) = named {
            match HostKind::parse(kind, |field| body.get(field)) {
                Ok(kind) => self.kind = kind,
                Err(e) => errors.push(e),
            }
        }
        apply_field(body, "headers", &mut self.headers, HeaderRules::parse, &mut errors);
        apply_field(body, "hsts", &mut self.hsts, or_null(Hsts::parse), &mut errors);
        apply_field(body, "errorPages", &mut self.error_pages, parse_error_pages, &mut errors);
        if let Some(compress) = flag(body, "compress", &mut errors) {
            self.compress = compress;
        }
        errors
    }
}

/// The first target the seed's `ip`/`targetPort` name, either defaulting to `current`'s; it
/// must agree with a `targets` list given beside them.
fn first_target(body: &Body, current: Option<&Target>, errors: &mut Vec<FieldError>) -> Option<Target> {
    let ip = string(body, "ip", errors);
    let port = port(body, "targetPort", errors);
    if ip.is_none() && port.is_none() {
        return None;
    }
    let ip = ip.or_else(|| current.map(|t| t.ip().to_owned()))?;
    let port = port.or_else(|| current.map(Target::port))?;
    let target = Target::new(&ip, port).map_err(|e| errors.push(e)).ok()?;
    if body.contains_key("targets") && current.is_some_and(|c| *c != target) {
        errors.push(FieldError::refused("ip", "ip and targetPort are the first of targets: they differ"));
        return None;
    }
    Some(target)
}

fn parse_pattern(text: &str, errors: &mut Vec<FieldError>) -> Option<HostPattern> {
    HostPattern::parse(text).map_err(|e| errors.push(FieldError::invalid("host", e))).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: Value) -> Body {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_new_host_reports_every_bad_field_at_once() {
        let errors = Host::from_json(
            &body(json!({"host": "bad host", "targetPort": 0, "forcessl": "maybe", "balance": "random",
                          "allow": ["not a network"]})),
            "ann",
            1,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        for field in ["host", "ip", "forcessl", "balance", "allow", "targetPort"] {
            assert!(fields.contains(&field), "{field} not reported: {errors:?}");
        }
        assert!(errors.iter().any(|e| e.to_string() == "targetPort must be a whole number from 1 to 65535"));
        assert!(errors.iter().any(|e| e.to_string() == "forcessl is not boolean type"));
    }

    #[test]
    fn a_new_host_from_ip_and_port_or_targets() {
        let host = Host::from_json(
            &body(json!({"host": "App.Example.com", "ip": "10.0.0.1", "targetPort": "8080"})),
            "ann",
            7,
        )
        .unwrap();
        assert_eq!(
            (host.host.as_str(), host.target().unwrap().to_string().as_str()),
            ("app.example.com", "10.0.0.1:8080")
        );
        assert!(host.forcessl && !host.targetssl);
        let stamps = &host.stamps;
        assert_eq!((stamps.created_by.as_str(), stamps.created_on, stamps.updated_by.as_str()), ("ann", 7, "__NONE__"));
        let targets = json!([{"ip": "10.0.0.1", "port": 80}, {"ip": "10.0.0.2", "port": 80, "weight": 2}]);
        let host = Host::from_json(&body(json!({"host": "b.example", "targets": targets})), "ann", 7).unwrap();
        assert_eq!(host.targets.len(), 2);
        let differ = body(json!({"host": "b.example", "targets": targets, "ip": "10.9.9.9", "targetPort": 80}));
        let errors = Host::from_json(&differ, "ann", 7).unwrap_err();
        assert_eq!(errors.iter().map(FieldError::field).collect::<Vec<_>>(), ["ip"]);
    }

    #[test]
    fn an_update_changes_what_it_names() {
        let mut host =
            Host::from_json(&body(json!({"host": "a.example", "ip": "10.0.0.1", "targetPort": 80})), "ann", 1).unwrap();
        host.apply_json(&body(json!({"host": "b.example", "targetPort": 81, "forcessl": false}))).unwrap();
        assert_eq!(
            (host.host.as_str(), host.target().unwrap().to_string().as_str(), host.forcessl),
            ("b.example", "10.0.0.1:81", false)
        );
        let errors = host.clone().apply_json(&body(json!({"ip": 5, "healthCheck": {"path": 3}}))).unwrap_err();
        assert_eq!(errors.iter().map(FieldError::field).collect::<Vec<_>>(), ["healthCheck", "ip"]);
    }

    #[test]
    fn passwords_become_hashes() {
        let mut fields = body(json!({"basicAuth": [{"username": "ann", "password": "correct horse battery"}]}));
        hash_basic_auth(&mut fields).unwrap();
        let entry = &fields["basicAuth"][0];
        assert!(entry.get("password").is_none());
        assert!(entry["hash"].as_str().unwrap().starts_with("$argon2id$"));
        let mut short = body(json!({"basicAuth": [{"username": "ann", "password": 5}]}));
        assert_eq!(hash_basic_auth(&mut short).unwrap_err().field(), "basicAuth");
    }
}
