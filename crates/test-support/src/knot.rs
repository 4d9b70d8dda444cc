//! A real Knot DNS server (Debian's `knot`) for one test: authoritative for the zones it is
//! given, taking RFC 2136 updates signed with one TSIG key, on 127.0.0.1 at a random port.
//! Killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The TSIG key's name.
pub const KEY_NAME: &str = "portico-key.";
/// Its algorithm.
pub const ALGORITHM: &str = "hmac-sha256";
/// Its secret (base64).
pub const SECRET: &str = "cG9ydGljby10ZXN0LXRzaWctc2VjcmV0LTAxMjM0NTY3";

/// A running `knotd`.
pub struct Knot {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Knot {
    /// Starts Knot serving `zones`, each with a SOA, an NS and `ns` at 127.0.0.1.
    pub fn start(zones: &[&str]) -> Self {
        for _ in 0..10 {
            if let Some(knot) = Self::try_start(zones, 20_000 + fastrand::u16(0..10_000)) {
                return knot;
            }
        }
        panic!("knotd did not start (is the Debian package knot installed?)");
    }

    fn try_start(zones: &[&str], port: u16) -> Option<Self> {
        let dir = TempDir::new().unwrap();
        let path = dir.path().display().to_string();
        let mut conf = format!(
            "server:\n    rundir: \"{path}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{path}\"\n\
             key:\n  - id: {KEY_NAME}\n    algorithm: {ALGORITHM}\n    secret: {SECRET}\n\
             acl:\n  - id: update\n    key: {KEY_NAME}\n    action: update\n\
             log:\n  - target: stderr\n    any: info\n\
             zone:\n"
        );
        for zone in zones {
            conf.push_str(&format!(
                "  - domain: {zone}\n    storage: \"{path}\"\n    file: \"{zone}.zone\"\n    acl: update\n    zonefile-sync: -1\n"
            ));
            std::fs::write(
                dir.path().join(format!("{zone}.zone")),
                format!(
                    "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ NS ns.{zone}.\nns A 127.0.0.1\n"
                ),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
        let mut child = Command::new("knotd")
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("knotd is not installed (Debian package knot)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(Self { addr, child, _dir: dir });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// A provider record's fields for this server and `zones`.
    pub fn provider_fields(&self, zones: &str) -> Vec<(&'static str, String)> {
        vec![
            ("server", self.addr.to_string()),
            ("keyName", KEY_NAME.to_owned()),
            ("algorithm", ALGORITHM.to_owned()),
            ("secret", SECRET.to_owned()),
            ("zones", zones.to_owned()),
        ]
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
