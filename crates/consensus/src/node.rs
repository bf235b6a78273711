//! A node: the Raft group member that sequences commits and serves reads.
//!
//! ```text
//!  commit(txn) ──▶ conflict window ──(ok)──▶ client_write_ff ──▶ Raft core ──▶ LogStore.append
//!     ▲              (under one lock: check,                          │            (write, no fsync)
//!     │               assign commit time,                             ▼
//!     │               enqueue in log order)                      flusher thread: ONE fsync for
//!     │                                                          every append since the last one
//!     │                                                               │
//!     └──── Response{version, time} ◀── StateMachine.apply ◀── committed (quorum = self)
//! ```

use crate::log_store::{LogStore, LogStoreHandle};
use crate::network::NoPeers;
use crate::state_machine::StateMachine;
use crate::types::{Request, TypeConfig};
use amberdb_error::{Error, Result};
use amberdb_mvcc::{
    Clock, CommitBatch, CommitInfo, ConflictWindow, ConflictWindowConfig, Mvcc, MvccConfig, Timestamp,
    Transaction, Version,
};
use amberdb_storage::Engine;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id in the Raft group.
    pub node_id: u64,
    /// The address peers would use to reach this node (recorded in the membership).
    pub advertise_addr: String,
    /// Retention window and other mvcc settings.
    pub mvcc: MvccConfig,
    /// Conflict window limits.
    pub conflict: ConflictWindowConfig,
    /// Checkpoint the state machine (and allow purging the log) every this many entries.
    pub checkpoint_every: u64,
    /// Log entries kept behind a checkpoint (for followers that lag a little).
    pub keep_log_entries: u64,
    /// How often garbage collection of old versions runs.
    pub gc_interval: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            advertise_addr: "127.0.0.1:0".into(),
            mvcc: MvccConfig::default(),
            conflict: ConflictWindowConfig::default(),
            checkpoint_every: 20_000,
            keep_log_entries: 1_000,
            gc_interval: Duration::from_secs(60),
        }
    }
}

struct Sequencer {
    window: ConflictWindow,
    last_time: Timestamp,
}

/// A running node. See the module docs.
pub struct Node {
    id: u64,
    raft: Raft<TypeConfig>,
    mvcc: Arc<Mvcc>,
    sequencer: tokio::sync::Mutex<Sequencer>,
    log: LogStore,
    _log_handle: LogStoreHandle,
    gc_task: tokio::task::JoinHandle<()>,
}

/// A snapshot of a node's state for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// Newest applied version.
    pub applied_version: Version,
    /// Commit time of the newest applied commit.
    pub applied_time: Timestamp,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// GC watermark.
    pub gc_watermark: Version,
}

fn raft_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Unavailable(format!("raft: {e}"))
}

