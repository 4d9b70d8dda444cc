//! Failures counted per client address and per scope (a user name at login, a host for its
//! basic auth) over a sliding window, for password guessing: past either limit, the caller
//! is told how long to wait. Memory stays bounded under a flood of addresses or names.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys (addresses and scopes) the limiter remembers at most; past it, the keys with a
/// single failure are forgotten first, so a flood of new addresses or names cannot wipe out a
/// lockout.
const LIMITER_KEYS: usize = 100_000;
/// How long a success from an address exempts that scope there from a lockout of the scope.
const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Failures per client address and per scope, over a sliding window.
///
/// A scope that is locked out stays usable from addresses that succeeded in it before, so an
/// attacker guessing a password cannot lock its owner out.
#[derive(Debug)]
pub struct FailureLimiter {
    window: Duration,
    per_scope: usize,
    per_address: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// `(scope, address)` pairs that succeeded, and when.
    known: Mutex<HashMap<(String, IpAddr), Instant>>,
}

impl FailureLimiter {
    /// At most `per_scope` failures per scope and `per_address` per client address within
    /// `window`.
    pub fn new(window: Duration, per_scope: usize, per_address: usize) -> Self {
        Self { window, per_scope, per_address, failures: Mutex::new(HashMap::new()), known: Mutex::new(HashMap::new()) }
    }

    fn known(&self, address: IpAddr, scope: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(&(scope.to_owned(), address)).is_some_and(|at| at.elapsed() < KNOWN_ADDRESS_TTL)
    }

    /// Records a success: `scope` is not locked out from `address` from now on.
    pub fn succeeded(&self, address: IpAddr, scope: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= LIMITER_KEYS {
            known.retain(|_, at| at.elapsed() < KNOWN_ADDRESS_TTL);
        }
        if known.len() < LIMITER_KEYS {
            known.insert((scope.to_owned(), address), Instant::now());
        }
    }

    /// `Err(seconds to wait)` if either key is over its limit.
    pub fn check(&self, address: IpAddr, scope: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = 0;
        let mut keys = vec![(format!("ip:{}", address_key(address)), self.per_address)];
        if !self.known(address, scope) {
            keys.push((format!("scope:{scope}"), self.per_scope));
        }
        for (key, limit) in keys {
            if let Some(times) = failures.get_mut(&key) {
                while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    times.pop_front();
                }
                if times.len() >= limit
                    && let Some(oldest) = times.front()
                {
                    wait = wait.max((self.window - now.duration_since(*oldest)).as_secs() + 1);
                }
            }
        }
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    /// Records a failure.
    pub fn failed(&self, address: IpAddr, scope: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= LIMITER_KEYS {
            // Bounded memory under a flood of distinct addresses or names: forget what has
            // expired, then keys with a single failure; repeated failures (lockouts) stay.
            let window = self.window;
            failures.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < window);
                times.len() > 1
            });
        }
        for key in [format!("ip:{}", address_key(address)), format!("scope:{scope}")] {
            if let Some(times) = failures.get_mut(&key) {
                times.push_back(now);
            } else if failures.len() < LIMITER_KEYS {
                failures.insert(key, VecDeque::from([now]));
            }
        }
    }
}

/// The address a client is counted by: IPv4 as it is, IPv6 by its /64 (one host on the
/// Internet usually has a whole /64 to pick addresses from).
pub fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_scope_and_address() {
        let l = FailureLimiter::new(Duration::from_secs(60), 3, 5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.check(a, "alice").unwrap();
            l.failed(a, "alice");
        }
        assert!(matches!(l.check(b, "alice"), Err(s) if s > 0 && s <= 61));
        l.check(a, "bob").unwrap();
        l.failed(a, "bob");
        l.failed(a, "carol");
        assert!(l.check(a, "dave").is_err(), "per-address limit");
        l.check(b, "dave").unwrap();
    }

    #[test]
    fn a_locked_out_name_still_logs_in_from_an_address_it_used_before() {
        let l = FailureLimiter::new(Duration::from_secs(60), 3, 100);
        let home: IpAddr = "192.0.2.1".parse().unwrap();
        let attacker: IpAddr = "198.51.100.9".parse().unwrap();
        l.succeeded(home, "alice");
        for _ in 0..3 {
            l.failed(attacker, "alice");
        }
        assert!(l.check(attacker, "alice").is_err());
        assert!(l.check("203.0.113.5".parse().unwrap(), "alice").is_err(), "a new address is locked out");
        l.check(home, "alice").unwrap();
    }

    #[test]
    fn a_flood_of_new_addresses_does_not_lift_a_lockout() {
        let l = FailureLimiter::new(Duration::from_secs(60), 3, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            l.failed(a, "alice");
        }
        for i in 0..(LIMITER_KEYS as u32 + 10) {
            l.failed(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), "x");
        }
        assert!(l.check(a, "alice").is_err(), "alice is still locked out");
        assert!(l.failures.lock().unwrap().len() <= LIMITER_KEYS);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let l = FailureLimiter::new(Duration::from_secs(60), 100, 2);
        l.failed("2001:db8:1:2::1".parse().unwrap(), "x");
        l.failed("2001:db8:1:2:ffff::9".parse().unwrap(), "y");
        assert!(l.check("2001:db8:1:2::77".parse().unwrap(), "z").is_err(), "one /64 is one client");
        l.check("2001:db8:1:3::1".parse().unwrap(), "z").unwrap();
        assert_eq!(address_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}

/// Says when a repeated warning is due: at most once per period, so a flood (of connections,
/// of failing requests) is one log line a minute, not one per event.
#[derive(Debug)]
pub struct Rarely {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Rarely {
    /// At most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(None) }
    }

    /// Whether to say it now (then not again for the period).
    pub fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod rarely_tests {
    use super::*;

    #[test]
    fn a_warning_is_due_once_per_period() {
        let rarely = Rarely::new(Duration::from_millis(50));
        assert!(rarely.due());
        assert!((0..1000).all(|_| !rarely.due()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(rarely.due());
    }
}
