//! Choosing one of a host's targets, and what this process knows of each target's health.
//!
//! Health lives here, outside the routing snapshot, keyed by target (address and whether it
//! speaks TLS), so a table rebuild keeps it. It comes from two sources:
//! - passive: a target whose connection fails or times out is ejected for a back-off
//!   (1 s, doubling per failure in a row, at most 30 s); when that has passed, one request is
//!   let through as a trial: it succeeds and the target is back, it fails and the back-off
//!   grows;
//! - active: a host's `healthCheck` (see [`crate::checks`]) marks a target down after
//!   `unhealthy` failed checks in a row and up again after `healthy` passed ones. That
//!   verdict is kept per target *and check*, and only hosts with that check follow it: a
//!   host whose check always fails (anyone's, on a shared target) cannot take the target
//!   away from another host.
//!
//! What the API shows of a failure is coarse ("unreachable", "no answer in time",
//! "answered 503"): the operating system's error stays in the log, so a host's checks
//! cannot be used to scan ports.
//!
//! A host with one target and no health check never touches any of it: its requests go to
//! that target as before.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_model::host_view::TargetReport;
use portico_model::{Balance, HealthCheck, Host, Target};

/// The first back-off after a failure; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off: an ejected target is tried again within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a target is passed over after `failures` failures in a row: 1 s, doubling, at
/// most [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
}

/// What this process knows of one target.
#[derive(Debug, Default)]
pub struct TargetHealth {
    /// Requests sent to it and not finished.
    in_flight: AtomicU32,
    /// Failed connections or timeouts in a row.
    failures: AtomicU32,
    /// Until when it is ejected (milliseconds since the registry started; 0: not ejected).
    ejected_until: AtomicU64,
    /// A trial request is out after the back-off.
    trial: AtomicBool,
    /// The last failure, for the API.
    last_error: Mutex<Option<String>>,
}

/// What one health check says of one target.
#[derive(Debug, Default)]
struct Verdict {
    /// The check says it is down.
    down: AtomicBool,
    /// The check's last failure, for the API.
    last_error: Mutex<Option<String>>,
}

/// A target: its address, and whether it speaks TLS.
type TargetKey = (Arc<str>, bool);

/// A target and the check that judges it.
type CheckKey = (TargetKey, HealthCheck);

/// Every target's health, and each multi-target host's balancer.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    targets: Mutex<HashMap<TargetKey, Arc<TargetHealth>>>,
    verdicts: Mutex<HashMap<CheckKey, Arc<Verdict>>>,
    balancers: Mutex<HashMap<Arc<str>, Arc<Balancer>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            targets: Mutex::default(),
            verdicts: Mutex::default(),
            balancers: Mutex::default(),
        }
    }
}

/// A host's targets with their health, and the round-robin position.
#[derive(Debug)]
pub struct Balancer {
    /// The host's targets and policy, to know the balancer is still the host's.
    targets: Vec<portico_model::Upstream>,
    balance: Balance,
    tls: bool,
    check: Option<HealthCheck>,
    health: Vec<Arc<TargetHealth>>,
    /// The host's check's verdict on each target (none without a check).
    verdicts: Vec<Option<Arc<Verdict>>>,
    /// Target indices, each repeated by its weight, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

/// The target a request goes to.
#[derive(Debug)]
pub struct Choice {
    /// Its index in the host's targets.
    pub index: usize,
    health: Option<Arc<TargetHealth>>,
    balancer: Option<Arc<Balancer>>,
}

/// A request in progress at a target (for `least_conn`): ends when dropped.
#[derive(Debug)]
pub struct TargetRequest(Arc<TargetHealth>);

impl Drop for TargetRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every target of the host is down.
#[derive(Debug, Clone, Copy)]
pub struct AllDown;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// The health record of a target (made on first use).
    pub fn target(&self, target: &Target, tls: bool) -> Arc<TargetHealth> {
        let mut targets = lock(&self.targets);
        targets.entry((target.shared_authority(), tls)).or_default().clone()
    }

    /// Whether anything is known of this target yet.
    fn known(&self, target: &Target, tls: bool) -> Option<Arc<TargetHealth>> {
        lock(&self.targets).get(&(target.shared_authority(), tls)).cloned()
    }

    /// A check's verdict on a target (made on first use).
    fn verdict(&self, target: &Target, tls: bool, check: &HealthCheck) -> Arc<Verdict> {
        let key = ((target.shared_authority(), tls), check.clone());
        lock(&self.verdicts).entry(key).or_default().clone()
    }

