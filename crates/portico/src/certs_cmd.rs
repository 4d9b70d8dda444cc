//! `portico cert upload|rm`: uploaded certificates, written directly to the store as the API
//! writes them (and checked by the same code). The embedded store may be open in `portico
//! serve` at the same time; the server serves the new certificate from its next handshake.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use portico_certs::upload::{self, UploadError};

use crate::config::Config;

/// Certificate subcommands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Serve this certificate for HOST (a host name or a `*.zone` pattern) instead of
    /// automatic ones. It is checked first (the chain runs leaf first, each certificate
    /// issued by the next; the key is the leaf's; the leaf covers HOST and is valid now) and
    /// never renewed: the metric `portico_certificate_renewal_failing` says when a third of
    /// its life is left.
    Upload {
        /// Host name or `*.zone` pattern.
        host: String,
        /// The chain, PEM: the leaf first, then its issuer, then that one's.
        #[arg(long, value_name = "FILE")]
        chain: std::path::PathBuf,
        /// The leaf's private key, PEM.
        #[arg(long, value_name = "FILE")]
        key: std::path::PathBuf,
    },
    /// Remove the certificate uploaded for HOST: it gets automatic certificates again.
    Rm {
        /// Host name or `*.zone` pattern, as uploaded.
        host: String,
    },
}

/// Runs a certificate subcommand against the configured store.
pub async fn run(command: CertCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::store_cmd::open(config, false).await?;
    match command {
        CertCommand::Upload { host, chain, key } => {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
            };
            let (chain, key) = (read(&chain)?, read(&key)?);
            let ratio = config.tls.renew_remaining_ratio;
            match upload::upload(store.as_ref(), &host, &chain, &key, ratio).await {
                Ok(done) => println!(
                    "uploaded the certificate of {} for {} (expires {}); it is never renewed automatically",
                    done.name,
                    done.meta.names.join(", "),
                    upload::date(done.meta.not_after)
                ),
                Err(UploadError::Invalid(errors)) => {
                    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    bail!("{}", lines.join("\n"))
                }
                Err(UploadError::Store(e)) => return Err(e).context("cannot store the certificate"),
            }
        }
        CertCommand::Rm { host } => {
            let name = portico_model::HostPattern::parse(&host)
                .map_err(|e| anyhow::anyhow!("{host} is not a host name or pattern: {e}"))?
                .to_string();
            if !upload::remove(store.as_ref(), &name).await.context("cannot remove the certificate")? {
                bail!("no certificate was uploaded for {name}");
            }
            println!("removed the uploaded certificate of {name}: it gets automatic certificates again");
        }
    }
    Ok(())
}
