//! Configuration: TOML file → `PORTICO_*` environment → command-line flags.
//!
//! The raw form mirrors the file (every key optional, unknown keys refused); [`Config`] is the
//! typed, validated form the rest of the program uses. Errors name the key path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portico_certs::acme::Challenge;
use portico_proxy::ProxyConfig;
use serde::Deserialize;

/// Sections of the file; an environment variable `PORTICO_<SECTION>_<KEY>` sets `key` in
/// `[section]`, any other `PORTICO_<KEY>` a top-level key.
const SECTIONS: [&str; 7] = ["store", "proxy", "api", "tls", "dns", "metrics", "log"];
/// Duration keys for which 0 makes sense (no drain at shutdown); every other must be longer.
const ZERO_DURATION_OK: [&str; 1] = ["proxy.shutdown_timeout"];
/// What `log.level` takes, alone or as `target=level` in a comma-separated filter.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// The keys a reload cannot change: they apply at the next start.
pub const RESTART_KEYS: [&str; 3] = ["data_dir", "store.url", "proxy.workers"];

/// `PORTICO_*` variables that are not configuration keys.
const NOT_KEYS: [&str; 3] = ["PORTICO_CONFIG", "PORTICO_ADMIN_PASSWORD", crate::upgrade::UPGRADE];

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file, a variable or a flag is not valid TOML or has unknown keys.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where the text came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A key is unknown or has a value of the wrong type.
    #[error("{message}")]
    Key {
        /// What is wrong, naming the key: `unknown key tls.isuer`, `proxy.http: expected …`.
        message: String,
    },
    /// A key has a value of the right type that is still not acceptable.
    #[error("{key}: {message}")]
    Value {
        /// The key path, `proxy.http`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    http: Option<String>,
    https: Option<String>,
    header_read_timeout: Option<DurationText>,
    idle_timeout: Option<DurationText>,
    send_timeout: Option<DurationText>,
    tunnel_idle_timeout: Option<DurationText>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    upstream_connect_timeout: Option<DurationText>,
    upstream_timeout: Option<DurationText>,
    upstream_idle_timeout: Option<DurationText>,
    target_tls_verify: Option<bool>,
    shutdown_timeout: Option<DurationText>,
    handshake_timeout: Option<DurationText>,
    workers: Option<usize>,
    trusted_proxies: Option<ListText>,
    proxy_protocol: Option<bool>,
    proxy_protocol_from: Option<ListText>,
    error_page: Option<PathBuf>,
    http3: Option<bool>,
    alt_svc: Option<bool>,
    http3_0rtt: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    lookup_socket: Option<PathBuf>,
    lookup_socket_mode: Option<ModeText>,
    lookup_listen: Option<String>,
    session_ttl: Option<DurationText>,
    trusted_proxies: Option<ListText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    issuer: Option<String>,
    acme_directory: Option<String>,
    acme_email: Option<String>,
    acme_ca_roots: Option<ListText>,
    acme_eab_kid: Option<String>,
    acme_eab_hmac_key: Option<String>,
    acme_profile: Option<String>,
    issuers: Option<Vec<RawIssuer>>,
    notify_url: Option<String>,
    challenge: Option<String>,
    renew_remaining_ratio: Option<f64>,
    renew_interval: Option<DurationText>,
    internal_lifetime: Option<DurationText>,
    issue_timeout: Option<DurationText>,
    max_issuances_per_minute: Option<usize>,
    max_pattern_issuances_per_minute: Option<usize>,
    max_certs_per_pattern: Option<usize>,
    max_certs_per_domain: Option<usize>,
    dns_resolvers: Option<ListText>,
}

/// One `[[tls.issuers]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    directory: String,
    eab_kid: Option<String>,
    eab_hmac: Option<String>,
    profile: Option<String>,
    contact: Option<String>,
    ca_roots: Option<ListText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    cloudflare_api: Option<String>,
    digitalocean_api: Option<String>,
    porkbun_api: Option<String>,
    exec: Option<std::collections::BTreeMap<String, PathBuf>>,
    timeout: Option<DurationText>,
    propagation_timeout: Option<DurationText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
    access_log: Option<toml::Value>,
}

/// A duration as `"30s"`, `"1m 30s"`, `"500ms"`, or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

impl DurationText {
    fn parse(&self, key: &'static str) -> Result<Duration, ConfigError> {
        match self {
            Self::Seconds(s) => Ok(Duration::from_secs(*s)),
            Self::Text(t) => humantime::parse_duration(t)
                .map_err(|e| ConfigError::Value { key, message: format!("{t:?} is not a duration ({e})") }),
        }
    }
}

/// File permissions: `"0660"` (octal text, as `chmod` takes them) or a TOML integer (`0o660`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModeText {
    Number(u32),
    Text(String),
}

impl ModeText {
    fn parse(&self, key: &'static str) -> Result<u32, ConfigError> {
        let mode = match self {
            Self::Number(n) => Some(*n),
            Self::Text(t) => u32::from_str_radix(t.trim_start_matches("0o"), 8).ok(),
        };
        mode.filter(|m| *m <= 0o777).ok_or_else(|| ConfigError::Value {
            key,
            message: "expected permissions like \"0660\" (octal, at most 0777)".into(),
        })
    }
}

/// A list key: a TOML array of strings, or one string with items separated by commas (how a
/// list arrives from the environment: `PORTICO_API_TRUSTED_PROXIES=127.0.0.1,::1`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListText {
    Many(Vec<String>),
    One(String),
}

