//! The Raft state machine: applies committed entries to mvcc, deterministically.
//!
//! Each `apply` call turns a run of entries into ONE engine batch holding their data,
//! the version↔time index entries and the Raft applied-state record (last applied log
//! id and membership). The batch is written without fsync: the Raft log is the source of
//! truth and is durable before anything is applied, so after a crash the engine holds
//! some prefix of the applied entries — together with the record saying which — and
//! openraft re-applies the rest from the log. Nothing is lost, nothing applied twice.
//!
//! Log compaction ("snapshots") fsyncs the engine and reports the applied log id as
//! durable, after which openraft may purge the log up to it.

use crate::types::{sto_err, Checkpoint, Entry, LogId, Response, StorageError, StoredMembership, TypeConfig};
use amberdb_mvcc::{applies_alone, ApplyItem, CommitBatch, Mvcc};
use amberdb_storage::Durability;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Name of the mvcc metadata record holding [`AppliedRecord`].
pub const META_RAFT_APPLIED: &str = "raft.applied";

/// What the state machine persists about Raft, atomically with the data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedRecord {
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
}

#[derive(Default)]
struct Shared {
    applied: AppliedRecord,
    snapshot: Option<(SnapshotMeta<u64, openraft::BasicNode>, Checkpoint)>,
    snapshot_seq: u64,
}

/// See the module docs.
#[derive(Clone)]
pub struct StateMachine {
    mvcc: Arc<Mvcc>,
    shared: Arc<Mutex<Shared>>,
}

impl StateMachine {
    /// Loads the applied record from `mvcc`.
    pub fn open(mvcc: Arc<Mvcc>) -> amberdb_error::Result<Self> {
        let applied = match mvcc.get_meta(META_RAFT_APPLIED)? {
            Some(raw) => serde_json::from_slice(&raw)
                .map_err(|e| amberdb_error::Error::InvalidData(format!("raft applied-state record: {e}")))?,
            None => AppliedRecord::default(),
        };
        Ok(Self { mvcc, shared: Arc::new(Mutex::new(Shared { applied, ..Shared::default() })) })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("state machine lock poisoned")
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        // Entries go to mvcc still encoded (no decoded copy of a large one); one that
        // mvcc writes in pieces — a large commit, a staged commit, an abort
        // (`applies_alone`) — is applied on its own, the others together, in one engine
        // batch per run.
        let mut responses = Vec::with_capacity(entries.len());
        let mut start = 0;
        while start < entries.len() {
            let large = |e: &Entry| matches!(&e.payload, EntryPayload::Normal(req) if applies_alone(&req.batch));
            let end = if large(&entries[start]) {
                start + 1
            } else {
                entries[start..].iter().position(large).map_or(entries.len(), |p| start + p)
            };
            responses.extend(self.apply_run(&entries[start..end])?);
            start = end;
        }
        Ok(responses)
    }

    /// Applies entries in one `Mvcc::apply`, with the Raft applied record of the last.
    fn apply_run(&self, entries: &[Entry]) -> Result<Vec<Response>, StorageError> {
        let mut record = self.shared().applied.clone();
        let mut items = Vec::with_capacity(entries.len());
        let mut positions = Vec::with_capacity(entries.len());
        for e in entries {
            let decode_err = |err: amberdb_error::Error| {
                sto_err(StorageIOError::write_state_machine, format!("entry {}: {err}", e.log_id))
            };
            let item = match &e.payload {
                // Speculation of an entry happens in its append, before it can commit,
                // and nothing but this apply settles it: the answer cannot change.
                EntryPayload::Normal(req) if self.mvcc.is_speculated(e.log_id.index) => ApplyItem::Speculated(
                    e.log_id.index,
                    CommitBatch::decode_commit_time(&req.batch).map_err(decode_err)?,
                ),
                EntryPayload::Normal(req) => ApplyItem::Encoded(e.log_id.index, &req.batch),
                EntryPayload::Membership(m) => {
                    record.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    ApplyItem::Marker(e.log_id.index)
                }
                EntryPayload::Blank => ApplyItem::Marker(e.log_id.index),
            };
            record.last_applied = Some(e.log_id);
            // Index 0 holds the initial membership and maps to the empty database
            // (version 0).
            if e.log_id.index == 0 {
                positions.push(None);
                continue;
            }
            positions.push(Some(items.len()));
            items.push(item);
        }
        let meta = serde_json::to_vec(&record).map_err(|e| sto_err(StorageIOError::write_state_machine, e))?;
        let times = self
            .mvcc
            .apply(&items, &[(META_RAFT_APPLIED, meta)], Durability::Buffered)
            .map_err(|e| sto_err(StorageIOError::write_state_machine, e))?;
        self.shared().applied = record;
        Ok(entries
            .iter()
            .zip(positions)
            .map(|(e, p)| Response { version: e.log_id.index, time: p.map_or(0, |p| times[p]) })
            .collect())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Read what is applied *before* syncing: everything applied so far is then durable.
        let (record, seq) = {
            let mut s = self.shared();
            s.snapshot_seq += 1;
            (s.applied.clone(), s.snapshot_seq)
        };
        let mvcc = self.mvcc.clone();
        tokio::task::spawn_blocking(move || mvcc.engine().sync())
            .await
            .map_err(|e| sto_err(crate::types::write_snapshot_err, e))?
            .map_err(|e| sto_err(crate::types::write_snapshot_err, e))?;
        let meta = SnapshotMeta {
            last_log_id: record.last_applied,
            last_membership: record.membership.clone(),
            snapshot_id: format!("{}-{seq}", record.last_applied.map_or(0, |l| l.index)),
        };
        let data = Checkpoint { last_log_id: record.last_applied };
        self.shared().snapshot = Some((meta.clone(), data.clone()));
        tracing::debug!(last_applied = ?record.last_applied, "state machine checkpoint durable; log may be purged up to it");
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let s = self.shared();
        Ok((s.applied.last_applied, s.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applied inline: the batch is written without fsync (a write(2) into the page
        // cache), shorter than handing it to a blocking thread and back.
        self.apply_entries(entries.into_iter().collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Checkpoint>, StorageError> {
        Err(sto_err(
            crate::types::write_snapshot_err,
            "receiving a snapshot from a leader requires the cluster transport, which this build does not have",
        ))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, openraft::BasicNode>,
        _snapshot: Box<Checkpoint>,
    ) -> Result<(), StorageError> {
        Err(sto_err(
            crate::types::write_snapshot_err,
            "installing a snapshot from a leader requires the cluster transport, which this build does not have",
        ))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.shared().snapshot.clone().map(|(meta, data)| Snapshot { meta, snapshot: Box::new(data) }))
    }
}
