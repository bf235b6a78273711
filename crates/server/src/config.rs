//! Configuration: one typed struct, every field documented, defaults in one place.
//!
//! Precedence, highest first: command-line flags, `AMBERDB_*` environment variables,
//! the TOML file named by `--config`, the defaults below. Unknown keys in the file are
//! an error (a typo must not silently fall back to a default).

use amberdb_backup::{DestConfig, S3Config};
use amberdb_consensus::NodeConfig;
use amberdb_error::{Error, Result};
use amberdb_mvcc::{ConflictWindowConfig, MvccConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `amberdb server`. Every flag also reads its `AMBERDB_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file (keys as in `Config`, e.g. `listen = "127.0.0.1:5433"`).
    #[arg(long, env = "AMBERDB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the engine and the commit log [default: ./amberdb-data].
    #[arg(long, env = "AMBERDB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for PostgreSQL clients [default: 127.0.0.1:5433].
    #[arg(long, env = "AMBERDB_LISTEN")]
    pub listen: Option<String>,
    /// Address of the admin HTTP endpoint (/health, /status) [default: 127.0.0.1:9433].
    #[arg(long, env = "AMBERDB_HTTP")]
    pub http: Option<String>,
    /// How long old versions stay readable, in seconds [default: 3600].
    #[arg(long, env = "AMBERDB_RETENTION_SECS")]
    pub retention_secs: Option<u64>,
    /// Memory one sort, grouping or DISTINCT may hold before it spills to temporary
    /// files under the data directory, as PostgreSQL's `work_mem` (`64MB`, `512kB`, a
    /// plain number is kB); sessions may `SET work_mem` [default: 64MB].
    #[arg(long, env = "AMBERDB_WORK_MEM")]
    pub work_mem: Option<String>,
    /// Writes a transaction holds in memory; past it, they move to the commit log and
    /// a staging area on disk, so a transaction (one COPY) of any size commits
    /// (`16MB`, `512kB`, a plain number is kB; 64kB to 32MB) [default: 16MB].
    #[arg(long, env = "AMBERDB_TRANSACTION_BUFFER")]
    pub transaction_buffer: Option<String>,
    /// Backup destinations.
    #[command(flatten)]
    pub backup: BackupArgs,
    /// File holding the server's backup passphrase: continuous and incremental backups
    /// `WITH (encrypted)` seal with it, and restores of encrypted backups use it when no
    /// passphrase is given.
    #[arg(long, env = "AMBERDB_BACKUP_KEY_FILE")]
    pub backup_key_file: Option<PathBuf>,
}

/// Reads a passphrase file (trailing newline removed; empty is an error).
pub fn read_key_file(path: &std::path::Path) -> amberdb_error::Result<String> {
    use amberdb_error::Error;
    let raw = std::fs::read(path).map_err(|e| Error::io(path.display(), format!("read key file: {e}")))?;
    let text = String::from_utf8(raw)
        .map_err(|_| Error::InvalidInput(format!("key file {} is not UTF-8 text", path.display())))?;
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.is_empty() {
        return Err(Error::InvalidInput(format!("key file {} is empty", path.display())));
    }
    Ok(text)
}

/// Where backups go: shared by `amberdb server` and the `backup`/`restore` commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BackupArgs {
    /// Directory that bare and relative backup destinations resolve under
    /// [default: ./amberdb-backups].
    #[arg(long, env = "AMBERDB_BACKUP_ROOT")]
    pub backup_root: Option<PathBuf>,
    /// Endpoint of an S3-compatible server for s3:// destinations (path-style requests).
    #[arg(long, env = "AMBERDB_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long, env = "AMBERDB_S3_REGION")]
    pub s3_region: Option<String>,
}

impl BackupArgs {
    /// Applies the flags and the credential variables (`AMBERDB_S3_ACCESS_KEY_ID` /
    /// `AMBERDB_S3_SECRET_ACCESS_KEY`, else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`;
    /// secrets never go on a command line) over `cfg`.
    pub fn apply(&self, cfg: &mut DestConfig) {
        if let Some(v) = &self.backup_root {
            cfg.backup_root = v.clone();
        }
        if let Some(v) = &self.s3_endpoint {
            cfg.s3.endpoint = Some(v.clone());
        }
        if let Some(v) = &self.s3_region {
            cfg.s3.region = Some(v.clone());
        }
        let env = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok();
        if let Some(v) = env("AMBERDB_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID") {
            cfg.s3.access_key_id = Some(v);
        }
        if let Some(v) = env("AMBERDB_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY") {
            cfg.s3.secret_access_key = Some(v);
        }
    }

    /// The destination configuration from defaults and these flags alone (CLI commands).
    pub fn dest_config(&self) -> DestConfig {
        let mut cfg = default_dest_config();
        self.apply(&mut cfg);
        cfg
    }
}