impl ListText {
    fn items(&self) -> Vec<String> {
        match self {
            Self::Many(items) => items.clone(),
            Self::One(text) => text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Certificate issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// An ACME CA (Let's Encrypt by default).
    Acme,
    /// Portico's own internal CA.
    Internal,
}

/// Let's Encrypt's directory, the default CA.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The CAs `[[tls.issuers]]` names by a word: the word, its directory, and whether the CA
/// requires External Account Binding.
pub const PRESETS: [(&str, &str, bool); 4] = [
    ("letsencrypt", LETSENCRYPT, false),
    ("letsencrypt-staging", "https://acme-staging-v02.api.letsencrypt.org/directory", false),
    ("zerossl", "https://acme.zerossl.com/v2/DV90", true),
    ("google", "https://dv.acme-v02.api.pki.goog/directory", true),
];

/// One certificate issuer, in the order `[[tls.issuers]]` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerSpec {
    /// An ACME CA.
    Acme {
        /// Its directory URL.
        directory: String,
        /// External Account Binding (its `Debug` never shows the HMAC key).
        eab: Option<portico_certs::acme::Eab>,
        /// The profile new orders ask for.
        profile: Option<String>,
        /// The account's contact address.
        contact: Option<String>,
        /// Extra roots to trust for the CA's API.
        ca_roots: Vec<PathBuf>,
    },
    /// Portico's internal CA.
    Internal,
}

/// The `[tls]` section.
#[derive(Clone, PartialEq)]
pub struct TlsConfig {
    /// The issuers in the order they are tried (`[[tls.issuers]]`, or the one `tls.issuer`
    /// and `tls.acme_*` describe).
    pub issuers: Vec<IssuerSpec>,
    /// Where certificate renewal alerts are posted (`tls.notify_url`).
    pub notify_url: Option<String>,
    pub challenge: Challenge,
    pub renew_remaining_ratio: f64,
    pub renew_interval: Duration,
    pub internal_lifetime: Duration,
    pub issue_timeout: Duration,
    pub max_issuances_per_minute: usize,
    pub max_pattern_issuances_per_minute: usize,
    pub max_certs_per_pattern: usize,
    pub max_certs_per_domain: usize,
    /// DNS-01: the providers' APIs, the servers to watch, how long to wait.
    pub dns: portico_certs::acme::DnsSettings,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("issuers", &self.issuers)
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub store_url: String,
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// HTTP/3 on `https`'s address, UDP (`proxy.http3`).
    pub http3: bool,
    /// HTTPS answers advertise HTTP/3 in `Alt-Svc` (`proxy.alt_svc`; with `http3` only).
    pub alt_svc: bool,
    pub proxy: ProxyConfig,
    /// `proxy.max_connections` as configured; `None`: derived from the fd limit at start.
    pub max_connections: Option<usize>,
    /// Worker threads of the runtime (`proxy.workers`; default: one per CPU).
    pub workers: Option<usize>,
    pub api_listen: SocketAddr,
    pub lookup_socket: Option<PathBuf>,
    pub lookup_socket_mode: u32,
    pub lookup_listen: Option<SocketAddr>,
    pub session_ttl: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub tls: TlsConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
}

/// Where configuration comes from besides the environment.
#[derive(Debug, Default)]
pub struct Sources {
    /// The file, if any.
    pub file: Option<PathBuf>,
    /// `key.path=value` overrides from flags, applied last.
    pub overrides: Vec<(String, String)>,
}

impl Config {
    /// Loads the file, applies `PORTICO_*` variables from `env`, then `overrides`.
    pub fn load(sources: &Sources, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let (text, origin) = match &sources.file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                (text, path.display().to_string())
            }
            None => (String::new(), String::new()),
        };
        Self::from_text(&text, &origin, env, &sources.overrides)
    }

    /// Like [`Config::load`], with the file's `text` (from `origin`) already read.
    pub fn from_text(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax { origin: origin.to_owned(), message: e.to_string() })?;
        for (name, value) in env {
            if let Some(key) = env_key(&name) {
                set(&mut table, &key, &value, &name)?;
            }
        }
        for (key, value) in overrides {
            set(&mut table, key, value, &format!("--set {key}"))?;
        }
        let raw: Raw = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Key { message: explain(&e.path().to_string(), e.inner().message()) })?;
        Self::try_from(raw)
    }
}

/// A deserialisation error in words about the key: `unknown key tls.isuer`,
/// `tls.acme_ca_roots: expected a list`, `proxy.max_header_bytes: expected a positive integer`.
fn explain(key: &str, message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        // The path ends at the section holding the unknown key, or names the key itself.
        let full = if key.is_empty() || key == "." {
            field.to_owned()
        } else if key.ends_with(field) {
            key.to_owned()
        } else {
            format!("{key}.{field}")
        };
        let expected = rest.split_once(", expected ").map(|(_, e)| e.replace('`', "")).unwrap_or_default();
        return if expected.is_empty() {
            format!("unknown key {full}")
        } else {
            format!("unknown key {full} (known keys: {})", expected.trim_start_matches("one of "))
        };
    }
    const EXPECTED: [(&str, &str); 9] = [
        ("untagged enum DurationText", "expected a duration such as \"30s\", \"1m 30s\" or a number of seconds"),
        ("untagged enum ListText", "expected a list of strings, or one comma-separated string"),
        ("expected a sequence", "expected a list"),
        ("expected usize", "expected a positive integer"),
        ("expected u64", "expected a positive integer"),
        ("expected u16", "expected a positive integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a string"),
    ];
    let found = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: "));
    let found = found.and_then(|m| m.split(", expected").next()).map(|f| format!(", found {f}")).unwrap_or_default();
    let what = EXPECTED.iter().find(|(pattern, _)| message.contains(pattern)).map_or(message, |(_, w)| w);
    let found = if what == message { String::new() } else { found };
    format!("{key}: {what}{found}")
}

/// `PORTICO_PROXY_HTTP` → `proxy.http`; `PORTICO_DATA_DIR` → `data_dir`.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("PORTICO_")?;
    if NOT_KEYS.contains(&name) || rest.is_empty() {
        return None;
    }
    let lower = rest.to_ascii_lowercase();
    for section in SECTIONS {
        if let Some(key) = lower.strip_prefix(section).and_then(|k| k.strip_prefix('_')) {
            return Some(format!("{section}.{key}"));
        }
    }
    Some(lower)
}

/// Sets `a.b` to `value`, read as a TOML value when it is one (`true`, `30`, `["a"]`) and as
/// a string otherwise.
fn set(table: &mut toml::Table, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (section, leaf) = match key.split_once('.') {
        Some((s, k)) => (Some(s), k),
        None => (None, key),
    };
    let target = match section {
        None => table,
        Some(section) => {
            let entry = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            entry.as_table_mut().ok_or_else(|| ConfigError::Syntax {
                origin: origin.to_owned(),
                message: format!("`{section}` is not a section"),
            })?
        }
    };
    target.insert(leaf.to_owned(), parsed);
    Ok(())
}

fn addr(key: &'static str, text: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.unwrap_or(default);
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_owned() };
    full.parse().map_err(|_| ConfigError::Value { key, message: format!("{text:?} is not an address like 0.0.0.0:80") })
}

/// One of a fixed set of words.
fn choice<T: Copy>(key: &'static str, text: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
    options.iter().find(|(word, _)| *word == text).map(|(_, value)| *value).ok_or_else(|| {
        let words: Vec<String> = options.iter().map(|(word, _)| format!("{word:?}")).collect();
        ConfigError::Value { key, message: format!("{text:?} is not one of {}", words.join(", ")) }
    })
}

