//! Issuance: one flight per name in this process, one lease per name across nodes, the
//! issuer's order with its progress recorded, and the outcome stored.

use super::*;

/// How long an issuance lease lives unless its holder refreshes it (it does, every third of
/// this, while it issues).
pub(super) const ISSUE_LEASE_TTL: Duration = Duration::from_secs(10);

impl Certs {
    pub(super) fn flight(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(name.to_owned()).or_default().clone()
    }

    pub(super) fn end_flight(&self, name: &str) {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// One issuance per name at a time in this process (waiters then find the result), one
    /// across nodes (a store lease).
    pub(super) async fn obtain(&self, name: &str, mode: Mode, owner: &Owner) -> Result<Arc<Loaded>, Refused> {
        let flight = self.flight(name);
        let result = {
            let _turn = flight.lock().await;
            self.obtain_in_turn(name, mode, owner).await
        };
        self.end_flight(name);
        result
    }

    pub(super) async fn obtain_in_turn(&self, name: &str, mode: Mode, owner: &Owner) -> Result<Arc<Loaded>, Refused> {
        if mode == Mode::OnDemand {
            if let Some(loaded) = self.cached(name) {
                return Ok(loaded);
            }
            if let Some(loaded) = self.stored(name).await? {
                self.remember(name, loaded.clone());
                self.metrics.decision("store");
                return Ok(loaded);
            }
            // Then the stored wildcard certificate that covers it, as certmagic looks up.
            if let Some(wildcard) = covering_wildcard(name)
                && let Some(loaded) = self.stored(&wildcard).await?
                && loaded.meta.covers(name)
            {
                self.remember(&wildcard, loaded.clone());
                self.metrics.decision("store");
                return Ok(loaded);
            }
        }
        let state = self.state(name).await?.unwrap_or_default();
        let now = now_secs();
        if mode == Mode::OnDemand && state.backing_off(now) {
            return Err(Refused::Backoff(state.next_attempt));
        }
        // The budget, in memory, before the first store write (the lease).
        let budget = Self::budget(mode, owner);
        if mode == Mode::OnDemand {
            self.capped(name, owner)?;
        }
        self.rate(budget, false)?;
        let lock = keys::issue_lock(name);
        let lease_ttl = ISSUE_LEASE_TTL;
        let deadline = tokio::time::Instant::now() + self.settings().issue_timeout;
        let lease = loop {
            if let Some(lease) = self.store.acquire(&lock, lease_ttl).await.map_err(CertError::from)? {
                break lease;
            }
            // Another node is issuing: take its result when it lands.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if mode != Mode::Forced
                && let Some(loaded) = self.stored(name).await?
                && self.state(name).await?.is_some_and(|s| s.last_attempt >= now)
            {
                self.remember(name, loaded.clone());
                return Ok(loaded);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Refused::Busy);
            }
        };
        // The lease lives a short while and is refreshed while the issuance runs: a node that
        // dies mid-issuance holds up the others for one lease time at most.
        let refresher = {
            let (store, lease, name) = (self.store.clone(), lease.clone(), name.to_owned());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ISSUE_LEASE_TTL / 3).await;
                    match store.refresh(&lease, ISSUE_LEASE_TTL).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                name,
                                "lost the issuance lease (the store was away too long); another node may issue too"
                            );
                            return;
                        }
                        Err(e) => tracing::debug!(name, error = %e, "cannot refresh the issuance lease; trying again"),
                    }
                }
            }))
        };
        let result = self.issue_locked(name, mode, budget, now).await;
        drop(refresher);
        if result.is_ok() {
            self.hold(name, owner);
        }
        if let Err(e) = self.store.release(&lease).await {
            tracing::warn!(name, error = %e, "cannot release the issuance lock; it expires by itself");
        }
        result
    }

    pub(super) async fn issue_locked(
        &self,
        name: &str,
        mode: Mode,
        budget: Budget,
        started: i64,
    ) -> Result<Arc<Loaded>, Refused> {
        // What another node may have finished while this one waited for the lock.
        let state = self.state(name).await?.unwrap_or_default();
        match mode {
            Mode::OnDemand => {
                if let Some(loaded) = self.stored(name).await? {
                    self.remember(name, loaded.clone());
                    return Ok(loaded);
                }
                if state.backing_off(now_secs()) {
                    return Err(Refused::Backoff(state.next_attempt));
                }
            }
            Mode::Renewal if state.next_attempt > now_secs() || state.last_attempt >= started => {
                if let Some(loaded) = self.stored(name).await? {
                    self.remember(name, loaded.clone());
                    return Ok(loaded);
                }
            }
            _ => {}
        }
        self.rate(budget, true)?;
        self.cluster_rate(budget).await?;
        let verb = if mode == Mode::OnDemand { "issuing" } else { "renewing" };
        tracing::info!(name, issuer = self.issuer().kind(), "{verb} a certificate");
        self.metrics.attempt(self.issuer().kind(), mode != Mode::OnDemand);
        let begun = Instant::now();
        let mut plan = self.plan(name).await?;
        plan.issued_by = (!state.ca.is_empty()).then(|| state.ca.clone());
        let progress =
            Recorder { store: self.store.clone(), name: name.to_owned(), reached: Mutex::new(Step::Planned) };
        progress.step(Step::Planned).await;
        let issued = match tokio::time::timeout(self.settings().issue_timeout, self.issuer().issue(&plan, &progress))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(IssueError::local(format!("issuance took longer than {:?}", self.settings().issue_timeout))),
        };
        let now = now_secs();
        match issued
            .and_then(|stored| stored.load().map(|l| (stored, Arc::new(l))).map_err(|e| IssueError::caused_by(&e)))
        {
            Ok((stored, loaded)) => self.issued(name, mode, &stored, loaded, begun, state).await,
            Err(e) => self.failed(name, mode, state, &progress, e, now).await,
        }
    }

    /// Stores a new certificate and its state (the next renewal at its renewal point, a
    /// little early at random), and serves it from now on.
    async fn issued(
        &self,
        name: &str,
        mode: Mode,
        stored: &StoredCert,
        loaded: Arc<Loaded>,
        begun: Instant,
        before: CertState,
    ) -> Result<Arc<Loaded>, Refused> {
        let now = now_secs();
        self.store.put_blob(&keys::cert_latest(name), &stored.to_json(), None).await.map_err(CertError::from)?;
        let lifetime = (loaded.meta.not_after - loaded.meta.not_before).max(0);
        let jitter = fastrand::i64(0..=(lifetime / 20).max(0));
        // A short-lived certificate is renewed at half its life at the latest.
        let ratio = self.settings().renew_remaining_ratio;
        let ratio = if lifetime <= crate::status::SHORT_LIVED { ratio.max(0.5) } else { ratio };
        // Who issued it, as the issuer recorded it (one of several, maybe).
        let ca = stored.issuer.clone().unwrap_or_else(|| self.issuer().id());
        let kind = match stored.issuer.as_deref() {
            Some(crate::internal::ID) => "internal",
            Some(_) => "acme",
            None => self.issuer().kind(),
        };
        let mut next = CertState {
            issuer: kind.to_owned(),
            ca: ca.clone(),
            not_after: loaded.meta.not_after,
            issued: now,
            last_attempt: now,
            next_attempt: loaded.meta.renew_at(ratio) - jitter,
            step: "issued".into(),
            // An alert given stays until the next sweep says it is over.
            alerted: before.alerted,
            history: before.history,
            ..CertState::default()
        };
        let verb = if before.not_after > 0 { "renewed" } else { "issued" };
        next.note(now, if kind == "acme" { format!("{verb} by {ca}") } else { format!("{verb} by {kind}") });
        self.store.put(Kind::Cert, name, &next.to_fields()).await.map_err(CertError::from)?;
        self.metrics.certificate(name, &next, now_secs());
        if mode == Mode::OnDemand {
            self.metrics.decision("issued");
        }
        self.remember(name, loaded.clone());
        tracing::info!(
            name,
            issuer = ca,
            not_after = loaded.meta.not_after,
            elapsed_ms = begun.elapsed().as_millis() as u64,
            "certificate {}",
            if mode == Mode::OnDemand { "issued" } else { "renewed" }
        );
        Ok(loaded)
    }

    /// Records a failed issuance in the name's state: the error, the step it failed at, and
    /// the next attempt after the backoff.
    async fn failed(
        &self,
        name: &str,
        mode: Mode,
        state: CertState,
        progress: &Recorder,
        e: IssueError,
        now: i64,
    ) -> Result<Arc<Loaded>, Refused> {
        let failures = state.failures.saturating_add(1);
        // A short-lived certificate is retried sooner: its life is counted in days.
        let lifetime = (state.not_after - state.issued).max(0);
        let backoff = match self.backoff(failures) {
            b if state.not_after > 0 && lifetime <= crate::status::SHORT_LIVED => {
                b.min(Duration::from_secs((lifetime / 48) as u64).max(self.settings().backoff_min))
            }
            b => b,
        };
        let mut next = CertState {
            last_attempt: now,
            next_attempt: now + backoff.as_secs() as i64,
            failures,
            last_error_type: e.problem.clone().unwrap_or_default(),
            last_error: e.detail.clone(),
            step: "failed".into(),
            failed_step: progress.reached().as_str().to_owned(),
            ..state
        };
        // A run of failures is one event: its first, with why.
        if failures == 1 {
            let why: String = e.to_string().chars().take(200).collect();
            next.note(now, format!("failed at {}: {why}", next.failed_step));
        }
        self.store.put(Kind::Cert, name, &next.to_fields()).await.map_err(CertError::from)?;
        self.metrics.certificate(name, &next, now_secs());
        tracing::warn!(name, issuer = self.issuer().kind(), failures, retry_in_s = backoff.as_secs(),
            error = %e, "certificate {} failed", if mode == Mode::OnDemand { "issuance" } else { "renewal" });
        Err(Refused::Failed(e.into()))
    }

    /// Gets the wildcard certificate of the host pattern `pattern` (`*.zone`) when a DNS
    /// provider manages its zone and there is none yet. Failures are recorded (backoff) and
    /// logged; handshakes try again.
    pub async fn prepare_wildcard(&self, pattern: &str) {
        if self.cached(pattern).is_some() || matches!(self.stored(pattern).await, Ok(Some(_))) {
            return;
        }
        match self.dns_account(&pattern[2..]).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(pattern, error = %chain(&e), "cannot look for the DNS provider of a wildcard host");
                return;
            }
        }
        let owner = Owner { pattern: pattern.to_owned(), explicit: true };
        if let Err(e) = self.obtain(pattern, Mode::OnDemand, &owner).await {
            self.log_refusal(pattern, &e);
        }
    }
}

/// Records the steps an issuance reaches in the name's `Cert` record, for the API.
pub(super) struct Recorder {
    store: Arc<dyn Store>,
    name: String,
    reached: Mutex<Step>,
}

impl Recorder {
    fn reached(&self) -> Step {
        *self.reached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Progress for Recorder {
    async fn step(&self, step: Step) {
        *self.reached.lock().unwrap_or_else(|e| e.into_inner()) = step;
        let written = async {
            let mut state = self
                .store
                .record(Kind::Cert, &self.name)
                .await?
                .map(|f| CertState::from_fields(&f))
                .unwrap_or_default();
            state.step = step.as_str().to_owned();
            self.store.put(Kind::Cert, &self.name, &state.to_fields()).await
        };
        // The status is a courtesy: an issuance does not fail for it.
        if let Err(e) = written.await {
            tracing::debug!(name = self.name, error = %e, "cannot record an issuance step");
        }
    }
}
