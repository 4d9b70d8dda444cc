//! Errors that say what to do, as a new operator meets them: a Redis that wants a password,
//! a store that is not this user's, a store URL pointing nowhere, a port below 1024, a
//! password typed at a terminal, `--help`, and the command line's forms.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use portico_test_support::{Backend, Portico, RedisServer};

use crate::BIN;

fn portico(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("PORTICO_CONFIG").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `portico ARGS…` as the unprivileged user `nobody` (the suite runs as root).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(args)
        .env_remove("PORTICO_CONFIG")
        .output()
        .unwrap()
}

/// `portico host add a.example … ARGS…`: a host in the store ARGS name.
fn add_host(args: &[&str]) -> Output {
    let mut all = vec!["host", "add", "a.example", "--ip", "127.0.0.1", "--port", "80"];
    all.extend_from_slice(args);
    portico(&all)
}

/// A directory anyone may write in (for `nobody`).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn redis_errors_name_the_url_once_without_its_password_and_say_how_to_give_one() {
    let redis = RedisServer::start_with_password("s3cret-pass");
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let asked = portico(&["host", "ls", "--store", &url]);
    let said = stderr(&asked);
    assert!(said.contains(&format!("cannot reach the store at {url}: it asks for a password")), "{said}");
    assert!(said.contains("redis://:PASSWORD@host:6379"), "{said}");
    assert_eq!(said.matches("127.0.0.1").count(), 1, "the URL once: {said}");
    assert_eq!(said.matches("NOAUTH").count(), 0, "{said}");

    let wrong = stderr(&portico(&["host", "ls", "--store", &redis.url_with_password("not-it")]));
    assert!(wrong.contains("it refuses the user or password in the URL"), "{wrong}");
    assert!(!wrong.contains("not-it"), "no password in the message: {wrong}");
    let right = portico(&["host", "ls", "--store", &redis.url_with_password("s3cret-pass")]);
    assert!(right.status.success(), "{}", stderr(&right));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let refused = stderr(&portico(&["host", "ls", "--store", &format!("redis://:pw@{closed}")]));
    assert_eq!(
        refused.trim(),
        format!(
            "error: cannot open the store: cannot reach the store at redis://***@{closed}: connection refused: is Redis running, and listening on that address?"
        )
    );
}

#[test]
fn a_store_that_is_not_this_users_says_permission_denied_naming_the_path_and_user() {
    let dir = open_dir();
    let private = dir.path().join("private");
    let added = add_host(&["--data-dir", private.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o700);
    let listed = as_nobody(&["host", "ls", "--data-dir", private.to_str().unwrap()]);
    let said = stderr(&listed);
    assert!(!listed.status.success());
    assert!(
        said.contains(&format!("permission denied on {}", private.join("portico.redb").display()))
            && said.contains("for user nobody (uid 65534)"),
        "{said}"
    );
    assert!(!said.contains("no store"), "{said}");
}

#[test]
fn a_store_url_in_a_directory_that_does_not_exist_is_refused_and_nothing_is_made() {
    let dir = tempfile::TempDir::new().unwrap();
    let nowhere = dir.path().join("typo").join("portico.redb");
    let url = format!("redb://{}", nowhere.display());
    let data = dir.path().join("data");
    let out = add_host(&["--store", &url, "--data-dir", data.to_str().unwrap()]);
    let said = stderr(&out);
    assert!(!out.status.success());
    assert!(
        said.contains(&format!("the store's directory {} does not exist", dir.path().join("typo").display())),
        "{said}"
    );
    assert!(!dir.path().join("typo").exists(), "no directory made");
    // The data directory itself is made, as `serve` and `host add` always did.
    let made = add_host(&["--data-dir", data.to_str().unwrap()]);
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(data.join("portico.redb").exists());
}

#[test]
fn a_port_below_1024_without_the_capability_says_how() {
    let dir = open_dir();
    let data = dir.path().join("data");
    let out = as_nobody(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--http",
        "127.0.0.1:81",
        "--https",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
    ]);
    let said = stderr(&out);
    assert!(!out.status.success());
    assert!(said.contains("cannot listen on 127.0.0.1:81 (proxy.http)"), "{said}");
    assert!(said.contains("CAP_NET_BIND_SERVICE") && said.contains("setcap") && said.contains("above 1023"), "{said}");
}

