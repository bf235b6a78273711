//! # MVCC: versions, serializable optimistic transactions, time travel, GC
//!
//! Every committed write is stored under the *commit version* that made it, so the
//! store can answer "what was the value of k at version V" for any V inside the
//! retention window. This is what `AS OF SYSTEM TIME` queries and online backups stand
//! on: a backup is just a long read at one version.
//!
//! ```text
//!   engine keys (see keys.rs)               a read at version 7 of key "a":
//!   ┌──────────────────────────────┐        seek to (a, !7) → first entry is
//!   │ D a  !9  → "x3"               │        (a, !5) → "x2"   (9 > 7 is skipped
//!   │ D a  !5  → "x2"   ◀──────────┼─────   by the seek itself, because versions
//!   │ D a  !2  → "x1"               │        are stored inverted)
//!   │ D b  !4  → tombstone          │
//!   │ T 2 → 1700000000000000 µs     │        version ↔ time index, both ways
//!   │ S 1700000000000000,2 → ()     │
//!   │ M mvcc.applied → (9, t9)      │        written in the same batch as the data
//!   └──────────────────────────────┘
//! ```
//!
//! ## Transactions (FoundationDB's model)
//! A [`Transaction`] reads at a *read version* (the newest applied version when it
//! began), records the key ranges it read, and buffers its writes. Committing sends
//! `(read version, read ranges, writes)` to a sequencer, which checks the read ranges
//! against every write committed after the read version using a [`ConflictWindow`]. A
//! hit is a retryable `Serialization` error; otherwise the writes get the next commit
//! version. Read-only transactions never conflict: they serialize at their read version.
//! This prevents dirty reads, lost updates, read skew and write skew (see
//! `tests/scripts/*`), i.e. it is serializable, not just snapshot isolation.
//!
//! ## Invariants
//! 1. Commit versions are strictly increasing; a read at V sees exactly the commits ≤ V.
//! 2. The applied state (version, time) and the layer above's metadata are written in
//!    the same engine batch as the data of the commits they describe.
//! 3. Commit times are strictly increasing with versions; the map between them is
//!    derived deterministically in [`Mvcc::apply`].
//! 4. No read starts below the GC watermark or outside the retention window, and GC never
//!    removes a version a live reader may need (readers register their version). A read
//!    that is too old fails with `TooOld`; it never returns wrong data.
//! 5. GC persists its watermark before it deletes anything.
//! 6. A commit written ahead ([`Mvcc::speculate`], while its log entry is fsynced) is
//!    invisible until [`Mvcc::apply`] publishes its version, and is undone at open (or
//!    by [`Mvcc::abandon_speculation`]) if it never is.
//! 7. A key's newest version is named by its head entry, or — for versions whose heads
//!    are not written yet — by the in-memory table of held heads and a write record in
//!    the engine (`heads.rs`): point reads consult the table first.
//!
//! ## Where we depart from the literature
//! - Versions are not allocated by a central clock (FoundationDB) or a counter (toyDB):
//!   the consensus layer uses the Raft log index of the entry, so versions are dense in
//!   the log, deterministic on every replica, and need no separate persistence.
//! - The conflict window is a map from key to newest write version rather than a
//!   skip list of ranges; writes older than it are kept by key prefix, so — unlike
//!   FoundationDB's 5-second limit — a transaction may run as long as it needs, checked
//!   more coarsely the older it is.

mod conflict;
mod heads;
mod keys;
mod mvcc;
mod sequencer;
mod transaction;

pub use conflict::{ConflictWindow, ConflictWindowConfig, Ticket};
pub use mvcc::{
    applies_alone, format_micros, AppliedState, ApplyItem, BulkLoad, GcStats, Mvcc, MvccConfig, ReadView,
    VersionedScan, CHUNKED_APPLY_BYTES,
};
pub use sequencer::{CommitInfo, LocalSequencer};
pub use transaction::{
    CommitRequest, DetachedReader, StageReceipt, StagedHandle, StagedWrites, Stager, Transaction, TxnScan,
    MAX_READ_ENTRIES,
};

use amberdb_encoding::codec::{Reader, Writer};
use amberdb_error::Result;
use std::sync::atomic::{AtomicU64, Ordering};

/// A commit version. Strictly increasing; 0 is the empty database.
pub type Version = u64;

/// Wall-clock time in microseconds since the Unix epoch (UTC).
pub type Timestamp = u64;

