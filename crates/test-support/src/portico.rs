//! The `portico` binary under test, run as a real child process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The first admin's password in instances started by [`Portico::start`].
pub const ADMIN_PASSWORD: &str = "test-admin-password-1";

/// A running `portico serve` (or `proxy`, or `api`) with its data directory. Killed on drop.
pub struct Portico {
    bin: PathBuf,
    dir: Arc<TempDir>,
    child: Option<Child>,
    /// The plain HTTP listener (the unspecified address `0.0.0.0:0` in `portico api`).
    pub http: SocketAddr,
    /// The HTTPS listener (the unspecified address `0.0.0.0:0` in `portico api`).
    pub https: SocketAddr,
    /// The management API (the unspecified address `0.0.0.0:0` in `portico proxy`).
    pub api: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    output: Arc<Mutex<Vec<String>>>,
    notified: Arc<Notified>,
    /// Holds the notification socket.
    _notify_dir: TempDir,
}

/// What the process has told its service manager (this harness, through `NOTIFY_SOCKET`):
/// readiness, its listeners' addresses, and the routing table it routes by.
#[derive(Default)]
struct Notified {
    state: Mutex<ServiceState>,
    changed: Condvar,
    /// Set when the [`Portico`] is dropped: the listening thread ends.
    closed: AtomicBool,
}

#[derive(Default, Clone)]
struct ServiceState {
    ready: bool,
    listeners: HashMap<String, SocketAddr>,
    /// (generation, host patterns) of the routing table.
    routing: (u64, u64),
    /// Reloads done so far, and whether the last was applied.
    reloads: (u64, bool),
    /// The main process, once another took over (`MAINPID=`, an upgrade).
    main_pid: Option<u32>,
    /// `WATCHDOG=1` pings heard.
    watchdog_pings: u64,
}

impl Notified {
    /// Receives the process's notifications until the harness is done with it.
    fn listen(self: Arc<Self>, socket: UnixDatagram) {
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while !self.closed.load(Ordering::SeqCst) {
            let Ok(n) = socket.recv(&mut buf) else { continue };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut state = self.state.lock().unwrap();
            for line in text.lines() {
                let Some((key, value)) = line.split_once('=') else { continue };
                match key {
                    "READY" => state.ready = value == "1",
                    "MAINPID" => state.main_pid = value.parse().ok(),
                    "WATCHDOG" if value == "1" => state.watchdog_pings += 1,
                    "X_PORTICO_RELOAD" => {
                        let (count, outcome) = value.split_once(' ').unwrap_or((value, ""));
                        state.reloads = (count.parse().unwrap_or(0), outcome == "applied");
                    }
                    "X_PORTICO_LISTENERS" => {
                        state.listeners.clear();
                        for entry in value.split_whitespace() {
                            if let Some((name, addr)) = entry.split_once('=') {
                                state.listeners.insert(name.to_owned(), addr.parse().unwrap());
                            }
                        }
                    }
                    "X_PORTICO_ROUTING" => {
                        let number = |key: &str| {
                            value.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.parse::<u64>().ok())
                        };
                        state.routing = (number("generation=").unwrap_or(0), number("hosts=").unwrap_or(0));
                    }
                    _ => {}
                }
            }
            drop(state);
            self.changed.notify_all();
        }
    }

    /// Waits until `done` holds of the state, up to `deadline`, or until `gone` says to
    /// stop waiting; the state then.
    fn wait(
        &self,
        deadline: Duration,
        mut done: impl FnMut(&ServiceState) -> bool,
        mut gone: impl FnMut() -> bool,
    ) -> Result<ServiceState, ServiceState> {
        let until = Instant::now() + deadline;
        let mut state = self.state.lock().unwrap();
        loop {
            if done(&state) {
                return Ok(state.clone());
            }
            let now = Instant::now();
            if now >= until || gone() {
                return Err(state.clone());
            }
            // Woken by every notification; the slice bounds how late an exit is noticed.
            let slice = (until - now).min(Duration::from_millis(100));
            state = self.changed.wait_timeout(state, slice).unwrap().0;
        }
    }
}

impl Portico {
    /// Starts `bin serve` on loopback with JSON logs and the given `--set key=value` options,
    /// and waits until it listens.
    pub fn start(bin: impl AsRef<Path>, settings: &[&str]) -> Self {
        let dir = TempDir::new().unwrap();
        Self::start_in(bin, dir, settings)
    }

