//! The options of the service commands (`up`, `gateway`, `worker`, `keys`) and the one way they load the
//! configuration: file < `FLEET_*` variables < flags, every error once with where the value came from.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use fleet_shared::config::{Config, Sources};

use crate::failure::failure;

/// Where the configuration comes from; `global`, so `fleet keys list --nats URL` works as well as before the
/// subcommand.
#[derive(Args, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML); settings can also come from FLEET_* variables.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// NATS server URL (FLEET_NATS_URL); for `up`, a server to use instead of starting one.
    #[arg(long, global = true)]
    pub nats: Option<String>,
}

#[derive(Args, Clone, Default)]
pub struct LogArgs {
    /// Log lines for people (`text`, without colour when not on a terminal) or one JSON object per line.
    #[arg(long, value_enum, env = "FLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

impl LogArgs {
    /// The format logs and the start-up summary use: `--log-format`, or the older `RUST_LOG_FORMAT=json`.
    pub fn format(&self) -> LogFormat {
        let older = std::env::var("RUST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
        if older {
            LogFormat::Json
        } else {
            self.log_format
        }
    }

    pub fn is_json(&self) -> bool {
        self.format() == LogFormat::Json
    }
}

#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What a fleet service (`fleet gateway`, `fleet worker`) is started with. `--http` is each service's own listener;
/// its help is set beside the command.
#[derive(Args, Clone)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long)]
    pub http: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

impl ConfigArgs {
    /// The layers to load from, with `flags` (key, value, flag name) on top.
    pub fn sources(&self, flags: &[(&str, Option<&String>, &str)]) -> Sources {
        let mut sources = Sources::from_process(self.config.as_deref());
        if let Some(url) = &self.nats {
            sources = sources.with_flag("nats.url", url.clone(), "--nats");
        }
        for (key, value, flag) in flags {
            if let Some(value) = value {
                sources = sources.with_flag(key, value.to_string(), flag);
            }
        }
        sources
    }
}

/// Loads the configuration; a misspelt `FLEET_*` variable is warned about, since it would otherwise do nothing.
pub fn load(sources: &Sources) -> Result<Config> {
    let config = Config::load(sources).map_err(|e| failure("invalid_config", e.to_string()))?;
    for var in sources.unknown_variables() {
        tracing::warn!("{var} is not a configuration variable and sets nothing (misspelt? keys are FLEET_SECTION_KEY, e.g. FLEET_WORKER_MAX_CONCURRENT)");
    }
    Ok(config)
}
