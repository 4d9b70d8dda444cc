//! A host's targets and how traffic is shared among them: `targets` (each with a weight),
//! `balance` (the policy), `healthCheck` (active checks). Plain values and their JSON forms;
//! the proxy keeps the health state.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::body::FieldError;
use crate::host::{Target, parse_port};

/// One of a host's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where it is.
    pub target: Target,
    /// Its share of the traffic relative to the others (1–100; 1 by default).
    pub weight: u16,
}

/// The most a weight may be: shares beyond 100 to 1 are not a load-balancing need.
pub const MAX_WEIGHT: u16 = 100;
/// The most targets a host may have.
pub const MAX_TARGETS: usize = 64;

impl Upstream {
    /// A target with weight 1.
    pub fn new(target: Target) -> Self {
        Self { target, weight: 1 }
    }

    /// `{"ip", "port", "weight"}`.
    pub fn to_json(&self) -> Value {
        json!({ "ip": self.target.ip(), "port": self.target.port(), "weight": self.weight })
    }
}

/// Reads `targets`: a non-empty list of `{"ip", "port", "weight"?}`.
pub fn parse_targets(value: &Value) -> Result<Vec<Upstream>, FieldError> {
    let invalid = |reason: String| FieldError::Invalid { field: "targets", reason };
    let list = value.as_array().ok_or_else(|| invalid("must be a list of {ip, port, weight}".into()))?;
    if list.is_empty() || list.len() > MAX_TARGETS {
        return Err(invalid(format!("must have 1 to {MAX_TARGETS} targets")));
    }
    let mut out: Vec<Upstream> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = |reason: &str| invalid(format!("target {}: {reason}", i + 1));
        let object = item.as_object().ok_or_else(|| at("must be an object {ip, port, weight}"))?;
        let ip = object.get("ip").and_then(Value::as_str).ok_or_else(|| at("ip is required"))?;
        let port = match object.get("port") {
            Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
            Some(Value::String(s)) => parse_port(s).ok(),
            _ => None,
        }
        .ok_or_else(|| at("port must be a number from 1 to 65535"))?;
        let weight = match object.get("weight") {
            None | Some(Value::Null) => 1,
            Some(w) => w
                .as_u64()
                .and_then(|w| u16::try_from(w).ok())
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| at(&format!("weight must be a whole number from 1 to {MAX_WEIGHT}")))?,
        };
        let target = Target::new(ip, port).map_err(|e| at(&e.to_string()))?;
        if out.iter().any(|u| u.target == target) {
            return Err(at(&format!("{target} is listed twice")));
        }
        out.push(Upstream { target, weight });
    }
    Ok(out)
}

/// How a request picks among a host's healthy targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Balance {
    /// In turn, by weight.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in progress (relative to its weight).
    LeastConn,
    /// The same target for the same client address, while it is healthy.
    IpHash,
    /// The first healthy one in the list (the rest are standbys).
    First,
}

impl Balance {
    /// Every policy, by its name.
    pub const ALL: [Balance; 4] = [Balance::RoundRobin, Balance::LeastConn, Balance::IpHash, Balance::First];

    /// Its name in the API: `round_robin`, `least_conn`, `ip_hash`, `first`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::First => "first",
        }
    }

    /// The policy of this name.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        Self::ALL.into_iter().find(|b| b.as_str() == text).ok_or_else(|| FieldError::Invalid {
            field: "balance",
            reason: "must be round_robin, least_conn, ip_hash or first".into(),
        })
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When checks run and what changes a target's state: every `interval` (1 s to 1 h, default
/// 5 s); down after `unhealthy` failures in a row (default 3), up after `healthy` passes
/// (default 2). A host's `healthCheck` has them, and a TCP stream's (a connection made is a
/// pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckTiming {
    /// Time between two checks of a target.
    pub interval: Duration,
    /// Failed checks in a row that make a target unhealthy.
    pub unhealthy: u32,
    /// Passed checks in a row that make it healthy again.
    pub healthy: u32,
}

impl CheckTiming {
    /// Reads `interval`, `unhealthy` and `healthy` from a `healthCheck` object.
    pub fn parse(object: &serde_json::Map<String, Value>) -> Result<Self, FieldError> {
        let invalid = |reason: &str| FieldError::Invalid { field: "healthCheck", reason: reason.to_owned() };
        let interval = match object.get("interval") {
            None | Some(Value::Null) => Duration::from_secs(5),
            Some(Value::String(text)) => {
                humantime::parse_duration(text).map_err(|_| invalid("interval must be a duration such as \"5s\""))?
            }
            Some(_) => return Err(invalid("interval must be a duration such as \"5s\"")),
        };
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&interval) {
            return Err(invalid("interval must be from 1s to 1h"));
        }
        Ok(Self {
            interval,
            unhealthy: check_number(object, "unhealthy", 3, 1..=100)? as u32,
            healthy: check_number(object, "healthy", 2, 1..=100)? as u32,
        })
    }

    /// The JSON form `parse` reads.
    pub fn to_json(&self) -> Value {
        json!({
            "interval": humantime::format_duration(self.interval).to_string(),
            "unhealthy": self.unhealthy,
            "healthy": self.healthy,
        })
    }
}

/// One target's health checks in a row: `unhealthy` failures in a row make it down,
/// `healthy` passes in a row make it up again (a host's HTTP checks and a stream's connection
/// checks alike).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    passed: u32,
    failed: u32,
    down: bool,
}

