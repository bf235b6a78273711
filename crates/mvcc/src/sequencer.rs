//! A sequencer without consensus: conflict check, version assignment and apply in one
//! critical section. Used by tests, tools and anything embedding mvcc directly; the
//! consensus layer has its own sequencer that puts the Raft log between check and apply.

use crate::{
    ApplyItem, CommitBatch, CommitRequest, ConflictWindow, ConflictWindowConfig, Entry, Mutation, Mvcc, StageReceipt,
    Stager, Timestamp, Transaction, Version,
};
use amberdb_error::{Error, Result};
use amberdb_storage::Durability;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where and when a transaction committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Its commit version.
    pub version: Version,
    /// Its commit time (µs since the Unix epoch).
    pub time: Timestamp,
}

/// See the module docs.
pub struct LocalSequencer {
    mvcc: Arc<Mvcc>,
    window: Mutex<ConflictWindow>,
    durability: Durability,
    /// See [`LocalSequencer::begin_staging`].
    stage_bytes: usize,
}

impl LocalSequencer {
    /// A sequencer over `mvcc`, writing with `durability`.
    pub fn new(mvcc: Arc<Mvcc>, config: ConflictWindowConfig, durability: Durability) -> Self {
        let floor = mvcc.applied().version;
        Self { mvcc, window: Mutex::new(ConflictWindow::new(config, floor)), durability, stage_bytes: usize::MAX }
    }

    /// The store.
    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.mvcc
    }

    /// Begins a read-write transaction at the newest version.
    pub fn begin(&self) -> Result<Transaction> {
        Ok(Transaction::new(self.mvcc.read_latest()?))
    }

    /// Commits a transaction. Read-only transactions commit at their read version.
    /// Sets the buffered-write size past which transactions from
    /// [`LocalSequencer::begin_staging`] stage their writes.
    pub fn with_stage_bytes(mut self, bytes: usize) -> Self {
        self.stage_bytes = bytes;
        self
    }

    /// Begins a transaction that stages its writes through this sequencer (see
    /// [`Stager`]) once they pass the configured size.
    pub fn begin_staging(self: &Arc<Self>) -> Result<Transaction> {
        Ok(Transaction::new(self.mvcc.read_latest()?).with_stager(self.clone()))
    }

    /// Applies one commit-log entry at the next version, under the window lock (which
    /// orders versions here). Returns its version and time.
    fn apply_entry(&self, window: &ConflictWindow, raw: &[u8]) -> Result<(Version, Timestamp)> {
        let _ = window;
        let version = self.mvcc.applied().version + 1;
        let times = self.mvcc.apply(&[ApplyItem::Encoded(version, raw)], &[], self.durability)?;
        Ok((version, times[0]))
    }

    pub fn commit(&self, txn: Transaction) -> Result<CommitInfo> {
        txn.check_committable()?;
        let read_version = txn.read_version();
        match txn.into_request_with_view() {
            None => Ok(CommitInfo { version: read_version, time: self.mvcc.applied().time }),
            Some((mut req, view)) => {
                let staged = req.take_staged();
                let r = self.commit_staged(&req, staged.as_ref().map(|s| s.writes()));
                if let (Ok(_), Some(s)) = (&r, staged) {
                    s.handed_over();
                }
                // (A failed staged commit's handle dropped above: its stages are aborted.)
                drop(view);
                r
            }
        }
    }

    /// Commits a request built elsewhere.
    pub fn commit_request(&self, req: &CommitRequest) -> Result<CommitInfo> {
        self.commit_staged(req, req.staged.as_ref().map(|s| s.writes()))
    }

    fn commit_staged(&self, req: &CommitRequest, staged: Option<crate::StagedWrites>) -> Result<CommitInfo> {
        let mut window = self.window.lock().expect("conflict window lock poisoned");
        let applied = self.mvcc.applied().version;
        let ticket = window.check_and_accept(req, Instant::now(), applied, self.mvcc.oldest_reader())?;
        let version = applied + 1;
        let batch = CommitBatch { commit_time: self.mvcc.clock().now(), mutations: req.writes.clone() };
        let applied = match &staged {
            None => self.mvcc.apply(&[ApplyItem::Commit(version, &batch)], &[], self.durability).map(|t| t[0]),
            Some(w) => {
                self.apply_entry(&window, &Entry::encode_staged_commit(w.txn, &w.stages, &batch)).map(|(_, t)| t)
            }
        };
        match applied {
            Ok(time) => {
                window.resolve(ticket, Some(version));
                Ok(CommitInfo { version, time })
            }
            Err(e) => {
                window.resolve(ticket, None);
                Err(e)
            }
        }
    }
}

impl Stager for LocalSequencer {
    fn stage(&self, txn: u64, writes: &[Mutation]) -> Result<StageReceipt> {
        let window = self.window.lock().map_err(|_| Error::Internal("conflict window lock poisoned".into()))?;
        let (version, _) = self.apply_entry(&window, &Entry::encode_stage(txn, writes))?;
        Ok(StageReceipt { txn: if txn == 0 { version } else { txn }, version })
    }

    fn abort(&self, txn: u64) {
        let Ok(window) = self.window.lock() else { return };
        if let Err(e) = self.apply_entry(&window, &Entry::encode_abort(txn)) {
            tracing::error!(txn, error = %e, "could not drop a staged transaction's writes; they stay until a restart");
        }
    }

    fn stage_bytes(&self) -> usize {
        self.stage_bytes
    }
}
