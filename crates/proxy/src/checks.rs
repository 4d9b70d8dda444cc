//! Active health checks: for every target of a host with a `healthCheck`, `GET path` every
//! `interval` on a new connection; `unhealthy` failures in a row mark the target down (no
//! request goes to it), `healthy` passes in a row mark it up again. The set of checks follows
//! the routing table, and so does what the process remembers of targets' health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use portico_model::{HealthCheck, Routes, Target};
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::{ProxyConfig, ProxyState};

/// How often the routing table is looked at for new or removed checks.
const FOLLOW: Duration = Duration::from_secs(1);

type Key = (Arc<str>, bool, HealthCheck);

/// Runs the checks the routing table asks for until `shutdown`.
pub async fn run(routes: Arc<Routes>, config: ProxyConfig, state: ProxyState, shutdown: CancellationToken) {
    let pool =
        Pool::new(crate::forward::target_tls(&config), config.upstream_connect_timeout, config.upstream_idle_timeout);
    let health = state.health.clone();
    let mut running: HashMap<Key, CancellationToken> = HashMap::new();
    let mut seen = None;
    loop {
        let table = routes.snapshot();
        if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &table)) {
            let mut wanted: HashMap<Key, Target> = HashMap::new();
            for (_, host) in table.iter() {
                // A redirect or static host keeps the targets it had, unused: not checked.
                let (Some(check), true) = (&host.health_check, host.kind.forwards()) else { continue };
                for upstream in &host.targets {
                    let key = (upstream.target.shared_authority(), host.targetssl, check.clone());
                    wanted.insert(key, upstream.target.clone());
                }
            }
            running.retain(|key, stop| {
                let keep = wanted.contains_key(key);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for (key, target) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                let stop = shutdown.child_token();
                running.insert(key.clone(), stop.clone());
                let (pool, health) = (pool.clone(), health.clone());
                tokio::spawn(async move {
                    let (_, tls, check) = key;
                    tokio::select! {
                        () = probe(&pool, &health, &target, tls, &check) => {}
                        () = stop.cancelled() => {}
                    }
                    // Checks removed: what they said no longer holds.
                    health.checked(&target, tls, &check, false, None);
                });
            }
            // What the table no longer names is forgotten (health, balancers, rate limits).
            health.prune(&table);
            let patterns: std::collections::HashSet<&str> = table.iter().map(|(p, _)| p.as_str()).collect();
            state.access.retain_hosts(|pattern| patterns.contains(pattern));
            seen = Some(table);
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Checks `target` every `check.interval`, for ever.
async fn probe(pool: &Arc<Pool>, health: &crate::balance::Health, target: &Target, tls: bool, check: &HealthCheck) {
    let mut streak = portico_model::Streak::default();
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = tokio::time::timeout(check.interval.min(Duration::from_secs(10)), once(pool, target, tls, check))
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_owned()));
        let flipped = streak.record(outcome.is_ok(), check.unhealthy, check.healthy);
        match outcome {
            Ok(()) => {
                if flipped == Some(false) {
                    tracing::info!(target = %target, "target passes its health checks again");
                    health.checked(target, tls, check, false, None);
                }
            }
            Err(error) => {
                if flipped == Some(true) {
                    tracing::warn!(target = %target, %error, "target fails its health checks: no traffic until it passes");
                }
                health.checked(target, tls, check, streak.down(), Some(format!("health check: {error}")));
            }
        }
    }
}

/// One check: the status the target answers `GET path` with, on a new connection.
async fn once(pool: &Arc<Pool>, target: &Target, tls: bool, check: &HealthCheck) -> Result<(), String> {
    // The operating system's error goes to the debug log only; the API (which a host's
    // owner reads) says "unreachable", so checks cannot probe which ports are open.
    let mut sender = pool.one_off(target, tls).await.map_err(|e| {
        tracing::debug!(target = %target, error = %crate::response::chain(&e), "health check: cannot connect");
        "unreachable".to_owned()
    })?;
    let request = Request::get(check.path.as_str())
        .header(header::HOST, target.authority())
        .header(header::USER_AGENT, "portico-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| {
        tracing::debug!(target = %target, error = %e, "health check: no answer");
        "no answer".to_owned()
    })?;
    let status = response.status().as_u16();
    if status == check.expect { Ok(()) } else { Err(format!("answered {status}, expected {}", check.expect)) }
}
