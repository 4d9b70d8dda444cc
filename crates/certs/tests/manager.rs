//! The certificate manager with a fake issuer, on a real embedded store: which certificate
//! a name gets (plans), the rate limit, failure backoff, waiting on another process's
//! lease, and renewal skipping unused names.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portico_certs::{CertSettings, Certs, IssueError, Issuer, Plan, Progress, SolverKind, Step, StoredCert};
use portico_model::{Host, HostPattern, Routes, Target};
use portico_store::{EmbeddedStore, Fields, Kind, Store, keys};
use tempfile::TempDir;

/// Issues self-signed certificates for a plan's names, counting the plans it was given;
/// fails while `failing` is set.
#[derive(Debug, Default)]
struct FakeIssuer {
    plans: Mutex<Vec<Plan>>,
    failing: std::sync::atomic::AtomicBool,
    /// The certificates' lifetime in days (0: rcgen's default, decades).
    days: std::sync::atomic::AtomicI64,
}

#[async_trait]
impl Issuer for FakeIssuer {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn issue(&self, plan: &Plan, progress: &dyn Progress) -> Result<StoredCert, IssueError> {
        self.plans.lock().unwrap().push(plan.clone());
        progress.step(Step::Validating).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(IssueError::local("the fake CA says no"));
        }
        Ok(self_signed(&plan.sans, self.days.load(Ordering::SeqCst)))
    }
}

fn self_signed(names: &[String], days: i64) -> StoredCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
    if days > 0 {
        params.not_before = time::OffsetDateTime::now_utc();
        params.not_after = params.not_before + time::Duration::days(days);
    }
    StoredCert::new(params.self_signed(&key).unwrap().pem(), key.serialize_pem()).unwrap()
}

impl FakeIssuer {
    fn issued(&self) -> Vec<String> {
        self.plans.lock().unwrap().iter().map(|p| p.cert.clone()).collect()
    }
}

struct Setup {
    _dir: TempDir,
    store: Arc<dyn Store>,
    issuer: Arc<FakeIssuer>,
    certs: Arc<Certs>,
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn setup(patterns: &[&str], settings: CertSettings) -> Setup {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path().join("s.redb")).await.unwrap());
    let routes = Arc::new(Routes::new());
    routes.replace(patterns.iter().map(|p| {
        Host::new(HostPattern::parse(p).unwrap(), Target::new("127.0.0.1", 80).unwrap(), false, false, "t", 0)
    }));
    let issuer = Arc::new(FakeIssuer::default());
    let certs = Certs::new(store.clone(), issuer.clone(), routes, settings, Arc::default()).await.unwrap();
    Setup { _dir: dir, store, issuer, certs }
}

/// A provider account managing `zone`.
async fn provider_for(store: &dyn Store, zone: &str) {
    store
        .create(Kind::DnsProvider, "p1", &fields(&[("id", "p1"), ("dnsProvider", "Cloudflare"), ("token", "t")]))
        .await
        .unwrap();
    store.create(Kind::Domain, zone, &fields(&[("domain", zone), ("dnsProvider_id", "p1")])).await.unwrap();
}

#[tokio::test]
async fn plans_pick_one_wildcard_where_a_provider_manages_the_zone() {
    let s = setup(&["*.zone.test", "zone.test", "*.plain.test", "**.deep.test"], CertSettings::default()).await;
    provider_for(s.store.as_ref(), "zone.test").await;

    let served = s.certs.resolve(Some("a.zone.test")).await.unwrap();
    assert_eq!(served.meta.names, ["*.zone.test", "zone.test"]);
    let plan = s.issuer.plans.lock().unwrap()[0].clone();
    assert_eq!(plan.sans, ["*.zone.test", "zone.test"]);
    assert!(
        matches!(&plan.solver, SolverKind::Dns(account) if account.domain == "zone.test" && account.provider.id == "p1")
    );
    // Other names under it and the zone itself: the same certificate, no new order.
    assert_eq!(s.certs.resolve(Some("b.zone.test")).await.unwrap().meta.names, served.meta.names);
    assert_eq!(s.certs.resolve(Some("zone.test")).await.unwrap().meta.names, served.meta.names);
    assert_eq!(s.issuer.issued(), ["*.zone.test"]);

    // No provider: a certificate per name, shown by HTTP-01; `**` patterns too.
    s.certs.resolve(Some("x.plain.test")).await.unwrap();
    s.certs.resolve(Some("a.b.deep.test")).await.unwrap();
    let plans = s.issuer.plans.lock().unwrap().clone();
    assert_eq!(plans[1], Plan::single("x.plain.test"));
    assert_eq!(plans[2], Plan::single("a.b.deep.test"));
    // Status recorded step by step, ending issued.
    let state = s.certs.state("*.zone.test").await.unwrap().unwrap();
    assert_eq!(state.step, "issued");
}