fn default_dest_config() -> DestConfig {
    DestConfig { backup_root: PathBuf::from("./amberdb-backups"), s3: S3Config::default() }
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    http: Option<String>,
    retention_secs: Option<u64>,
    work_mem: Option<String>,
    transaction_buffer: Option<String>,
    conflict_window_secs: Option<u64>,
    checkpoint_every: Option<u64>,
    gc_interval_secs: Option<u64>,
    users: Option<std::collections::BTreeMap<String, String>>,
    backup_root: Option<PathBuf>,
    s3: Option<S3Config>,
}

/// The server's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the engine (`engine/`) and the commit log (`raft/`).
    pub data_dir: PathBuf,
    /// Address the PostgreSQL protocol listens on.
    pub listen: String,
    /// Address the admin HTTP endpoint listens on.
    pub http: String,
    /// Retention window of old versions.
    pub retention: Duration,
    /// Default memory budget of one sort, grouping or DISTINCT before it spills.
    pub work_mem: usize,
    /// Buffered writes past which a transaction stages them (see
    /// `NodeConfig::stage_bytes`).
    pub transaction_buffer: usize,
    /// How long commits' writes are remembered key by key for conflict checks (older
    /// ones by key prefix: coarser checks for longer transactions, no time limit).
    pub conflict_window: Duration,
    /// Checkpoint the engine (and purge the commit log behind it) every this many entries.
    pub checkpoint_every: u64,
    /// How often old versions are garbage-collected.
    pub gc_interval: Duration,
    /// Users and passwords (file only: `[users]` table). Empty: clients are trusted;
    /// otherwise every connection authenticates with SCRAM-SHA-256.
    pub users: std::collections::BTreeMap<String, String>,
    /// Backup destinations: the root that relative paths resolve under (`backup_root`)
    /// and the `[s3]` table (endpoint, region, access_key_id, secret_access_key).
    pub backup: DestConfig,
}

fn work_mem(name: &str, v: &str) -> Result<usize> {
    amberdb_sql::spill::parse_work_mem(v).map_err(|e| Error::InvalidInput(format!("{name}: {}", e.message())))
}

fn transaction_buffer(name: &str, v: &str) -> Result<usize> {
    let bytes = work_mem(name, v)?;
    if !(64 << 10..=32 << 20).contains(&bytes) {
        return Err(Error::InvalidInput(format!("{name}: {v} is outside 64kB..32MB")));
    }
    Ok(bytes)
}

fn positive(name: &str, v: u64) -> Result<u64> {
    if v == 0 {
        return Err(Error::InvalidInput(format!("{name} must be at least 1")));
    }
    Ok(v)
}

