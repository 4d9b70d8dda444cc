//! Hosts from the API's JSON (`POST`/`PUT /api/host`, and the command line, which speaks
//! the same fields): a new host, or an update applied to one. Every field at fault is one
//! entry of the error, so a client sees everything it has to fix at once.

use serde_json::Value;

use crate::access::{Access, apply_field, or_null};
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
        if !body.contains_key("targets") {
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
            Some(pattern) if errors.is_empty() && !policy.targets.is_empty() => {
                let mut host =
                    Host::new(pattern, policy.targets[0].target.clone(), forcessl, targetssl, created_by, now_ms);
                policy.into_host(&mut host);
                Ok(host)
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
        errors.extend(self.apply_policy(body));
        if let Some(first) = first_target(body, Some(self.target()), &mut errors) {
            self.set_first_target(first);
        }
        if let Some(v) = flag(body, "forcessl", &mut errors) {
            self.forcessl = v;
        }
        if let Some(v) = flag(body, "targetssl", &mut errors) {
            self.targetssl = v;
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Applies an update's policy fields: `targets`, `balance` (`null` keeps it),
    /// `healthCheck` (`null` removes it) and the access fields (see [`Access::apply`]). Each
    /// refusal names its field; the fields it refuses stay as they were.
    pub fn apply_policy(&mut self, body: &Body) -> Vec<FieldError> {
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
        assert_eq!((host.host.as_str(), host.target().to_string().as_str()), ("app.example.com", "10.0.0.1:8080"));
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
            (host.host.as_str(), host.target().to_string().as_str(), host.forcessl),
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