/// A source of wall-clock time (replaceable in tests).
pub trait Clock: Send + Sync {
    /// Now, in µs since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now`.
    pub fn new(now: Timestamp) -> Self {
        Self(AtomicU64::new(now))
    }

    /// Sets the time.
    pub fn set(&self, now: Timestamp) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, micros: u64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.load(Ordering::SeqCst)
    }
}

/// One write: set `key` to `value`, or delete it (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The user key.
    pub key: Vec<u8>,
    /// The new value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// The writes of one committed transaction, as carried in the commit log. Its version is
/// the position of the log entry that carries it, assigned by the consensus layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitBatch {
    /// The sequencer's wall-clock time at commit (µs); `Mvcc::apply` makes it strictly
    /// increasing.
    pub commit_time: Timestamp,
    /// The writes, in order (a later write to the same key wins; sequencers dedupe).
    pub mutations: Vec<Mutation>,
}

const BATCH_FORMAT: u8 = 1;

/// One write borrowed from an encoded batch: key, and value or `None` for a delete.
pub type Write<'a> = (&'a [u8], Option<&'a [u8]>);

/// An encoded [`CommitBatch`] read write by write, borrowing from the encoding: a
/// large commit is applied from it in bounded pieces, never decoded whole (see
/// `Mvcc::apply`, `ApplyItem::Encoded`).
#[derive(Debug, Clone)]
pub struct EncodedBatch<'a> {
    /// The batch's commit time.
    pub commit_time: Timestamp,
    count: u64,
    left: u64,
    reader: Reader<'a>,
}

impl<'a> EncodedBatch<'a> {
    /// Reads the header of an encoded batch.
    pub fn new(raw: &'a [u8]) -> Result<Self> {
        let mut reader = Reader::new(raw, "commit batch");
        let format = reader.u8()?;
        if format != BATCH_FORMAT {
            return Err(amberdb_error::Error::InvalidData(format!("commit batch: unknown format {format}")));
        }
        Self::body(reader)
    }

    /// Reads the body (commit time, count) that every entry carrying writes shares.
    fn body(mut reader: Reader<'a>) -> Result<Self> {
        let commit_time = reader.u64()?;
        let count = reader.varint()?;
        Ok(Self { commit_time, count, left: count, reader })
    }

    /// How many writes the batch holds.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next write (key, value or `None` for a delete); `None` after the last, once
    /// the whole encoding has been checked to end there.
    pub fn next_write(&mut self) -> Result<Option<Write<'a>>> {
        if self.left == 0 {
            self.reader.clone().finish()?;
            return Ok(None);
        }
        self.left -= 1;
        let key = self.reader.bytes()?;
        let value = match self.reader.u8()? {
            0 => None,
            1 => Some(self.reader.bytes()?),
            t => return Err(amberdb_error::Error::InvalidData(format!("commit batch: bad mutation tag {t}"))),
        };
        Ok(Some((key, value)))
    }
}

const STAGE_FORMAT: u8 = 2;
const STAGED_COMMIT_FORMAT: u8 = 3;
const ABORT_FORMAT: u8 = 4;

/// A commit-log entry's payload, decoded as far as its header (the writes stay encoded;
/// see `docs/formats/commit-log.md`). Besides plain commits, a transaction too large for
/// one entry moves its writes out of memory in *stages* before it commits: each stage
/// is applied into a staging area only that transaction reads (see
/// [`Transaction`]'s docs), and its staged commit publishes them all, with its last
/// writes, at the staged commit's version; an abort drops them.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    /// A commit: its writes become visible at the entry's version.
    Commit(EncodedBatch<'a>),
    /// Writes staged by transaction `txn` (0: its first stage; the entry's version then
    /// becomes its id). Invisible to every other transaction.
    Stage {
        /// The staging transaction's id, or 0.
        txn: u64,
        /// The writes (the batch's time is unused, 0).
        writes: EncodedBatch<'a>,
    },
    /// The commit of a staged transaction: its staged writes, then `writes` (which win
    /// over a staged write of the same key), become visible at the entry's version.
    StagedCommit {
        /// The transaction's id.
        txn: u64,
        /// The versions of its stage entries, ascending (for readers of the commit log,
        /// such as continuous backups, that need the staged writes again).
        stages: Vec<Version>,
        /// The writes made after the last stage, with the commit time.
        writes: EncodedBatch<'a>,
    },
    /// Drops transaction `txn`'s staged writes (a rollback, or a transaction whose
    /// session ended before it committed).
    Abort {
        /// The transaction's id.
        txn: u64,
    },
}