    /// Like [`Portico::start`], in an existing data directory (to restart on the same data).
    pub fn start_in(bin: impl AsRef<Path>, dir: TempDir, settings: &[&str]) -> Self {
        Self::start_with(bin, dir, settings, Some(ADMIN_PASSWORD))
    }

    /// Like [`Portico::start_in`], choosing the first admin's password (`None`: Portico makes
    /// up one).
    pub fn start_with(bin: impl AsRef<Path>, dir: TempDir, settings: &[&str], admin_password: Option<&str>) -> Self {
        Self::spawn(bin.as_ref(), "serve", Arc::new(dir), settings, admin_password).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Portico::start`], but a failure to start (a fixed port already taken, say) is
    /// an error for the caller to handle.
    pub fn try_start(bin: impl AsRef<Path>, settings: &[&str]) -> Result<Self, String> {
        Self::spawn(bin.as_ref(), "serve", Arc::new(TempDir::new().unwrap()), settings, Some(ADMIN_PASSWORD))
    }

    /// Like [`Portico::start`], under an open-file limit of `limit` (soft and hard, set with
    /// util-linux's `prlimit`), as on a host with a low `ulimit -n`.
    pub fn start_with_fd_limit(bin: impl AsRef<Path>, limit: u64, settings: &[&str]) -> Self {
        let dir = TempDir::new().unwrap();
        Self::start_limited(bin, dir, &[&format!("--nofile={limit}:{limit}")], settings)
    }

    /// Like [`Portico::start_in`], under resource limits given as `prlimit` options
    /// (`--fsize=BYTES`: writes past that size fail, as on a full disk).
    pub fn start_limited(bin: impl AsRef<Path>, dir: TempDir, limits: &[&str], settings: &[&str]) -> Self {
        // prlimit sets the limits and then executes Portico, which keeps its process id.
        let wrapper: Vec<String> =
            std::iter::once("prlimit").chain(limits.iter().copied()).chain(["--"]).map(str::to_owned).collect();
        Self::spawn_wrapped(bin.as_ref(), "serve", Arc::new(dir), settings, Some(ADMIN_PASSWORD), &wrapper)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `portico ROLE` in a new data directory through `wrapper` (a command and its
    /// arguments that then run Portico: `ip netns exec NAME`).
    pub fn start_wrapped(bin: impl AsRef<Path>, role: &str, wrapper: &[String], settings: &[&str]) -> Self {
        Self::spawn_wrapped(
            bin.as_ref(),
            role,
            Arc::new(TempDir::new().unwrap()),
            settings,
            Some(ADMIN_PASSWORD),
            wrapper,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Changes a resource limit of the running process (`prlimit --pid` options, such as
    /// `--fsize=unlimited`).
    pub fn set_limit(&self, limit: &str) {
        let status = Command::new("prlimit").arg("--pid").arg(self.pid().to_string()).arg(limit).status().unwrap();
        assert!(status.success(), "prlimit {limit}");
    }

    /// Starts `portico ROLE` (`serve`, `proxy` or `api`) in a new data directory.
    pub fn start_role(bin: impl AsRef<Path>, role: &str, settings: &[&str]) -> Self {
        Self::spawn(bin.as_ref(), role, Arc::new(TempDir::new().unwrap()), settings, Some(ADMIN_PASSWORD))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `portico ROLE` on this instance's data directory.
    pub fn start_beside(&self, role: &str, settings: &[&str]) -> Self {
        Self::spawn(&self.bin, role, self.dir.clone(), settings, Some(ADMIN_PASSWORD)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(
        bin: &Path,
        role: &str,
        dir: Arc<TempDir>,
        settings: &[&str],
        admin_password: Option<&str>,
    ) -> Result<Self, String> {
        Self::spawn_wrapped(bin, role, dir, settings, admin_password, &[])
    }

    fn spawn_wrapped(
        bin: &Path,
        role: &str,
        dir: Arc<TempDir>,
        settings: &[&str],
        admin_password: Option<&str>,
        wrapper: &[String],
    ) -> Result<Self, String> {
        let bin = bin.to_owned();
        let mut command = match wrapper.split_first() {
            None => Command::new(&bin),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&bin);
                command
            }
        };
        // Keys, not flags: each role takes only its own listeners' flags.
        command.arg(role).arg("--data-dir").arg(dir.path()).args([
            "--set",
            "proxy.http=\"127.0.0.1:0\"",
            "--set",
            "log.format=\"json\"",
            "--set",
            "proxy.https=\"127.0.0.1:0\"",
            "--set",
            "api.listen=\"127.0.0.1:0\"",
            // Never reach a public CA from a test: the internal CA unless a test points
            // `tls.acme_directory` at its own Pebble (later settings win).
            "--set",
            "tls.issuer=\"internal\"",
        ]);
        for s in settings {
            command.args(["--set", s]);
        }
        // Readiness, listeners and routing, as a service manager hears them.
        let notify_dir = TempDir::new().unwrap();
        let notify_path = notify_dir.path().join("notify");
        let notify_socket = UnixDatagram::bind(&notify_path).unwrap();
        let notified = Arc::new(Notified::default());
        std::thread::spawn({
            let notified = notified.clone();
            move || notified.listen(notify_socket)
        });
        command.env("NOTIFY_SOCKET", &notify_path);
        command.env_remove("PORTICO_CONFIG").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        match admin_password {
            Some(password) => command.env("PORTICO_ADMIN_PASSWORD", password),
            None => command.env_remove("PORTICO_ADMIN_PASSWORD"),
        };
        let mut child = command.spawn().expect("portico starts");
        let stderr = child.stderr.take().unwrap();
        // Standard output: the access log in the `common` and `json` formats.
        let stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    // Not a log line: an error printed before exiting, say.
                    eprintln!("portico: {line}");
                    sink.lock().unwrap().push(serde_json::json!({ "raw": line }));
                    continue;
                };
                sink.lock().unwrap().push(value);
            }
        });
        let started =
            notified.wait(Duration::from_secs(20), |state| state.ready, || child.try_wait().ok().flatten().is_some());
        let Ok(ServiceState { listeners, .. }) = started else {
            let _ = child.kill();
            let _ = child.wait();
            notified.closed.store(true, Ordering::SeqCst);
            return Err(format!("portico did not become ready; log: {:?}", logs.lock().unwrap()));
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let http = listeners.get("http").copied().unwrap_or(unspecified);
        let https = listeners.get("https").copied().unwrap_or(unspecified);
        let api = listeners.get("api").copied().unwrap_or(unspecified);
        Ok(Self {
            bin,
            dir,
            child: Some(child),
            http,
            https,
            api,
            listeners,
            logs,
            output,
            notified,
            _notify_dir: notify_dir,
        })
    }

    /// The lines written to standard output so far (the access log in the `common` and
    /// `json` formats).
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// The address of a listener this process announced (`http`, `https`, `api`).
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    /// The address a listener is bound to now, as the process last said (after a reload
    /// moved it, say).
    pub fn listening(&self, name: &str) -> Option<SocketAddr> {
        self.notified.state.lock().unwrap().listeners.get(name).copied()
    }

    /// Runs `portico reload` on this instance's data directory (it signals the process
    /// SIGHUP) and waits until the process says the reload is done; whether it was applied.
    pub fn reload(&self) -> bool {
        self.reload_by(|| {
            let out = self.cli("reload", &[], "");
            assert!(out.status.success(), "portico reload: {}", String::from_utf8_lossy(&out.stderr));
        })
    }

    /// Sends the process SIGHUP and waits until it says the reload is done; whether it was
    /// applied.
    pub fn hangup(&self) -> bool {
        self.reload_by(|| {
            let pid = self.child.as_ref().expect("running").id();
            let sent = Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
            assert!(sent.success());
        })
    }

    fn reload_by(&self, ask: impl FnOnce()) -> bool {
        let before = self.notified.state.lock().unwrap().reloads.0;
        ask();
        match self.notified.wait(Duration::from_secs(10), |state| state.reloads.0 > before, || false) {
            Ok(state) => state.reloads.1,
            Err(_) => panic!("no reload done within 10 s; log: {:?}", self.logs()),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `portico host ARGS…` on this instance's data directory.
    pub fn host(&self, args: &[&str]) -> Output {
        self.cli("host", args, "")
    }

    /// Runs `portico COMMAND ARGS…` on this instance's data directory with `stdin` as input.
    pub fn cli(&self, command: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .arg(command)
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env_remove("PORTICO_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Adds a host through the CLI and asserts it worked.
    pub fn add_host(&self, name: &str, target: SocketAddr, flags: &[&str]) {
        let port = target.port().to_string();
        let ip = target.ip().to_string();
        let mut args = vec!["add", name, "--ip", &ip, "--port", &port];
        args.extend_from_slice(flags);
        let out = self.host(&args);
        assert!(out.status.success(), "host add {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_routed();
    }

    /// Waits until the server routes by a table with every host now in the store (as many
    /// patterns as `host ls` lists), as it tells its service manager.
    pub fn wait_routed(&self) {
        let listed = self.host(&["ls", "--json"]);
        assert!(listed.status.success(), "host ls: {}", String::from_utf8_lossy(&listed.stderr));
        let count = String::from_utf8_lossy(&listed.stdout).lines().count() as u64;
        if let Err(state) = self.notified.wait(Duration::from_secs(10), |state| state.routing.1 == count, || false) {
            let log: Vec<String> = self.logs().iter().map(|l| l.to_string()).collect();
            panic!("portico did not pick up {count} hosts (it routes {:?}); its log: {log:#?}", state.routing);
        }
    }

    /// Runs `write` (an API call or command that changes hosts) and waits until this process
    /// routes by a newer table than it did before; what `write` gave. The table must change:
    /// a write that leaves every host as it was never returns (the wait panics).
    pub async fn routing_after<T>(&self, write: impl Future<Output = T>) -> T {
        let before = self.notified.state.lock().unwrap().routing.0;
        let written = write.await;
        let notified = self.notified.clone();
        let deadline = Duration::from_secs(10);
        let waited =
            tokio::task::spawn_blocking(move || notified.wait(deadline, |state| state.routing.0 > before, || false))
                .await
                .unwrap();
        if let Err(state) = waited {
            panic!("no routing table after generation {before} within {deadline:?}: {:?}", state.routing);
        }
        written
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// The first log line with this message, waiting up to five seconds for it.
    pub async fn logged(&self, message: &str) -> serde_json::Value {
        crate::eventually(Duration::from_secs(5), message, || {
            let logs = self.logs();
            async move { logs.into_iter().find(|l| l["fields"]["message"] == message) }
        })
        .await
    }

    /// The access-log entries' fields so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.logs().into_iter().filter(|l| l["target"] == "portico::access").map(|l| l["fields"].clone()).collect()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Peak resident memory of the process so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// Resident memory of the process now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    /// Waits for the process to exit, up to `deadline`; returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let start = std::time::Instant::now();
        while start.elapsed() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("portico did not exit within {deadline:?}");
    }

    /// Stops the process (SIGKILL) and gives back the data directory (once no other process
    /// started beside it holds it).
    pub fn into_data_dir(mut self) -> TempDir {
        self.kill();
        let dir = std::mem::replace(&mut self.dir, Arc::new(TempDir::new().unwrap()));
        Arc::try_unwrap(dir).unwrap_or_else(|_| panic!("another process still shares the data directory"))
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A process that took over in an upgrade is no child of this harness.
        if let Some(pid) = self.main_pid().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    /// Waits until the process has pinged systemd's watchdog `count` times, within
    /// `deadline`; whether it did.
    pub fn wait_watchdog_pings(&self, count: u64, deadline: Duration) -> bool {
        self.notified.wait(deadline, |state| state.watchdog_pings >= count, || false).is_ok()
    }

    /// The process serving now: the one started, or the one an upgrade handed over to.
    pub fn main_pid(&self) -> Option<u32> {
        self.notified.state.lock().unwrap().main_pid.or_else(|| self.child.as_ref().map(|c| c.id()))
    }

    /// Waits until the process serving now has said, through `MAINPID=`, that `pid` took
    /// over, within `deadline`.
    pub fn wait_main_pid(&self, deadline: Duration) -> Option<u32> {
        self.notified.wait(deadline, |state| state.main_pid.is_some(), || false).ok()?.main_pid
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        self.notified.closed.store(true, Ordering::SeqCst);
        self.kill();
    }
}