    fn balancer(&self, pattern: &Arc<str>, host: &Host) -> Arc<Balancer> {
        let mut balancers = lock(&self.balancers);
        if let Some(b) = balancers.get(pattern)
            && b.targets == host.targets
            && b.balance == host.balance
            && b.tls == host.targetssl
            && b.check == host.health_check
        {
            return b.clone();
        }
        let health = host.targets.iter().map(|u| self.target(&u.target, host.targetssl)).collect();
        let verdicts = host
            .targets
            .iter()
            .map(|u| host.health_check.as_ref().map(|c| self.verdict(&u.target, host.targetssl, c)))
            .collect();
        let b = Arc::new(Balancer {
            targets: host.targets.clone(),
            balance: host.balance,
            tls: host.targetssl,
            check: host.health_check.clone(),
            health,
            verdicts,
            schedule: schedule(&host.targets),
            next: AtomicUsize::new(0),
        });
        balancers.insert(pattern.clone(), b.clone());
        b
    }

    /// Chooses the target for a request from `client` to `host` (routed by `pattern`),
    /// skipping `tried` (a target that just failed to connect).
    pub fn choose(
        &self,
        pattern: &Arc<str>,
        host: &Host,
        client: IpAddr,
        tried: Option<usize>,
    ) -> Result<Choice, AllDown> {
        if !host.health_followed() {
            return if tried.is_some() { Err(AllDown) } else { Ok(Choice { index: 0, health: None, balancer: None }) };
        }
        let balancer = self.balancer(pattern, host);
        let now = self.now_ms();
        let n = balancer.targets.len();
        if n == 1 {
            // One target (with checks): as nginx does with a lone server, failed connections
            // never take it out (there is nothing else to send to); only its checks do.
            let down = tried.is_some() || balancer.checked_down(0);
            return if down {
                Err(AllDown)
            } else {
                Ok(Choice { index: 0, health: Some(balancer.health[0].clone()), balancer: Some(balancer) })
            };
        }
        let usable = |i: usize| Some(i) != tried && balancer.usable(i, now);
        let index = match balancer.balance {
            Balance::First => (0..n).find(|&i| usable(i)),
            // The weighted schedule, from the next turn or from the client's own place.
            Balance::RoundRobin | Balance::IpHash => {
                let len = balancer.schedule.len();
                let start = if balancer.balance == Balance::IpHash {
                    client_slot(client, len)
                } else {
                    balancer.next.fetch_add(1, Ordering::Relaxed)
                };
                (0..len).map(|k| balancer.schedule[(start + k) % len]).find(|&i| usable(i))
            }
            Balance::LeastConn => {
                let load = |i: usize| {
                    let busy = u64::from(balancer.health[i].in_flight.load(Ordering::Relaxed));
                    // Fewest in progress per unit of weight.
                    busy * 1000 / u64::from(balancer.targets[i].weight)
                };
                // Ties go round: the scan starts one further each time, and the first
                // least-loaded target in it wins.
                let start = balancer.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).filter(|&i| usable(i)).min_by_key(|&i| load(i))
            }
        };
        let index = index.ok_or(AllDown)?;
        // A target whose back-off has passed takes one trial request at a time.
        if !balancer.health[index].claim(now) {
            return self.choose_other(&balancer, now, index, tried);
        }
        Ok(Choice { index, health: Some(balancer.health[index].clone()), balancer: Some(balancer) })
    }

    /// Another usable target, after `skip` lost its trial to a concurrent request.
    fn choose_other(
        &self,
        balancer: &Arc<Balancer>,
        now: u64,
        skip: usize,
        tried: Option<usize>,
    ) -> Result<Choice, AllDown> {
        let index = (0..balancer.targets.len())
            .filter(|&i| i != skip && Some(i) != tried)
            .find(|&i| balancer.usable(i, now) && balancer.health[i].claim(now))
            .ok_or(AllDown)?;
        Ok(Choice { index, health: Some(balancer.health[index].clone()), balancer: Some(balancer.clone()) })
    }

    /// The connection to the chosen target failed or timed out.
    pub fn failed(&self, choice: &Choice, error: &str) {
        let Some(health) = &choice.health else { return };
        let failures = health.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        *lock(&health.last_error) = Some(error.to_owned());
        if !choice.has_alternative() {
            // A lone target is never ejected (see `choose`).
            return;
        }
        let backoff = backoff(failures);
        health.ejected_until.store(self.now_ms() + backoff.as_millis() as u64, Ordering::Release);
        health.trial.store(false, Ordering::Release);
    }

    /// The chosen target answered.
    pub fn succeeded(&self, choice: &Choice) {
        let Some(health) = &choice.health else { return };
        if health.failures.load(Ordering::Acquire) > 0 || health.ejected_until.load(Ordering::Acquire) > 0 {
            health.failures.store(0, Ordering::Release);
            health.ejected_until.store(0, Ordering::Release);
            health.trial.store(false, Ordering::Release);
        }
    }

    /// Counts the request as in progress at the chosen target until the guard is dropped.
    pub fn in_flight(choice: &Choice) -> Option<TargetRequest> {
        let health = choice.health.as_ref()?;
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(TargetRequest(health.clone()))
    }

    /// Forgets what no host of `table` uses any more: balancers of patterns that are gone or
    /// now have one target and no checks, and the health of targets no remaining host lists.
    pub fn prune(&self, table: &portico_model::HostTable<Arc<Host>>) {
        let mut used: std::collections::HashSet<TargetKey> = std::collections::HashSet::new();
        let mut checked: std::collections::HashSet<CheckKey> = std::collections::HashSet::new();
        let mut patterns: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (pattern, host) in table.iter() {
            if host.health_followed() {
                patterns.insert(pattern.as_str());
                for u in &host.targets {
                    let key = (u.target.shared_authority(), host.targetssl);
                    if let Some(check) = &host.health_check {
                        checked.insert((key.clone(), check.clone()));
                    }
                    used.insert(key);
                }
            }
        }
        lock(&self.balancers).retain(|pattern, _| patterns.contains(pattern.as_ref()));
        lock(&self.targets).retain(|key, _| used.contains(key));
        lock(&self.verdicts).retain(|key, _| checked.contains(key));
    }

    /// Records `check`'s verdict on a target; only hosts with that check follow it.
    pub fn checked(&self, target: &Target, tls: bool, check: &HealthCheck, down: bool, error: Option<String>) {
        let verdict = self.verdict(target, tls, check);
        verdict.down.store(down, Ordering::Release);
        if let Some(error) = error {
            *lock(&verdict.last_error) = Some(error);
        }
    }

    /// Each of `host`'s targets with this process's view of its health: `{ip, port, weight,
    /// health: "healthy" | "ejected" | "down" | "unknown", failures, last_error}`.
    pub fn report(&self, host: &Host) -> Vec<TargetReport> {
        let now = self.now_ms();
        host.targets
            .iter()
            .map(|u| {
                let verdict = host.health_check.as_ref().and_then(|c| {
                    lock(&self.verdicts).get(&((u.target.shared_authority(), host.targetssl), c.clone())).cloned()
                });
                let known = self.known(&u.target, host.targetssl);
                let down = verdict.as_ref().is_some_and(|v| v.down.load(Ordering::Acquire));
                let health = match &known {
                    _ if down => "down",
                    None if verdict.is_none() => "unknown",
                    Some(h) if h.ejected_until.load(Ordering::Acquire) > now => "ejected",
                    _ => "healthy",
                };
                let failures = known.as_ref().map_or(0, |h| h.failures.load(Ordering::Acquire));
                let last_error = verdict
                    .as_ref()
                    .and_then(|v| lock(&v.last_error).clone())
                    .or_else(|| known.as_ref().and_then(|h| lock(&h.last_error).clone()));
                TargetReport { health, failures, last_error }
            })
            .collect()
    }
}