/// `log.level`: a level, or a filter of `target=level` directives and at most one default
/// level (`info,portico::access=warn`). A bare word that is not a level would be read by the
/// filter as a target name and silence everything else, the first admin's password included.
fn log_level(text: &str) -> Result<String, ConfigError> {
    let valid = |directive: &str| {
        let level =
            directive.rsplit_once('=').map_or(directive, |(target, level)| if target.is_empty() { "" } else { level });
        LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
    };
    let directives: Vec<&str> = text.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() || !directives.iter().all(|d| valid(d)) {
        return Err(ConfigError::Value {
            key: "log.level",
            message: format!(
                "{text:?} is not a level ({}) or a filter like \"info,portico::access=warn\"",
                LOG_LEVELS.join(", ")
            ),
        });
    }
    Ok(text.to_owned())
}

/// `api.trusted_proxies`: addresses (`127.0.0.1`) or networks (`10.0.0.0/8`).
/// `log.access_log`: `true` (through the application log), `false`, or one of `"off"`,
/// `"log"`, `"common"`, `"json"`.
fn access_log(value: Option<&toml::Value>) -> Result<portico_proxy::AccessLog, ConfigError> {
    use portico_proxy::AccessLog;
    let refused = |found: String| ConfigError::Value {
        key: "log.access_log",
        message: format!("{found} is not one of true, false, \"off\", \"log\", \"common\", \"json\""),
    };
    match value {
        None | Some(toml::Value::Boolean(true)) => Ok(AccessLog::Log),
        Some(toml::Value::Boolean(false)) => Ok(AccessLog::Off),
        Some(toml::Value::String(s)) => match s.as_str() {
            "off" | "false" => Ok(AccessLog::Off),
            "log" | "on" | "true" => Ok(AccessLog::Log),
            "common" | "combined" => Ok(AccessLog::Common),
            "json" => Ok(AccessLog::Json),
            other => Err(refused(format!("{other:?}"))),
        },
        Some(other) => Err(refused(format!("a {}", other.type_str()))),
    }
}

/// A duration key's value, `default` when unset; 0 only where it makes sense.
fn duration(value: &Option<DurationText>, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let parsed = value.as_ref().map_or(Ok(default), |d| d.parse(key))?;
    if parsed.is_zero() && !ZERO_DURATION_OK.contains(&key) {
        return Err(ConfigError::Value { key, message: "must be longer than 0".into() });
    }
    Ok(parsed)
}

/// `value` of `key` when it is an `http://` or `https://` URL.
fn http_url(key: &'static str, value: Option<&str>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(url) if is_http_url(url) => Ok(Some(url.to_owned())),
        Some(url) => Err(ConfigError::Value { key, message: format!("{url:?} is not an http(s):// URL") }),
        None => Ok(None),
    }
}

fn is_http_url(text: &str) -> bool {
    text.starts_with("https://") || text.starts_with("http://")
}

