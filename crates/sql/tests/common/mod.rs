//! A node on an in-memory engine and a session over it, for the SQL crate's tests.

use amberdb_consensus::{Node, NodeConfig};
use amberdb_mvcc::SystemClock;
use amberdb_sql::{Env, Session};
use amberdb_storage::Memory;
use std::path::Path;
use std::sync::Arc;

/// Opens a one-node group with its commit log under `dir`, and a session on it.
pub async fn node_and_session(dir: &Path) -> (Arc<Node>, Session) {
    let node = Node::open(&dir.join("raft"), Arc::new(Memory::new()), Arc::new(SystemClock), NodeConfig::default())
        .await
        .expect("node");
    let env = Arc::new(Env {
        backup: amberdb_backup::DestConfig {
            backup_root: dir.join("backups"),
            s3: amberdb_backup::S3Config::default(),
        },
        jobs: None,
        backup_key: None,
    });
    let session = Session::new(node.clone(), env);
    (node, session)
}
