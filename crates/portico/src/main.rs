//! The `portico` binary: command line, configuration, and the wiring of roles.
//!
//! `portico serve` runs everything in one process; `portico host …` and `portico user …`
//! manage hosts and users directly in the store, also while `serve` runs on the same data
//! directory.

mod certs_cmd;
mod config;
mod hosts;
mod logging;
mod notify;
mod serve;
mod store_cmd;
mod streams_cmd;
mod upgrade;
mod users;

/// mimalloc: per-request allocations (header maps, buffers) cost less than with glibc's
/// allocator. Measured at saturation, keep-alive with a 6-byte body, one worker: 15.8 → 15.4
/// CPU µs per request (3 alternating runs each).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Sources};
use crate::store_cmd::StoreCommand;

/// A self-hosted reverse proxy with automatic HTTPS.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: the proxy and the API.
    Serve(RoleArgs<ProxyListeners, ApiListener>),
    /// Run the data plane alone: the proxy's listeners (many may share one store).
    Proxy(RoleArgs<ProxyListeners, NoListener>),
    /// Run the control plane alone: the API (many may share one store).
    Api(RoleArgs<NoListener, ApiListener>),
    /// Make the running process (found through `<data_dir>/portico.pid`) read its
    /// configuration again and apply it without dropping a connection: sends it SIGHUP.
    /// The outcome is in its log (and, under systemd, `systemctl status`).
    Reload(ConfigArgs),
    /// Replace the running process (found through `<data_dir>/portico.pid`) with a new one,
    /// without dropping a connection: sends it SIGUSR2; it starts the new binary, hands it
    /// the listening sockets, and drains once the new one serves. Waits for the outcome.
    Upgrade {
        /// The binary to run (default: the one the process was started from, which a
        /// package upgrade replaces).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Manage proxied hosts in the store.
    Host {
        #[command(subcommand)]
        command: Box<hosts::HostCommand>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Manage users of the API in the store.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Streams: TCP and UDP ports forwarded to targets, in the store.
    Stream {
        #[command(subcommand)]
        command: streams_cmd::StreamCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Certificates brought by an admin (uploaded), served instead of automatic ones.
    Cert {
        #[command(subcommand)]
        command: certs_cmd::CertCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The internal CA (`tls.issuer = "internal"`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Copy everything (hosts, users, tokens, DNS providers, domains, certificates and their
    /// state, the ACME account, the internal CA) from one store to another: embedded to
    /// Redis or back. Stop the nodes writing to the source first.
    Migrate {
        /// The store to copy from (`redb://…`, `redis://…`, …); it must exist.
        #[arg(long)]
        from: String,
        /// The store to copy into; it must be empty unless `--force`.
        #[arg(long)]
        to: String,
        /// Copy into a store that holds something already (same keys are overwritten).
        #[arg(long)]
        force: bool,
    },
    /// Print the version.
    Version,
    /// Ask a running node whether it is alive: GET its API's `/healthz` (or URL); exit 0
    /// on a 2xx answer within 5 seconds, 1 otherwise (a container's `HEALTHCHECK`).
    Healthcheck {
        /// What to ask (default: `http://<api.listen>/healthz`, on loopback when it listens
        /// on every address).
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        config: RoleArgs<NoListener, ApiListener>,
    },
    /// Print a shell completion script: `portico completions bash > /etc/bash_completion.d/portico`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), as packages install it.
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the internal CA's root certificate (PEM), for clients to trust. Makes the root
    /// on first use.
    Export,
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTICO_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (the `data_dir` key).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Store URL (the `store.url` key).
    #[arg(long, global = true)]
    store: Option<String>,
    /// Sets any configuration key: `--set proxy.upstream_timeout=5s`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
}

/// A role's command line: where the configuration comes from, and the flags of the
/// listeners the role has (so `--help` shows only those).
#[derive(Debug, Args)]
struct RoleArgs<P: Args, A: Args> {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    proxy: P,
    #[command(flatten)]
    api: A,
}

/// The proxy's listeners (`serve`, `proxy`).
#[derive(Debug, Args)]
struct ProxyListeners {
    /// Address of the plain HTTP listener (the `proxy.http` key).
    #[arg(long)]
    http: Option<String>,
    /// Address of the HTTPS listener (the `proxy.https` key).
    #[arg(long)]
    https: Option<String>,
}

/// The API's listener (`serve`, `api`).
#[derive(Debug, Args)]
struct ApiListener {
    /// Address of the API's listener (the `api.listen` key).
    #[arg(long)]
    api: Option<String>,
}

/// No listener flags.
#[derive(Debug, Args)]
struct NoListener {}

/// Listener flags as configuration keys.
trait ListenerFlags {
    fn keys(&self) -> Vec<(&'static str, Option<String>)>;
}

impl ListenerFlags for ProxyListeners {
    fn keys(&self) -> Vec<(&'static str, Option<String>)> {
        vec![("proxy.http", self.http.clone()), ("proxy.https", self.https.clone())]
    }
}

impl ListenerFlags for ApiListener {
    fn keys(&self) -> Vec<(&'static str, Option<String>)> {
        vec![("api.listen", self.api.clone())]
    }
}

impl ListenerFlags for NoListener {
    fn keys(&self) -> Vec<(&'static str, Option<String>)> {
        Vec::new()
    }
}

impl<P: Args + ListenerFlags, A: Args + ListenerFlags> RoleArgs<P, A> {
    /// The configuration with the listener flags given.
    fn load(&self) -> anyhow::Result<Config> {
        self.config.load_with(self.proxy.keys().into_iter().chain(self.api.keys()))
    }
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        self.load_with([])
    }

    /// The configuration, with `keys` (flags that set a key) applied before `--set`.
    fn load_with(&self, keys: impl IntoIterator<Item = (&'static str, Option<String>)>) -> anyhow::Result<Config> {
        let mut overrides = Vec::new();
        let mut named = vec![
            ("data_dir", self.data_dir.as_ref().map(|p| p.display().to_string())),
            ("store.url", self.store.clone()),
        ];
        named.extend(keys);
        for (key, value) in named {
            if let Some(value) = value {
                overrides.push((key.to_owned(), toml_string(&value)));
            }
        }
        for pair in &self.set {
            let (key, value) = pair.split_once('=').with_context(|| format!("--set {pair}: expected KEY=VALUE"))?;
            overrides.push((key.trim().to_owned(), value.to_owned()));
        }
        let sources = Sources { file: self.config.clone(), overrides };
        Ok(Config::load(&sources, std::env::vars())?)
    }
}

/// A flag value as a TOML string, so paths and addresses are never read as other types.
fn toml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() -> ExitCode {
    // Two rustls providers are built in (aws-lc-rs for the listeners, *ring* for clients):
    // whatever builds a TLS configuration without naming one (a library's HTTP client) gets
    // *ring*, instead of a panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve<P: Args + ListenerFlags, A: Args + ListenerFlags>(
    args: RoleArgs<P, A>,
    role: serve::Role,
) -> anyhow::Result<()> {
    let config = args.load()?;
    let logging = logging::Logging::install(&config)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve::run(config, role, logging, move || args.load()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Healthcheck { url, config } => healthcheck(&config.load()?, url),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "portico", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).context("cannot write the completion script")
        }
        Command::Manpage => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .context("cannot write the manual page"),
        Command::Version => {
            println!("portico {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(args) => serve(args, serve::Role::All),
        Command::Proxy(args) => serve(args, serve::Role::Proxy),
        Command::Api(args) => serve(args, serve::Role::Api),
        Command::Upgrade { binary, config } => upgrade(&config.load()?, binary.as_deref()),
        Command::Reload(args) => {
            let config = args.load()?;
            let pid = serve::running_pid(&config.data_dir)?;
            rustix::process::kill_process(pid, rustix::process::Signal::HUP)
                .with_context(|| format!("cannot signal process {}", pid.as_raw_nonzero()))?;
            println!(
                "asked process {} to reload its configuration (SIGHUP); its log says how it went",
                pid.as_raw_nonzero()
            );
            Ok(())
        }
        Command::Ca { command: CaCommand::Export, config } => {
            let config = config.load()?;
            let pem = runtime()?.block_on(serve::internal_root(&config))?;
            print!("{pem}");
            Ok(())
        }
        Command::Store { command, config } => {
            let config = config.load()?;
            runtime()?.block_on(store_cmd::run(command, &config))
        }
        Command::Migrate { from, to, force } => runtime()?.block_on(store_cmd::migrate(&from, &to, force)),
        Command::Host { command, config } => {
            let config = config.load()?;
            runtime()?.block_on(hosts::run(*command, &config))
        }
        Command::User { command, config } => {
            let config = config.load()?;
            runtime()?.block_on(users::run(command, &config))
        }
        Command::Stream { command, config } => {
            let config = config.load()?;
            runtime()?.block_on(streams_cmd::run(command, &config))
        }
        Command::Cert { command, config } => {
            let config = config.load()?;
            runtime()?.block_on(certs_cmd::run(command, &config))
        }
    }
}

/// `portico upgrade`: asks for the upgrade and waits until the new process serves, or the
/// old one says why it could not.
fn upgrade(config: &Config, binary: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let old = serve::running_pid(&config.data_dir)?;
    let asked = config.data_dir.join(upgrade::BINARY_FILE);
    let failed = config.data_dir.join(upgrade::FAILED_FILE);
    let _ = std::fs::remove_file(&failed);
    match binary {
        Some(binary) => {
            let binary = std::fs::canonicalize(binary).with_context(|| format!("cannot find {}", binary.display()))?;
            let mode = std::fs::metadata(&binary)?.permissions().mode();
            anyhow::ensure!(binary.is_file() && mode & 0o111 != 0, "{} is not an executable file", binary.display());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&asked)
                .with_context(|| format!("cannot write {}", asked.display()))?;
            std::io::Write::write_all(&mut file, binary.as_os_str().as_encoded_bytes())?;
        }
        None => {
            let _ = std::fs::remove_file(&asked);
        }
    }
    rustix::process::kill_process(old, rustix::process::Signal::USR2)
        .with_context(|| format!("cannot signal process {}", old.as_raw_nonzero()))?;
    let deadline = std::time::Instant::now() + upgrade::READY_WITHIN + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Ok(reason) = std::fs::read_to_string(&failed) {
            anyhow::bail!("the upgrade failed; process {} keeps serving: {}", old.as_raw_nonzero(), reason.trim());
        }
        match serve::running_pid(&config.data_dir) {
            Ok(new) if new != old => {
                println!(
                    "process {} serves now; process {} drains its connections and exits",
                    new.as_raw_nonzero(),
                    old.as_raw_nonzero()
                );
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if rustix::process::test_kill_process(old).is_err() => {
                return Err(e.context(format!("process {} stopped during the upgrade", old.as_raw_nonzero())));
            }
            Err(_) => {}
        }
    }
    anyhow::bail!(
        "no new process serves after {:?}; see the log of process {}",
        upgrade::READY_WITHIN,
        old.as_raw_nonzero()
    )
}

/// `portico healthcheck`.
fn healthcheck(config: &Config, url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| {
        let mut addr = config.api_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}/healthz")
    });
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
    runtime()?.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), client.get(uri))
            .await
            .with_context(|| format!("{url} did not answer within 5 s"))?
            .with_context(|| format!("{url} cannot be reached"))?;
        anyhow::ensure!(answer.status().is_success(), "{url} answered {}", answer.status());
        println!("{url}: {}", answer.status());
        Ok(())
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_flags_set_their_keys() {
        let cli =
            Cli::try_parse_from(["portico", "serve", "--api", "127.0.0.1:3999", "--http", "127.0.0.1:8081"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let config = args.load().unwrap();
        assert_eq!(config.api_listen, "127.0.0.1:3999".parse().unwrap(), "--api is api.listen");
        assert_eq!(config.http, "127.0.0.1:8081".parse().unwrap());
        let bad = Cli::try_parse_from(["portico", "serve", "--api", "nowhere"]).unwrap();
        let Command::Serve(args) = bad.command else { panic!("serve") };
        let error = args.load().unwrap_err().to_string();
        assert!(error.contains("api.listen"), "{error}");
    }
}
