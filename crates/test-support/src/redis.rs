//! Real Redis processes for one test: a server ([`RedisServer`]), a Sentinel setup
//! ([`RedisSentinel`]), a Cluster ([`RedisCluster`]). Debian's `redis-server` and
//! `redis-cli`; everything on 127.0.0.1; every process is killed on drop.
//!
//! Ports are chosen at random between 10000 and 22000, so that a Cluster node's bus port
//! (port + 10000) stays below Linux's ephemeral range (32768 and up); a port someone else
//! holds makes the start try another.
//!
//! Needs only the standard library: the store's own tests use it without the data plane
//! (`default-features = false`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a Redis process may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A random port whose cluster bus port is also below the ephemeral range.
fn pick_port() -> u16 {
    10_000 + fastrand::u16(0..12_000)
}

/// Sends one command in Redis' inline form and returns the raw reply (what one read gives).
pub fn command(port: u16, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends one command as a RESP array (any bytes in its arguments: PEM, JSON) and returns
/// the raw reply.
pub fn run(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits until every replica of the master on `port` has everything the master has (and
/// it has at least one).
pub fn wait_replicated(port: u16) {
    let start = Instant::now();
    loop {
        let info = command(port, "INFO replication").unwrap_or_default();
        let offset = info.lines().find_map(|l| l.strip_prefix("master_repl_offset:")).map(str::trim);
        let replicas: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("offset="))
            .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
            .collect();
        if offset.is_some() && !replicas.is_empty() && replicas.iter().all(|r| Some(*r) == offset) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the replicas of {port} did not catch up: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `redis-server` (or sentinel) process.
struct Process {
    port: u16,
    child: Option<Child>,
    args: Vec<String>,
    dir: PathBuf,
}

impl Process {
    /// Starts `redis-server` with `args` (plus port, bind and dir) on a random free port;
    /// `None` if it did not come up (the port was taken).
    fn start(dir: &Path, name: &str, args: &[String], port: Option<u16>) -> Option<Self> {
        let port = port.unwrap_or_else(pick_port);
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut process = Self { port, child: None, args: args.to_vec(), dir };
        process.spawn().then_some(process)
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        // A sentinel reads a config file that must come first.
        cmd.args(&self.args);
        if !self.args.iter().any(|a| a == "--bind") {
            cmd.args(["--bind", "127.0.0.1"]);
        }
        cmd.args(["--port", &self.port.to_string(), "--dir"])
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("redis-server is not installed (Debian package redis-server)");
        let start = Instant::now();
        while start.elapsed() < START_DEADLINE {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // A server with a password answers, refusing: it is up.
            if command(self.port, "PING").is_ok_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH")) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills the process (SIGKILL) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data directory.
    fn restart(&mut self) {
        self.kill();
        let start = Instant::now();
        // The port may linger for a moment.
        while !self.spawn() {
            assert!(start.elapsed() < START_DEADLINE, "redis-server did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a process, trying other ports when one is taken.
fn start_process(dir: &Path, name: &str, args: &[String]) -> Process {
    for _ in 0..20 {
        if let Some(process) = Process::start(dir, name, args, None) {
            return process;
        }
    }
    panic!("redis-server ({name}) did not start on any of 20 ports");
}

/// Settings every test server gets: data written at once, so a restart keeps every
/// acknowledged write; no snapshots.
fn server_args(extra: &[&str]) -> Vec<String> {
    ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// One standalone `redis-server`.
pub struct RedisServer {
    _dir: TempDir,
    process: Process,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
}

impl RedisServer {
    /// Starts a server (no password).
    pub fn start() -> Self {
        Self::start_bound(&[])
    }

    /// Starts a server that requires `password` (`requirepass`); see
    /// [`RedisServer::url_with_password`].
    pub fn start_with_password(password: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let process = start_process(dir.path(), "server", &server_args(&["--requirepass", password]));
        Self { _dir: dir, process, tls_port: None }
    }

    /// The store URL with a password in it.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}", self.port())
    }

    /// Starts a server that keeps nothing on disk (`appendonly no`, no save points), as
    /// a cache-style Redis: a restart empties it.
    pub fn start_without_persistence() -> Self {
        let dir = TempDir::new().unwrap();
        let process = start_process(dir.path(), "server", &server_args(&["--appendonly", "no"]));
        Self { _dir: dir, process, tls_port: None }
    }

    /// Starts a server listening on loopback and on the addresses `also` (the test's side
    /// of a link to its own network namespace, see `netns`).
    pub fn start_bound(also: &[&str]) -> Self {
        let dir = TempDir::new().unwrap();
        let bind = std::iter::once("127.0.0.1").chain(also.iter().copied()).collect::<Vec<_>>().join(" ");
        let process = start_process(dir.path(), "server", &server_args(&["--bind", &bind]));
        Self { _dir: dir, process, tls_port: None }
    }

    /// Starts a server that also takes TLS connections (without client certificates) with
    /// the certificate chain and key given as PEM; see [`RedisServer::tls_url`].
    pub fn start_tls(chain_pem: &str, key_pem: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let (chain, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
        std::fs::write(&chain, chain_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        for _ in 0..20 {
            let tls_port = pick_port();
            let args = server_args(&[
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cert-file",
                &chain.display().to_string(),
                "--tls-key-file",
                &key.display().to_string(),
                "--tls-auth-clients",
                "no",
            ]);
            if let Some(process) = Process::start(dir.path(), "server", &args, None) {
                return Self { _dir: dir, process, tls_port: Some(tls_port) };
            }
        }
        panic!("redis-server with TLS did not start on any of 20 ports");
    }

    /// The `rediss://` URL of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port.expect("started with start_tls"))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// The store URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Runs one command (inline form) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        command(self.port(), line).unwrap()
    }

    /// Runs one command given as its arguments; panics on an error reply.
    pub fn run(&self, args: &[&str]) -> String {
        let reply = run(self.port(), args).unwrap();
        assert!(!reply.starts_with('-'), "{args:?}: {reply}");
        reply
    }

    /// A string value (`GET`), if there is one.
    pub fn get(&self, key: &str) -> Option<String> {
        let reply = self.run(&["GET", key]);
        let (_, rest) = reply.split_once("\r\n")?;
        rest.strip_suffix("\r\n").map(str::to_owned)
    }

    /// Kills the server with SIGKILL (clients see the connection drop and refusals).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again, with the data it had.
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// The server's log.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A master, one replica and three sentinels watching them (quorum 2), which fail over
/// within a few seconds of the master going away.
pub struct RedisSentinel {
    _dir: TempDir,
    master: Process,
    replica: Option<Process>,
    sentinels: Vec<Process>,
}

/// The master name the sentinels watch.
pub const SENTINEL_MASTER: &str = "portico";

impl RedisSentinel {
    /// Starts the master, the replica and the sentinels, and waits until the sentinels
    /// know the replica and each other (so that a failover can happen).
    pub fn start() -> Self {
        Self::start_with(3)
    }

    /// A master and one sentinel (quorum 1), without a replica: enough to find the master
    /// through Sentinel, quick to start; no failover.
    pub fn start_small() -> Self {
        Self::start_with(1)
    }

    fn start_with(count: usize) -> Self {
        let dir = TempDir::new().unwrap();
        let master = start_process(dir.path(), "master", &server_args(&[]));
        let replica = if count > 1 {
            let replica_of = format!("127.0.0.1 {}", master.port);
            let replica_args: Vec<String> = server_args(&[])
                .into_iter()
                .chain(["--replicaof".to_owned(), replica_of, "--replica-announce-ip".into(), "127.0.0.1".into()])
                .collect();
            Some(start_process(dir.path(), "replica", &replica_args))
        } else {
            None
        };
        let quorum = count.div_ceil(2);
        let mut sentinels = Vec::new();
        for i in 0..count {
            let name = format!("sentinel{i}");
            let conf_dir = dir.path().join(&name);
            std::fs::create_dir_all(&conf_dir).unwrap();
            let conf = conf_dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {port} {quorum}\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel announce-ip 127.0.0.1\n",
                    port = master.port
                ),
            )
            .unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(start_process(dir.path(), &name, &args));
        }
        let setup = Self { _dir: dir, master, replica, sentinels };
        let start = Instant::now();
        let others = format!("*{}", count - 1);
        loop {
            let known = setup.sentinels.iter().all(|s| {
                setup.replica.as_ref().is_none_or(|replica| {
                    command(s.port, &format!("SENTINEL REPLICAS {SENTINEL_MASTER}"))
                        .is_ok_and(|r| r.contains(&replica.port.to_string()))
                }) && command(s.port, &format!("SENTINEL SENTINELS {SENTINEL_MASTER}"))
                    .is_ok_and(|r| r.starts_with(&others))
            });
            if known {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the sentinels never saw the replica and each other");
            std::thread::sleep(Duration::from_millis(100));
        }
        setup
    }

    /// The store URL: every sentinel, then the master name.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The port of the server the sentinels call master now.
    pub fn master_port(&self) -> u16 {
        for s in &self.sentinels {
            if let Ok(reply) = command(s.port, &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SENTINEL_MASTER}"))
                && let Some(port) = reply.lines().nth(4).and_then(|l| l.parse().ok())
            {
                return port;
            }
        }
        panic!("no sentinel names a master");
    }

    /// Runs one command on the current master.
    pub fn command(&self, line: &str) -> String {
        command(self.master_port(), line).unwrap()
    }

    /// Waits until the replica has everything the master has.
    pub fn wait_replicated(&self) {
        wait_replicated(self.master_port());
    }

    /// Kills the first master with SIGKILL; the sentinels promote the replica.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// The port of the server that was the replica at the start.
    pub fn replica_port(&self) -> Option<u16> {
        self.replica.as_ref().map(|r| r.port)
    }
}

/// A Redis Cluster of three masters (each with a replica when asked), slots spread over
/// the masters.
pub struct RedisCluster {
    _dir: TempDir,
    nodes: Vec<Process>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> Self {
        Self::start_with(0)
    }

    /// Three masters with `replicas` replicas each.
    pub fn start_with(replicas: usize) -> Self {
        for _ in 0..5 {
            if let Some(cluster) = Self::try_start(replicas) {
                return cluster;
            }
        }
        panic!("could not start a Redis Cluster");
    }

    fn try_start(replicas: usize) -> Option<Self> {
        let dir = TempDir::new().unwrap();
        let args = server_args(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-announce-ip",
            "127.0.0.1",
        ]);
        let nodes: Vec<Process> =
            (0..3 * (1 + replicas)).map(|i| start_process(dir.path(), &format!("node{i}"), &args)).collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is not installed (Debian package redis-tools)");
        if !created.success() {
            return None;
        }
        let cluster = Self { _dir: dir, nodes };
        let start = Instant::now();
        while !cluster.ready() {
            if start.elapsed() > Duration::from_secs(30) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(cluster)
    }

    /// Whether every running node says the cluster is fine, and knows every other.
    pub fn ready(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            command(n.port, "CLUSTER INFO").is_ok_and(|i| {
                i.contains("cluster_state:ok") && i.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
            })
        })
    }

    /// The store URL, naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes' ports (masters first, as created).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Waits until every master's replicas have everything it has.
    pub fn wait_replicated(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if command(node.port, "ROLE").is_ok_and(|r| r.contains("master")) {
                wait_replicated(node.port);
            }
        }
    }

    /// Which node (an index into [`RedisCluster::ports`]) is the master of `key`'s slot.
    pub fn master_of(&self, key: &str) -> usize {
        let reply = run(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).unwrap();
        let slot: u16 = reply.trim_start_matches(':').trim().parse().unwrap();
        let nodes = command(self.nodes[0].port, "CLUSTER NODES").unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((from, to)) => {
                    from.parse::<u16>().is_ok_and(|f| f <= slot) && to.parse::<u16>().is_ok_and(|t| slot <= t)
                }
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if owns {
                let port: u16 = fields[1]
                    .split(['@', ','])
                    .next()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }
}
