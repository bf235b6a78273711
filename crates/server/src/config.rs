//! Configuration: one typed struct, every field documented, defaults in one place.
//! Command-line flags override `AMBERDB_*` environment variables, which override the
//! defaults.

use amberdb_consensus::NodeConfig;
use amberdb_error::{Error, Result};
use amberdb_mvcc::{ConflictWindowConfig, MvccConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `amberdb server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory holding the engine and the commit log.
    #[arg(long, env = "AMBERDB_DATA_DIR", default_value = Config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Address for PostgreSQL clients.
    #[arg(long, env = "AMBERDB_LISTEN", default_value = Config::DEFAULT_LISTEN)]
    pub listen: String,
    /// How long old versions stay readable, in seconds (AS OF SYSTEM TIME, backups).
    #[arg(long, env = "AMBERDB_RETENTION_SECS", default_value_t = Config::DEFAULT_RETENTION_SECS)]
    pub retention_secs: u64,
}

/// The server's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the engine (`engine/`) and the commit log (`raft/`).
    pub data_dir: PathBuf,
    /// Address the PostgreSQL protocol listens on.
    pub listen: String,
    /// Retention window of old versions.
    pub retention: Duration,
    /// Longest a read-write transaction may run and still commit.
    pub conflict_window: Duration,
    /// Checkpoint the engine (and purge the commit log behind it) every this many entries.
    pub checkpoint_every: u64,
    /// How often old versions are garbage-collected.
    pub gc_interval: Duration,
}

impl Config {
    /// Default data directory, relative to the working directory.
    pub const DEFAULT_DATA_DIR: &'static str = "./amberdb-data";
    /// Default PostgreSQL protocol address.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:5433";
    /// Default retention: one hour.
    pub const DEFAULT_RETENTION_SECS: u64 = 3600;

    /// Builds the configuration from flags (which already folded in the environment).
    pub fn load(args: &ServerArgs) -> Result<Self> {
        if args.retention_secs == 0 {
            return Err(Error::InvalidInput("--retention-secs must be at least 1".into()));
        }
        Ok(Self {
            data_dir: args.data_dir.clone(),
            listen: args.listen.clone(),
            retention: Duration::from_secs(args.retention_secs),
            ..Self::default()
        })
    }

    /// The node configuration this implies.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            mvcc: MvccConfig { retention: self.retention },
            conflict: ConflictWindowConfig { max_age: self.conflict_window, ..ConflictWindowConfig::default() },
            checkpoint_every: self.checkpoint_every,
            gc_interval: self.gc_interval,
            ..NodeConfig::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(Self::DEFAULT_DATA_DIR),
            listen: Self::DEFAULT_LISTEN.into(),
            retention: Duration::from_secs(Self::DEFAULT_RETENTION_SECS),
            conflict_window: Duration::from_secs(60),
            checkpoint_every: 20_000,
            gc_interval: Duration::from_secs(60),
        }
    }
}