impl Config {
    /// Builds the configuration: defaults, then the file, then environment and flags.
    pub fn load(args: &ServerArgs) -> Result<Self> {
        let mut c = Self::default();
        if let Some(path) = &args.config {
            c.apply_file(path)?;
        }
        if let Some(v) = &args.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &args.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &args.http {
            c.http = v.clone();
        }
        if let Some(v) = args.retention_secs {
            c.retention = Duration::from_secs(positive("--retention-secs", v)?);
        }
        if let Some(v) = &args.work_mem {
            c.work_mem = work_mem("--work-mem", v)?;
        }
        if let Some(v) = &args.transaction_buffer {
            c.transaction_buffer = transaction_buffer("--transaction-buffer", v)?;
        }
        args.backup.apply(&mut c.backup);
        Ok(c)
    }

    fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), format!("read config: {e}")))?;
        let f: FileConfig = toml::from_str(&text)
            .map_err(|e| Error::InvalidInput(format!("config file {}: {}", path.display(), e.to_string().trim())))?;
        let secs = |name: &str, v: u64| positive(&format!("{name} in {}", path.display()), v).map(Duration::from_secs);
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.listen {
            self.listen = v;
        }
        if let Some(v) = f.http {
            self.http = v;
        }
        if let Some(v) = f.retention_secs {
            self.retention = secs("retention_secs", v)?;
        }
        if let Some(v) = &f.work_mem {
            self.work_mem = work_mem(&format!("work_mem in {}", path.display()), v)?;
        }
        if let Some(v) = &f.transaction_buffer {
            self.transaction_buffer = transaction_buffer(&format!("transaction_buffer in {}", path.display()), v)?;
        }
        if let Some(v) = f.conflict_window_secs {
            self.conflict_window = secs("conflict_window_secs", v)?;
        }
        if let Some(v) = f.checkpoint_every {
            self.checkpoint_every = positive("checkpoint_every", v)?;
        }
        if let Some(v) = f.gc_interval_secs {
            self.gc_interval = secs("gc_interval_secs", v)?;
        }
        if let Some(v) = f.backup_root {
            self.backup.backup_root = v;
        }
        if let Some(v) = f.s3 {
            self.backup.s3 = v;
        }
        if let Some(users) = f.users {
            if users.iter().any(|(u, p)| u.is_empty() || p.is_empty()) {
                return Err(Error::InvalidInput(format!(
                    "{}: users need a non-empty name and password",
                    path.display()
                )));
            }
            self.users = users;
        }
        Ok(())
    }

    /// The node configuration this implies.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            mvcc: MvccConfig { retention: self.retention, ..MvccConfig::default() },
            conflict: ConflictWindowConfig { max_age: self.conflict_window, ..ConflictWindowConfig::default() },
            checkpoint_every: self.checkpoint_every,
            gc_interval: self.gc_interval,
            stage_bytes: self.transaction_buffer,
            ..NodeConfig::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./amberdb-data"),
            listen: "127.0.0.1:5433".into(),
            http: "127.0.0.1:9433".into(),
            retention: Duration::from_secs(3600),
            work_mem: amberdb_sql::spill::DEFAULT_WORK_MEM,
            transaction_buffer: amberdb_consensus::DEFAULT_STAGE_BYTES,
            conflict_window: Duration::from_secs(60),
            checkpoint_every: 20_000,
            gc_interval: Duration::from_secs(60),
            users: std::collections::BTreeMap::new(),
            backup: default_dest_config(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("amberdb.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7000\"\nretention_secs = 60\n").unwrap();
        let args = ServerArgs { config: Some(file.clone()), retention_secs: Some(120), ..ServerArgs::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.retention, Duration::from_secs(120), "flag beats file");
        assert_eq!(c.http, "127.0.0.1:9433", "default kept");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let err = Config::load(&args).unwrap_err().to_string();
        assert!(err.contains("listn") && err.contains("amberdb.toml"), "{err}");
        let missing = ServerArgs { config: Some(dir.path().join("nope.toml")), ..ServerArgs::default() };
        assert!(Config::load(&missing).unwrap_err().to_string().contains("nope.toml"));
        assert!(Config::load(&ServerArgs { retention_secs: Some(0), ..ServerArgs::default() }).is_err());
    }
}