/// At a terminal, `user add` asks for the password twice with the echo off; the password
/// never shows on the terminal. (Driven through a pseudo-terminal by Python's `pty`.)
#[tokio::test]
async fn user_add_at_a_terminal_asks_without_echo() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let driver = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
def until(text):
    global seen
    while text not in seen:
        chunk = os.read(fd, 1024)
        if not chunk:
            raise SystemExit("ended before " + text.decode())
        seen += chunk
until(b"Password: ")
os.write(fd, b"typed-secret-1\n")
until(b"again: ")
os.write(fd, b"typed-secret-1\n")
try:
    while True:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        seen += chunk
except OSError:
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .args(["-c", driver, BIN, "user", "add", "frank", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{terminal} {}", stderr(&out));
    assert!(terminal.contains("Password: ") && terminal.contains("The same password again: "), "{terminal}");
    assert!(!terminal.contains("typed-secret-1"), "the password was echoed: {terminal}");
    let listed = portico(&["user", "ls", "--data-dir", data.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("frank"), "{listed:?}");
}

/// `--help` shows the flags a command uses: no listener flags where nothing listens, and
/// each role its own.
#[test]
fn help_shows_only_the_flags_a_command_uses() {
    let help = |args: &[&str]| String::from_utf8_lossy(&portico(args).stdout).into_owned();
    let host_ls = help(&["host", "ls", "--help"]);
    assert!(host_ls.contains("--data-dir") && host_ls.contains("--store"), "{host_ls}");
    for flag in ["--http", "--https", "--api"] {
        assert!(!host_ls.contains(flag), "host ls --help shows {flag}: {host_ls}");
    }
    let proxy = help(&["proxy", "--help"]);
    assert!(proxy.contains("--http") && proxy.contains("--https") && !proxy.contains("--api"), "{proxy}");
    let api = help(&["api", "--help"]);
    assert!(api.contains("--api") && !api.contains("--http"), "{api}");
    let serve = help(&["serve", "--help"]);
    assert!(serve.contains("--http") && serve.contains("--https") && serve.contains("--api"), "{serve}");
    assert!(!portico(&["host", "ls", "--http", "127.0.0.1:1"]).status.success(), "refused where it means nothing");
}

/// `--forcessl` and `--targetssl` take the same form on `add` and `update`.
#[tokio::test]
async fn forcessl_takes_one_form_on_add_and_update() {
    let backend = Backend::start("app").await;
    let p = Portico::start(BIN, &[]);
    let port = backend.addr.port().to_string();
    let json = |name: &str| -> serde_json::Value {
        let listed = p.host(&["ls", "--json"]);
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|h| h["host"] == name)
            .unwrap()
    };
    let cases = [
        ("a", &["--forcessl"][..], true),
        ("b", &["--forcessl=true"], true),
        ("c", &["--forcessl=false"], false),
        ("d", &[], false),
    ];
    for (name, flags, expected) in cases {
        let name = format!("{name}.example");
        let mut args = vec!["add", &name, "--ip", "127.0.0.1", "--port", &port];
        args.extend_from_slice(flags);
        let out = p.host(&args);
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        assert_eq!(json(&name)["forcessl"], expected, "add {flags:?}");
    }
    for (flag, expected) in
        [("--forcessl=true", true), ("--forcessl=false", false), ("--forcessl", true), ("--targetssl", true)]
    {
        let out = p.host(&["update", "d.example", flag]);
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
        let field = if flag.starts_with("--forcessl") { "forcessl" } else { "targetssl" };
        assert_eq!(json("d.example")[field], expected, "update {flag}");
    }
}
