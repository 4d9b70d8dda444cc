//! A program of the admin's that changes DNS records for Portico (lego's `exec`
//! convention, so existing scripts work): run as `PROGRAM present FQDN VALUE` and `PROGRAM
//! cleanup FQDN VALUE`, the name with its trailing dot; exit status 0 is done. The program is
//! one the configuration file names (`dns.exec.NAME = "/path/to/program"`): the API only
//! ever names it, so an API admin cannot run anything else on the node. It runs with a clean
//! environment (a plain `PATH` only), no input, and a deadline; what it prints is kept for
//! the issuance's last error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;

use crate::DnsError;

const KIND: &str = "Exec";

/// The `PATH` the program runs with.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of the program's output an error keeps.
const OUTPUT_KEPT: usize = 600;

/// A configured program.
#[derive(Debug)]
pub struct Exec {
    name: String,
    program: PathBuf,
    zones: Vec<String>,
    timeout: Duration,
}

/// Whether `name` can name a program in the configuration (`dns.exec.NAME`): letters,
/// digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Exec {
    /// The program `name` of `programs` (the configuration's `dns.exec`), for `zones`
    /// (comma-separated).
    pub fn new(
        name: &str,
        programs: &std::collections::BTreeMap<String, PathBuf>,
        zones: &str,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let Some(program) = programs.get(name) else {
            let known: Vec<&str> = programs.keys().map(String::as_str).collect();
            return Err(DnsError::Config(if known.is_empty() {
                format!(
                    "no program is named {name:?}: the configuration file names them (dns.exec.{name} = \"/path/to/program\")"
                )
            } else {
                format!("no program is named {name:?} (the configuration names: {})", known.join(", "))
            }));
        };
        let zones = crate::zone_list(KIND, zones)?;
        Ok(Self { name: name.to_owned(), program: program.clone(), zones, timeout })
    }

    /// Runs `PROGRAM action FQDN. VALUE`.
    async fn run(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let failed = |message: String| DnsError::Provider { provider: KIND, status: 0, message };
        let child = tokio::process::Command::new(&self.program)
            .args([action, &format!("{}.", fqdn.trim_end_matches('.')), value])
            .env_clear()
            .env("PATH", PATH)
            .current_dir(self.program.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("{} ({}) does not start: {e}", self.name, self.program.display())))?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(failed(format!("{} {action}: {e}", self.name))),
            // Dropped: the program is killed.
            Err(_) => return Err(failed(format!("{} {action} did not finish within {:?}", self.name, self.timeout))),
        };
        let printed = [output.stdout.as_slice(), output.stderr.as_slice()]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let printed: String = printed.chars().take(OUTPUT_KEPT).collect();
        if output.status.success() {
            tracing::debug!(program = self.name, action, fqdn, output = printed, "the DNS program succeeded");
            return Ok(());
        }
        let status = output.status.code().map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
        Err(failed(format!("{} {action} exited with {status}: {printed}", self.name)))
    }
}

#[async_trait]
impl crate::Hook for Exec {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn zones(&self) -> &[String] {
        &self.zones
    }

    async fn act(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        self.run(action, fqdn, value).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{DnsProvider, Zone};

    /// A program named `name` in `dir` with the shell `body`.
    fn program(dir: &Path, name: &str, body: &str) -> (String, PathBuf) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (name.to_owned(), path)
    }

    #[tokio::test]
    async fn runs_as_lego_does_with_a_clean_environment_a_deadline_and_its_output_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let programs: BTreeMap<String, PathBuf> = [
            program(dir.path(), "ok", &format!("echo \"$@\" >> {0}; env >> {0}", log.display())),
            program(dir.path(), "refuses", "echo 'zone example.com: not authorized' >&2; exit 3"),
            program(dir.path(), "slow", "sleep 30"),
        ]
        .into_iter()
        .collect();
        let zone = Zone { id: "example.com".into(), name: "example.com".into() };
        let timeout = Duration::from_millis(500);

        let ok = Exec::new("ok", &programs, "example.com", timeout).unwrap();
        let id = ok.create_txt(&zone, "_acme-challenge.example.com", "v4lue").await.unwrap();
        ok.delete(&zone, &id).await.unwrap();
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.contains("present _acme-challenge.example.com. v4lue\n"), "{calls}");
        assert!(calls.contains("cleanup _acme-challenge.example.com. v4lue\n"), "{calls}");
        // The test runner's environment (cargo's and nextest's variables, HOME) is not passed.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")), "the runner sets some");
        assert!(!calls.contains("CARGO") && !calls.contains("HOME="), "a clean environment: {calls}");
        assert!(calls.contains(&format!("PATH={PATH}")), "{calls}");

        let e = Exec::new("refuses", &programs, "example.com", timeout).unwrap();
        let e = e.create_txt(&zone, "_acme-challenge.example.com", "v").await.unwrap_err().to_string();
        assert!(e.contains("status 3") && e.contains("zone example.com: not authorized"), "{e}");

        let started = std::time::Instant::now();
        let slow = Exec::new("slow", &programs, "example.com", timeout).unwrap();
        let e = slow.create_txt(&zone, "_acme-challenge.example.com", "v").await.unwrap_err().to_string();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "killed at its deadline");

        let e = Exec::new("/bin/sh", &programs, "example.com", timeout).unwrap_err().to_string();
        assert!(e.contains("no program is named \"/bin/sh\"") && e.contains("ok, refuses, slow"), "{e}");
        assert!(Exec::new("ok", &programs, " ", timeout).is_err(), "zones are needed");
        assert!(valid_name("dns-hook_2") && !valid_name("../x") && !valid_name(""));
    }
}
