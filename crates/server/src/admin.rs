//! The admin HTTP endpoint: `GET /health` (is this node serving?), `GET /status` (its
//! Raft and version state as JSON), `GET /metrics` (Prometheus text format), and
//! `POST /backup` / `POST /restore`, `GET /backup/jobs`, `POST /backup/jobs/{id}/{pause,
//! resume,stop}`, which the `amberdb backup …` and `amberdb restore` commands call.
//! Destinations given over HTTP are confined to the backup root exactly like those in
//! SQL statements.

use amberdb_backup::{Origin, Progress};
use amberdb_consensus::Node;
use amberdb_sql::{BackupOptions, Control, Env, RestoreTarget};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone)]
struct App {
    node: Arc<Node>,
    env: Arc<Env>,
}

/// Serves the admin endpoint until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    env: Arc<Env>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/backup", post(backup))
        .route("/restore", post(restore))
        .route("/backup/jobs", get(jobs))
        .route("/backup/jobs/{id}/{action}", post(job_control))
        .route("/metrics", get(metrics))
        .with_state(App { node, env });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Body of `POST /backup`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Destination.
    pub dest: String,
    /// Tables (none: the database).
    pub tables: Option<Vec<String>>,
    /// zstd level.
    pub compression_level: Option<i32>,
    /// Workers.
    pub parallelism: Option<usize>,
    /// Encrypt with this passphrase.
    #[serde(default)]
    pub encryption_passphrase: Option<String>,
    /// Start a continuous backup job instead of taking one snapshot.
    #[serde(default)]
    pub continuous: bool,
    /// Add a link to the incremental chain at `dest` (or start one there).
    #[serde(default)]
    pub incremental: bool,
    /// Continuous: ship at least this often (e.g. `1s`).
    #[serde(default)]
    pub flush_interval: Option<String>,
    /// Continuous: snapshot this often (e.g. `24h`).
    #[serde(default)]
    pub snapshot_interval: Option<String>,
    /// Continuous: report lagging beyond this (e.g. `10m`).
    #[serde(default)]
    pub max_lag: Option<String>,
    /// Cap on bytes written per second.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// `adaptive`: back off while foreground commit latency is high.
    #[serde(default)]
    pub pacing: Option<String>,
}

/// Body of `POST /restore`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// Destination.
    pub dest: String,
    /// Tables (none: the database).
    pub tables: Option<Vec<String>>,
    /// New name (one table only).
    pub rename: Option<String>,
    /// Replace an existing table.
    pub replace: bool,
    /// Workers.
    pub parallelism: Option<usize>,
    /// The backup's passphrase.
    #[serde(default)]
    pub encryption_passphrase: Option<String>,
    /// Restore the state as of this time (timestamp, or `-10m` before now).
    #[serde(default)]
    pub to_time: Option<String>,
    /// Restore the state as of this commit version.
    #[serde(default)]
    pub to_version: Option<u64>,
    /// Read every restored entry back and check it again.
    #[serde(default)]
    pub read_back: bool,
}

type Reply = (StatusCode, Json<serde_json::Value>);

