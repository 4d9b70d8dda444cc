//! Zero-downtime binary upgrade (`portico upgrade`, `SIGUSR2`), and listening sockets
//! inherited from another process.
//!
//! The running process listens on a Unix socket in its data directory (0700, so only its
//! user reaches it) and starts the new binary with the same arguments and [`UPGRADE`]
//! naming that socket. The new process connects at start and receives every listening
//! socket with its listener's name (`SCM_RIGHTS`; only the process the old one started is
//! answered, by its credentials); both accept from the same sockets meanwhile, so no
//! connection is refused. Once the new process has started everything, it says `READY=1`
//! on that connection; the old process tells the service manager the new one is the main
//! process (`MAINPID=`) and drains. If the new process exits or is not ready within
//! [`READY_WITHIN`], the old one keeps serving and says why.
//!
//! systemd's socket activation hands sockets too (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `LISTEN_PID`): a `.socket` unit whose sockets are named after the listeners
//! (`FileDescriptorName=https`) works as it is.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, IoSlice, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// The variable naming the socket a new process gets its listening sockets from.
pub const UPGRADE: &str = "PORTICO_UPGRADE_SOCKET";
/// How long a new process has to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// `<data_dir>/portico.upgrade`: the binary `portico upgrade --binary` asks for.
pub const BINARY_FILE: &str = "portico.upgrade";
/// `<data_dir>/portico.upgrade-failed`: why the last upgrade failed, for `portico upgrade`.
pub const FAILED_FILE: &str = "portico.upgrade-failed";
/// At most this many sockets are handed over (a node has six listeners).
const MAX_SOCKETS: usize = 16;

/// Listening sockets this process was given, by listener name; each taken once. Keeps the
/// connection to the process that handed them over, to tell it when this one is ready.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Mutex<HashMap<String, OwnedFd>>,
    handed_by: Mutex<Option<UnixStream>>,
}

impl Inherited {
    /// The sockets the process being replaced ([`UPGRADE`]) or systemd (`LISTEN_FDS`)
    /// hands to this one. A handover that fails is an error: the old process keeps
    /// serving, and this one must not start on sockets of its own beside it.
    pub fn from_env() -> anyhow::Result<Self> {
        let inherited = Self::default();
        if let Some(path) = std::env::var_os(UPGRADE) {
            let (stream, sockets) = receive(Path::new(&path)).context("cannot take over the listening sockets")?;
            *inherited.handed_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
            inherited.sockets.lock().unwrap_or_else(|e| e.into_inner()).extend(sockets);
        }
        // systemd's socket activation (listenfd checks `LISTEN_PID`).
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let names: Vec<&str> = names.split(':').collect();
        let mut activated = listenfd::ListenFd::from_env();
        for index in 0..activated.len() {
            let name = names.get(index).copied().unwrap_or("unknown");
            if let Some(socket) = activated_socket(&mut activated, index) {
                tracing::info!(listener = name, "listening socket from systemd");
                inherited.sockets.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), socket);
            }
        }
        Ok(inherited)
    }

    /// The socket handed over for the listener `name`, if any.
    fn take(&self, name: &str) -> Option<OwnedFd> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    /// A TCP listener handed over for `name`, ready for tokio.
    pub fn tcp(&self, name: &str) -> std::io::Result<Option<tokio::net::TcpListener>> {
        let Some(fd) = self.take(name) else { return Ok(None) };
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener).map(Some)
    }

    /// A UDP socket handed over for `name` (HTTP/3's).
    pub fn udp(&self, name: &str) -> std::io::Result<Option<std::net::UdpSocket>> {
        let Some(fd) = self.take(name) else { return Ok(None) };
        let socket = std::net::UdpSocket::from(fd);
        socket.set_nonblocking(true)?;
        Ok(Some(socket))
    }

    /// A Unix listener handed over for `name`, ready for tokio.
    pub fn unix(&self, name: &str) -> std::io::Result<Option<tokio::net::UnixListener>> {
        let Some(fd) = self.take(name) else { return Ok(None) };
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(listener).map(Some)
    }

    /// Tells the process that handed the sockets over that this one serves now.
    pub fn ready(&self) {
        if let Some(mut stream) = self.handed_by.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stream.write_all(b"READY=1\n");
        }
        let left: Vec<String> = self.sockets.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        if !left.is_empty() {
            tracing::warn!(sockets = %left.join(","), "sockets handed over that no listener uses (closed)");
        }
    }
}

/// systemd's `index`th socket, as an owned descriptor.
fn activated_socket(activated: &mut listenfd::ListenFd, index: usize) -> Option<OwnedFd> {
    // listenfd hands out typed listeners; each is a socket this process now owns.
    if let Ok(Some(tcp)) = activated.take_tcp_listener(index) {
        return Some(tcp.into());
    }
    activated.take_unix_listener(index).ok().flatten().map(Into::into)
}