#[tokio::test]
async fn the_rate_limit_refuses_before_anything_is_written() {
    let settings = CertSettings { max_issuances_per_minute: 2, ..CertSettings::default() };
    let s = setup(&["a.test", "b.test", "c.test"], settings).await;
    assert!(s.certs.resolve(Some("a.test")).await.is_some());
    assert!(s.certs.resolve(Some("b.test")).await.is_some());
    assert!(s.certs.resolve(Some("c.test")).await.is_none(), "the third in a minute is refused");
    assert_eq!(s.issuer.issued(), ["a.test", "b.test"]);
    // Refused in memory: no lease taken, no state written for it.
    assert!(s.store.record(Kind::Cert, "c.test").await.unwrap().is_none());
    assert!(s.store.acquire(&keys::issue_lock("c.test"), Duration::from_secs(1)).await.unwrap().is_some());
}

#[tokio::test]
async fn a_failure_backs_off() {
    let s = setup(&["fail.test"], CertSettings::default()).await;
    s.issuer.failing.store(true, Ordering::SeqCst);
    assert!(s.certs.resolve(Some("fail.test")).await.is_none());
    let state = s.certs.state("fail.test").await.unwrap().unwrap();
    assert_eq!((state.failures, state.step.as_str(), state.failed_step.as_str()), (1, "failed", "validating"));
    assert!(state.next_attempt > state.last_attempt);
    assert!(state.last_error.contains("the fake CA says no"));
    // Within the backoff, handshakes do not ask the CA again.
    s.issuer.failing.store(false, Ordering::SeqCst);
    assert!(s.certs.resolve(Some("fail.test")).await.is_none());
    assert_eq!(s.issuer.issued().len(), 1);
}

#[tokio::test]
async fn short_lived_certificates_renew_at_half_life_and_retry_sooner() {
    let s = setup(&["six.test", "ninety.test"], CertSettings::default()).await;
    for (name, days) in [("six.test", 6), ("ninety.test", 90)] {
        s.issuer.days.store(days, Ordering::SeqCst);
        let served = s.certs.resolve(Some(name)).await.unwrap();
        let state = s.certs.state(name).await.unwrap().unwrap();
        let lifetime = served.meta.not_after - served.meta.not_before;
        // Due when half (six days) or a third (ninety) of the life is left, less a jitter of
        // up to a twentieth of it.
        let left = if days == 6 { lifetime / 2 } else { lifetime / 3 };
        let due = served.meta.not_after - left;
        assert!(state.next_attempt <= due && state.next_attempt >= due - lifetime / 20 - 1, "{name}: {state:?}");

        // After many failures, a six-day certificate is retried within 1/48 of its life
        // (three hours), a ninety-day one within the longest backoff (six hours).
        let mut failed = state.clone();
        failed.failures = 9;
        s.store.put(Kind::Cert, name, &failed.to_fields()).await.unwrap();
        s.issuer.failing.store(true, Ordering::SeqCst);
        assert!(s.certs.renew_now(name).await.is_err());
        s.issuer.failing.store(false, Ordering::SeqCst);
        let state = s.certs.state(name).await.unwrap().unwrap();
        let wait = state.next_attempt - state.last_attempt;
        let expected = if days == 6 { (state.not_after - state.issued) / 48 } else { 6 * 3600 };
        assert!((wait - expected).abs() <= 1, "{name}: retried in {wait} s, not {expected}");
        assert!(days == 90 || wait <= 3 * 3600 + 1);
    }
}

#[tokio::test]
async fn a_name_another_process_is_issuing_waits_for_its_result() {
    let s = setup(&["shared.test"], CertSettings::default()).await;
    // Another process holds the lease and is issuing.
    let lease = s.store.acquire(&keys::issue_lock("shared.test"), Duration::from_secs(30)).await.unwrap().unwrap();
    let certs = s.certs.clone();
    let waiting = tokio::spawn(async move { certs.resolve(Some("shared.test")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "it waits for the other process");
    // The other process finishes: its certificate and state land in the store.
    let theirs = self_signed(&["shared.test".to_owned()], 0);
    s.store.put_blob(&keys::cert_latest("shared.test"), &theirs.to_json(), None).await.unwrap();
    let state = portico_certs::status::CertState {
        last_attempt: portico_certs::now_secs(),
        step: "issued".into(),
        ..Default::default()
    };
    s.store.put(Kind::Cert, "shared.test", &state.to_fields()).await.unwrap();
    s.store.release(&lease).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(served.key.cert[0].as_ref(), theirs.leaf_der().unwrap());
    assert!(s.issuer.issued().is_empty(), "no second issuance");
}

#[tokio::test]
async fn renewal_skips_names_under_patterns_nobody_used() {
    let s = setup(&["**.pat.test", "kept.test"], CertSettings::default()).await;
    s.certs.resolve(Some("scan.pat.test")).await.unwrap();
    s.certs.resolve(Some("kept.test")).await.unwrap();
    // Both due now (and last tried long ago).
    for name in ["scan.pat.test", "kept.test"] {
        let mut state = s.certs.state(name).await.unwrap().unwrap();
        state.next_attempt = 0;
        state.last_attempt = 1;
        s.store.put(Kind::Cert, name, &state.to_fields()).await.unwrap();
    }
    let sweep = portico_certs::renew::sweep(&s.certs).await.unwrap();
    assert_eq!(sweep.unused, ["scan.pat.test"], "nobody asked for it since it was issued");
    assert_eq!(sweep.renewed, ["kept.test"], "an explicit host is renewed regardless");
    assert_eq!(s.issuer.issued(), ["scan.pat.test", "kept.test", "kept.test"]);
}
