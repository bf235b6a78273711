//! The openraft type configuration and the request/response carried through Raft.

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

/// A Raft log entry's application payload: one encoded [`amberdb_mvcc::CommitBatch`].
///
/// It is encoded by the committing client, before it reaches the Raft core task, so
/// the single-threaded core never spends time serializing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `CommitBatch::encode()` output.
    pub batch: Vec<u8>,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "commit batch ({} bytes)", self.batch.len())
    }
}

/// What applying an entry produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The commit version (the entry's log index).
    pub version: u64,
    /// The effective commit time (µs since the Unix epoch).
    pub time: u64,
}

/// A marker standing for "the state machine, durable up to this log id". AmberDB's
/// snapshots for log compaction are checkpoints of the engine, not copies of it: the
/// state machine's data lives in the engine and is fsync'd before the log is purged.
/// Shipping a snapshot to a lagging follower will stream the backup snapshot format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last log id included.
    pub last_log_id: Option<openraft::LogId<u64>>,
}

openraft::declare_raft_types!(
    /// AmberDB's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Checkpoint,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of our configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// A storage error.
pub type StorageError = openraft::StorageError<u64>;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<u64, BasicNode>;

/// Builds a storage I/O error from anything displayable.
pub(crate) fn sto_err(
    make: fn(anyerror::AnyError) -> openraft::StorageIOError<u64>,
    e: impl std::fmt::Display,
) -> StorageError {
    make(anyerror::AnyError::error(e.to_string())).into()
}

/// `StorageIOError::write_snapshot` without a snapshot signature, as a plain constructor.
pub(crate) fn write_snapshot_err(e: anyerror::AnyError) -> openraft::StorageIOError<u64> {
    openraft::StorageIOError::write_snapshot(None, e)
}