impl Balancer {
    /// Whether the host's own check says target `i` is down.
    fn checked_down(&self, i: usize) -> bool {
        self.verdicts[i].as_ref().is_some_and(|v| v.down.load(Ordering::Acquire))
    }

    /// Neither down by the host's check nor inside an ejection's back-off.
    fn usable(&self, i: usize, now: u64) -> bool {
        !self.checked_down(i) && self.health[i].available(now)
    }
}

impl TargetHealth {
    /// Not inside an ejection's back-off (or past it, with no trial out).
    fn available(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until == 0 || (now >= until && !self.trial.load(Ordering::Acquire))
    }

    /// Takes the target for a request: always when it is not ejected; after a back-off,
    /// only as the one trial request.
    fn claim(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        now >= until && self.trial.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl Choice {
    /// The chosen target of `host`.
    pub fn target<'a>(&self, host: &'a Host) -> &'a Target {
        &host.targets[self.index.min(host.targets.len() - 1)].target
    }

    /// Whether the host has another target to try.
    pub fn has_alternative(&self) -> bool {
        self.balancer.as_ref().is_some_and(|b| b.targets.len() > 1)
    }
}

/// A client's own place among `len` (the same client, the same place).
fn client_slot(client: IpAddr, len: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client.hash(&mut hasher);
    usize::try_from(hasher.finish() % len.max(1) as u64).unwrap_or(0)
}