impl<'a> Entry<'a> {
    /// Decodes an entry's header.
    pub fn decode(raw: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(raw, "commit-log entry");
        Ok(match r.u8()? {
            BATCH_FORMAT => Entry::Commit(EncodedBatch::body(r)?),
            STAGE_FORMAT => {
                let txn = r.u64()?;
                Entry::Stage { txn, writes: EncodedBatch::body(r)? }
            }
            STAGED_COMMIT_FORMAT => {
                let txn = r.u64()?;
                let n = r.varint()?;
                let mut stages = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    stages.push(r.u64()?);
                }
                if stages.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(amberdb_error::Error::InvalidData(
                        "commit-log entry: staged commit's stage versions are not ascending".into(),
                    ));
                }
                Entry::StagedCommit { txn, stages, writes: EncodedBatch::body(r)? }
            }
            ABORT_FORMAT => {
                let txn = r.u64()?;
                r.finish()?;
                Entry::Abort { txn }
            }
            f => return Err(amberdb_error::Error::InvalidData(format!("commit-log entry: unknown format {f}"))),
        })
    }

    /// Encodes a stage of transaction `txn` (0: a new one); `writes` sorted, unique.
    pub fn encode_stage(txn: u64, writes: &[Mutation]) -> Vec<u8> {
        let mut w = Writer::with_capacity(writes_size(writes) + 24);
        w.u8(STAGE_FORMAT).u64(txn);
        encode_writes(&mut w, 0, writes);
        w.finish()
    }

    /// Encodes the commit of staged transaction `txn`.
    pub fn encode_staged_commit(txn: u64, stages: &[Version], batch: &CommitBatch) -> Vec<u8> {
        let mut w = Writer::with_capacity(writes_size(&batch.mutations) + 8 * stages.len() + 32);
        w.u8(STAGED_COMMIT_FORMAT).u64(txn).varint(stages.len() as u64);
        for s in stages {
            w.u64(*s);
        }
        encode_writes(&mut w, batch.commit_time, &batch.mutations);
        w.finish()
    }

    /// Encodes the abort of staged transaction `txn`.
    pub fn encode_abort(txn: u64) -> Vec<u8> {
        let mut w = Writer::with_capacity(9);
        w.u8(ABORT_FORMAT).u64(txn);
        w.finish()
    }
}

fn writes_size(writes: &[Mutation]) -> usize {
    writes.iter().map(|m| m.key.len() + m.value.as_ref().map_or(0, Vec::len) + 8).sum()
}

fn encode_writes(w: &mut Writer, time: Timestamp, writes: &[Mutation]) {
    w.u64(time).varint(writes.len() as u64);
    for m in writes {
        w.bytes(&m.key);
        match &m.value {
            Some(v) => {
                w.u8(1).bytes(v);
            }
            None => {
                w.u8(0);
            }
        }
    }
}

/// Decodes every write of an encoded batch body.
pub fn collect_writes(mut writes: EncodedBatch<'_>) -> Result<Vec<Mutation>> {
    let mut mutations = Vec::with_capacity(writes.len().min(1 << 16) as usize);
    while let Some((key, value)) = writes.next_write()? {
        mutations.push(Mutation { key: key.to_vec(), value: value.map(<[u8]>::to_vec) });
    }
    Ok(mutations)
}

impl CommitBatch {
    /// Encodes the batch (format in `docs/formats/commit-log.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(writes_size(&self.mutations) + 16);
        w.u8(BATCH_FORMAT);
        encode_writes(&mut w, self.commit_time, &self.mutations);
        w.finish()
    }

    /// Only the commit time of an encoded batch (for a batch whose mutations are
    /// already in the store, see `Mvcc::speculate`).
    pub fn decode_commit_time(raw: &[u8]) -> Result<Timestamp> {
        let mut r = Reader::new(raw, "commit batch");
        let format = r.u8()?;
        if format != BATCH_FORMAT {
            return Err(amberdb_error::Error::InvalidData(format!("commit batch: unknown format {format}")));
        }
        r.u64()
    }

    /// Decodes a batch, rejecting anything malformed.
    pub fn decode(raw: &[u8]) -> Result<Self> {
        let writes = EncodedBatch::new(raw)?;
        Ok(Self { commit_time: writes.commit_time, mutations: collect_writes(writes)? })
    }
}