/// Connects to the old process's socket and receives the listening sockets.
fn receive(path: &Path) -> anyhow::Result<(UnixStream, Vec<(String, OwnedFd)>)> {
    let stream = UnixStream::connect(path).with_context(|| format!("cannot connect to {}", path.display()))?;
    stream.set_read_timeout(Some(READY_WITHIN))?;
    let mut names = [0u8; 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received =
        rustix::net::recvmsg(&stream, &mut [IoSliceMut::new(&mut names)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut sockets = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            sockets.extend(fds);
        }
    }
    let names = String::from_utf8_lossy(&names[..received.bytes]).into_owned();
    let names: Vec<&str> = names.split_whitespace().collect();
    anyhow::ensure!(names.len() == sockets.len(), "{} names for {} sockets", names.len(), sockets.len());
    for name in &names {
        tracing::info!(listener = name, "listening socket taken over");
    }
    Ok((stream, names.into_iter().map(str::to_owned).zip(sockets).collect()))
}

/// A copy of a listener's socket, kept to hand over.
pub fn keep(socket: &impl AsFd) -> std::io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(socket, 3)?)
}

/// Starts `binary` with this process's arguments, hands it `sockets` (copies, by listener
/// name), and waits until it is ready; its process id. The new process is stopped if it is
/// not ready within [`READY_WITHIN`].
pub async fn hand_over(data_dir: &Path, binary: &Path, sockets: Vec<(&'static str, OwnedFd)>) -> anyhow::Result<u32> {
    let path = data_dir.join(format!("portico-upgrade-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let removed = Removed(path.clone());
    let mut child = tokio::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(UPGRADE, &path)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id().context("the new process is gone already")?;
    let (names, copies): (Vec<&str>, Vec<OwnedFd>) = sockets.into_iter().unzip();
    let handing = tokio::task::spawn_blocking(move || send(&listener, pid, &names.join(" "), &copies));
    let handed = async {
        let stream = handing.await.context("the handover failed")??;
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stream);
            while reader.read_line(&mut line)? > 0 {
                if line.trim() == "READY=1" {
                    return Ok(true);
                }
                line.clear();
            }
            Ok::<_, std::io::Error>(false)
        })
        .await
        .context("the handover failed")?
        .context("cannot hear from the new process")
    };
    let outcome = tokio::select! {
        ready = handed => match ready? {
            true => Ok(pid),
            false => Err(anyhow::anyhow!("the new process ({}) stopped before it was ready (its log says why)", binary.display())),
        },
        status = child.wait() => {
            let status = status.context("cannot wait for the new process")?;
            Err(anyhow::anyhow!("the new process ({}) exited with {status} before it was ready (its log says why)", binary.display()))
        }
        () = tokio::time::sleep(READY_WITHIN) => {
            Err(anyhow::anyhow!("the new process ({}) was not ready within {READY_WITHIN:?}: stopped it", binary.display()))
        }
    };
    drop(removed);
    if outcome.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    outcome
}

/// Accepts the new process's connection (only from `pid`) and sends it the sockets with
/// their names; the connection, for its readiness.
fn send(listener: &UnixListener, pid: u32, names: &str, sockets: &[OwnedFd]) -> anyhow::Result<UnixStream> {
    listener.set_nonblocking(false)?;
    // Accepting gives up with the deadline (a new process that dies before it connects must
    // not hold this thread for ever).
    rustix::net::sockopt::set_socket_timeout(listener, rustix::net::sockopt::Timeout::Recv, Some(READY_WITHIN))?;
    let deadline = std::time::Instant::now() + READY_WITHIN;
    loop {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the new process did not ask for the sockets");
        let (stream, _) = listener.accept()?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        if u32::try_from(peer.pid.as_raw_nonzero().get()).ok() != Some(pid) {
            tracing::warn!(
                peer = peer.pid.as_raw_nonzero().get(),
                "a process other than the new one asked for the listening sockets; refused"
            );
            continue;
        }
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        anyhow::ensure!(control.push(SendAncillaryMessage::ScmRights(&fds)), "too many sockets to hand over");
        rustix::net::sendmsg(&stream, &[IoSlice::new(names.as_bytes())], &mut control, SendFlags::empty())?;
        return Ok(stream);
    }
}

/// Removes the handover socket's file when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The binary an upgrade starts: the one `portico upgrade --binary` named (the file is
/// removed once read), else `started_from`.
pub fn binary(data_dir: &Path, started_from: Option<&Path>) -> anyhow::Result<PathBuf> {
    let asked = data_dir.join(BINARY_FILE);
    match std::fs::read_to_string(&asked) {
        Ok(path) => {
            let _ = std::fs::remove_file(&asked);
            Ok(PathBuf::from(path.trim()))
        }
        Err(_) => started_from
            .map(Path::to_owned)
            .context("this process cannot tell which binary it runs (no /proc): give `portico upgrade --binary PATH`"),
    }
}
