//! `portico store check|adopt|export|import` and `portico migrate`: the store as a whole.

use std::io::{BufReader, IsTerminal as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use portico_store::backup;
use portico_store::copy::{self, Snapshot};

use crate::config::Config;

/// Store subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check the embedded store's file with redb's integrity check (stop every Portico process
    /// on it first: the check holds the writer lock). Exits 0 when sound; 1 when it was
    /// damaged (redb repairs what it can: compare with a backup) or cannot be read.
    Check,
    /// Accept the store as it is now, after it lost its identity (a Redis without
    /// persistence restarted empty, `FLUSHALL`, another store put in its place): writes a new
    /// identity marker that every running node accepts, and this data directory remembers.
    /// What the store lost stays lost: restore a backup instead to get it back.
    Adopt,
    /// Write a snapshot of everything in the store (hosts, users, tokens, DNS providers,
    /// domains, certificates and their keys, the ACME account, the internal CA) as JSON
    /// lines, to FILE (made 0600) or standard output. Nodes may keep running: a read that a
    /// write lands in is read again.
    Export {
        /// The file to write (replaced whole once the snapshot is complete).
        file: Option<PathBuf>,
    },
    /// Restore a snapshot `store export` wrote into this store, which must be empty unless
    /// `--merge`. The whole file is checked before anything is written.
    Import {
        /// The file `store export` wrote (`-` for standard input).
        file: PathBuf,
        /// Import into a store that holds something already (records and blobs with the same
        /// keys are replaced by the file's; the rest stays).
        #[arg(long)]
        merge: bool,
    },
}

/// Opens the configured store; with `create`, makes it where none is (in an existing
/// directory, or the data directory, which Portico makes itself: a mistyped `store.url` must
/// not leave directories elsewhere).
pub async fn open(config: &Config, create: bool) -> anyhow::Result<std::sync::Arc<dyn portico_store::Store>> {
    if create
        && let Some(path) = config.store_url.strip_prefix("redb://")
        && let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty())
        && dir != config.data_dir
        && matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        bail!(
            "the store's directory {} does not exist: create it (`mkdir -m 0700 {}`) or correct store.url; Portico makes only the data directory ({}) itself",
            dir.display(),
            dir.display(),
            config.data_dir.display()
        );
    }
    let opened = if create {
        portico_store::open(&config.store_url).await
    } else {
        portico_store::open_existing(&config.store_url).await
    };
    opened.context("cannot open the store")
}

/// What an export file holds, said on standard error whenever one is written.
const HOLDS_KEYS: &str = "the export holds every private key of the store (certificates, the ACME account, the internal CA): keep it as safe as the store";

/// Runs a store subcommand.
pub async fn run(command: StoreCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        StoreCommand::Check => check(config).await,
        StoreCommand::Adopt => {
            let store = open(config, false).await?;
            portico_store::identity::adopt(store.as_ref(), Some(&config.data_dir))
                .await
                .context("cannot write the store's new identity")?;
            println!("the store is adopted as it is now: running nodes follow it again within seconds");
            Ok(())
        }
        StoreCommand::Export { file } => export(config, file.as_deref()).await,
        StoreCommand::Import { file, merge } => import(config, &file, merge).await,
    }
}

async fn check(config: &Config) -> anyhow::Result<()> {
    match portico_store::check(&config.store_url).await {
        Ok(true) => {
            println!("the store is sound");
            Ok(())
        }
        Ok(false) => bail!(
            "the store was damaged; redb repaired what it could: compare hosts, users and certificates with a backup"
        ),
        Err(portico_store::StoreError::Damaged { path, detail }) => {
            bail!("{} is damaged beyond what redb can repair ({detail}); restore it from a backup", path.display())
        }
        Err(e) => Err(anyhow::Error::new(e).context("the store cannot be checked")),
    }
}

async fn export(config: &Config, file: Option<&Path>) -> anyhow::Result<()> {
    let store = open(config, false).await?;
    let (snapshot, settled) = Snapshot::read_settled(store.as_ref()).await.context("cannot read the store")?;
    if !settled {
        eprintln!(
            "warning: writes kept landing while the store was read: a record written meanwhile may be older or newer than the rest"
        );
    }
    match file {
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("the export holds private keys: give a FILE, or redirect standard output");
            }
            backup::write(&snapshot, stdout.lock()).context("cannot write the export to standard output")?;
        }
        Some(path) => write_private(path, &snapshot)?,
    }
    eprintln!("exported {}; {HOLDS_KEYS}", snapshot.counts());
    Ok(())
}

/// Writes the export to a temporary file (0600) beside `path`, then renames it over `path`:
/// a failed export leaves an older one whole.
fn write_private(path: &Path, snapshot: &Snapshot) -> anyhow::Result<()> {
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let mut partial = name.to_owned();
    partial.push(".partial");
    let temporary = path.with_file_name(partial);
    let written = (|| {
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        let mut out = std::io::BufWriter::new(file);
        backup::write(snapshot, &mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

async fn import(config: &Config, file: &Path, merge: bool) -> anyhow::Result<()> {
    let snapshot = if file == Path::new("-") {
        backup::read(std::io::stdin().lock()).context("standard input cannot be imported")?
    } else {
        let opened = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        backup::read(BufReader::new(opened)).with_context(|| format!("{} cannot be imported", file.display()))?
    };
    let store = open(config, true).await?;
    if !merge && let Some(held) = copy::held(store.as_ref()).await.context("cannot read the store")? {
        bail!(
            "the store is not empty (it holds {held}): nothing was imported (--merge imports into it, replacing what has the same keys)"
        );
    }
    let imported = snapshot.write(store.as_ref()).await.context("the import failed")?;
    println!("imported {imported}; every one of them is in the store");
    Ok(())
}

/// `portico migrate`: copies, verifies, and says what it copied.
pub async fn migrate(from: &str, to: &str, force: bool) -> anyhow::Result<()> {
    let source = portico_store::open_existing(from).await.context("cannot open the store to copy from (--from)")?;
    let target = portico_store::open(to).await.context("cannot open the store to copy into (--to)")?;
    if !force && let Some(held) = copy::held(target.as_ref()).await.context("cannot read the target store")? {
        bail!(
            "the target store is not empty (it holds {held}): nothing was copied (--force copies into it, overwriting what has the same keys)"
        );
    }
    let copied = copy::copy(source.as_ref(), target.as_ref()).await.context("the copy failed")?;
    println!("copied {copied}; every one of them is in the target");
    Ok(())
}
