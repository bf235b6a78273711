//! The admin HTTP endpoint: `GET /health` (is this node serving?) and `GET /status`
//! (its Raft and version state as JSON).

use amberdb_consensus::Node;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// Serves the admin endpoint until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/health", get(health)).route("/status", get(status)).with_state(node);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn health(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    let s = node.status();
    let leading = s.leader == Some(s.id);
    let code = if leading { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(serde_json::json!({ "status": if leading { "ok" } else { "no leader" }, "node": s.id })))
}

async fn status(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
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
