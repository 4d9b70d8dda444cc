//! `portico host add|update|ls|rm`: hosts managed directly in the store. The embedded store
//! may be open in `portico serve` at the same time; the server picks the change up within a
//! second. Fields are checked by the same code as the API's.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use portico_model::host_json::hash_basic_auth;
use portico_model::{FieldError, Host, HostPattern};
use portico_store::{Kind, StoreError};

use crate::config::Config;

/// Host subcommands.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add a host: requests for NAME (a pattern: `app.example.com`, `*.example.com`, …) go
    /// to IP:PORT.
    Add {
        /// Host name or pattern.
        name: String,
        /// Target IPv4 or IPv6 address or host name (or give `--target`; none for a
        /// redirect or static host).
        #[arg(long, required_unless_present_any = ["target", "kind"])]
        ip: Option<String>,
        /// Target port.
        #[arg(long, required_unless_present_any = ["target", "kind"])]
        port: Option<u16>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Redirect plain HTTP to HTTPS: `--forcessl`, `--forcessl=true` or `--forcessl=false`
        /// (the default).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        forcessl: Option<bool>,
        /// Speak TLS to the target: `--targetssl`, `--targetssl=true` or `--targetssl=false`
        /// (the default).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        targetssl: Option<bool>,
    },
    /// Change a host: only what is given changes.
    Update {
        /// Host name or pattern, as added.
        name: String,
        /// Rename it.
        #[arg(long)]
        rename: Option<String>,
        /// The first target's address.
        #[arg(long)]
        ip: Option<String>,
        /// The first target's port.
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Stop the active health checks.
        #[arg(long, conflicts_with = "health_check")]
        no_health_check: bool,
        /// Redirect plain HTTP to HTTPS: `--forcessl` (or `=true`) or `--forcessl=false`.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        forcessl: Option<bool>,
        /// Speak TLS to the target: `--targetssl` (or `=true`) or `--targetssl=false`.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        targetssl: Option<bool>,
    },
    /// List hosts.
    Ls {
        /// One JSON object per host, with the seed's field names.
        #[arg(long)]
        json: bool,
    },
    /// Remove a host.
    Rm {
        /// Host name or pattern, as added.
        name: String,
    },
}

