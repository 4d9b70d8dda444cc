//! Many nodes on one Redis: `portico serve`, `portico proxy` and `portico api` processes
//! sharing a real `redis-server`.

use std::time::{Duration, Instant};

use http::StatusCode;
use portico_test_support::client::{ApiClient, Proxy};
use portico_test_support::pebble::{Options, Pebble};
use portico_test_support::portico::ADMIN_PASSWORD;
use portico_test_support::{Backend, Portico, RedisCluster, RedisSentinel, RedisServer, eventually, tls};
use serde_json::json;

use crate::BIN;

/// The `--set` option that puts a node on `url`.
fn on(url: &str) -> String {
    format!("store.url=\"{url}\"")
}

/// Three nodes (`portico api` A, `portico proxy` B and C): a host created through A's API
/// is routed by B and C (each tells of its new routing table; how soon is measured by the
/// cluster benchmark, not here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_created_on_one_node_is_routed_by_the_others() {
    let redis = RedisServer::start();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "api", &[&store]);
    let b = Portico::start_role(BIN, "proxy", &[&store]);
    let c = Portico::start_role(BIN, "proxy", &[&store]);
    let backend = Backend::start("one").await;
    let api = ApiClient::new(a.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let proxy_c = Proxy::h1(c.http);
    assert_eq!(proxy_c.get("new.example", "/").await.status, StatusCode::NOT_FOUND);

    let body = json!({"host": "new.example", "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    // How fast is the cluster benchmark's to say (`cargo bench -p portico --bench cluster`).
    let created = b.routing_after(c.routing_after(api.call("POST", "/api/host", Some(&token), Some(body)))).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json);
    assert_eq!(proxy_c.get("new.example", "/").await.status, StatusCode::OK);
    assert_eq!(Proxy::h1(b.http).get("new.example", "/").await.status, StatusCode::OK);
}

/// Redis stopped: every node keeps routing and serving certificates from memory; API calls
/// that need the store answer 503 `StoreUnavailable` within two seconds (never 401), and
/// nothing is half-written. Redis back: every node catches up without a restart, including
/// with writes it was not told about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_redis_going_away_and_catch_up_when_it_returns() {
    let mut redis = RedisServer::start();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "serve", &[&store]);
    let b = Portico::start_role(BIN, "proxy", &[&store]);
    let backend = Backend::start("steady").await;
    let api = ApiClient::new(a.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body =
        json!({"host": "steady.example", "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    assert_eq!(api.call("POST", "/api/host", Some(&token), Some(body)).await.status, StatusCode::OK);
    let (proxy_a, proxy_b) = (Proxy::h1(a.http), Proxy::h1(b.http));
    routed_everywhere(&[&proxy_b], "steady.example").await;
    // A certificate each node has in memory.
    let first = tls::peek(b.https, "steady.example").await;
    assert_eq!(first.names, ["steady.example"]);
    assert_eq!(tls::peek(a.https, "steady.example").await, first);

    redis.kill();
    for proxy in [&proxy_a, &proxy_b] {
        assert_eq!(proxy.get("steady.example", "/").await.status, StatusCode::OK);
    }
    assert_eq!(tls::peek(b.https, "steady.example").await, first);
    let body = json!({"host": "during.example", "ip": "127.0.0.1", "targetPort": backend.addr.port()});
    for (method, path, body) in
        [("POST", "/api/host", Some(body)), ("GET", "/api/host", None), ("DELETE", "/api/host/steady.example", None)]
    {
        let asked = Instant::now();
        let reply = api.call(method, path, Some(&token), body).await;
        assert!(asked.elapsed() < Duration::from_secs(2), "{method} {path} took {:?}", asked.elapsed());
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}: {}", reply.raw);
        assert_eq!(reply.json["name"], "StoreUnavailable", "{}", reply.raw);
    }
    let login =
        api.call("POST", "/api/auth/login", None, Some(json!({"username": "admin", "password": ADMIN_PASSWORD})));
    assert_eq!(login.await.status, StatusCode::SERVICE_UNAVAILABLE);
    for proxy in [&proxy_a, &proxy_b] {
        assert_eq!(proxy.get("steady.example", "/").await.status, StatusCode::OK);
    }

    redis.restart();
    // Nothing of the refused writes is there; the host is.
    assert_eq!(redis.run(&["SMEMBERS", "proxy_Host"]), "*1\r\n$14\r\nsteady.example\r\n");
    // A write no node is told about (as a script would make it): every node finds it, by
    // the resync after reconnecting or the counter that moved without an announcement.
    redis.run(&["SADD", "proxy_Host", "quiet.example"]);
    let port = backend.addr.port().to_string();
    let fields = ["HSET", "proxy_Host_quiet.example", "host", "quiet.example", "ip", "127.0.0.1"];
    redis.run(&[&fields[..], &["targetPort", &port, "forcessl", "false"]].concat());
    redis.run(&["INCR", "proxy_version"]);
    routed_everywhere(&[&proxy_a, &proxy_b], "quiet.example").await;
    // And the API writes again.
    let body =
        json!({"host": "after.example", "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    assert_eq!(api.call("POST", "/api/host", Some(&token), Some(body)).await.status, StatusCode::OK);
    routed_everywhere(&[&proxy_a, &proxy_b], "after.example").await;
}

/// Waits until every proxy routes `host` (answers 200).
async fn routed_everywhere(proxies: &[&Proxy], host: &str) {
    for (i, proxy) in proxies.iter().enumerate() {
        eventually(Duration::from_secs(5), &format!("node {i} to route {host}"), || {
            let proxy = (*proxy).clone();
            async move { (proxy.get(host, "/").await.status == StatusCode::OK).then_some(()) }
        })
        .await;
    }
}

/// Pebble; node A (`serve`) on the ports Pebble validates; node B (`proxy`) elsewhere; both
/// on `redis`, issuing from Pebble.
fn acme_nodes(redis: &RedisServer, extra: &[&str]) -> (Pebble, Portico, Portico) {
    let store = on(&redis.url());
    for _ in 0..5 {
        let pebble = Pebble::start_anywhere(Options::default());
        let mut settings = pebble.portico_settings();
        settings.push(store.clone());
        settings.extend(extra.iter().map(|s| (*s).to_owned()));
        let a_settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let Ok(a) = Portico::try_start(BIN, &a_settings) else { continue };
        // B keeps the harness' own ports: Pebble reaches only A, which answers B's challenges
        // from the store.
        let b_settings: Vec<&str> = a_settings.iter().copied().filter(|s| !s.starts_with("proxy.http")).collect();
        let b = Portico::start_role(BIN, "proxy", &b_settings);
        return (pebble, a, b);
    }
    panic!("could not start two nodes beside Pebble");
}

async fn add_host(node: &Portico, name: &str, backend: &Backend) {
    let api = ApiClient::new(node.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    let body = json!({"host": name, "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    let created = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.raw);
}

/// Two nodes asked for the same new name at once make one ACME order between them, and
/// both serve its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_asked_for_one_new_name_make_one_order() {
    let redis = RedisServer::start();
    let (pebble, a, b) = acme_nodes(&redis, &[]);
    let backend = Backend::start("shared").await;
    add_host(&a, "both.example.test", &backend).await;
    routed_everywhere(&[&Proxy::h1(b.http)], "both.example.test").await;
    let roots = tls::roots(&pebble.root().await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let addr = if i % 2 == 0 { a.https } else { b.https };
        let client = Proxy::https(addr, roots.clone(), false);
        tasks.push(tokio::spawn(async move { client.get("both.example.test", "/").await }));
    }
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    assert_eq!(pebble.orders(), 1, "one order for two nodes");
    assert_eq!(tls::peek(a.https, "both.example.test").await, tls::peek(b.https, "both.example.test").await);

    // B alone asked: B orders, and Pebble's validation, which reaches only A, is answered
    // by A from the store.
    add_host(&a, "only-b.example.test", &backend).await;
    routed_everywhere(&[&Proxy::h1(b.http)], "only-b.example.test").await;
    let answer = Proxy::https(b.https, roots, false).get("only-b.example.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(pebble.orders(), 2);
    let issued_by = |p: &Portico| {
        p.logs()
            .iter()
            .any(|l| l["fields"]["message"] == "certificate issued" && l["fields"]["name"] == "only-b.example.test")
    };
    assert!(issued_by(&b) && !issued_by(&a), "B issued it");
}

/// A node killed with SIGKILL in the middle of an issuance: its lease runs out and another
/// node completes the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_issuance_leaves_the_certificate_to_another() {
    let redis = RedisServer::start();
    let (pebble, a, mut b) = acme_nodes(&redis, &[]);
    let backend = Backend::start("survivor").await;
    add_host(&a, "orphan.example.test", &backend).await;
    routed_everywhere(&[&Proxy::h1(b.http)], "orphan.example.test").await;
    let roots = tls::roots(&pebble.root().await);

    // B starts the issuance; once it has its order, Pebble is frozen, so B is surely in
    // the middle of it when it dies.
    let b_https = b.https;
    let doomed =
        tokio::spawn(async move { tls::connect(b_https, "orphan.example.test", tls::client_config(None, &[])).await });
    eventually(Duration::from_secs(10), "node B to create its order", || async {
        b.logs().iter().any(|l| l["fields"]["message"] == "ACME order created").then_some(())
    })
    .await;
    pebble.pause();
    b.kill();
    let killed = Instant::now();
    pebble.resume();
    let _ = doomed.await;

    // A waits for B's lease to run out, then issues.
    let answer = Proxy::https(a.https, roots, false).get("orphan.example.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(killed.elapsed() < Duration::from_secs(20), "took {:?}", killed.elapsed());
    assert_eq!(pebble.orders(), 2, "B's abandoned order and A's");
    assert_eq!(tls::peek(a.https, "orphan.example.test").await.names, ["orphan.example.test"]);
}

/// `portico migrate`: everything of an embedded store moves to Redis, where a node serves
/// it as it was (hosts, users, the certificate and its CA), and back to a new embedded
/// store; a target that holds something is refused unless `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_everything_between_embedded_and_redis() {
    let backend = Backend::start("moved").await;
    let mut single = Portico::start(BIN, &[]);
    single.add_host("moved.example", backend.addr, &[]);
    let before = tls::peek(single.https, "moved.example").await;
    assert_eq!(before.names, ["moved.example"]);
    single.kill();
    let embedded = format!("redb://{}", single.data_dir().join("portico.redb").display());

    let redis = RedisServer::start();
    redis.run(&["SET", "something", "else"]);
    let migrate = |from: &str, to: &str, force: bool| {
        let mut command = std::process::Command::new(BIN);
        command.args(["migrate", "--from", from, "--to", to]);
        if force {
            command.arg("--force");
        }
        command.output().unwrap()
    };
    let refused = migrate(&embedded, &redis.url(), false);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"), "{refused:?}");
    assert_eq!(redis.run(&["EXISTS", "proxy_Host"]), ":0\r\n", "nothing copied");
    let done = migrate(&embedded, &redis.url(), true);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains("1 Host") && said.contains("1 User") && said.contains("1 Cert"), "{said}");

    // A node on Redis serves what the single node had: the host, the same certificate, the
    // admin's password.
    let node = Portico::start_role(BIN, "serve", &[&on(&redis.url())]);
    assert_eq!(Proxy::h1(node.http).get("moved.example", "/").await.status, StatusCode::OK);
    assert_eq!(tls::peek(node.https, "moved.example").await, before);
    ApiClient::new(node.api).login("admin", ADMIN_PASSWORD).await;
    drop(node);

    // And back, into a new embedded store.
    let dir = tempfile::TempDir::new().unwrap();
    let back = format!("redb://{}", dir.path().join("back.redb").display());
    let done = migrate(&redis.url(), &back, false);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    // The node on Redis added its login token and a note that the certificate was served.
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains("1 Host") && said.contains("1 User") && said.contains("1 AuthToken"), "{said}");
    let store = portico_store::open_existing(&back).await.unwrap();
    assert_eq!(store.keys(portico_store::Kind::Host).await.unwrap(), ["moved.example"]);
    assert!(store.blob(&portico_store::keys::cert_latest("moved.example")).await.unwrap().is_some());
}

/// Probes `host` on every proxy until `stop`, counting answers that were not 200.
fn probe(proxies: Vec<Proxy>, host: &'static str, stop: tokio_util_stop::Stop) -> tokio::task::JoinHandle<(u32, u32)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.is_set() {
            for proxy in &proxies {
                if proxy.get(host, "/").await.status == StatusCode::OK { ok += 1 } else { failed += 1 }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    })
}

mod tokio_util_stop {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A flag that tells a probe to stop.
    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

/// Writes a host through `api` until it works (the store is back), within `deadline`.
async fn write_host_eventually(api: &ApiClient, token: &str, name: &str, backend: &Backend, deadline: Duration) {
    let body = json!({"host": name, "ip": "127.0.0.1", "targetPort": backend.addr.port(), "forcessl": false});
    eventually(deadline, &format!("the API to write {name} again"), || {
        let (api, token, body) = (api.clone(), token.to_owned(), body.clone());
        async move {
            let reply = api.call("POST", "/api/host", Some(&token), Some(body)).await;
            // A write that reached the store before its answer was lost is there already.
            matches!(reply.status, StatusCode::OK | StatusCode::CONFLICT).then_some(())
        }
    })
    .await;
}

/// Two nodes on `store` (one serving the API, one proxy only) that route `before.example`.
struct TwoNodes {
    _nodes: [Portico; 2],
    backend: Backend,
    api: ApiClient,
    token: String,
    proxies: [Proxy; 2],
}

impl TwoNodes {
    async fn start(store: &str) -> Self {
        let store = on(store);
        let a = Portico::start_role(BIN, "serve", &[&store]);
        let b = Portico::start_role(BIN, "proxy", &[&store]);
        let backend = Backend::start("outage").await;
        let api = ApiClient::new(a.api);
        let token = api.login("admin", ADMIN_PASSWORD).await;
        write_host_eventually(&api, &token, "before.example", &backend, Duration::from_secs(2)).await;
        let proxies = [Proxy::h1(a.http), Proxy::h1(b.http)];
        routed_everywhere(&[&proxies[0], &proxies[1]], "before.example").await;
        Self { _nodes: [a, b], backend, api, token, proxies }
    }

    /// Probes `before.example` on both nodes while `outage` happens, until a host written
    /// after it routes everywhere. Returns how many probes were answered and how many
    /// failed.
    async fn route_through(&self, outage: impl FnOnce()) -> (u32, u32) {
        let stop = tokio_util_stop::Stop::default();
        let probing = probe(self.proxies.to_vec(), "before.example", stop.clone());
        outage();
        write_host_eventually(&self.api, &self.token, "after.example", &self.backend, Duration::from_secs(30)).await;
        routed_everywhere(&[&self.proxies[0], &self.proxies[1]], "after.example").await;
        stop.set();
        probing.await.unwrap()
    }
}

/// Sentinel: the master is killed; routing never stops, and writes resume once a replica
/// is promoted, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_routing_and_writes_resume() {
    let mut sentinel = RedisSentinel::start();
    let nodes = TwoNodes::start(&sentinel.url()).await;
    // Everything written so far is on the replica before the master dies.
    sentinel.wait_replicated();
    let old = sentinel.master_port();
    let (ok, failed) = nodes.route_through(|| sentinel.kill_master()).await;
    assert_ne!(sentinel.master_port(), old, "a replica was promoted");
    assert_eq!(failed, 0, "routing stopped during the failover ({ok} answered)");
    assert!(ok > 10);
}

/// Cluster: one master is killed; routing never stops, and writes resume once its replica
/// takes over, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_down_keeps_routing_and_writes_resume() {
    let mut cluster = RedisCluster::start_with(1);
    let nodes = TwoNodes::start(&cluster.url()).await;
    cluster.wait_replicated();
    // The master holding the index of hosts.
    let slot_owner = cluster.master_of("proxy_Host");
    let (ok, failed) = nodes.route_through(|| cluster.kill(slot_owner)).await;
    assert_eq!(failed, 0, "routing stopped while the master was down ({ok} answered)");
    assert!(ok > 10);
}

/// `rediss://`: a node talks to Redis over TLS, trusting the server's CA through
/// `SSL_CERT_FILE` (the system's roots otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_redis_over_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let ca = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let redis = RedisServer::start_tls(&leaf.pem(), &key.serialize_pem());
    let dir = tempfile::TempDir::new().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let wrapper = ["env".to_owned(), format!("SSL_CERT_FILE={}", ca_file.display())];
    let node = Portico::start_wrapped(BIN, "serve", &wrapper, &[&on(&redis.tls_url())]);
    let backend = Backend::start("tls").await;
    add_host(&node, "over-tls.example", &backend).await;
    routed_everywhere(&[&Proxy::h1(node.http)], "over-tls.example").await;
    assert_eq!(redis.run(&["SMEMBERS", "proxy_Host"]), "*1\r\n$16\r\nover-tls.example\r\n");

    // Without the CA, the server's certificate is not trusted: the store does not open.
    let untrusted = std::process::Command::new(BIN)
        .args(["host", "ls", "--store", &redis.tls_url()])
        .env("SSL_CERT_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(said.contains("cannot open the store") && said.contains("certificate"), "{said}");
}

/// A Redis password in the store URL works and is never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_works_and_stays_out_of_the_logs() {
    let password = "hunter2-redis-pass";
    let redis = RedisServer::start_with_password(password);
    let node = Portico::start_role(BIN, "serve", &[&on(&redis.url_with_password(password))]);
    let backend = Backend::start("auth").await;
    add_host(&node, "auth.example", &backend).await;
    routed_everywhere(&[&Proxy::h1(node.http)], "auth.example").await;
    let logs = serde_json::to_string(&node.logs()).unwrap();
    assert!(logs.contains("redis://***@127.0.0.1"), "the store is named");
    assert!(!logs.contains(password), "the password was logged");
    // A wrong password: the store does not open, and the error does not repeat it.
    let wrong = std::process::Command::new(BIN)
        .args(["host", "ls", "--store", &redis.url_with_password("wrong-pass-123")])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && !said.contains("wrong-pass-123"), "{said}");
}