/// The target a policy starts with among `targets` for `client`, for a caller that keeps no
/// balancer (a stream): `first`'s first, else the weighted schedule's next turn (`next`
/// counts them) or the client's own place in it.
pub(crate) fn start(
    balance: Balance,
    targets: &[portico_model::Upstream],
    client: IpAddr,
    next: &AtomicUsize,
) -> usize {
    if balance == Balance::First {
        return 0;
    }
    let schedule = schedule(targets);
    let slot = match balance {
        Balance::IpHash => client_slot(client, schedule.len()),
        _ => next.fetch_add(1, Ordering::Relaxed),
    };
    schedule.get(slot % schedule.len().max(1)).copied().unwrap_or(0)
}

/// Target indices repeated by weight and interleaved (weights 3 and 1: 0, 1, 0, 0), so a
/// heavy target's turns are spread out.
fn schedule(targets: &[portico_model::Upstream]) -> Vec<usize> {
    let max = targets.iter().map(|u| u.weight).max().unwrap_or(1);
    let mut out = Vec::new();
    for round in 0..max {
        for (i, u) in targets.iter().enumerate() {
            if round < u.weight {
                out.push(i);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{HostPattern, Upstream};

    fn check(path: &str) -> HealthCheck {
        HealthCheck::parse(&serde_json::json!({"path": path})).unwrap()
    }

    #[test]
    fn another_hosts_failing_check_does_not_take_a_shared_target_away() {
        let health = Health::default();
        let mut admins = host(&[1], Balance::RoundRobin);
        admins.health_check = Some(check("/healthz"));
        let mut users = host(&[1], Balance::RoundRobin);
        users.host = HostPattern::parse("b.test").unwrap();
        users.health_check = Some(check("/always-fails"));
        let (a, b): (Arc<str>, Arc<str>) = ("a.test".into(), "b.test".into());
        let client = IpAddr::from([10, 0, 0, 1]);
        let target = &admins.targets[0].target;
        health.checked(target, false, &check("/healthz"), false, None);
        health.checked(target, false, &check("/always-fails"), true, Some("answered 599".into()));
        assert!(health.choose(&a, &admins, client, None).is_ok(), "its own check passes");
        assert_eq!(health.report(&admins)[0].health, "healthy");
        assert!(health.choose(&b, &users, client, None).is_err(), "the failing check's host follows it");
        assert_eq!(health.report(&users)[0].health, "down");
        // A host without checks is not taken out by anyone's.
        let mut plain = host(&[1, 1], Balance::First);
        plain.targets[0].target = target.clone();
        assert_eq!(health.choose(&"c.test".into(), &plain, client, None).unwrap().index, 0);
    }

    fn host(weights: &[u16], balance: Balance) -> Host {
        let mut host = Host::new(
            HostPattern::parse("a.test").unwrap(),
            Target::new("127.0.0.1", 1000).unwrap(),
            false,
            false,
            "t",
            0,
        );
        host.targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Upstream { target: Target::new("127.0.0.1", 1000 + i as u16).unwrap(), weight: *w })
            .collect();
        host.balance = balance;
        host
    }

    fn picks(health: &Health, host: &Host, n: usize) -> Vec<usize> {
        let pattern: Arc<str> = host.host.as_str().into();
        (0..n).map(|k| health.choose(&pattern, host, IpAddr::from([10, 0, 0, k as u8]), None).unwrap().index).collect()
    }

    #[test]
    fn round_robin_follows_the_weights() {
        let health = Health::default();
        let h = host(&[3, 1], Balance::RoundRobin);
        let chosen = picks(&health, &h, 8);
        assert_eq!(chosen.iter().filter(|&&i| i == 0).count(), 6, "{chosen:?}");
    }

    #[test]
    fn first_keeps_to_the_first_healthy_one_and_ejection_moves_traffic() {
        let health = Health::default();
        let h = host(&[1, 1, 1], Balance::First);
        assert_eq!(picks(&health, &h, 3), [0, 0, 0]);
        let pattern: Arc<str> = "a.test".into();
        let choice = health.choose(&pattern, &h, IpAddr::from([10, 0, 0, 1]), None).unwrap();
        health.failed(&choice, "refused");
        assert_eq!(picks(&health, &h, 3), [1, 1, 1]);
        let report = health.report(&h);
        assert_eq!((report[0].health, report[0].last_error.as_deref()), ("ejected", Some("refused")));
        assert_eq!(report[1].health, "healthy");
    }

    #[test]
    fn ip_hash_is_sticky_and_every_target_down_is_an_error() {
        let health = Health::default();
        let mut h = host(&[1, 1, 1, 1], Balance::IpHash);
        h.health_check = Some(check("/"));
        let pattern: Arc<str> = "a.test".into();
        let client = IpAddr::from([192, 0, 2, 7]);
        let first = health.choose(&pattern, &h, client, None).unwrap().index;
        for _ in 0..10 {
            assert_eq!(health.choose(&pattern, &h, client, None).unwrap().index, first);
        }
        for u in &h.targets {
            health.checked(&u.target, false, &check("/"), true, Some("503".into()));
        }
        assert!(health.choose(&pattern, &h, client, None).is_err());
    }

    #[test]
    fn after_the_backoff_one_trial_request_goes_through() {
        let health = Health::default();
        let h = host(&[1, 1], Balance::First);
        let pattern: Arc<str> = "a.test".into();
        let client = IpAddr::from([10, 0, 0, 1]);
        let choice = health.choose(&pattern, &h, client, None).unwrap();
        health.failed(&choice, "refused");
        // The back-off is over.
        health.targets.lock().unwrap().values().for_each(|t| {
            if t.ejected_until.load(Ordering::Acquire) > 0 {
                t.ejected_until.store(1, Ordering::Release);
            }
        });
        let trial = health.choose(&pattern, &h, client, None).unwrap();
        assert_eq!(trial.index, 0, "the trial goes to the ejected target");
        assert_eq!(health.choose(&pattern, &h, client, None).unwrap().index, 1, "one trial at a time");
        health.succeeded(&trial);
        assert_eq!(health.choose(&pattern, &h, client, None).unwrap().index, 0, "back after the trial");
    }

    #[test]
    fn what_no_host_uses_is_forgotten() {
        let health = Health::default();
        let h = host(&[1, 1], Balance::RoundRobin);
        picks(&health, &h, 2);
        assert_eq!(health.balancers.lock().unwrap().len(), 1);
        assert_eq!(health.targets.lock().unwrap().len(), 2);
        let kept: portico_model::HostTable<Arc<Host>> = [(h.host.clone(), Arc::new(h.clone()))].into_iter().collect();
        health.prune(&kept);
        assert_eq!(health.targets.lock().unwrap().len(), 2, "a host in the table keeps its state");
        health.prune(&portico_model::HostTable::default());
        assert!(health.balancers.lock().unwrap().is_empty());
        assert!(health.targets.lock().unwrap().is_empty());
    }

    #[test]
    fn a_lone_target_is_only_taken_out_by_its_checks() {
        let health = Health::default();
        let mut h = host(&[1], Balance::RoundRobin);
        h.health_check = Some(check("/"));
        let pattern: Arc<str> = "a.test".into();
        let client = IpAddr::from([10, 0, 0, 1]);
        let choice = health.choose(&pattern, &h, client, None).unwrap();
        health.failed(&choice, "refused");
        assert!(
            health.choose(&pattern, &h, client, None).is_ok(),
            "a failed connection does not eject the only target"
        );
        assert_eq!(health.report(&h)[0].health, "healthy");
        assert_eq!(health.report(&h)[0].last_error.as_deref(), Some("refused"));
        health.checked(&h.targets[0].target, false, &check("/"), true, Some("503".into()));
        assert!(health.choose(&pattern, &h, client, None).is_err(), "its checks do");
    }

    #[test]
    fn least_conn_shares_ties_in_turn() {
        let health = Health::default();
        let h = host(&[1, 1, 1], Balance::LeastConn);
        let mut chosen = picks(&health, &h, 6);
        chosen.sort_unstable();
        assert_eq!(chosen, [0, 0, 1, 1, 2, 2], "idle targets take turns");
    }

    #[test]
    fn least_conn_prefers_the_idle_target() {
        let health = Health::default();
        let h = host(&[1, 1], Balance::LeastConn);
        let pattern: Arc<str> = "a.test".into();
        let client = IpAddr::from([10, 0, 0, 1]);
        let busy = health.choose(&pattern, &h, client, None).unwrap();
        let _held = Health::in_flight(&busy);
        for _ in 0..4 {
            assert_ne!(health.choose(&pattern, &h, client, None).unwrap().index, busy.index);
        }
    }
}