/// DNS-01 settings: `tls.dns_resolvers` and `[dns]`.
fn dns_settings(resolvers: Option<&ListText>, d: &RawDns) -> Result<portico_certs::acme::DnsSettings, ConfigError> {
    let defaults = portico_certs::DnsEndpoints::default();
    let url = |key: &'static str, value: &Option<String>, default: String| {
        Ok::<_, ConfigError>(http_url(key, value.as_deref())?.map_or(default, |u| u.trim_end_matches('/').to_owned()))
    };
    let resolvers = resolvers
        .map(ListText::items)
        .unwrap_or_default()
        .into_iter()
        .map(|item| {
            item.parse::<SocketAddr>().map_err(|_| ConfigError::Value {
                key: "tls.dns_resolvers",
                message: format!("{item:?} is not an address like 1.1.1.1:53"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(portico_certs::acme::DnsSettings {
        endpoints: portico_certs::DnsEndpoints {
            cloudflare: url("dns.cloudflare_api", &d.cloudflare_api, defaults.cloudflare)?,
            digitalocean: url("dns.digitalocean_api", &d.digitalocean_api, defaults.digitalocean)?,
            porkbun: url("dns.porkbun_api", &d.porkbun_api, defaults.porkbun)?,
            timeout: duration(&d.timeout, "dns.timeout", defaults.timeout)?,
            exec: exec_programs(d.exec.as_ref())?,
        },
        resolvers,
        propagation_timeout: duration(&d.propagation_timeout, "dns.propagation_timeout", Duration::from_secs(120))?,
    })
}

/// `dns.exec`: the programs Exec DNS providers may name, each by a plain name and an absolute
/// path (the API names them; it never takes a path).
fn exec_programs(
    table: Option<&std::collections::BTreeMap<String, PathBuf>>,
) -> Result<std::collections::BTreeMap<String, PathBuf>, ConfigError> {
    let programs = table.cloned().unwrap_or_default();
    for (name, path) in &programs {
        if !portico_dns::exec::valid_name(name) {
            return Err(ConfigError::Value {
                key: "dns.exec",
                message: format!("{name:?} is not a program name (letters, digits, - and _)"),
            });
        }
        if !path.is_absolute() {
            return Err(ConfigError::Value {
                key: "dns.exec",
                message: format!("{name}: {} is not an absolute path", path.display()),
            });
        }
    }
    Ok(programs)
}

fn trusted_proxies(list: Option<&ListText>, key: &'static str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let items = list.map(ListText::items).unwrap_or_default();
    items
        .iter()
        .map(|item| {
            item.parse::<ipnet::IpNet>().or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(
                |_| ConfigError::Value {
                    key,
                    message: format!("{item:?} is not an address or a network like 10.0.0.0/8"),
                },
            )
        })
        .collect()
}

/// The `[proxy]` section (and `log.access_log`); `https_port` is the HTTPS listener's port,
/// which redirects name.
fn proxy_section(raw: &Raw, https_port: u16) -> Result<ProxyConfig, ConfigError> {
    let defaults = ProxyConfig::default();
    let p = &raw.proxy;
    let max_header_bytes = p.max_header_bytes.unwrap_or(defaults.max_header_bytes);
    if max_header_bytes < 8192 {
        return Err(ConfigError::Value { key: "proxy.max_header_bytes", message: "must be at least 8192".into() });
    }
    if p.max_connections == Some(0) {
        return Err(ConfigError::Value { key: "proxy.max_connections", message: "must be at least 1".into() });
    }
    let trusted = trusted_proxies(p.trusted_proxies.as_ref(), "proxy.trusted_proxies")?;
    let proxy_protocol = p.proxy_protocol.unwrap_or(false);
    let proxy_protocol_from = match &p.proxy_protocol_from {
        Some(list) => trusted_proxies(Some(list), "proxy.proxy_protocol_from")?,
        None => trusted.clone(),
    };
    if proxy_protocol && proxy_protocol_from.is_empty() {
        // Anyone could otherwise name any client address in a header of their own.
        return Err(ConfigError::Value {
            key: "proxy.proxy_protocol",
            message: "needs the balancers it is accepted from, in proxy.proxy_protocol_from or \
                      proxy.trusted_proxies"
                .into(),
        });
    }
    // Read now: a page that cannot be read is a configuration error, not a surprise at the
    // first failing request (and a reload reads it again).
    let error_page = match &p.error_page {
        Some(path) => {
            let page = std::fs::read_to_string(path).map_err(|e| ConfigError::Value {
                key: "proxy.error_page",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            if page.len() > portico_model::behaviour::MAX_PAGE {
                return Err(ConfigError::Value { key: "proxy.error_page", message: "is longer than 64 KiB".into() });
            }
            Some(Arc::from(page))
        }
        None => None,
    };
    Ok(ProxyConfig {
        https_port,
        header_read_timeout: duration(
            &p.header_read_timeout,
            "proxy.header_read_timeout",
            defaults.header_read_timeout,
        )?,
        idle_timeout: duration(&p.idle_timeout, "proxy.idle_timeout", defaults.idle_timeout)?,
        send_timeout: duration(&p.send_timeout, "proxy.send_timeout", defaults.send_timeout)?,
        tunnel_idle_timeout: duration(
            &p.tunnel_idle_timeout,
            "proxy.tunnel_idle_timeout",
            defaults.tunnel_idle_timeout,
        )?,
        // Set at start from the file-descriptor limit unless configured (`max_connections`).
        max_connections: p.max_connections.unwrap_or(defaults.max_connections),
        max_header_bytes,
        upstream_connect_timeout: duration(
            &p.upstream_connect_timeout,
            "proxy.upstream_connect_timeout",
            defaults.upstream_connect_timeout,
        )?,
        upstream_timeout: duration(&p.upstream_timeout, "proxy.upstream_timeout", defaults.upstream_timeout)?,
        upstream_idle_timeout: duration(
            &p.upstream_idle_timeout,
            "proxy.upstream_idle_timeout",
            defaults.upstream_idle_timeout,
        )?,
        target_tls_verify: p.target_tls_verify.unwrap_or(defaults.target_tls_verify),
        shutdown_timeout: duration(&p.shutdown_timeout, "proxy.shutdown_timeout", defaults.shutdown_timeout)?,
        handshake_timeout: duration(&p.handshake_timeout, "proxy.handshake_timeout", defaults.handshake_timeout)?,
        access_log: access_log(raw.log.access_log.as_ref())?,
        trusted_proxies: trusted,
        proxy_protocol,
        proxy_protocol_from,
        error_page,
        // Set where the HTTPS listener's port is known (`proxy.alt_svc`).
        alt_svc: None,
        http3_0rtt: p.http3_0rtt.unwrap_or(false),
    })
}

/// The `[tls]` section (and `[dns]`, the resolvers DNS-01 checks with).
fn tls_section(raw: &Raw) -> Result<TlsConfig, ConfigError> {
    let issuer = choice(
        "tls.issuer",
        raw.tls.issuer.as_deref().unwrap_or("acme"),
        &[("acme", IssuerKind::Acme), ("internal", IssuerKind::Internal)],
    )?;
    let ratio = raw.tls.renew_remaining_ratio.unwrap_or(1.0 / 3.0);
    if !(ratio > 0.0 && ratio < 1.0) {
        return Err(ConfigError::Value { key: "tls.renew_remaining_ratio", message: "must be between 0 and 1".into() });
    }
    let t = &raw.tls;
    let issuers = issuers(t, issuer)?;
    let notify_url = http_url("tls.notify_url", t.notify_url.as_deref())?;
    let challenge = choice(
        "tls.challenge",
        t.challenge.as_deref().unwrap_or("http-01"),
        &[("http-01", Challenge::Http01), ("tls-alpn-01", Challenge::TlsAlpn01)],
    )?;
    let at_least_one = |value: Option<usize>, key: &'static str, default: usize| match value.unwrap_or(default) {
        0 => Err(ConfigError::Value { key, message: "must be at least 1".into() }),
        n => Ok(n),
    };
    let limits = portico_certs::CertSettings::default();
    let max_issuances_per_minute =
        at_least_one(t.max_issuances_per_minute, "tls.max_issuances_per_minute", limits.max_issuances_per_minute)?;
    Ok(TlsConfig {
        issuers,
        notify_url,
        challenge,
        renew_remaining_ratio: ratio,
        renew_interval: duration(&t.renew_interval, "tls.renew_interval", Duration::from_secs(600))?,
        internal_lifetime: duration(&t.internal_lifetime, "tls.internal_lifetime", Duration::from_secs(7 * 86400))?,
        issue_timeout: duration(&t.issue_timeout, "tls.issue_timeout", Duration::from_secs(90))?,
        max_issuances_per_minute,
        max_pattern_issuances_per_minute: at_least_one(
            t.max_pattern_issuances_per_minute,
            "tls.max_pattern_issuances_per_minute",
            limits.max_pattern_issuances_per_minute,
        )?,
        max_certs_per_pattern: at_least_one(
            t.max_certs_per_pattern,
            "tls.max_certs_per_pattern",
            limits.max_certs_per_pattern,
        )?,
        max_certs_per_domain: at_least_one(
            t.max_certs_per_domain,
            "tls.max_certs_per_domain",
            limits.max_certs_per_domain,
        )?,
        dns: dns_settings(t.dns_resolvers.as_ref(), &raw.dns)?,
    })
}

/// The issuers: `[[tls.issuers]]` in order, or the one that `tls.issuer` and `tls.acme_*`
/// describe. Per issuer, `profile`, `contact` and `ca_roots` default to `tls.acme_profile`,
/// `tls.acme_email` and `tls.acme_ca_roots`.
fn issuers(t: &RawTls, kind: IssuerKind) -> Result<Vec<IssuerSpec>, ConfigError> {
    let eab = |kid: &Option<String>, hmac: &Option<String>, key: &'static str, both: &str| match (kid, hmac) {
        (Some(kid), Some(hmac_key)) => {
            Ok(Some(portico_certs::acme::Eab { kid: kid.clone(), hmac_key: hmac_key.clone() }))
        }
        (None, None) => Ok(None),
        _ => Err(ConfigError::Value { key, message: format!("{both} go together") }),
    };
    let roots = |list: Option<&ListText>| -> Vec<PathBuf> {
        list.or(t.acme_ca_roots.as_ref())
            .map(ListText::items)
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect()
    };
    let profile = |p: &Option<String>| p.clone().or_else(|| t.acme_profile.clone()).filter(|p| !p.is_empty());
    let Some(list) = &t.issuers else {
        if kind == IssuerKind::Internal {
            return Ok(vec![IssuerSpec::Internal]);
        }
        return Ok(vec![IssuerSpec::Acme {
            directory: t.acme_directory.clone().unwrap_or_else(|| LETSENCRYPT.to_owned()),
            eab: eab(
                &t.acme_eab_kid,
                &t.acme_eab_hmac_key,
                "tls.acme_eab_kid",
                "tls.acme_eab_kid and tls.acme_eab_hmac_key",
            )?,
            profile: profile(&None),
            contact: t.acme_email.clone(),
            ca_roots: roots(None),
        }]);
    };
    let refuse = |message: String| Err(ConfigError::Value { key: "tls.issuers", message });
    if t.acme_directory.is_some() || t.acme_eab_kid.is_some() || kind == IssuerKind::Internal {
        return refuse(
            "replaces tls.issuer, tls.acme_directory and tls.acme_eab_*: list every CA in tls.issuers instead".into(),
        );
    }
    if list.is_empty() {
        return refuse("lists no issuer".into());
    }
    let mut specs = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let word = raw.directory.trim();
        if word == "internal" {
            if i + 1 != list.len() {
                return refuse("the internal CA is the last resort: list it last".into());
            }
            specs.push(IssuerSpec::Internal);
            continue;
        }
        let preset = PRESETS.iter().find(|(name, _, _)| *name == word);
        let directory = match preset {
            Some((_, url, _)) => (*url).to_owned(),
            None if is_http_url(word) => word.to_owned(),
            None => {
                let words: Vec<&str> = PRESETS.iter().map(|(name, _, _)| *name).collect();
                return refuse(format!("directory {word:?} is not a URL, \"internal\" or one of {}", words.join(", ")));
            }
        };
        let eab = eab(&raw.eab_kid, &raw.eab_hmac, "tls.issuers", "eab_kid and eab_hmac")?;
        if let Some((name, _, true)) = preset
            && eab.is_none()
        {
            return refuse(format!(
                "{name} requires External Account Binding: set eab_kid and eab_hmac (from the CA's account page)"
            ));
        }
        let contact = raw.contact.clone().or_else(|| t.acme_email.clone());
        let contact = contact.map(|c| c.trim_start_matches("mailto:").to_owned());
        specs.push(IssuerSpec::Acme {
            directory,
            eab,
            profile: profile(&raw.profile),
            contact,
            ca_roots: roots(raw.ca_roots.as_ref()),
        });
    }
    Ok(specs)
}

impl TryFrom<Raw> for Config {
    type Error = ConfigError;

    fn try_from(raw: Raw) -> Result<Self, ConfigError> {
        let http = addr("proxy.http", raw.proxy.http.as_deref(), "0.0.0.0:80")?;
        let https = addr("proxy.https", raw.proxy.https.as_deref(), "0.0.0.0:443")?;
        let proxy = proxy_section(&raw, https.port())?;
        let tls = tls_section(&raw)?;
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let store_url = raw.store.url.unwrap_or_else(|| format!("redb://{}", data_dir.join("portico.redb").display()));
        let log_format = choice(
            "log.format",
            raw.log.format.as_deref().unwrap_or("text"),
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?;
        let http3 = raw.proxy.http3.unwrap_or(false);
        if raw.proxy.http3_0rtt == Some(true) && !http3 {
            return Err(ConfigError::Value {
                key: "proxy.http3_0rtt",
                message: "is about HTTP/3, which needs proxy.http3 = true".into(),
            });
        }
        if raw.proxy.alt_svc == Some(true) && !http3 {
            return Err(ConfigError::Value {
                key: "proxy.alt_svc",
                message: "advertises HTTP/3, which needs proxy.http3 = true".into(),
            });
        }
        Ok(Self {
            store_url,
            http,
            https,
            http3,
            alt_svc: http3 && raw.proxy.alt_svc.unwrap_or(true),
            max_connections: raw.proxy.max_connections,
            workers: match raw.proxy.workers {
                Some(0) => {
                    return Err(ConfigError::Value { key: "proxy.workers", message: "must be at least 1".into() });
                }
                workers => workers,
            },
            proxy,
            api_listen: addr("api.listen", raw.api.listen.as_deref(), "127.0.0.1:3000")?,
            lookup_socket: raw.api.lookup_socket,
            lookup_socket_mode: raw
                .api
                .lookup_socket_mode
                .as_ref()
                .map_or(Ok(0o660), |m| m.parse("api.lookup_socket_mode"))?,
            lookup_listen: raw
                .api
                .lookup_listen
                .as_deref()
                .map(|a| addr("api.lookup_listen", Some(a), ""))
                .transpose()?,
            session_ttl: duration(&raw.api.session_ttl, "api.session_ttl", Duration::from_secs(24 * 3600))?,
            trusted_proxies: trusted_proxies(raw.api.trusted_proxies.as_ref(), "api.trusted_proxies")?,
            tls,
            metrics_listen: raw.metrics.listen.as_deref().map(|m| addr("metrics.listen", Some(m), "")).transpose()?,
            log_level: log_level(raw.log.level.as_deref().unwrap_or("info"))?,
            log_format,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::TempDir::new().unwrap();
        let file = file.map(|text| {
            let path = dir.path().join("portico.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let sources =
            Sources { file, overrides: overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        Config::load(&sources, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_serve_one_node() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.store_url, "redb://./data/portico.redb");
        assert_eq!(c.http, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.https, "0.0.0.0:443".parse().unwrap());
        assert_eq!(c.api_listen, "127.0.0.1:3000".parse().unwrap());
        assert!(
            matches!(c.tls.issuers.as_slice(), [IssuerSpec::Acme { directory, .. }] if directory == LETSENCRYPT),
            "{:?}",
            c.tls.issuers
        );
    }

    /// The directory URLs of `[[tls.issuers]]` in order (`internal` for the internal CA).
    fn directories(c: &Config) -> Vec<String> {
        c.tls
            .issuers
            .iter()
            .map(|i| match i {
                IssuerSpec::Acme { directory, .. } => directory.clone(),
                IssuerSpec::Internal => "internal".into(),
            })
            .collect()
    }

    #[test]
    fn issuers_in_order_with_presets_eab_profiles_and_defaults() {
        let text = "[tls]\nacme_email = \"ops@example.com\"\nacme_profile = \"tlsserver\"\n\
                    [[tls.issuers]]\ndirectory = \"letsencrypt\"\nprofile = \"shortlived\"\n\
                    [[tls.issuers]]\ndirectory = \"zerossl\"\neab_kid = \"kid-1\"\neab_hmac = \"c2VjcmV0\"\n\
                    [[tls.issuers]]\ndirectory = \"https://ca.example.net/acme\"\ncontact = \"mailto:pki@example.net\"\n\
                    ca_roots = [\"/etc/ca.pem\"]\n[[tls.issuers]]\ndirectory = \"internal\"\n";
        let c = load(Some(text), &[], &[]).unwrap();
        assert_eq!(
            directories(&c),
            [LETSENCRYPT, "https://acme.zerossl.com/v2/DV90", "https://ca.example.net/acme", "internal"]
        );
        let IssuerSpec::Acme { profile, contact, eab, .. } = &c.tls.issuers[0] else { panic!() };
        assert_eq!((profile.as_deref(), contact.as_deref(), eab), (Some("shortlived"), Some("ops@example.com"), &None));
        let IssuerSpec::Acme { profile, eab, .. } = &c.tls.issuers[1] else { panic!() };
        assert_eq!(profile.as_deref(), Some("tlsserver"), "tls.acme_profile is the default profile");
        assert_eq!(eab.as_ref().map(|e| e.kid.as_str()), Some("kid-1"));
        let IssuerSpec::Acme { contact, ca_roots, .. } = &c.tls.issuers[2] else { panic!() };
        assert_eq!(
            (contact.as_deref(), ca_roots.as_slice()),
            (Some("pki@example.net"), [PathBuf::from("/etc/ca.pem")].as_slice())
        );
        assert!(!format!("{c:?}").contains("c2VjcmV0"), "the HMAC key is never printed");
        // From the environment, as one inline TOML list.
        let c = load(
            None,
            &[("PORTICO_TLS_ISSUERS", "[{directory = \"letsencrypt-staging\"}, {directory = \"internal\"}]")],
            &[],
        )
        .unwrap();
        assert_eq!(directories(&c), ["https://acme-staging-v02.api.letsencrypt.org/directory", "internal"]);
        // tls.issuer = "internal" alone is a one-issuer list.
        assert_eq!(directories(&load(None, &[], &[("tls.issuer", "\"internal\"")]).unwrap()), ["internal"]);

        for (text, expected) in [
            ("[[tls.issuers]]\ndirectory = \"zerossl\"\n", "zerossl requires External Account Binding"),
            (
                "[[tls.issuers]]\ndirectory = \"internal\"\n[[tls.issuers]]\ndirectory = \"letsencrypt\"\n",
                "list it last",
            ),
            ("[[tls.issuers]]\ndirectory = \"lets-encrypt\"\n", "is not a URL"),
            ("[tls]\nacme_directory = \"https://x/dir\"\n[[tls.issuers]]\ndirectory = \"letsencrypt\"\n", "replaces"),
            ("[[tls.issuers]]\ndirectory = \"https://x/dir\"\neab_kid = \"k\"\n", "eab_kid and eab_hmac go together"),
            ("[[tls.issuers]]\ndirectory = \"https://x/dir\"\nprofiles = \"x\"\n", "unknown key tls.issuers"),
            ("[tls]\nissuers = []\n", "lists no issuer"),
            ("[tls]\nnotify_url = \"ops@example.com\"\n", "tls.notify_url"),
        ] {
            let e = load(Some(text), &[], &[]).unwrap_err().to_string();
            assert!(e.contains(expected) && e.contains("tls."), "{text}: {e}");
        }
    }

    #[test]
    fn tls_keys_are_checked_and_the_eab_key_is_never_printed() {
        let c = load(None, &[("PORTICO_TLS_CHALLENGE", "tls-alpn-01")], &[("tls.renew_interval", "\"2m\"")]).unwrap();
        assert_eq!(c.tls.challenge, Challenge::TlsAlpn01);
        assert_eq!(c.tls.renew_interval, Duration::from_secs(120));
        let e = load(None, &[], &[("tls.challenge", "\"dns-01\"")]).unwrap_err().to_string();
        assert!(e.contains("tls.challenge"), "{e}");
        let e = load(None, &[], &[("tls.acme_eab_kid", "\"kid\"")]).unwrap_err().to_string();
        assert!(e.contains("tls.acme_eab_hmac_key"), "{e}");
        let e = load(None, &[], &[("tls.max_issuances_per_minute", "0")]).unwrap_err().to_string();
        assert!(e.contains("tls.max_issuances_per_minute"), "{e}");
        let overrides = [("tls.acme_eab_kid", "\"kid-7\""), ("tls.acme_eab_hmac_key", "\"c2VjcmV0LWhtYWM\"")];
        let c = load(None, &[], &overrides).unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("kid-7") && !shown.contains("c2VjcmV0LWhtYWM"), "{shown}");
    }

    #[test]
    fn http3_is_off_by_default_and_alt_svc_follows_it() {
        let c = load(None, &[], &[]).unwrap();
        assert!(!c.http3 && !c.alt_svc);
        let c = load(None, &[("PORTICO_PROXY_HTTP3", "true")], &[]).unwrap();
        assert!(c.http3 && c.alt_svc, "advertised by default with HTTP/3");
        let c = load(None, &[], &[("proxy.http3", "true"), ("proxy.alt_svc", "false")]).unwrap();
        assert!(c.http3 && !c.alt_svc);
        let e = load(None, &[], &[("proxy.alt_svc", "true")]).unwrap_err().to_string();
        assert!(e.contains("proxy.alt_svc") && e.contains("proxy.http3"), "{e}");
        assert!(!c.proxy.http3_0rtt, "0-RTT off unless asked");
        let e = load(None, &[], &[("proxy.http3_0rtt", "true")]).unwrap_err().to_string();
        assert!(e.contains("proxy.http3_0rtt"), "{e}");
    }

    #[test]
    fn a_configuration_is_data_that_a_reload_can_compare() {
        // Two loads of the same settings are equal (no runtime handle inside that would make
        // each load differ), and a changed key shows in the part it belongs to.
        let keys = [("proxy.idle_timeout", "\"5s\""), ("tls.renew_interval", "\"2m\"")];
        let running = load(None, &[], &keys).unwrap();
        assert!(running == load(None, &[], &keys).unwrap());
        let changed = load(None, &[], &[("proxy.idle_timeout", "\"6s\""), ("tls.renew_interval", "\"2m\"")]).unwrap();
        assert!(changed != running);
        assert!(changed.proxy != running.proxy, "the proxy's part changed");
        assert!(changed.tls == running.tls, "the certificates' part did not");
    }

    #[test]
    fn connection_limits() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!(c.max_connections, None, "derived from the fd limit at start");
        assert_eq!(c.proxy.idle_timeout, Duration::from_secs(60));
        let c = load(None, &[("PORTICO_PROXY_MAX_CONNECTIONS", "500")], &[("proxy.idle_timeout", "\"5s\"")]).unwrap();
        assert_eq!(c.max_connections, Some(500));
        assert_eq!(c.proxy.idle_timeout, Duration::from_secs(5));
        let e = load(None, &[], &[("proxy.max_connections", "0")]).unwrap_err().to_string();
        assert!(e.contains("proxy.max_connections"), "{e}");
    }

    #[test]
    fn the_proxy_protocol_is_accepted_only_from_named_balancers() {
        let e = load(None, &[], &[("proxy.proxy_protocol", "true")]).unwrap_err().to_string();
        assert!(e.contains("proxy.proxy_protocol") && e.contains("proxy_protocol_from"), "{e}");
        let c = load(None, &[], &[("proxy.proxy_protocol", "true"), ("proxy.trusted_proxies", "[\"10.0.0.0/8\"]")])
            .unwrap();
        assert_eq!(c.proxy.proxy_protocol_from, c.proxy.trusted_proxies, "the trusted proxies by default");
        let c = load(None, &[], &[("proxy.proxy_protocol", "true"), ("proxy.proxy_protocol_from", "[\"192.0.2.1\"]")])
            .unwrap();
        assert_eq!(c.proxy.proxy_protocol_from, ["192.0.2.1/32".parse::<ipnet::IpNet>().unwrap()]);
    }

    #[test]
    fn list_keys_take_one_value_from_the_environment() {
        let c = load(None, &[("PORTICO_API_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")], &[]).unwrap();
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8"]);
        let roots = |c: &Config| match &c.tls.issuers[0] {
            IssuerSpec::Acme { ca_roots, .. } => ca_roots.clone(),
            IssuerSpec::Internal => Vec::new(),
        };
        let c = load(None, &[("PORTICO_TLS_ACME_CA_ROOTS", "/etc/ca.pem")], &[]).unwrap();
        assert_eq!(roots(&c), [PathBuf::from("/etc/ca.pem")]);
        let c = load(Some("[tls]\nacme_ca_roots = [\"/a.pem\", \"/b.pem\"]\n"), &[], &[]).unwrap();
        assert_eq!(roots(&c).len(), 2);
        let e = load(None, &[], &[("api.trusted_proxies", "[\"nope\"]")]).unwrap_err().to_string();
        assert!(e.contains("api.trusted_proxies"), "{e}");
    }

    #[test]
    fn every_error_names_the_full_key() {
        let cases = [
            ("[tls]\nisuer = \"acme\"\n", "unknown key tls.isuer"),
            ("[tls]\nacme_ca_roots = 5\n", "tls.acme_ca_roots: expected a list of strings"),
            (
                "[proxy]\nmax_header_bytes = -1\n",
                "proxy.max_header_bytes: expected a positive integer, found integer `-1`",
            ),
            ("[proxy]\nmax_header_bytes = \"big\"\n", "proxy.max_header_bytes: expected a positive integer"),
            ("[proxy]\nupstream_timeout = true\n", "proxy.upstream_timeout: expected a duration"),
            ("[log]\naccess_log = \"yes\"\n", "log.access_log: \"yes\" is not one of"),
            ("bogus = 1\n", "unknown key bogus"),
            ("[metrics]\nlisten = 9\n", "metrics.listen: expected a string"),
            ("[proxy]\nworkers = 0\n", "proxy.workers: must be at least 1"),
        ];
        for (file, expected) in cases {
            let e = load(Some(file), &[], &[]).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{file:?}: {e}");
        }
    }

    #[test]
    fn log_levels_and_durations_are_checked() {
        for good in ["info", "DEBUG", "warn,portico::access=off", "info, portico=trace"] {
            assert!(load(None, &[("PORTICO_LOG_LEVEL", good)], &[]).is_ok(), "{good}");
        }
        for bad in ["verbose", "loud", "", "info,portico=loud", "=debug"] {
            let e = load(None, &[("PORTICO_LOG_LEVEL", bad)], &[]).unwrap_err().to_string();
            assert!(e.starts_with("log.level:"), "{bad}: {e}");
        }
        for key in ["proxy.header_read_timeout", "proxy.idle_timeout", "tls.renew_interval", "api.session_ttl"] {
            let e = load(None, &[], &[(key, "0")]).unwrap_err().to_string();
            assert!(e.starts_with(key) && e.contains("longer than 0"), "{key}: {e}");
            let e = load(None, &[], &[(key, "\"-5s\"")]).unwrap_err().to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
        assert_eq!(load(None, &[], &[("proxy.shutdown_timeout", "0")]).unwrap().proxy.shutdown_timeout, Duration::ZERO);
    }

    #[test]
    fn lookup_service_keys() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!((c.lookup_socket.clone(), c.lookup_socket_mode, c.lookup_listen), (None, 0o660, None));
        let c = load(Some("[api]\nlookup_socket = \"/run/l.sock\"\nlookup_socket_mode = \"0600\"\nlookup_listen = \"127.0.0.1:4000\"\n"), &[], &[]).unwrap();
        assert_eq!(c.lookup_socket_mode, 0o600);
        assert_eq!(c.lookup_listen, Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(load(Some("[api]\nlookup_socket_mode = 0o640\n"), &[], &[]).unwrap().lookup_socket_mode, 0o640);
        let e = load(None, &[("PORTICO_API_LOOKUP_SOCKET_MODE", "rw-rw----")], &[]).unwrap_err().to_string();
        assert!(e.starts_with("api.lookup_socket_mode"), "{e}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../config.example.toml");
        let c = load(Some(text), &[], &[]).unwrap();
        assert_eq!(c.http, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(60));
    }

    #[test]
    fn file_then_env_then_flags() {
        let file = "data_dir = \"/srv/portico\"\n[proxy]\nhttp = \"127.0.0.1:8080\"\nupstream_timeout = \"5s\"\n";
        let c = load(Some(file), &[], &[]).unwrap();
        assert_eq!(c.http.port(), 8080);
        assert_eq!(c.store_url, "redb:///srv/portico/portico.redb");
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(5));

        let env = [("PORTICO_PROXY_HTTP", "127.0.0.1:9090"), ("PORTICO_PROXY_UPSTREAM_TIMEOUT", "7"), ("HOME", "/x")];
        let c = load(Some(file), &env, &[]).unwrap();
        assert_eq!(c.http.port(), 9090);
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(7));

        let c = load(Some(file), &env, &[("proxy.http", ":7070"), ("log.access_log", "false")]).unwrap();
        assert_eq!(c.http, "0.0.0.0:7070".parse().unwrap());
        assert_eq!(c.proxy.access_log, portico_proxy::AccessLog::Off);

        let c = load(None, &[("PORTICO_DATA_DIR", "/d"), ("PORTICO_STORE_URL", "redb:///x.redb")], &[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.store_url, "redb:///x.redb");
        assert_eq!(c.https.port(), 443, "{:?}", c.proxy);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(Some("[proxy]\nhttp = \"nope\"\n"), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("proxy.http"), "{e}");
        let e = load(Some("[proxy]\nupstream_timeout = \"soon\"\n"), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("proxy.upstream_timeout"), "{e}");
        let e = load(Some("[proxy]\nhtp = \"x\"\n"), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("htp"), "{e}");
        let e = load(None, &[("PORTICO_PROXY_HTPP", "1")], &[]).unwrap_err().to_string();
        assert!(e.contains("htpp"), "{e}");
        let e = load(None, &[], &[("tls.issuer", "magic")]).unwrap_err().to_string();
        assert!(e.contains("tls.issuer"), "{e}");
        let e = load(Some("[proxy"), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("portico.toml"), "{e}");
        // Variables that are not keys are left alone.
        assert!(load(None, &[("PORTICO_ADMIN_PASSWORD", "x"), ("PORTICO_CONFIG", "/x")], &[]).is_ok());
    }
}

/// The configuration reference in `docs/operating.md`: every key the configuration types
/// take, with its variable, its default and its description from `config.example.toml`.
/// The test fails when a key is undocumented or the document is stale; `PORTICO_WRITE_DOCS=1
/// cargo test -p portico reference` writes the table.
#[cfg(test)]
mod reference {
    use std::collections::BTreeMap;

    use super::{Raw, SECTIONS};

    /// Every key of the configuration, as `section.key` (`data_dir` at the top), read from
    /// the types themselves: what they list when given a key they do not know.
    fn keys() -> Vec<String> {
        let known = |text: &str| -> Vec<String> {
            let table: toml::Table = text.parse().unwrap();
            let error = serde_path_to_error::deserialize::<_, Raw>(toml::Value::Table(table)).unwrap_err();
            let message = error.inner().message().to_owned();
            let list = message.split_once(", expected ").map(|(_, l)| l.trim_start_matches("one of ").to_owned());
            let list = list.unwrap_or_default();
            list.split(", ").map(|k| k.trim_matches('`').to_owned()).filter(|k| !k.is_empty()).collect()
        };
        let mut keys: Vec<String> =
            known("not_a_key = 1").into_iter().filter(|k| !SECTIONS.contains(&k.as_str())).collect();
        for section in SECTIONS {
            keys.extend(known(&format!("[{section}]\nnot_a_key = 1")).into_iter().map(|k| format!("{section}.{k}")));
        }
        keys
    }

    /// One key as `config.example.toml` shows it.
    struct Entry {
        value: String,
        /// Whether the example sets it (its default) or shows it commented (unset).
        set: bool,
        description: String,
    }

    /// Every key `config.example.toml` shows, in its order: the first line naming it, and the
    /// comment lines right above (a key right under another shares its description).
    fn example() -> Vec<(String, Entry)> {
        let mut entries: Vec<(String, Entry)> = Vec::new();
        let (mut section, mut comments, mut last_description) = (String::new(), Vec::<String>::new(), String::new());
        for line in include_str!("../../../config.example.toml").lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
                comments.clear();
                continue;
            }
            let (set, body) = match line.strip_prefix("# ") {
                Some(body) => (false, body),
                None => (true, line),
            };
            let key_line = body
                .split_once(" = ")
                .filter(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            match key_line {
                Some((key, value)) => {
                    let key = format!("{section}{key}");
                    if !comments.is_empty() {
                        last_description = comments.join(" ");
                        comments.clear();
                    }
                    if !entries.iter().any(|(k, _)| *k == key) {
                        let entry = Entry { value: value.to_owned(), set, description: last_description.clone() };
                        entries.push((key, entry));
                    }
                }
                None if line.starts_with('#') => comments.push(line.trim_start_matches('#').trim().to_owned()),
                None => {
                    comments.clear();
                    last_description.clear();
                }
            }
        }
        entries
    }

    fn variable(key: &str) -> String {
        format!("PORTICO_{}", key.replace('.', "_").to_ascii_uppercase())
    }

    fn table() -> String {
        let mut out = String::from("| Key | Variable | Default | Reload | What it does |\n|---|---|---|---|---|\n");
        let cell = |text: &str| text.replace('|', "\\|").replace('<', "&lt;");
        for (key, entry) in example() {
            let default =
                if entry.set { format!("`{}`", entry.value) } else { format!("unset (e.g. `{}`)", entry.value) };
            let reload = if super::RESTART_KEYS.contains(&key.as_str()) { "restart" } else { "live" };
            let (variable, description) = (variable(&key), cell(&entry.description));
            out.push_str(&format!(
                "| `{key}` | `{variable}` | {} | {reload} | {description} |\n",
                default.replace('|', "\\|")
            ));
        }
        out
    }

    #[test]
    fn the_configuration_reference_documents_every_key() {
        let keys = keys();
        assert!(keys.len() > 40 && keys.contains(&"proxy.upstream_timeout".to_owned()), "{keys:?}");
        let shown: BTreeMap<String, Entry> = example().into_iter().collect();
        let undocumented: Vec<&String> = keys.iter().filter(|k| !shown.contains_key(*k)).collect();
        assert!(undocumented.is_empty(), "config.example.toml does not show {undocumented:?}");
        let unknown: Vec<&String> = shown.keys().filter(|k| !keys.contains(k)).collect();
        assert!(unknown.is_empty(), "config.example.toml shows keys that do not exist: {unknown:?}");
        let without: Vec<&String> = shown.iter().filter(|(_, e)| e.description.is_empty()).map(|(k, _)| k).collect();
        assert!(without.is_empty(), "keys without a description in config.example.toml: {without:?}");

        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operating.md");
        let document = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- config-reference:begin -->\n", "<!-- config-reference:end -->");
        let start = document.find(begin).expect("docs/operating.md has the reference's markers") + begin.len();
        let stop = document.find(end).expect("the end marker");
        let expected = table();
        if std::env::var_os("PORTICO_WRITE_DOCS").is_some() {
            std::fs::write(path, format!("{}{expected}{}", &document[..start], &document[stop..])).unwrap();
        } else {
            assert!(
                document[start..stop] == expected,
                "docs/operating.md's configuration reference is stale: PORTICO_WRITE_DOCS=1 cargo test -p portico reference"
            );
        }
    }
}