/// Several targets, balancing and health checks (`add` and `update`).
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// A target, `IP:PORT` or `IP:PORT@WEIGHT` (`[::1]:8080@2`); repeat for several. Given
    /// to `update`, the list replaces the host's.
    #[arg(long = "target", value_name = "IP:PORT[@WEIGHT]")]
    target: Vec<String>,
    /// How requests are shared: round_robin, least_conn, ip_hash or first.
    #[arg(long)]
    balance: Option<String>,
    /// Check the targets with `GET PATH` (active health checks).
    #[arg(long, value_name = "PATH")]
    health_check: Option<String>,
    /// Time between checks (`5s` by default).
    #[arg(long, requires = "health_check", value_name = "DURATION")]
    health_interval: Option<String>,
    /// The status a healthy target answers (200 by default).
    #[arg(long, requires = "health_check", value_name = "STATUS")]
    health_expect: Option<u16>,
    /// A user who may pass, `USER:PASSWORD` (stored as an Argon2id hash); repeat for
    /// several. Given to `update`, the list replaces the host's.
    #[arg(long = "basic-auth", value_name = "USER:PASSWORD")]
    basic_auth: Vec<String>,
    /// Only these addresses or networks may pass (`10.0.0.0/8`); repeat for several.
    #[arg(long, value_name = "CIDR")]
    allow: Vec<String>,
    /// These may not (deny wins over allow); repeat for several.
    #[arg(long, value_name = "CIDR")]
    deny: Vec<String>,
    /// Requests per second per client address, with an optional burst: `5` or `5:20`.
    #[arg(long, value_name = "PER_SECOND[:BURST]")]
    rate_limit: Option<String>,
    /// Ask this authentication service (Authelia, oauth2-proxy) about every request.
    #[arg(long, value_name = "URL")]
    forward_auth: Option<String>,
    /// A header of the service's answer copied onto the request; repeat for several.
    #[arg(long = "forward-auth-header", requires = "forward_auth", value_name = "NAME")]
    forward_auth_headers: Vec<String>,
    /// What the host answers with: proxy (the default), redirect, static, or passthrough
    /// (TLS for its names forwarded to its targets unterminated).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// A passthrough host's settings, as the API's JSON: `{"proxyProtocol": true}`.
    #[arg(long, value_name = "JSON")]
    passthrough: Option<String>,
    /// A redirect host's target, as the API's JSON: `{"url": "https://example.com", "code":
    /// 301, "keepPath": true}`.
    #[arg(long, value_name = "JSON")]
    redirect: Option<String>,
    /// A static host's answer, as the API's JSON: `{"status": 404, "contentType":
    /// "text/plain", "body": "…"}`.
    #[arg(long = "static", value_name = "JSON")]
    static_answer: Option<String>,
    /// Header rules, as the API's JSON: `{"request": {"set": {…}, "add": {…}, "remove":
    /// […]}, "response": {…}}`; `null` removes them.
    #[arg(long, value_name = "JSON")]
    headers: Option<String>,
    /// Strict-Transport-Security on HTTPS answers, as the API's JSON: `{"maxAge":
    /// 31536000, "includeSubDomains": true, "preload": false}`; `null` removes it.
    #[arg(long, value_name = "JSON")]
    hsts: Option<String>,
    /// Error pages, as the API's JSON: `{"502": "<h1>…</h1>", "default": "…"}`; `null`
    /// removes them.
    #[arg(long = "error-pages", alias = "errorPages", value_name = "JSON")]
    error_pages: Option<String>,
    /// Compress answers for clients that accept it: `--compress`, `--compress=true` or
    /// `--compress=false` (the default).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    compress: Option<bool>,
}

