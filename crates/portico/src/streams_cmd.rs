//! `portico stream add|ls|rm`: streams (TCP and UDP ports forwarded to targets) directly in the
//! store, checked by the same code as the API's; a running server picks the change up.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use portico_model::stream::Stream;
use portico_store::Kind;

use crate::config::Config;
use crate::hosts::{refused, target_json};

/// Stream subcommands.
#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Forward connections to ADDRESS (`127.0.0.1:5432`, `[::]:2222`) to the targets.
    Add {
        /// Where to listen.
        #[arg(long)]
        listen: String,
        /// A target, `IP:PORT` or `IP:PORT@WEIGHT`; repeat for several.
        #[arg(long = "target", value_name = "IP:PORT[@WEIGHT]", required = true)]
        target: Vec<String>,
        /// `tcp` (the default) or `udp` (a session per client address).
        #[arg(long)]
        protocol: Option<String>,
        /// How connections are shared: round_robin, ip_hash or first.
        #[arg(long)]
        balance: Option<String>,
        /// Only these addresses or networks may connect; repeat for several.
        #[arg(long, value_name = "CIDR")]
        allow: Vec<String>,
        /// These may not (deny wins); repeat for several.
        #[arg(long, value_name = "CIDR")]
        deny: Vec<String>,
        /// Start each connection to a target with a PROXY protocol v1 header.
        #[arg(long)]
        proxy_protocol: bool,
        /// Check the targets (TCP), as the API's JSON: `{"interval": "5s", "unhealthy": 3,
        /// "healthy": 2}` (`{}` takes those defaults).
        #[arg(long, value_name = "JSON")]
        health_check: Option<String>,
    },
    /// List streams.
    Ls {
        /// One JSON object per stream, as the API shows them.
        #[arg(long)]
        json: bool,
    },
    /// Remove a stream.
    Rm {
        /// Its id (`portico stream ls`).
        id: String,
    },
}

/// Runs one stream subcommand against the configured store.
pub async fn run(command: StreamCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::store_cmd::open(config, matches!(command, StreamCommand::Add { .. })).await?;
    match command {
        StreamCommand::Add { listen, target, protocol, balance, allow, deny, proxy_protocol, health_check } => {
            use serde_json::json;
            let targets = target.iter().map(|t| target_json(t)).collect::<anyhow::Result<Vec<_>>>()?;
            let mut body = json!({"listen": listen, "targets": targets, "allow": allow, "deny": deny,
                "proxyProtocol": proxy_protocol});
            if let Some(protocol) = protocol {
                body["protocol"] = json!(protocol);
            }
            if let Some(balance) = balance {
                body["balance"] = json!(balance);
            }
            if let Some(check) = health_check {
                body["healthCheck"] =
                    serde_json::from_str(&check).map_err(|_| anyhow::anyhow!("--health-check is not JSON: {check}"))?;
            }
            let body = body.as_object().cloned().unwrap_or_default();
            let stream = Stream::from_json(&body, "cli", portico_store::now_ms() as i64).map_err(refused)?;
            for (id, fields) in store.records(Kind::Stream).await? {
                if Stream::from_fields(&fields).is_ok_and(|other| other.listen == stream.listen) {
                    bail!("stream {id} listens on {} already", stream.listen);
                }
            }
            let id = format!("{:016x}", fastrand::u64(..));
            store.create(Kind::Stream, &id, &stream.to_fields()).await.context("cannot add the stream")?;
            println!("added stream {id}: {} → {}", stream.listen, target.join(", "));
        }
        StreamCommand::Ls { json } => {
            for (id, fields) in store.records(Kind::Stream).await? {
                match Stream::from_fields(&fields) {
                    Ok(stream) if json => println!("{}", stream.view(&id)),
                    Ok(stream) => {
                        let targets: Vec<String> = stream.targets.iter().map(|u| u.target.to_string()).collect();
                        println!("{id}  {}  tcp  {}", stream.listen, targets.join(", "));
                    }
                    Err(e) => println!("{id}  (unreadable: {e})"),
                }
            }
        }
        StreamCommand::Rm { id } => {
            if !store.delete(Kind::Stream, &id).await.context("cannot remove the stream")? {
                bail!("no stream {id}");
            }
            println!("removed stream {id}");
        }
    }
    Ok(())
}