fn failure(e: amberdb_error::Error) -> Reply {
    let code = match e {
        amberdb_error::Error::Internal(_) | amberdb_error::Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    (code, Json(serde_json::json!({ "error": e.message(), "sqlstate": e.sqlstate() })))
}

async fn backup(State(app): State<App>, Json(req): Json<BackupRequest>) -> Reply {
    let duration = |v: &Option<String>| v.as_deref().map(amberdb_sql::parse_duration).transpose();
    let adaptive_pacing = match req.pacing.as_deref() {
        None | Some("none") | Some("off") => false,
        Some("adaptive") => true,
        Some(p) => {
            return failure(amberdb_error::Error::InvalidInput(format!("pacing must be adaptive or none, not {p}")))
        }
    };
    let opts = match (duration(&req.flush_interval), duration(&req.snapshot_interval), duration(&req.max_lag)) {
        (Ok(flush_interval), Ok(snapshot_interval), Ok(max_lag)) => BackupOptions {
            compression_level: req.compression_level,
            parallelism: req.parallelism,
            encryption_passphrase: req.encryption_passphrase,
            continuous: req.continuous,
            incremental: req.incremental,
            flush_interval,
            snapshot_interval,
            max_lag,
            rate_limit: req.rate_limit,
            adaptive_pacing,
            ..BackupOptions::default()
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return failure(e),
    };
    if opts.continuous || opts.incremental {
        if req.tables.is_some() {
            return failure(amberdb_error::Error::InvalidInput(
                "continuous and incremental backups cover the whole database (no tables)".into(),
            ));
        }
        let Some(jobs) = &app.env.jobs else {
            return failure(amberdb_error::Error::Internal("this server runs no backup jobs".into()));
        };
        if opts.continuous && opts.incremental {
            return failure(amberdb_error::Error::InvalidInput("choose continuous or incremental, not both".into()));
        }
        if opts.incremental {
            return match jobs.incremental(&req.dest, &opts).await {
                Ok(i) => (StatusCode::OK, Json(serde_json::json!({ "increment": i }))),
                Err(e) => failure(e),
            };
        }
        return match jobs.create(&req.dest, &opts).await {
            Ok(s) => (StatusCode::OK, Json(serde_json::json!({ "job": s }))),
            Err(e) => failure(e),
        };
    }
    let progress = Arc::new(Progress::default());
    match amberdb_sql::backup(&app.node, &app.env, req.tables.as_deref(), &req.dest, Origin::Sql, &opts, progress).await
    {
        Ok(m) => (StatusCode::OK, Json(serde_json::json!({ "manifest": m }))),
        Err(e) => failure(e),
    }
}

async fn restore(State(app): State<App>, Json(req): Json<RestoreRequest>) -> Reply {
    let opts = BackupOptions {
        parallelism: req.parallelism,
        replace: req.replace,
        encryption_passphrase: req.encryption_passphrase,
        read_back: req.read_back,
        ..BackupOptions::default()
    };
    let target = match (&req.to_time, req.to_version) {
        (Some(_), Some(_)) => {
            return failure(amberdb_error::Error::InvalidInput("give --to-time or --to-version, not both".into()))
        }
        (Some(t), None) => match RestoreTarget::parse_time(t, app.node.mvcc().clock().now()) {
            Ok(t) => Some(t),
            Err(e) => return failure(e),
        },
        (None, v) => v.map(RestoreTarget::Version),
    };
    let progress = Progress::default();
    let rr = amberdb_sql::RestoreRequest {
        tables: req.tables.as_deref(),
        dest: &req.dest,
        target,
        rename: req.rename.as_deref(),
    };
    match amberdb_sql::restore(&app.node, &app.env, &rr, Origin::Sql, &opts, &progress).await {
        Ok(summary) => (StatusCode::OK, Json(serde_json::json!({ "restored": summary }))),
        Err(e) => failure(e),
    }
}

async fn jobs(State(app): State<App>) -> Reply {
    let statuses = app.env.jobs.as_ref().map(|j| j.statuses()).unwrap_or_default();
    (StatusCode::OK, Json(serde_json::json!({ "jobs": statuses })))
}

async fn job_control(State(app): State<App>, Path((id, action)): Path<(u64, String)>) -> Reply {
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "stop" => Control::Stop,
        other => {
            return failure(amberdb_error::Error::InvalidInput(format!(
                "unknown job action {other} (pause, resume or stop)"
            )))
        }
    };
    let Some(jobs) = &app.env.jobs else {
        return failure(amberdb_error::Error::Internal("this server runs no backup jobs".into()));
    };
    match jobs.control(id, control).await {
        Ok(s) => (StatusCode::OK, Json(serde_json::json!({ "job": s }))),
        Err(e) => failure(e),
    }
}

/// Prometheus text exposition of the node's and the backup jobs' figures.
async fn metrics(State(app): State<App>) -> (StatusCode, [(axum::http::header::HeaderName, &'static str); 1], String) {
    use std::fmt::Write;
    let s = app.node.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    gauge("amberdb_applied_version", "Newest applied commit version.", "gauge", one(s.applied_version as f64));
    gauge(
        "amberdb_applied_time_seconds",
        "Commit time of the newest applied commit.",
        "gauge",
        one(s.applied_time as f64 / 1e6),
    );
    gauge("amberdb_log_fsyncs_total", "Commit-log fsyncs since start.", "counter", one(s.log_fsyncs as f64));
    gauge(
        "amberdb_log_entries_total",
        "Commit-log entries appended since start.",
        "counter",
        one(s.log_entries as f64),
    );
    let jobs = app.env.jobs.as_ref().map(|j| j.statuses()).unwrap_or_default();
    let per = |f: &dyn Fn(&amberdb_sql::JobStatus) -> Option<f64>| -> Vec<(String, f64)> {
        jobs.iter()
            .filter_map(|j| {
                f(j).map(|v| (format!("{{job=\"{}\",destination=\"{}\"}}", j.id, escape_label(&j.destination)), v))
            })
            .collect()
    };
    gauge(
        "amberdb_backup_job_lag_seconds",
        "How far the newest restorable commit trails the newest commit (live RPO).",
        "gauge",
        per(&|j| Some(j.lag_micros as f64 / 1e6)),
    );
    gauge(
        "amberdb_backup_job_last_restorable_version",
        "Newest version the job's destination can restore.",
        "gauge",
        per(&|j| j.last_version.map(|v| v as f64)),
    );
    gauge(
        "amberdb_backup_job_last_restorable_time_seconds",
        "Commit time of that version.",
        "gauge",
        per(&|j| j.last_time_micros.map(|v| v as f64 / 1e6)),
    );
    gauge(
        "amberdb_backup_job_first_restorable_version",
        "Oldest version of the restorable range the job extends.",
        "gauge",
        per(&|j| j.first_version.map(|v| v as f64)),
    );
    gauge(
        "amberdb_backup_job_bytes_written_total",
        "Bytes the job wrote since the server started.",
        "counter",
        per(&|j| Some(j.bytes_written as f64)),
    );
    gauge(
        "amberdb_backup_job_files_written_total",
        "Objects the job wrote since the server started.",
        "counter",
        per(&|j| Some(j.files_written as f64)),
    );
    gauge(
        "amberdb_backup_job_snapshots_total",
        "Snapshots the job completed since the server started.",
        "counter",
        per(&|j| Some(j.snapshots as f64)),
    );
    gauge(
        "amberdb_backup_job_throughput_bytes_per_second",
        "Average write rate since the job started.",
        "gauge",
        per(&|j| Some(j.throughput_bytes_per_sec)),
    );
    gauge(
        "amberdb_backup_job_failing",
        "1 if the job's latest attempt failed.",
        "gauge",
        per(&|j| Some(if j.state == "failing" { 1.0 } else { 0.0 })),
    );
    gauge(
        "amberdb_backup_job_lagging",
        "1 if the job is behind by more than its max_lag.",
        "gauge",
        per(&|j| Some(if j.state == "lagging" { 1.0 } else { 0.0 })),
    );
    (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn health(State(App { node, .. }): State<App>) -> (StatusCode, Json<serde_json::Value>) {
    let s = node.status();
    let leading = s.leader == Some(s.id);
    let code = if leading { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({ "status": if leading { "ok" } else { "no leader" }, "node": s.id })))
}

async fn status(State(App { node, .. }): State<App>) -> Json<serde_json::Value> {
    let s = node.status();
    Json(serde_json::json!({
        "node": s.id,
        "leader": s.leader,
        "term": s.term,
        "applied_version": s.applied_version,
        "applied_time_us": s.applied_time,
        "last_log_index": s.last_log_index,
        "gc_watermark": s.gc_watermark,
        "log_fsyncs": s.log_fsyncs,
        "log_entries": s.log_entries,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