impl PolicyArgs {
    /// The API's JSON fields for these flags.
    fn fields(&self, out: &mut serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> {
        use serde_json::json;
        if !self.target.is_empty() {
            let list = self.target.iter().map(|t| target_json(t)).collect::<anyhow::Result<Vec<_>>>()?;
            out.insert("targets".into(), serde_json::Value::Array(list));
        }
        if let Some(balance) = &self.balance {
            out.insert("balance".into(), json!(balance));
        }
        if let Some(path) = &self.health_check {
            let mut check = json!({ "path": path });
            if let Some(interval) = &self.health_interval {
                check["interval"] = json!(interval);
            }
            if let Some(expect) = self.health_expect {
                check["expect"] = json!(expect);
            }
            out.insert("healthCheck".into(), check);
        }
        if !self.basic_auth.is_empty() {
            let users = self
                .basic_auth
                .iter()
                .map(|u| {
                    let (user, password) = u.split_once(':').with_context(|| format!("{u:?} is not USER:PASSWORD"))?;
                    Ok(json!({ "username": user, "password": password }))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.insert("basicAuth".into(), serde_json::Value::Array(users));
        }
        if !self.allow.is_empty() {
            out.insert("allow".into(), json!(self.allow));
        }
        if !self.deny.is_empty() {
            out.insert("deny".into(), json!(self.deny));
        }
        if let Some(limit) = &self.rate_limit {
            let (rate, burst) = match limit.split_once(':') {
                Some((rate, burst)) => {
                    (rate, Some(burst.parse::<u64>().with_context(|| format!("burst in {limit:?}"))?))
                }
                None => (limit.as_str(), None),
            };
            let rate: f64 = rate.parse().with_context(|| format!("{limit:?} is not PER_SECOND[:BURST]"))?;
            let mut spec = json!({ "perSecond": rate });
            if let Some(burst) = burst {
                spec["burst"] = json!(burst);
            }
            out.insert("rateLimit".into(), spec);
        }
        if let Some(url) = &self.forward_auth {
            out.insert("forwardAuth".into(), json!({ "url": url, "copyHeaders": self.forward_auth_headers }));
        }
        if let Some(kind) = &self.kind {
            out.insert("kind".into(), json!(kind));
        }
        if let Some(compress) = self.compress {
            out.insert("compress".into(), json!(compress));
        }
        for (field, flag, text) in [
            ("redirect", "--redirect", &self.redirect),
            ("static", "--static", &self.static_answer),
            ("passthrough", "--passthrough", &self.passthrough),
            ("headers", "--headers", &self.headers),
            ("hsts", "--hsts", &self.hsts),
            ("errorPages", "--error-pages", &self.error_pages),
        ] {
            if let Some(text) = text {
                let value: serde_json::Value =
                    serde_json::from_str(text).with_context(|| format!("{flag} is not JSON: {text}"))?;
                out.insert(field.into(), value);
            }
        }
        Ok(())
    }
}

/// `IP:PORT[@WEIGHT]` as the API's `{ip, port, weight}`.
pub(crate) fn target_json(text: &str) -> anyhow::Result<serde_json::Value> {
    let (address, weight) = match text.rsplit_once('@') {
        Some((address, weight)) => {
            (address, Some(weight.parse::<u16>().with_context(|| format!("weight in {text:?}"))?))
        }
        None => (text, None),
    };
    let (ip, port) = address.rsplit_once(':').with_context(|| format!("{text:?} is not IP:PORT"))?;
    let port: u16 = port.parse().with_context(|| format!("port in {text:?}"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Ok(serde_json::json!({ "ip": ip, "port": port, "weight": weight.unwrap_or(1) }))
}

/// Every refused field, one per line.
pub(crate) fn refused(errors: Vec<FieldError>) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|e| format!("{}: {e}.", e.field())).collect();
    anyhow::anyhow!("{}", lines.join("\n"))
}

/// Runs one host subcommand against the configured store.
pub async fn run(command: HostCommand, config: &Config) -> anyhow::Result<()> {
    // Only `add` may start a new store: `ls` and `rm` on a mistyped path are errors.
    let store = crate::store_cmd::open(config, matches!(command, HostCommand::Add { .. })).await?;
    let store = store.as_ref();
    match command {
        HostCommand::Add { name, ip, port, policy, forcessl, targetssl } => {
            let mut fields = serde_json::Map::new();
            fields.insert("host".into(), name.into());
            fields.insert("forcessl".into(), forcessl.unwrap_or(false).into());
            fields.insert("targetssl".into(), targetssl.unwrap_or(false).into());
            if let (Some(ip), Some(port)) = (ip, port) {
                fields.insert("ip".into(), ip.into());
                fields.insert("targetPort".into(), port.into());
            }
            policy.fields(&mut fields)?;
            add(store, fields).await
        }
        HostCommand::Update { name, rename, ip, port, policy, no_health_check, forcessl, targetssl } => {
            use serde_json::json;
            let mut fields = serde_json::Map::new();
            let given = [
                ("host", rename.map(|r| json!(r))),
                ("ip", ip.map(|ip| json!(ip))),
                ("targetPort", port.map(|p| json!(p))),
                ("healthCheck", no_health_check.then_some(serde_json::Value::Null)),
                ("forcessl", forcessl.map(|v| json!(v))),
                ("targetssl", targetssl.map(|v| json!(v))),
            ];
            for (key, value) in given {
                if let Some(value) = value {
                    fields.insert(key.to_owned(), value);
                }
            }
            policy.fields(&mut fields)?;
            update(store, &name, fields).await
        }
        HostCommand::Ls { json } => list(store, json).await,
        HostCommand::Rm { name } => {
            let pattern = HostPattern::parse(&name).with_context(|| format!("host {name:?}"))?;
            if !store.delete(Kind::Host, pattern.as_str()).await.context("cannot remove the host")? {
                bail!("no host {pattern}");
            }
            println!("removed {pattern}");
            Ok(())
        }
    }
}

/// `host add`: a new host from the API's fields, by the model's rules.
async fn add(
    store: &dyn portico_store::Store,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    hash_basic_auth(&mut fields).map_err(|e| refused(vec![e]))?;
    let host = Host::from_json(&fields, "cli", portico_store::now_ms() as i64).map_err(refused)?;
    let pattern = &host.host;
    match store.create(Kind::Host, pattern.as_str(), &host.to_fields()).await {
        Ok(()) => println!("added {pattern} -> {}", targets_text(&host)),
        Err(StoreError::Conflict { .. }) => bail!("host {pattern} already exists"),
        Err(e) => return Err(e).context("cannot add the host"),
    }
    Ok(())
}

/// `host update`: the API's fields applied to the stored host, written only if nobody
/// changed it meanwhile.
async fn update(
    store: &dyn portico_store::Store,
    name: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let pattern = HostPattern::parse(name).with_context(|| format!("host {name:?}"))?;
    let (stored, revision) = store
        .record_at(Kind::Host, pattern.as_str())
        .await
        .context("cannot read the host")?
        .with_context(|| format!("no host {pattern}"))?;
    let mut host = Host::from_fields(&stored).with_context(|| format!("host {pattern} does not parse"))?;
    hash_basic_auth(&mut fields).map_err(|e| refused(vec![e]))?;
    host.apply_json(&fields).map_err(refused)?;
    host.stamps.touch("cli", portico_store::now_ms() as i64);
    let key = host.host.to_string();
    match store.replace_if(Kind::Host, pattern.as_str(), &key, &host.to_fields(), revision).await {
        Ok(_) => println!("updated {key} -> {}", targets_text(&host)),
        Err(StoreError::Stale { .. }) => bail!("host {pattern} changed meanwhile: run the command again"),
        Err(StoreError::Conflict { .. }) => bail!("host {key} already exists"),
        Err(e) => return Err(e).context("cannot update the host"),
    }
    Ok(())
}

/// `host ls`: a table, or with `--json` the API's form (typed values and the `domain`
/// relation); records that do not parse as they are.
async fn list(store: &dyn portico_store::Store, json: bool) -> anyhow::Result<()> {
    let records = store.records(Kind::Host).await.context("cannot list hosts")?;
    if json {
        let zones = portico_store::load_zones(store).await.context("cannot read the DNS zones")?;
        for (_, fields) in &records {
            match Host::from_fields(fields) {
                Ok(host) => println!("{}", serde_json::to_string(&zones.host_with_domain(&host))?),
                Err(_) => println!("{}", serde_json::to_string(fields)?),
            }
        }
        return Ok(());
    }
    println!("{:<40} {:<28} {:<9} TARGETSSL", "HOST", "TARGET", "FORCESSL");
    for (key, fields) in &records {
        match Host::from_fields(fields) {
            Ok(h) => println!("{:<40} {:<28} {:<9} {}", h.host, targets_text(&h), h.forcessl, h.targetssl),
            Err(e) => println!("{key:<40} (unreadable: {e})"),
        }
    }
    Ok(())
}

/// `10.0.0.1:80, 10.0.0.2:80 (round_robin)`, the one target, or what a host that does not
/// forward answers (`redirect 301 https://…`, `static 404`); a passthrough host's targets
/// follow `passthrough`.
fn targets_text(host: &Host) -> String {
    match &host.kind {
        portico_model::HostKind::Redirect(r) => return format!("redirect {} {}", r.code, r.url),
        portico_model::HostKind::Static(a) => return format!("static {}", a.status),
        portico_model::HostKind::Passthrough(_) => {
            let mut plain = host.clone();
            plain.kind = portico_model::HostKind::Proxy;
            return format!("passthrough {}", targets_text(&plain));
        }
        portico_model::HostKind::Proxy => {}
    }
    if let ([_], Some(target)) = (host.targets.as_slice(), host.target()) {
        return target.to_string();
    }
    let list: Vec<String> = host
        .targets
        .iter()
        .map(|u| if u.weight == 1 { u.target.to_string() } else { format!("{}@{}", u.target, u.weight) })
        .collect();
    format!("{} ({})", list.join(", "), host.balance)
}