impl Node {
    /// Opens the node: recovers the commit log in `raft_dir` and the state machine in
    /// `engine`, forms (or rejoins) its single-member group and waits until it leads
    /// and has re-applied every committed entry.
    pub async fn open(raft_dir: &Path, engine: Arc<dyn Engine>, clock: Arc<dyn Clock>, config: NodeConfig) -> Result<Arc<Node>> {
        let mvcc = Arc::new(Mvcc::open(engine, config.mvcc.clone(), clock)?);
        let log = LogStore::open(raft_dir)?;
        let log_handle = LogStoreHandle::new(log.clone());
        let sm = StateMachine::open(mvcc.clone())?;
        let raft_config = openraft::Config {
            cluster_name: "amberdb".into(),
            heartbeat_interval: 100,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.checkpoint_every),
            max_in_snapshot_log_to_keep: config.keep_log_entries,
            max_payload_entries: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::InvalidInput(format!("raft config: {e}")))?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), NoPeers, log.clone(), sm)
            .await
            .map_err(raft_err)?;
        if !raft.is_initialized().await.map_err(raft_err)? {
            let mut members = BTreeMap::new();
            members.insert(config.node_id, BasicNode { addr: config.advertise_addr.clone() });
            raft.initialize(members).await.map_err(raft_err)?;
        }
        // Wait until we lead and have applied everything in the log (the new leader's
        // blank entry commits every earlier entry).
        let target = log.last_index();
        let deadline = Duration::from_secs(60);
        raft.wait(Some(deadline))
            .metrics(
                |m| m.current_leader == Some(config.node_id) && m.last_applied.map(|l| l.index) >= target,
                "leader with log applied",
            )
            .await
            .map_err(|e| Error::Unavailable(format!("node {} did not become ready: {e}", config.node_id)))?;
        let applied = mvcc.applied();
        let sequencer = Sequencer { window: ConflictWindow::new(config.conflict.clone(), applied.version), last_time: applied.time };
        let gc_mvcc = mvcc.clone();
        let interval = config.gc_interval;
        let gc_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let m = gc_mvcc.clone();
                match tokio::task::spawn_blocking(move || m.gc()).await {
                    Ok(Ok(stats)) if stats.watermark > 0 => tracing::info!(?stats, "garbage-collected old versions"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "garbage collection failed"),
                    Err(e) => tracing::error!(error = %e, "garbage collection task failed"),
                }
            }
        });
        tracing::info!(node = config.node_id, version = applied.version, "node ready");
        Ok(Arc::new(Node {
            id: config.node_id,
            raft,
            mvcc,
            sequencer: tokio::sync::Mutex::new(sequencer),
            log,
            _log_handle: log_handle,
            gc_task,
        }))
    }

    /// The mvcc store (for reads and time travel).
    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.mvcc
    }

    /// Begins a read-write transaction at the newest applied version.
    pub fn begin(&self) -> Result<Transaction> {
        Ok(Transaction::new(self.mvcc.read_latest()?))
    }

    /// Begins a read-only transaction at the newest applied version.
    pub fn begin_read_only(&self) -> Result<Transaction> {
        Ok(Transaction::read_only(self.mvcc.read_latest()?))
    }

    /// Begins a read-only transaction at an older version.
    pub fn begin_as_of_version(&self, version: Version) -> Result<Transaction> {
        Ok(Transaction::read_only(self.mvcc.read_at(version)?))
    }

    /// Begins a read-only transaction as of a wall-clock time (µs since the Unix epoch).
    pub fn begin_as_of_time(&self, time: Timestamp) -> Result<Transaction> {
        Ok(Transaction::read_only(self.mvcc.read_at_time(time)?))
    }

    /// Commits a transaction: returns once its writes are durable in the commit log and
    /// applied. A conflict is a retryable `Serialization` error.
    pub async fn commit(&self, txn: Transaction) -> Result<CommitInfo> {
        let read_version = txn.read_version();
        let Some(req) = txn.into_request() else {
            return Ok(CommitInfo { version: read_version, time: self.mvcc.applied().time });
        };
        let mut encoded = CommitBatch { commit_time: 0, mutations: req.writes.clone() }.encode();
        let (ticket, rx) = {
            let mut seq = self.sequencer.lock().await;
            let applied = self.mvcc.applied().version;
            let ticket = seq.window.check_and_accept(&req, Instant::now(), applied)?;
            // Commit times follow log order: assign under the same lock that orders
            // proposals. (Bytes 1..9 of an encoded batch are its commit time.)
            let time = self.mvcc.clock().now().max(seq.last_time + 1);
            seq.last_time = time;
            encoded[1..9].copy_from_slice(&time.to_le_bytes());
            match self.raft.client_write_ff(Request { batch: encoded }).await {
                Ok(rx) => (ticket, rx),
                Err(e) => {
                    seq.window.resolve(ticket, None);
                    return Err(raft_err(e));
                }
            }
        };
        let outcome = rx.await;
        let result = match outcome {
            Ok(Ok(resp)) => Ok(CommitInfo { version: resp.data.version, time: resp.data.time }),
            Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(Error::Unavailable(format!(
                "node {} is not the leader (leader: {:?}); commit outcome unknown, not applied here",
                self.id, f.leader_id
            ))),
            Ok(Err(e)) => Err(Error::Unavailable(format!("commit failed: {e}"))),
            Err(_) => Err(Error::Unavailable("commit outcome unknown: the node is shutting down".into())),
        };
        let version = result.as_ref().ok().map(|c| c.version);
        self.sequencer.lock().await.window.resolve(ticket, version);
        result
    }

    /// Current status.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let applied = self.mvcc.applied();
        NodeStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            applied_version: applied.version,
            applied_time: applied.time,
            last_log_index: self.log.last_index(),
            gc_watermark: self.mvcc.gc_watermark(),
        }
    }

    /// Asks Raft to checkpoint the state machine now (and purge the log behind it).
    pub async fn checkpoint(&self) -> Result<()> {
        self.raft.trigger().snapshot().await.map_err(raft_err)
    }

    /// Stops Raft and background tasks. In-flight commits fail with `Unavailable`.
    pub async fn shutdown(&self) -> Result<()> {
        self.gc_task.abort();
        self.raft.shutdown().await.map_err(|e| Error::Internal(format!("raft shutdown: {e}")))?;
        // Make applied state durable so the next start has nothing to replay.
        self.mvcc.engine().sync()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.gc_task.abort();
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Node>();
    let _ = RaftError::<u64>::Fatal;
}
