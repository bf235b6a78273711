//! `amberdb backup …` and `amberdb restore …`.
//!
//! `create` and `restore --server` ask a running server (admin HTTP) to do the work,
//! because only the server may write its data; `list`, `show`, `verify`, `delete` work
//! on the backup files alone; `restore --data-dir` opens an empty data directory itself
//! (the cold path, no server running). Every command prints a human summary, or JSON
//! with `--json`, and exits non-zero on failure.

use crate::admin::{BackupRequest, RestoreRequest};
use crate::config::{BackupArgs, Config};
use amberdb_backup::{Destination, Manifest, Origin, Progress};
use amberdb_error::{Error, Result};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `amberdb backup`.
#[derive(Debug, clap::Args)]
pub struct BackupCommand {
    #[command(subcommand)]
    action: BackupAction,
}

#[derive(Debug, clap::Subcommand)]
enum BackupAction {
    /// Back up the database (or --table …) of a running server to DEST; with
    /// --continuous, start a job that keeps DEST restorable to any commit.
    #[command(alias = "start")]
    Create {
        /// Destination: a path under the server's backup root, or s3://bucket/prefix.
        dest: String,
        /// Back up only these tables (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// zstd level, 1–19.
        #[arg(long)]
        compression_level: Option<i32>,
        /// Compression workers [default: cores].
        #[arg(long)]
        parallelism: Option<usize>,
        /// Start a continuous backup job (snapshot + every commit shipped as it happens).
        #[arg(long, conflicts_with = "incremental")]
        continuous: bool,
        /// Add the commits since the last backup to the incremental chain at DEST (the
        /// first one, into an empty DEST, is a full snapshot).
        #[arg(long)]
        incremental: bool,
        /// Continuous: ship the log at least this often [default: 1s].
        #[arg(long)]
        flush_interval: Option<String>,
        /// Continuous: take a new snapshot this often [default: 24h].
        #[arg(long)]
        snapshot_interval: Option<String>,
        /// Continuous: report the job as lagging beyond this [default: 10m].
        #[arg(long)]
        max_lag: Option<String>,
        /// Cap on bytes written per second.
        #[arg(long)]
        rate_limit: Option<u64>,
        /// `adaptive`: back off while foreground commit latency is high.
        #[arg(long)]
        pacing: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Show the running server's continuous backup jobs.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Stop a continuous backup job (its destination stays restorable up to now).
    Stop {
        /// Job id (see `backup status`).
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Pause a continuous backup job (the commit log is kept, so resuming leaves no gap).
    Pause {
        /// Job id.
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Resume a paused continuous backup job.
    Resume {
        /// Job id.
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// List the backups at or below DEST.
    List {
        /// A directory (or S3 prefix) holding backups.
        dest: String,
        #[command(flatten)]
        common: Common,
    },
    /// Show what the backup at DEST holds.
    Show {
        /// The backup.
        dest: String,
        #[command(flatten)]
        common: Common,
    },
    /// Check every file of the backup at DEST against its manifest, without restoring.
    Verify {
        /// The backup.
        dest: String,
        /// Also decode every block and row and recompute each table's checksum.
        #[arg(long)]
        deep: bool,
        /// Decoding workers [default: cores].
        #[arg(long)]
        parallelism: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete the snapshots and log segments that no restorable point at or after a
    /// cutoff needs (crash-safe: the list is written first; re-run to finish).
    Expire {
        /// The backup.
        dest: String,
        /// Keep every point at or after this time (e.g. '2026-11-01 00:00:00+00').
        #[arg(long, conflicts_with = "keep_days", required_unless_present = "keep_days")]
        before: Option<String>,
        /// Keep every point of the last N days.
        #[arg(long)]
        keep_days: Option<u64>,
        /// Allow deleting everything when nothing restorable would remain.
        #[arg(long)]
        force: bool,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Delete the backup at DEST (manifest first, so it is never half-trusted).
    Delete {
        /// The backup.
        dest: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every command shares.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Admin HTTP address of the running server.
    #[arg(long, env = "AMBERDB_SERVER", default_value = "http://127.0.0.1:9433")]
    server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// File holding the encryption passphrase (encrypts `create`; needed to read an
    /// encrypted backup).
    #[arg(long, env = "AMBERDB_BACKUP_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    backup: BackupArgs,
}

/// `amberdb restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup to restore.
    dest: String,
    /// Restore only these tables (repeatable); default: the whole database.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Restore the (single) table under this name.
    #[arg(long = "as")]
    rename: Option<String>,
    /// Replace an existing table of the same name.
    #[arg(long)]
    replace: bool,
    /// Restore into this data directory with no server running (the cold path);
    /// without it, the running server at --server restores.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Workers [default: cores].
    #[arg(long)]
    parallelism: Option<usize>,
    /// Restore the state as of this time (e.g. '2026-11-22 10:00:00+00', or '-10m').
    #[arg(long, conflicts_with = "to_version")]
    to_time: Option<String>,
    /// Restore the state as of this commit version.
    #[arg(long)]
    to_version: Option<u64>,
    /// After loading, read every restored entry back and check the checksum again.
    #[arg(long)]
    read_back: bool,
    #[command(flatten)]
    common: Common,
}

impl Common {
    /// The passphrase from --key-file (trailing newline removed).
    fn passphrase(&self) -> Result<Option<String>> {
        self.key_file.as_deref().map(crate::config::read_key_file).transpose()
    }

    fn secret(&self) -> Result<Option<amberdb_backup::Secret>> {
        self.passphrase()?.map(amberdb_backup::Secret::new).transpose()
    }
}

fn tables_opt(t: &[String]) -> Option<Vec<String>> {
    (!t.is_empty()).then(|| t.to_vec())
}

/// Shows a progress bar for `p` on a terminal until the returned guard is dropped.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    fn start(p: Arc<Progress>, what: &str, json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self { bar: None, task: None };
        }
        let bar = indicatif::ProgressBar::new(0);
        let style =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let (done, total) = p.bytes();
                if total > 0 {
                    b.set_length(total);
                }
                b.set_position(done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { bar: Some(bar), task: Some(task) }
    }

    fn spinner(what: &str, json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self { bar: None, task: None };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar: Some(bar), task: None }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn print_ranges(ranges: &[amberdb_backup::RestorableRange]) {
    for r in ranges {
        println!(
            "  restorable   {} .. {}  (versions {}..={})",
            r.first_time, r.last_time, r.first_version, r.last_version
        );
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(format!("encode JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

fn print_manifest(m: &Manifest, dest: &str) {
    println!("backup {dest}");
    println!("  kind         {:?}", m.kind);
    println!("  version      {}", m.version);
    println!("  commit time  {}", m.commit_time);
    println!("  finished     {}", m.finished_at);
    println!("  files        {} ({} bytes)", m.files.len(), m.bytes());
    println!("  {:<30} {:>12} {:>14} {:>6}", "table", "rows", "logical bytes", "files");
    for t in &m.tables {
        println!("  {:<30} {:>12} {:>14} {:>6}", t.name, t.rows, t.logical_bytes, t.files.len());
    }
}

async fn post(server: &str, path: &str, body: &impl serde::Serialize) -> Result<serde_json::Value> {
    let url = format!("{}/{path}", server.trim_end_matches('/'));
    reply(&url, reqwest::Client::new().post(&url).json(body).send().await).await
}

async fn get(server: &str, path: &str) -> Result<serde_json::Value> {
    let url = format!("{}/{path}", server.trim_end_matches('/'));
    reply(&url, reqwest::Client::new().get(&url).send().await).await
}

async fn job_action(id: u64, action: &str, common: &Common) -> Result<()> {
    let reply = post(&common.server, &format!("backup/jobs/{id}/{action}"), &serde_json::json!({})).await?;
    if common.json {
        return print_json(&reply);
    }
    print_jobs(std::slice::from_ref(&reply["job"]));
    Ok(())
}

fn print_jobs(jobs: &[serde_json::Value]) {
    let time = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), amberdb_mvcc::format_micros);
    println!(
        "{:>4}  {:<12} {:<30} {:<27} {:<27} {:>9} {:>12}  last error",
        "job", "state", "destination", "restorable from", "restorable to", "lag (s)", "bytes"
    );
    for j in jobs {
        println!(
            "{:>4}  {:<12} {:<30} {:<27} {:<27} {:>9.3} {:>12}  {}",
            j["id"].to_string(),
            j["state"].as_str().unwrap_or("?"),
            j["destination"].as_str().unwrap_or("?"),
            time(&j["first_time_micros"]),
            time(&j["last_time_micros"]),
            j["lag_micros"].as_f64().unwrap_or(0.0) / 1e6,
            j["bytes_written"].to_string(),
            j["last_error"].as_str().unwrap_or("")
        );
    }
}

async fn reply(url: &str, resp: reqwest::Result<reqwest::Response>) -> Result<serde_json::Value> {
    let resp = resp.map_err(|e| {
        Error::Unavailable(format!("cannot reach the server at {url}: {e} (is it running? see --server)"))
    })?;
    let ok = resp.status().is_success();
    let v: serde_json::Value = resp.json().await.map_err(|e| Error::Io(format!("bad reply from {url}: {e}")))?;
    if !ok {
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown error").to_string();
        return Err(Error::InvalidInput(msg));
    }
    Ok(v)
}

/// Runs `amberdb backup …`.
pub async fn run_backup(cmd: BackupCommand) -> Result<()> {
    match cmd.action {
        BackupAction::Create {
            dest,
            tables,
            compression_level,
            parallelism,
            continuous,
            incremental,
            flush_interval,
            snapshot_interval,
            max_lag,
            rate_limit,
            pacing,
            common,
        } => {
            let req = BackupRequest {
                dest: dest.clone(),
                tables: tables_opt(&tables),
                compression_level,
                parallelism,
                encryption_passphrase: common.passphrase()?,
                continuous,
                incremental,
                flush_interval,
                snapshot_interval,
                max_lag,
                rate_limit,
                pacing,
            };
            if incremental {
                let reply = {
                    let _bar = Bar::spinner(&format!("incremental backup to {dest}"), common.json);
                    post(&common.server, "backup", &req).await?
                };
                if common.json {
                    return print_json(&reply);
                }
                let i = &reply["increment"];
                let when = i["commit_time_micros"].as_u64().map(amberdb_mvcc::format_micros).unwrap_or_default();
                if i["full"].as_bool() == Some(true) {
                    println!(
                        "started the incremental chain at {dest} (job {}): full snapshot at version {} ({when})",
                        i["job_id"], i["version"]
                    );
                } else {
                    println!(
                        "incremental backup to {dest} (job {}): now restorable to version {} ({when}); {} bytes in {} log segments",
                        i["job_id"], i["version"], i["bytes"], i["segments"]
                    );
                }
                return Ok(());
            }
            if continuous {
                let reply = {
                    let _bar = Bar::spinner(&format!("starting a continuous backup to {dest}"), common.json);
                    post(&common.server, "backup", &req).await?
                };
                if common.json {
                    return print_json(&reply);
                }
                print_jobs(std::slice::from_ref(&reply["job"]));
                return Ok(());
            }
            let reply = {
                let _bar = Bar::spinner(&format!("backing up to {dest}"), common.json);
                post(&common.server, "backup", &req).await?
            };
            if common.json {
                return print_json(&reply);
            }
            let m: Manifest = serde_json::from_value(reply["manifest"].clone())
                .map_err(|e| Error::Io(format!("bad reply from the server: {e}")))?;
            print_manifest(&m, &dest);
            Ok(())
        }
        BackupAction::Status { common } => {
            let reply = get(&common.server, "backup/jobs").await?;
            if common.json {
                return print_json(&reply);
            }
            print_jobs(reply["jobs"].as_array().map(Vec::as_slice).unwrap_or_default());
            Ok(())
        }
        BackupAction::Stop { id, common } => job_action(id, "stop", &common).await,
        BackupAction::Pause { id, common } => job_action(id, "pause", &common).await,
        BackupAction::Resume { id, common } => job_action(id, "resume", &common).await,
        BackupAction::List { dest, common } => {
            let d = Destination::open_listing(&dest, &common.backup.dest_config(), Origin::Cli)?;
            let all = amberdb_backup::list(&d).await?;
            if common.json {
                return print_json(&all);
            }
            println!("{:<50} {:>10} {:<28} {:>12} {:>14}  status", "backup", "version", "commit time", "rows", "bytes");
            for b in &all {
                match &b.manifest {
                    Some(m) => println!(
                        "{:<50} {:>10} {:<28} {:>12} {:>14}  complete",
                        b.destination,
                        m.version,
                        m.commit_time,
                        m.rows(),
                        m.bytes()
                    ),
                    None => println!(
                        "{:<50} {:>10} {:<28} {:>12} {:>14}  unusable: {}",
                        b.destination,
                        "-",
                        "-",
                        "-",
                        "-",
                        b.error.as_deref().unwrap_or("")
                    ),
                }
            }
            Ok(())
        }
        BackupAction::Show { dest, common } => {
            let d = Destination::open(&dest, &common.backup.dest_config(), Origin::Cli)?;
            let chain = amberdb_backup::Chain::open(&d, common.secret()?.as_ref()).await?;
            let m = amberdb_backup::open_latest(&d, common.secret()?.as_ref()).await?.manifest;
            let ranges = chain.ranges();
            if common.json {
                return print_json(&serde_json::json!({
                    "latest_snapshot": m,
                    "snapshots": chain.snapshots.len(),
                    "log_segments": chain.segments.len(),
                    "restorable_ranges": ranges,
                }));
            }
            print_manifest(&m, d.url());
            println!("  snapshots    {}", chain.snapshots.len());
            println!("  log segments {}", chain.segments.len());
            print_ranges(&ranges);
            Ok(())
        }
        BackupAction::Verify { dest, deep, parallelism, common } => {
            let d = Destination::open(&dest, &common.backup.dest_config(), Origin::Cli)?;
            let progress = Arc::new(Progress::default());
            let report = {
                let _bar = Bar::start(progress.clone(), "verifying", common.json);
                let check = deep.then(amberdb_sql::row_check);
                let workers = parallelism.unwrap_or_else(|| amberdb_backup::Options::default().parallelism);
                amberdb_backup::verify(&d, deep, common.secret()?.as_ref(), check, workers, &progress).await?
            };
            if common.json {
                print_json(&report)?;
            } else {
                println!(
                    "{} verify of {} (version {}): {} files, {} bytes, {} tables, {} rows",
                    if deep { "deep" } else { "shallow" },
                    report.destination,
                    report.version,
                    report.files,
                    report.bytes,
                    report.tables,
                    report.rows
                );
                if report.log_segments > 0 {
                    println!("  {} mutation-log segments", report.log_segments);
                }
                print_ranges(&report.restorable_ranges);
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
                if report.problems.is_empty() {
                    println!("OK");
                }
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(Error::InvalidData(format!(
                    "backup {} failed verification: {}",
                    report.destination, report.problems[0]
                )))
            }
        }
        BackupAction::Expire { dest, before, keep_days, force, dry_run, common } => {
            let d = Destination::open(&dest, &common.backup.dest_config(), Origin::Cli)?;
            let now = amberdb_mvcc::Clock::now(&amberdb_mvcc::SystemClock);
            let cutoff = match (before, keep_days) {
                (Some(t), _) => match amberdb_sql::RestoreTarget::parse_time(&t, now)? {
                    amberdb_sql::RestoreTarget::Time(t) => t,
                    amberdb_sql::RestoreTarget::Version(_) => {
                        return Err(Error::InvalidInput("--before takes a time, not a version".into()))
                    }
                },
                (None, Some(days)) => now.saturating_sub(days.saturating_mul(86_400_000_000)),
                (None, None) => return Err(Error::InvalidInput("give --before TIME or --keep-days N".into())),
            };
            let r = amberdb_backup::expire(&d, common.secret()?.as_ref(), cutoff, force, dry_run).await?;
            if common.json {
                return print_json(&r);
            }
            println!(
                "{}expired {} before {}: {} snapshots, {} log segments, {} objects, {} bytes",
                if dry_run { "would have " } else { "" },
                r.destination,
                amberdb_mvcc::format_micros(cutoff),
                r.snapshots_deleted,
                r.segments_deleted,
                r.objects_deleted,
                r.bytes_freed
            );
            if r.resumed_objects > 0 {
                println!("  finished an interrupted expire ({} objects)", r.resumed_objects);
            }
            print_ranges(&r.restorable_ranges);
            Ok(())
        }
        BackupAction::Delete { dest, common } => {
            let d = Destination::open(&dest, &common.backup.dest_config(), Origin::Cli)?;
            // Refuse to wipe something that is not a backup.
            if d.get(amberdb_backup::DESCRIPTOR).await?.is_none() {
                return Err(Error::InvalidInput(format!(
                    "{} is not a backup (no {})",
                    d.url(),
                    amberdb_backup::DESCRIPTOR
                )));
            }
            let n = amberdb_backup::delete(&d).await?;
            if common.json {
                print_json(&serde_json::json!({ "destination": d.url(), "deleted_objects": n }))
            } else {
                println!("deleted {} ({n} objects)", d.url());
                Ok(())
            }
        }
    }
}

/// Runs `amberdb restore …`.
pub async fn run_restore(args: RestoreArgs) -> Result<()> {
    let tables = tables_opt(&args.tables);
    let summary = match &args.data_dir {
        Some(dir) => {
            let config =
                Config { data_dir: dir.clone(), backup: args.common.backup.dest_config(), ..Config::default() };
            let node = crate::open_node(dir, &config).await?;
            amberdb_sql::cleanup_pending_restores(&node).await?;
            let env = amberdb_sql::Env { backup: config.backup.clone(), jobs: None, backup_key: None };
            let opts = amberdb_sql::BackupOptions {
                parallelism: args.parallelism,
                replace: args.replace,
                encryption_passphrase: args.common.passphrase()?,
                read_back: args.read_back,
                ..amberdb_sql::BackupOptions::default()
            };
            let target = match (&args.to_time, args.to_version) {
                (Some(t), _) => Some(amberdb_sql::RestoreTarget::parse_time(t, node.mvcc().clock().now())?),
                (None, v) => v.map(amberdb_sql::RestoreTarget::Version),
            };
            let progress = Arc::new(Progress::default());
            let r = {
                let _bar = Bar::start(progress.clone(), "restoring", args.common.json);
                let req = amberdb_sql::RestoreRequest {
                    tables: tables.as_deref(),
                    dest: &args.dest,
                    target,
                    rename: args.rename.as_deref(),
                };
                amberdb_sql::restore(&node, &env, &req, Origin::Cli, &opts, &progress).await
            };
            let closed = node.shutdown().await;
            let r = r?;
            closed?;
            serde_json::to_value(&r).map_err(|e| Error::Internal(format!("encode summary: {e}")))?
        }
        None => {
            let req = RestoreRequest {
                dest: args.dest.clone(),
                tables,
                rename: args.rename.clone(),
                replace: args.replace,
                parallelism: args.parallelism,
                encryption_passphrase: args.common.passphrase()?,
                to_time: args.to_time.clone(),
                to_version: args.to_version,
                read_back: args.read_back,
            };
            let _bar = Bar::spinner(&format!("restoring from {}", args.dest), args.common.json);
            post(&args.common.server, "restore", &req).await?["restored"].clone()
        }
    };
    if args.common.json {
        return print_json(&summary);
    }
    let when = summary["commit_time_micros"].as_u64().map(amberdb_mvcc::format_micros).unwrap_or_default();
    println!("restored from {} (version {}, committed {when})", args.dest, summary["version"]);
    if let Some(tables) = summary["tables"].as_array() {
        for t in tables {
            println!("  {} ({} rows)", t[0].as_str().unwrap_or("?"), t[1]);
        }
    }
    Ok(())
}
