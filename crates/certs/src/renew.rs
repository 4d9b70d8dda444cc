//! The renewal scheduler (control-plane role): every interval, every managed certificate that
//! is due (a third of its lifetime left, with jitter; earlier when the CA's renewal
//! information (ARI) suggests a window that starts sooner; or a failure backoff over) is renewed
//! under the store lock; certificates whose host is gone are not renewed and are removed once
//! expired.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use portico_store::Kind;
use tokio_util::sync::CancellationToken;

use crate::status::CertState;
use crate::upload::UPLOADED;
use crate::{CertError, Certs, now_secs};

/// How often the CA's renewal information is asked for, per certificate (Let's Encrypt
/// suggests a few times a day).
const ARI_EVERY: i64 = 6 * 3600;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Names renewed.
    pub renewed: Vec<String>,
    /// Names whose renewal failed.
    pub failed: Vec<String>,
    /// Expired certificates of names no host matches any more, or of names under wildcard
    /// patterns unused since they were issued, removed.
    pub removed: Vec<String>,
    /// Names under wildcard patterns that were due but unused since issued: not renewed.
    pub unused: Vec<String>,
    /// Certificates of explicit hosts found in the store without Portico's record of them
    /// (written by the seed), now managed.
    pub adopted: Vec<String>,
}

/// Checks every managed certificate once.
pub async fn sweep(certs: &Certs) -> Result<Sweep, CertError> {
    let mut done = Sweep::default();
    // Certificates of explicit hosts stored without Portico's record (by the seed) are
    // taken on first, so that they are renewed too.
    let managed: HashSet<String> = certs.store().keys(Kind::Cert).await?.into_iter().collect();
    for name in certs.explicit_names() {
        if !managed.contains(&name) && certs.adopt(&name).await? {
            done.adopted.push(name);
        }
    }
    for (name, fields) in certs.store().records(Kind::Cert).await? {
        let now = now_secs();
        let state = certs.alert_on_change(&name, CertState::from_fields(&fields), now).await?;
        let owner = certs.owner(&name);
        // An uploaded certificate is never renewed: its admin is told when a third of its
        // life is left (once in its record and the log; the metric says it at every sweep).
        if owner.is_some() && state.issuer == UPLOADED && now >= state.next_attempt && state.last_error.is_empty() {
            certs.alert_uploaded(&name, state.clone()).await?;
        }
        // The gauges once the alerts are recorded: whoever sees one finds the other.
        certs.metrics().certificate(&name, &state, now);
        let Some(owner) = owner else {
            if state.not_after <= now {
                certs.remove(&name).await?;
                tracing::info!(name, "removed the expired certificate of a name no host matches");
                done.removed.push(name);
            }
            continue;
        };
        if state.issuer == UPLOADED {
            continue;
        }
        let state = if now < state.next_attempt && state.failures == 0 && now - state.ari_checked >= ARI_EVERY {
            certs.consult_ari(&name).await?
        } else {
            state
        };
        if now < state.next_attempt {
            continue;
        }
        // A name under a wildcard pattern that nobody asked for since its certificate was
        // issued (a scan, a typo) is left to expire, and then removed.
        if !owner.explicit && certs.last_used(&name).await? < state.issued {
            if state.not_after <= now {
                certs.remove(&name).await?;
                tracing::info!(name, "removed the expired certificate of a name unused since it was issued");
                done.removed.push(name);
            } else {
                done.unused.push(name);
            }
            continue;
        }
        match certs.renew_due(&name, &owner).await {
            Ok(_) => done.renewed.push(name),
            Err(_) => done.failed.push(name),
        }
    }
    Ok(done)
}

/// Sweeps every `interval` until `shutdown`, each sweep counted in `jobs` (`renewal`).
pub async fn run(certs: Arc<Certs>, interval: Duration, jobs: portico_metrics::Jobs, shutdown: CancellationToken) {
    loop {
        // A sweep that ran but could not renew something still ran; its failures show per
        // certificate.
        let swept = jobs.run_job("renewal", sweep(&certs)).await;
        if let Err(e) = swept {
            tracing::warn!(error = %portico_model::report::chain(&e), "the renewal sweep failed; it runs again at the next interval");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
