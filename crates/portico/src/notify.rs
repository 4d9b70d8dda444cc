//! Telling a service manager how the process is doing, over systemd's notification protocol
//! (`sd_notify(3)`: datagrams of `KEY=VALUE` lines to the socket `NOTIFY_SOCKET` names):
//! `READY=1` once every listener is bound, `STATUS=` as the routing table changes,
//! `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) when a reload starts
//! and `READY=1` again when it is done, `STOPPING=1` when the drain starts. A `Type=notify` unit is started only when Portico
//! listens; `systemctl status` shows the status line.
//!
//! Two variables of Portico's own ride along (systemd ignores them; the `X_` prefix is the
//! protocol's advice for such): `X_PORTICO_LISTENERS=http=127.0.0.1:80 https=…` (each bound
//! address, by listener) and `X_PORTICO_ROUTING=generation=3 hosts=12` (the routing table,
//! as `/readyz` reports it), and after each reload `X_PORTICO_RELOAD=3 applied` (how many
//! reloads so far, and whether the last was `applied` or `refused`), so a supervisor or a test learns the ports it asked for as `:0`
//! and waits until a change is routed, without reading logs.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;

use portico_model::RoutingState;

/// The socket a service manager listens on.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: std::os::unix::net::SocketAddr,
}

/// A socket address as the protocol writes it: a path, or `@name` for an abstract socket.
fn socket_address(target: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => std::os::unix::net::SocketAddr::from_pathname(target),
    }
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; `None` when unset or unusable (said once in
    /// the log).
    pub fn from_env() -> Option<Self> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        let made = || -> std::io::Result<Self> {
            Ok(Self { socket: UnixDatagram::unbound()?, to: socket_address(&target.to_string_lossy())? })
        };
        made().map_err(|e| tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; not notifying")).ok()
    }

    /// This process hands over to process `pid` (an upgrade): the service manager follows
    /// that one from now on (systemd's `MAINPID=`).
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!("MAINPID={pid}\nSTATUS=handed over to process {pid}; draining"));
    }

    /// Every listener is bound: ready, with their addresses and the routing table.
    pub fn ready(&self, listeners: &[(&str, SocketAddr)], routing: RoutingState) {
        self.send(&ready_message(listeners, routing));
    }

    /// A reload has started.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration"));
    }

    /// A reload is done (the `count`th): ready again, with the listeners as they now are.
    pub fn reloaded(&self, listeners: &[(&str, SocketAddr)], routing: RoutingState, count: u64, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.send(&format!("{}\nX_PORTICO_RELOAD={count} {outcome}", ready_message(listeners, routing)));
    }

    /// The routing table changed.
    pub fn routing(&self, routing: RoutingState) {
        self.send(&format!("STATUS={}\n{}", status(routing), routing_line(routing)));
    }

    /// Still alive (systemd's watchdog).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The drain has started.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining connections");
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }
}

/// How often the service manager wants to hear `WATCHDOG=1` (`WATCHDOG_USEC`, for this
/// process: `WATCHDOG_PID` names it, or is unset, or it took over in an upgrade); `None`
/// when it does not.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|&u| u > 0)?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    let for_us = pid.is_none_or(|pid| pid == std::process::id().to_string())
        || std::env::var_os(crate::upgrade::UPGRADE).is_some();
    for_us.then(|| std::time::Duration::from_micros(usec))
}

/// `READY=1` with the status line, the listeners' addresses and the routing table.
fn ready_message(listeners: &[(&str, SocketAddr)], routing: RoutingState) -> String {
    let addresses: Vec<String> = listeners.iter().map(|(name, addr)| format!("{name}={addr}")).collect();
    format!(
        "READY=1\nSTATUS={}\nX_PORTICO_LISTENERS={}\n{}",
        status(routing),
        addresses.join(" "),
        routing_line(routing)
    )
}

fn status(routing: RoutingState) -> String {
    format!("routing {} host pattern(s)", routing.hosts)
}

fn routing_line(routing: RoutingState) -> String {
    format!("X_PORTICO_ROUTING=generation={} hosts={}", routing.generation, routing.hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_as_the_protocol_has_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let to = std::os::unix::net::SocketAddr::from_pathname(&path).unwrap();
        let notifier = Notifier { socket: UnixDatagram::unbound().unwrap(), to };
        let receive = || {
            let mut buf = [0u8; 1024];
            let n = manager.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        };
        let routing = RoutingState { generation: 2, hosts: 5 };
        notifier.ready(&[("http", "127.0.0.1:8080".parse().unwrap()), ("api", "[::1]:3000".parse().unwrap())], routing);
        assert_eq!(
            receive(),
            "READY=1\nSTATUS=routing 5 host pattern(s)\nX_PORTICO_LISTENERS=http=127.0.0.1:8080 api=[::1]:3000\n\
             X_PORTICO_ROUTING=generation=2 hosts=5"
        );
        notifier.routing(RoutingState { generation: 3, hosts: 4 });
        assert_eq!(receive(), "STATUS=routing 4 host pattern(s)\nX_PORTICO_ROUTING=generation=3 hosts=4");
        notifier.reloading();
        let reloading = receive();
        assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
        notifier.reloaded(&[("http", "127.0.0.1:8081".parse().unwrap())], routing, 1, false);
        assert_eq!(
            receive(),
            "READY=1\nSTATUS=routing 5 host pattern(s)\nX_PORTICO_LISTENERS=http=127.0.0.1:8081\n\
             X_PORTICO_ROUTING=generation=2 hosts=5\nX_PORTICO_RELOAD=1 refused"
        );
        notifier.stopping();
        assert!(receive().starts_with("STOPPING=1\n"));
    }
}