/// `GET /readyz` on a node's API: its status.
async fn readyz(api: &ApiClient) -> StatusCode {
    api.call("GET", "/readyz", None, None).await.status
}

/// Waits until a node's alarm (`portico_store_identity_lost` and a failing `/readyz`)
/// is raised or, with `lost` false, cleared.
async fn until_alarm(api: &ApiClient, node: &Portico, lost: bool) {
    let (gauge, ready) = if lost { (1.0, StatusCode::SERVICE_UNAVAILABLE) } else { (0.0, StatusCode::OK) };
    eventually(Duration::from_secs(10), "the store identity alarm", || async move {
        (identity_lost(node).await == gauge && readyz(api).await == ready).then_some(())
    })
    .await;
}

/// The value of `portico_store_identity_lost` on a node's metrics listener.
async fn identity_lost(node: &Portico) -> f64 {
    crate::raw_sample(node, "portico_store_identity_lost").await
}

/// A Redis without persistence restarted under load, so empty (then emptied again by `FLUSHALL`):
/// no request to a known host fails, every node keeps routing from memory, the API refuses
/// with `StoreIdentityLost`, `/readyz` fails and the metric says so. Restoring a backup
/// (`portico store import` of an export taken before) clears it; so does `portico store adopt`, after which the store is
/// followed as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_data_is_not_followed_until_restored_or_adopted() {
    let mut redis = RedisServer::start_without_persistence();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "serve", &[&store, "metrics.listen=\"127.0.0.1:0\""]);
    let b = Portico::start_role(BIN, "proxy", &[&store]);
    let warned = |p: &Portico| {
        p.logs().iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("keeps nothing on disk")))
    };
    assert!(warned(&a) && warned(&b), "a Redis without persistence is pointed out at start");
    let backend = Backend::start("kept").await;
    let api = ApiClient::new(a.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    write_host_eventually(&api, &token, "kept.example", &backend, Duration::from_secs(2)).await;
    let proxies = [Proxy::h1(a.http), Proxy::h1(b.http)];
    routed_everywhere(&[&proxies[0], &proxies[1]], "kept.example").await;
    let certificate = tls::peek(b.https, "kept.example").await;
    assert_eq!(identity_lost(&a).await, 0.0);
    let marker = redis.get("portico:store-identity").expect("the store has an identity marker");
    let backup_dir = tempfile::TempDir::new().unwrap();
    let backup = backup_dir.path().join("backup.jsonl").to_str().unwrap().to_owned();
    let exported = a.cli("store", &["export", &backup, "--store", &redis.url()], "");
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));

    let stop = tokio_util_stop::Stop::default();
    let probing = probe(proxies.to_vec(), "kept.example", stop.clone());
    // Restarted without persistence: it comes back empty.
    redis.kill();
    redis.restart();
    until_alarm(&api, &a, true).await;
    let body = json!({"host": "new.example", "ip": "127.0.0.1", "targetPort": backend.addr.port()});
    let refused = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.raw);
    assert_eq!(refused.json["name"], "StoreIdentityLost", "{}", refused.raw);
    assert!(refused.json["message"].as_str().unwrap().contains("portico store adopt"), "{}", refused.raw);
    let login =
        api.call("POST", "/api/auth/login", None, Some(json!({"username": "admin", "password": ADMIN_PASSWORD})));
    assert_eq!(login.await.json["name"], "StoreIdentityLost", "no 401: the admin is not gone for good");
    // Routing and certificates from memory, on both nodes, past a full resync.
    redis.run(&["INCR", "proxy_version"]);
    assert_eq!(tls::peek(b.https, "kept.example").await, certificate);
    assert_eq!(redis.run(&["EXISTS", "portico:store-identity", "portico:internal-ca"]), ":0\r\n", "nothing written");

    // The backup restored while the nodes run: the marker and the host are back; the alarm
    // clears.
    // `--merge`: a node that served a certificate before it saw the store was wiped may have
    // noted so there.
    let imported = a.cli("store", &["import", &backup, "--merge", "--store", &redis.url()], "");
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert_eq!(redis.get("portico:store-identity"), Some(marker));
    until_alarm(&api, &a, false).await;
    assert_eq!(redis.run(&["EXISTS", "proxy_Host_kept.example", "kept.example:latest"]), ":2\r\n");
    stop.set();
    let (ok, failed) = probing.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {} requests to a known host failed", ok + failed);
    assert!(ok > 0);

    // Wiped again, then adopted as it is: followed again, empty as it now is.
    redis.run(&["FLUSHALL"]);
    until_alarm(&api, &a, true).await;
    assert_eq!(proxies[1].get("kept.example", "/").await.status, StatusCode::OK);
    let adopted = a.cli("store", &["adopt", "--store", &redis.url()], "");
    assert!(adopted.status.success(), "{}", String::from_utf8_lossy(&adopted.stderr));
    for proxy in &proxies {
        eventually(Duration::from_secs(10), "the adopted store to be followed", || {
            let proxy = proxy.clone();
            async move { (proxy.get("kept.example", "/").await.status == StatusCode::NOT_FOUND).then_some(()) }
        })
        .await;
    }
    until_alarm(&api, &a, false).await;
}

