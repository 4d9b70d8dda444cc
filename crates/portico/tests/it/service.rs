//! The systemd unit (`deploy/systemd/portico.service`): `systemd-analyze verify` accepts it,
//! and `systemd-analyze security` scores its exposure at 1.5 or less (Debian's own
//! caddy.service scores 9.0, nginx.service 9.6, redis-server.service 1.2). This machine runs
//! no systemd as its first process, so the unit is checked, not started.

use std::process::Command;

use crate::BIN;

/// The unit as the package installs it, with the binary built here in place of
/// `/usr/bin/portico` (which `verify` checks is executable).
fn unit_here(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = include_str!("../../../../deploy/systemd/portico.service");
    assert!(unit.contains("ExecStart=/usr/bin/portico serve"), "the unit starts the installed binary");
    let path = dir.join("portico.service");
    std::fs::write(&path, unit.replace("/usr/bin/portico", BIN)).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_scores_a_low_exposure() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_here(dir.path());
    // `--man=no`: the man page the unit names comes with the package.
    let verify = Command::new("systemd-analyze").arg("verify").arg("--man=no").arg(&unit).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let security = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&unit).output().unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for portico.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(score <= 1.5, "exposure {score}, over 1.5:\n{report}");
    // What the score does not weigh but the service relies on: its user, its one capability,
    // a private state directory, readiness told to systemd.
    let unit = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "User=portico",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "StateDirectoryMode=0700",
        "Type=notify",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
}

/// `portico healthcheck` (the container image's `HEALTHCHECK`): 0 when the node's API
/// answers `/healthz`, 1 with the reason when nothing answers.
#[test]
fn the_healthcheck_command_asks_the_running_node() {
    let p = portico_test_support::Portico::start(BIN, &[]);
    let url = format!("http://{}/healthz", p.api);
    let ok = p.cli("healthcheck", &["--url", &url], "");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), format!("{url}: 200 OK"));
    // By default it asks `api.listen`.
    let default = p.cli("healthcheck", &["--api", &p.api.to_string()], "");
    assert!(default.status.success(), "{}", String::from_utf8_lossy(&default.stderr));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = p.cli("healthcheck", &["--url", &format!("http://{closed}/healthz")], "");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot be reached"), "{down:?}");
}

/// Under a watchdog (`WatchdogSec=` sets `WATCHDOG_USEC`), the process pings it at half the
/// interval; without one, never.
#[test]
fn the_watchdog_hears_from_a_live_process() {
    let env = ["env".to_owned(), "WATCHDOG_USEC=200000".to_owned()];
    let watched = portico_test_support::Portico::start_wrapped(BIN, "serve", &env, &[]);
    assert!(watched.wait_watchdog_pings(5, std::time::Duration::from_secs(5)), "5 pings at 100 ms");
    let unwatched = portico_test_support::Portico::start(BIN, &[]);
    assert!(!unwatched.wait_watchdog_pings(1, std::time::Duration::from_millis(500)));
}
