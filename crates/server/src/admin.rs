//! The admin HTTP endpoint: `GET /health` (is this node serving?), `GET /status` (its
//! Raft and version state as JSON), and `POST /backup` / `POST /restore`, which the
//! `amberdb backup create` and `amberdb restore` commands call. Destinations given over
//! HTTP are confined to the backup root exactly like those in SQL statements.

use amberdb_backup::{Origin, Progress};
use amberdb_consensus::Node;
use amberdb_sql::{BackupOptions, Env};
use axum::extract::State;
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
    let opts = BackupOptions {
        compression_level: req.compression_level,
        parallelism: req.parallelism,
        replace: false,
        encryption_passphrase: req.encryption_passphrase,
    };
    let progress = Arc::new(Progress::default());
    match amberdb_sql::backup(&app.node, &app.env, req.tables.as_deref(), &req.dest, Origin::Sql, &opts, progress).await
    {
        Ok(m) => (StatusCode::OK, Json(serde_json::json!({ "manifest": m }))),
        Err(e) => failure(e),
    }
}

async fn restore(State(app): State<App>, Json(req): Json<RestoreRequest>) -> Reply {
    let opts = BackupOptions {
        compression_level: None,
        parallelism: req.parallelism,
        replace: req.replace,
        encryption_passphrase: req.encryption_passphrase,
    };
    let progress = Progress::default();
    let r = amberdb_sql::restore(
        &app.node,
        &app.env,
        req.tables.as_deref(),
        &req.dest,
        req.rename.as_deref(),
        Origin::Sql,
        &opts,
        &progress,
    )
    .await;
    match r {
        Ok(summary) => (StatusCode::OK, Json(serde_json::json!({ "restored": summary }))),
        Err(e) => failure(e),
    }
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
