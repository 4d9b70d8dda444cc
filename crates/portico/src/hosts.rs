//! `portico host add|ls|rm`: hosts managed directly in the store. The embedded store may be
//! open in `portico serve` at the same time; the server picks the change up within a second.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use portico_model::{Host, HostPattern, Target};
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
        /// Target IPv4 or IPv6 address or host name.
        #[arg(long)]
        ip: String,
        /// Target port.
        #[arg(long)]
        port: u16,
        /// Redirect plain HTTP to HTTPS.
        #[arg(long)]
        forcessl: bool,
        /// Speak TLS to the target.
        #[arg(long)]
        targetssl: bool,
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

/// Runs one host subcommand against the configured store.
pub async fn run(command: HostCommand, config: &Config) -> anyhow::Result<()> {
    // Only `add` may start a new store: `ls` and `rm` on a mistyped path are errors.
    let store = match command {
        HostCommand::Add { .. } => portico_store::open(&config.store_url).await,
        _ => portico_store::open_existing(&config.store_url).await,
    };
    let store = store.context("cannot open the store")?;
    match command {
        HostCommand::Add { name, ip, port, forcessl, targetssl } => {
            let pattern = HostPattern::parse(&name).with_context(|| format!("host {name:?}"))?;
            let target = Target::new(&ip, port).context("target")?;
            let host = Host::new(pattern.clone(), target, forcessl, targetssl, "cli", portico_store::now_ms() as i64);
            match store.create(Kind::Host, pattern.as_str(), &host.to_fields()).await {
                Ok(()) => println!("added {pattern} -> {}", host.target),
                Err(StoreError::Conflict { .. }) => bail!("host {pattern} already exists"),
                Err(e) => return Err(e).context("cannot add the host"),
            }
        }
        HostCommand::Ls { json } => {
            let records = store.records(Kind::Host).await.context("cannot list hosts")?;
            if json {
                // The API's form, with typed values and the `domain` relation; records that do
                // not parse as they are.
                let zones = portico_api::Zones::load(store.as_ref()).await.context("cannot read the DNS zones")?;
                for (_, fields) in &records {
                    match Host::from_fields(fields) {
                        Ok(host) => println!("{}", portico_api::host_json(&host, &zones)),
                        Err(_) => println!("{}", serde_json::to_string(fields)?),
                    }
                }
            } else {
                println!("{:<40} {:<28} {:<9} TARGETSSL", "HOST", "TARGET", "FORCESSL");
                for (key, fields) in &records {
                    match Host::from_fields(fields) {
                        Ok(h) => println!("{:<40} {:<28} {:<9} {}", h.host, h.target, h.forcessl, h.targetssl),
                        Err(e) => println!("{key:<40} (unreadable: {e})"),
                    }
                }
            }
        }
        HostCommand::Rm { name } => {
            let pattern = HostPattern::parse(&name).with_context(|| format!("host {name:?}"))?;
            if !store.delete(Kind::Host, pattern.as_str()).await.context("cannot remove the host")? {
                bail!("no host {pattern}");
            }
            println!("removed {pattern}");
        }
    }
    Ok(())
}
