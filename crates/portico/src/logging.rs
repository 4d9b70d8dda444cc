//! The application log: `log.level` and `log.format`, which a reload may change.

use anyhow::Context as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{Config, LogFormat};

/// The registry under its (replaceable) filter, where the output layer sits.
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// The installed log, whose level and format can be replaced (each a layer of its own: a
/// per-layer filter cannot be replaced once installed).
#[derive(Clone)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Filtered>,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logging")
    }
}

impl Logging {
    /// Installs the process's log as `config` says.
    pub fn install(config: &Config) -> anyhow::Result<Self> {
        let (filter, filter_handle) = reload::Layer::new(filter(config)?);
        let (output, output_handle) = reload::Layer::new(output(config));
        tracing_subscriber::registry().with(filter).with(output).init();
        Ok(Self { filter: filter_handle, output: output_handle })
    }

    /// Logs at `config`'s level and in its format from now on; an invalid level changes
    /// nothing.
    pub fn apply(&self, config: &Config) -> anyhow::Result<()> {
        let filter = filter(config)?;
        self.output.reload(output(config)).context("cannot change the log's format")?;
        self.filter.reload(filter).context("cannot change the log's level")
    }

    /// Whether `config`'s level is one [`Logging::apply`] takes.
    pub fn check(config: &Config) -> anyhow::Result<()> {
        filter(config).map(|_| ())
    }
}

fn filter(config: &Config) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("log.level: {:?} is not a level or filter", config.log_level))
}

fn output(config: &Config) -> Output {
    // Colours only for a person at a terminal, never into a file or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => fmt.json().flatten_event(false).boxed(),
        LogFormat::Text => fmt.boxed(),
    }
}
