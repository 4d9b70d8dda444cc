//! The issuance gate: budgets (rates per minute, per node and per cluster), caps per pattern
//! and registered domain, failure backoff, and refusals logged once a minute per name.

use super::*;

/// Why a name gets no certificate of its own.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error("in failure backoff until {0}")]
    Backoff(i64),
    #[error("the issuance rate limit ({0}) is reached")]
    RateLimited(Budget),
    #[error("the cap of certificates per {0} is reached")]
    Capped(&'static str),
    #[error("another node is issuing and did not finish in time")]
    Busy,
    #[error(transparent)]
    Failed(#[from] CertError),
}

impl Refused {
    /// The decision's label in `portico_certificate_decisions_total`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Self::Backoff(_) => "backoff",
            Self::RateLimited(_) => "rate_limited",
            Self::Capped(_) => "capped",
            Self::Busy => "busy",
            Self::Failed(_) => "failed",
        }
    }
}

/// How an issuance was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A handshake for a name with no usable certificate.
    OnDemand,
    /// The renewal scheduler found the name due.
    Renewal,
    /// Someone asked for a new certificate now (`PUT /api/host/:item/renew`).
    Forced,
}

/// Which issuance budget an issuance draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Budget {
    /// Explicit hosts, and renewals asked for through the API.
    Explicit,
    /// Names under wildcard patterns.
    Pattern,
    /// The renewal scheduler.
    Renewal,
}

impl Budget {
    /// Its name in the store's counter keys.
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::Pattern => "pattern",
            Self::Renewal => "renewal",
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Explicit => "explicit hosts",
            Self::Pattern => "names under wildcard patterns",
            Self::Renewal => "renewals",
        })
    }
}

/// A name under a wildcard pattern that holds a certificate, for the caps.
#[derive(Debug)]
pub(super) struct Held {
    pattern: String,
    domain: String,
}

/// Names whose refusal was logged in the last minute, at most this many (a flood of names
/// beyond it is not logged name by name).
pub(super) const QUIET_NAMES: usize = 10_000;

impl Certs {
    /// Counts `name` against its pattern's and registered domain's caps (names under
    /// wildcard patterns only).
    pub(super) fn hold(&self, name: &str, owner: &Owner) {
        if owner.explicit {
            return;
        }
        let domain = psl::domain_str(name).unwrap_or(name).to_owned();
        let held = Held { pattern: owner.pattern.clone(), domain };
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), held);
    }

    pub(super) fn unhold(&self, name: &str) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// Whether a new certificate for `name` would break a cap: names under wildcard patterns
    /// only, and not those that hold one already (a renewal).
    pub(super) fn capped(&self, name: &str, owner: &Owner) -> Result<(), Refused> {
        if owner.explicit {
            return Ok(());
        }
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains_key(name) {
            return Ok(());
        }
        let domain = psl::domain_str(name).unwrap_or(name);
        if held.values().filter(|h| h.pattern == owner.pattern).count() >= self.settings().max_certs_per_pattern {
            return Err(Refused::Capped("pattern"));
        }
        if held.values().filter(|h| h.domain == domain).count() >= self.settings().max_certs_per_domain {
            return Err(Refused::Capped("registered domain"));
        }
        Ok(())
    }

    /// Logs why `name` gets the fallback certificate, at most once a minute per name.
    pub(super) fn log_refusal(&self, name: &str, refused: &Refused) {
        let now = Instant::now();
        let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        if quiet.get(name).is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60)) {
            return;
        }
        if quiet.len() >= QUIET_NAMES {
            quiet.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            if quiet.len() >= QUIET_NAMES {
                return;
            }
        }
        quiet.insert(name.to_owned(), now);
        drop(quiet);
        tracing::info!(name, reason = %chain(refused), "no certificate for this name: serving the fallback certificate");
    }

    /// The budget an issuance of `name` in `mode` draws on.
    pub(super) fn budget(mode: Mode, owner: &Owner) -> Budget {
        match mode {
            Mode::Renewal => Budget::Renewal,
            Mode::Forced => Budget::Explicit,
            Mode::OnDemand if owner.explicit => Budget::Explicit,
            Mode::OnDemand => Budget::Pattern,
        }
    }

    /// Issuances per minute `budget` allows.
    pub(super) fn limit(&self, budget: Budget) -> usize {
        match budget {
            Budget::Explicit | Budget::Renewal => self.settings().max_issuances_per_minute,
            Budget::Pattern => self.settings().max_pattern_issuances_per_minute,
        }
    }

    /// Counts one more issuance from `budget` in the store, for this minute, and refuses it
    /// when the cluster as a whole has used the budget up (each node's own count, in memory,
    /// comes first and is cheaper).
    pub(super) async fn cluster_rate(&self, budget: Budget) -> Result<(), Refused> {
        let key = keys::issue_rate(budget.key(), now_secs().div_euclid(60));
        let count = self.store.count(&key, Duration::from_secs(120)).await.map_err(CertError::from)?;
        if count > self.limit(budget) as u64 {
            return Err(Refused::RateLimited(budget));
        }
        Ok(())
    }

    /// Checks `budget`'s rate over the last minute; `take`: and counts one more issuance.
    pub(super) fn rate(&self, budget: Budget, take: bool) -> Result<(), Refused> {
        let limit = self.limit(budget);
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let window = started.entry(budget).or_default();
        let now = Instant::now();
        while window.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            window.pop_front();
        }
        if window.len() >= limit {
            return Err(Refused::RateLimited(budget));
        }
        if take {
            window.push_back(now);
        }
        Ok(())
    }

    /// The backoff after `failures` consecutive failures: doubling from the minimum, capped.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.settings().backoff_min.saturating_mul(factor).min(self.settings().backoff_max)
    }
}