/// The ids of the clients subscribed to something (one per node: its change feed).
fn subscribers(redis: &RedisServer) -> Vec<String> {
    let listing = redis.run(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let mut ids: Vec<String> =
        listing.split_whitespace().filter_map(|w| w.strip_prefix("id=")).map(str::to_owned).collect();
    ids.sort();
    ids
}

/// Records no node can use, planted in Redis directly (a key of another type, a field that
/// is not UTF-8, a 2 MB field), are skipped and reported: the API lists the rest, answers
/// 422 for them (and deletes them), a full reload routes the rest, a new node starts. A
/// reload of large hosts does not drop the node's subscription (Redis's pub/sub output
/// limit), and a flood of garbage on the change channel is not a reload each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_record_does_not_take_the_cluster_down() {
    let redis = RedisServer::start();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "serve", &[&store, "metrics.listen=\"127.0.0.1:0\""]);
    let backend = Backend::start("good").await;
    let api = ApiClient::new(a.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;
    write_host_eventually(&api, &token, "good.example", &backend, Duration::from_secs(2)).await;
    let proxy = Proxy::h1(a.http);
    routed_everywhere(&[&proxy], "good.example").await;

    let port = backend.addr.port().to_string();
    let plant = |name: &str, extra: &str| {
        let script = format!(
            "redis.call('SADD', 'proxy_Host', ARGV[1]) redis.call('HSET', KEYS[1], 'host', ARGV[1], 'ip', \
             '127.0.0.1', 'targetPort', ARGV[2], 'forcessl', 'false'{extra})"
        );
        let reply = redis.run(&["EVAL", &script, "1", &format!("proxy_Host_{name}"), name, &port]);
        assert!(!reply.starts_with('-'), "{reply}");
    };
    redis.run(&["SADD", "proxy_Host", "wrong.example"]);
    redis.run(&["SET", "proxy_Host_wrong.example", "not a hash"]);
    plant("binary.example", ", 'owner', 'ann\\255'");
    plant("huge.example", ", 'note', string.rep('x', 2000000)");
    for i in 0..8 {
        plant(&format!("large{i}.example"), ", 'note', string.rep('y', 100000)");
    }
    let before = subscribers(&redis);
    assert_eq!(before.len(), 1, "one node, one subscription");
    redis.run(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 32kb 32kb 0"]);
    // Planted without an announcement: only a full reload finds them.
    redis.run(&["INCR", "proxy_version"]);
    routed_everywhere(&[&proxy], "large7.example").await;
    assert_eq!(proxy.get("good.example", "/").await.status, StatusCode::OK);
    for unusable in ["wrong.example", "binary.example", "huge.example"] {
        assert_eq!(proxy.get(unusable, "/").await.status, StatusCode::NOT_FOUND, "{unusable}");
    }
    assert_eq!(subscribers(&redis), before, "the subscription outlived a reload of 800 kB of hosts");

    let listed = api.call("GET", "/api/host", Some(&token), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.raw);
    let names = listed.json["results"].as_array().unwrap();
    assert_eq!(names.len(), 9, "{}", listed.raw);
    for unusable in ["wrong.example", "binary.example"] {
        let shown = api.call("GET", &format!("/api/host/{unusable}"), Some(&token), None).await;
        assert_eq!(shown.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", shown.raw);
        assert_eq!(shown.json["name"], "UnreadableRecord", "{}", shown.raw);
    }
    let huge = api.call("GET", "/api/host/huge.example", Some(&token), None).await;
    assert_eq!(huge.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", huge.raw);
    let deleted = api.call("DELETE", "/api/host/wrong.example", Some(&token), None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.raw);
    assert_eq!(redis.run(&["EXISTS", "proxy_Host_wrong.example"]), ":0\r\n");
    let allow: Vec<String> = (0..100_000).map(|i| format!("10.{}.{}.{}", i / 65_536, i / 256 % 256, i % 256)).collect();
    let body = json!({"host": "new.example", "ip": "127.0.0.1", "targetPort": 80, "allow": allow});
    let refused = api.call("POST", "/api/host", Some(&token), Some(body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "a record over the bound: {}", refused.raw);
    assert!(refused.json["message"].as_str().unwrap().contains("more than a record may"), "{}", refused.raw);

    // A node starting now reads the same store and routes what it can.
    let b = Portico::start_role(BIN, "proxy", &[&store]);
    routed_everywhere(&[&Proxy::h1(b.http), &proxy], "good.example").await;

    // Garbage on the change channel: ignored, not a reload per message.
    let rebuilds = || crate::raw_sample(&a, "portico_routes_rebuild_seconds_count");
    let first = rebuilds().await;
    let flood = "for i = 1, 5000 do redis.call('PUBLISH', 'proxy_events', 'garbage ' .. i) end \
                 for i = 1, 5000 do redis.call('PUBLISH', 'proxy_events', '{\"v\": ' .. (1000000 + i) .. ', \"changes\": 7}') end";
    redis.run(&["EVAL", flood, "0"]);
    // A write after the flood, heard by the node: every message before it was handled.
    redis.run(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 32mb 8mb 60"]);
    write_host_eventually(&api, &token, "after.example", &backend, Duration::from_secs(2)).await;
    routed_everywhere(&[&Proxy::h1(b.http)], "after.example").await;
    let more = rebuilds().await - first;
    assert!(more <= 4.0, "{more} reloads for 10,000 garbage messages");
    assert_eq!(subscribers(&redis).len(), 2);
}

/// `env` options that run a program with its clock `offset` off (Debian's libfaketime,
/// found through dpkg; the monotonic clock is left alone so timers behave).
fn skewed_clock(offset: &str) -> Vec<String> {
    let files = std::process::Command::new("dpkg").args(["-L", "libfaketime"]).output().expect("dpkg");
    let listing = String::from_utf8_lossy(&files.stdout).into_owned();
    let library = listing.lines().find(|l| l.ends_with("/libfaketimeMT.so.1")).expect("libfaketime is installed");
    ["env", &format!("LD_PRELOAD={library}"), &format!("FAKETIME={offset}"), "FAKETIME_DONT_FAKE_MONOTONIC=1"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A node whose clock runs two days ahead warns at start, and its logins do not sweep away
/// tokens the store's clock says are still good: everyone else stays signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wrong_clock_signs_nobody_out() {
    let redis = RedisServer::start();
    let store = on(&redis.url());
    let a = Portico::start_role(BIN, "serve", &[&store]);
    let api = ApiClient::new(a.api);
    let mut tokens = Vec::new();
    for _ in 0..5 {
        tokens.push(api.login("admin", ADMIN_PASSWORD).await);
    }
    let ahead = Portico::start_wrapped(BIN, "api", &skewed_clock("+2d"), &[&store]);
    let warned = ahead.logs().iter().any(|l| {
        l["level"] == "WARN" && l["fields"]["message"].as_str().is_some_and(|m| m.contains("ahead of the Redis server"))
    });
    assert!(warned, "the skewed node says so at start");
    // Its own login works (by its clock the new token is fresh) and sweeps.
    ApiClient::new(ahead.api).login("admin", ADMIN_PASSWORD).await;
    for token in &tokens {
        let me = api.call("GET", "/api/user/me", Some(token), None).await;
        assert_eq!(me.status, StatusCode::OK, "a token swept by the node with the wrong clock");
    }
    let count = redis.run(&["SCARD", "proxy_AuthToken"]);
    assert_eq!(count, ":6\r\n", "every token is still stored");
}

/// `portico store export` from a node's embedded store while its API keeps writing hosts,
/// `portico store import` into Redis: a node there routes every exported host and serves
/// the same certificate, byte for byte. The file is 0600 and says it holds private keys;
/// a store that holds something is refused without `--merge`; a file cut short is refused
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_a_busy_store_imports_into_another_backend() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let backend = Backend::start("saved").await;
    let single = Portico::start(BIN, &[]);
    single.add_host("saved.example", backend.addr, &[]);
    let certificate = tls::fingerprint(single.https, "saved.example").await;
    let api = ApiClient::new(single.api);
    let token = api.login("admin", ADMIN_PASSWORD).await;

    // The API writes a host after another while the export runs.
    let stop = tokio_util_stop::Stop::default();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (stop, written, port) = (stop.clone(), written.clone(), backend.addr.port());
        async move {
            while !stop.is_set() {
                let name = format!("busy{}.example", written.load(Ordering::SeqCst));
                let body = json!({"host": name, "ip": "127.0.0.1", "targetPort": port, "forcessl": false});
                let reply = api.call("POST", "/api/host", Some(&token), Some(body)).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
                written.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    eventually(Duration::from_secs(10), "the API to write hosts", || {
        let written = written.clone();
        async move { (written.load(Ordering::SeqCst) >= 3).then_some(()) }
    })
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("backup.jsonl");
    let path = file.to_str().unwrap().to_owned();
    let single = Arc::new(single);
    let exported = tokio::task::spawn_blocking({
        let (single, path) = (single.clone(), path.clone());
        move || single.cli("store", &["export", &path], "")
    })
    .await
    .unwrap();
    stop.set();
    writer.await.unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    assert!(String::from_utf8_lossy(&exported.stderr).contains("private key"), "{exported:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let hosts: Vec<String> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["kind"] == "Host")
        .map(|line| line["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(hosts.contains(&"saved.example".to_owned()), "{hosts:?}");
    assert!(hosts.len() >= 4, "the hosts written before the export are in it: {hosts:?}");

    let redis = RedisServer::start();
    let import = |args: &[&str]| {
        let mut command = std::process::Command::new(BIN);
        command.args(["store", "import"]).args(args).args(["--store", &redis.url()]);
        command.output().unwrap()
    };
    let cut = dir.path().join("cut.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
    let refused = import(&[cut.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cut short"), "{refused:?}");
    assert_eq!(redis.run(&["DBSIZE"]), ":0\r\n", "nothing of a damaged file is imported");
    let done = import(&[&path]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains(&format!("{} Host", hosts.len())), "{done:?}");
    let again = import(&[&path]);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && said.contains("not empty") && said.contains("Host"), "{again:?}");
    let merged = import(&[&path, "--merge"]);
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));

    let node = Portico::start_role(BIN, "serve", &[&on(&redis.url())]);
    let proxy = Proxy::h1(node.http);
    for host in &hosts {
        assert_eq!(proxy.get(host, "/").await.status, StatusCode::OK, "{host} on the imported store");
    }
    assert_eq!(tls::fingerprint(node.https, "saved.example").await, certificate);
    ApiClient::new(node.api).login("admin", ADMIN_PASSWORD).await;
}