impl Streak {
    /// Counts one check; `Some(down)` when it turns the target down or up again.
    pub fn record(&mut self, passed: bool, unhealthy: u32, healthy: u32) -> Option<bool> {
        if passed {
            (self.passed, self.failed) = (self.passed.saturating_add(1), 0);
        } else {
            (self.passed, self.failed) = (0, self.failed.saturating_add(1));
        }
        let flips = if self.down { passed && self.passed >= healthy } else { !passed && self.failed >= unhealthy };
        flips.then(|| {
            self.down = !self.down;
            self.down
        })
    }

    /// Whether the checks have the target down.
    pub fn down(&self) -> bool {
        self.down
    }
}

/// A whole number field of a `healthCheck` object, `default` when absent.
fn check_number(
    object: &serde_json::Map<String, Value>,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, FieldError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| range.contains(n)).ok_or_else(|| FieldError::Invalid {
            field: "healthCheck",
            reason: format!("{key} must be a whole number from {} to {}", range.start(), range.end()),
        }),
    }
}

/// Active health checks of a host's targets: `GET path` every `interval`; a target is
/// unhealthy after `unhealthy` answers in a row that are not `expect` (or no answer), healthy
/// again after `healthy` that are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// The path asked for (`/healthz`), with its query if any.
    pub path: String,
    /// Time between two checks of a target (at least 1 s, at most an hour).
    pub interval: Duration,
    /// The status a healthy target answers.
    pub expect: u16,
    /// Failed checks in a row that make a target unhealthy.
    pub unhealthy: u32,
    /// Passed checks in a row that make it healthy again.
    pub healthy: u32,
}

impl HealthCheck {
    /// Reads `{"path", "interval"?, "expect"?, "unhealthy"?, "healthy"?}` (defaults: every
    /// 5 s, expect 200, 3 failures, 2 successes).
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let invalid = |reason: &str| FieldError::Invalid { field: "healthCheck", reason: reason.to_owned() };
        let object = value
            .as_object()
            .ok_or_else(|| invalid("must be an object {path, interval, expect, unhealthy, healthy}"))?;
        let path = object.get("path").and_then(Value::as_str).ok_or_else(|| invalid("path is required"))?;
        if !path.starts_with('/') || path.len() > 1024 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid("path must start with / and have no spaces or control characters"));
        }
        let timing = CheckTiming::parse(object)?;
        Ok(Self {
            path: path.to_owned(),
            interval: timing.interval,
            expect: check_number(object, "expect", 200, 100..=599)? as u16,
            unhealthy: timing.unhealthy,
            healthy: timing.healthy,
        })
    }

    /// The JSON form `parse` reads.
    pub fn to_json(&self) -> Value {
        let mut out = self.timing().to_json();
        out["path"] = json!(self.path);
        out["expect"] = json!(self.expect);
        out
    }

    /// When it runs, and what changes a target's state.
    pub fn timing(&self) -> CheckTiming {
        CheckTiming { interval: self.interval, unhealthy: self.unhealthy, healthy: self.healthy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_turns_a_target_down_and_up_at_its_thresholds() {
        let mut streak = Streak::default();
        let mut seen = Vec::new();
        for passed in [false, true, false, false, false, true, true, false, true, true] {
            seen.push(streak.record(passed, 3, 2));
        }
        // Down at the third failure in a row; up at the second pass in a row after it.
        assert_eq!(seen, [None, None, None, None, Some(true), None, Some(false), None, None, None]);
        assert!(!streak.down());
    }

    #[test]
    fn targets_parse_with_weights_and_refuse_bad_ones() {
        let list =
            parse_targets(&json!([{"ip": "10.0.0.1", "port": 80}, {"ip": "10.0.0.2", "port": "81", "weight": 3}]))
                .unwrap();
        assert_eq!(list[0].target.authority(), "10.0.0.1:80");
        assert_eq!((list[0].weight, list[1].weight), (1, 3));
        for bad in [
            json!([]),
            json!({"ip": "10.0.0.1"}),
            json!([{"ip": "10.0.0.1"}]),
            json!([{"ip": "10.0.0.1", "port": 0}]),
            json!([{"ip": "a b", "port": 80}]),
            json!([{"ip": "10.0.0.1", "port": 80, "weight": 0}]),
            json!([{"ip": "10.0.0.1", "port": 80, "weight": 101}]),
            json!([{"ip": "10.0.0.1", "port": 80}, {"ip": "10.0.0.1", "port": 80}]),
        ] {
            assert_eq!(parse_targets(&bad).unwrap_err().field(), "targets", "{bad}");
        }
    }

    #[test]
    fn policies_by_name() {
        for b in Balance::ALL {
            assert_eq!(Balance::parse(b.as_str()).unwrap(), b);
        }
        assert_eq!(Balance::parse("random").unwrap_err().field(), "balance");
    }

    #[test]
    fn health_checks_have_defaults_and_limits() {
        let check = HealthCheck::parse(&json!({"path": "/healthz"})).unwrap();
        assert_eq!((check.interval, check.expect, check.unhealthy, check.healthy), (Duration::from_secs(5), 200, 3, 2));
        let check = HealthCheck::parse(&json!({"path": "/up?deep=1", "interval": "1500ms", "expect": 204})).unwrap();
        assert_eq!(check.interval, Duration::from_millis(1500));
        assert_eq!(HealthCheck::parse(&check.to_json()).unwrap(), check);
        for bad in [
            json!({}),
            json!({"path": "healthz"}),
            json!({"path": "/a b"}),
            json!({"path": "/", "interval": "10ms"}),
            json!({"path": "/", "interval": 5}),
            json!({"path": "/", "expect": 99}),
            json!({"path": "/", "unhealthy": 0}),
        ] {
            assert_eq!(HealthCheck::parse(&bad).unwrap_err().field(), "healthCheck", "{bad}");
        }
    }
}
