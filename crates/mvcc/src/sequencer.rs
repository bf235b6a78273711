//! A sequencer without consensus: conflict check, version assignment and apply in one
//! critical section. Used by tests, tools and anything embedding mvcc directly; the
//! consensus layer has its own sequencer that puts the Raft log between check and apply.

use crate::{
    ApplyItem, CommitBatch, CommitRequest, ConflictWindow, ConflictWindowConfig, Mvcc, Timestamp, Transaction, Version,
};
use amberdb_error::Result;
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
}

impl LocalSequencer {
    /// A sequencer over `mvcc`, writing with `durability`.
    pub fn new(mvcc: Arc<Mvcc>, config: ConflictWindowConfig, durability: Durability) -> Self {
        let floor = mvcc.applied().version;
        Self { mvcc, window: Mutex::new(ConflictWindow::new(config, floor)), durability }
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
    pub fn commit(&self, txn: Transaction) -> Result<CommitInfo> {
        let read_version = txn.read_version();
        match txn.into_request_with_view() {
            None => Ok(CommitInfo { version: read_version, time: self.mvcc.applied().time }),
            Some((req, view)) => {
                let r = self.commit_request(&req);
                drop(view);
                r
            }
        }
    }

    /// Commits a request built elsewhere.
    pub fn commit_request(&self, req: &CommitRequest) -> Result<CommitInfo> {
        let mut window = self.window.lock().expect("conflict window lock poisoned");
        let applied = self.mvcc.applied().version;
        let ticket = window.check_and_accept(req, Instant::now(), applied, self.mvcc.oldest_reader())?;
        let version = applied + 1;
        let batch = CommitBatch { commit_time: self.mvcc.clock().now(), mutations: req.writes.clone() };
        match self.mvcc.apply(&[ApplyItem::Commit(version, &batch)], &[], self.durability) {
            Ok(times) => {
                window.resolve(ticket, Some(version));
                Ok(CommitInfo { version, time: times[0] })
            }
            Err(e) => {
                window.resolve(ticket, None);
                Err(e)
            }
        }
    }
}
