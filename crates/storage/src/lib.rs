//! # Storage engines: ordered bytes → bytes, nothing more
//!
//! The storage layer knows nothing of versions, transactions or SQL. It offers an
//! ordered key-value map with atomic write batches and explicit durability:
//!
//! ```text
//!                 ┌──────────────────────────── Engine ───────────────────────────┐
//!   get(k) ──────▶│                                                               │
//!   scan(range) ─▶│  ordered keyspace  ┌───────────┐    ┌───────────────────────┐  │
//!   write(batch,  │  (memcmp order)    │  Memory   │ or │ Fjall (LSM on disk:   │  │
//!     durability)▶│                    │ (BTreeMap)│    │ journal + SST levels) │  │
//!   sync() ──────▶│                    └───────────┘    └───────────────────────┘  │
//!   snapshot() ──▶│  point-in-time view that later writes do not change            │
//!                 └───────────────────────────────────────────────────────────────┘
//! ```
//!
//! Invariants every engine upholds:
//! 1. A write batch is atomic: after a crash either all of it is visible or none.
//! 2. Batches are recovered as a prefix: if batch *n* survives a crash, so does every
//!    batch written before it. (mvcc relies on this to persist its applied index and GC
//!    watermark in the same batch as the data they describe.)
//! 3. `Durability::Sync` returns only after the batch (and all before it) is on disk;
//!    `Durability::Buffered` may lose a suffix of batches on power loss or kill -9.
//! 4. Scans see keys in strict ascending (or, reversed, descending) byte order.
//!
//! Keys whose first byte is [`SIDE_TAG`] are kept apart from the rest: the disk engine
//! stores them in their own LSM tree (a second fjall keyspace). Nothing about order or
//! atomicity changes — a batch may mix both and a scan across the boundary merges them
//! in key order — but scans of the other keys never walk past them. The layer above
//! puts records there that are only ever read by exact key (mvcc's per-key heads), so
//! they cost lookups nothing and scans nothing.
//!
//! The engine is a trait so that the ordered store can be swapped (redb scans ~3×
//! faster here; fjall writes durably ~5× faster); the rest of AmberDB holds an
//! `Arc<dyn Engine>`.

mod fjall_engine;

/// First byte of the keys kept in their own tree (see the crate docs).
pub const SIDE_TAG: u8 = 0x04;

/// Whether `key` lives in the side tree.
pub fn is_side(key: &[u8]) -> bool {
    key.first() == Some(&SIDE_TAG)
}
mod memory;

pub use fjall_engine::Fjall;
pub use memory::Memory;

use amberdb_error::Result;
use std::ops::Bound;

/// A key or value as owned bytes.
pub type Bytes = Vec<u8>;

/// One key-value pair yielded by a scan.
pub type KeyValue = (Bytes, Bytes);

/// A scan over a key range. It owns what it needs (no borrow of the engine), may be
/// consumed from both ends, and yields errors in-line rather than panicking.
pub type ScanIterator = Box<dyn DoubleEndedIterator<Item = Result<KeyValue>> + Send>;

/// A key range with owned bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Bytes>,
    /// Upper bound.
    pub end: Bound<Bytes>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let mut end = prefix.to_vec();
        let end = loop {
            match end.pop() {
                Some(b) if b < 0xff => {
                    end.push(b + 1);
                    break Bound::Excluded(end);
                }
                Some(_) => continue,
                None => break Bound::Unbounded,
            }
        };
        Self { start: Bound::Included(prefix.to_vec()), end }
    }

    /// `[start, end)`.
    pub fn between(start: Bytes, end: Bytes) -> Self {
        Self { start: Bound::Included(start), end: Bound::Excluded(end) }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// The part of this range inside `[lo, hi)` (`None`: unbounded on that side).
    pub fn clamp(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> KeyRange {
        let start = match (lo, &self.start) {
            (None, s) => s.clone(),
            (Some(l), Bound::Unbounded) => Bound::Included(l.to_vec()),
            (Some(l), Bound::Included(s) | Bound::Excluded(s)) if s.as_slice() < l => Bound::Included(l.to_vec()),
            (Some(_), s) => s.clone(),
        };
        let end = match (hi, &self.end) {
            (None, e) => e.clone(),
            (Some(h), Bound::Unbounded) => Bound::Excluded(h.to_vec()),
            (Some(h), Bound::Included(e) | Bound::Excluded(e)) if e.as_slice() >= h => Bound::Excluded(h.to_vec()),
            (Some(_), e) => e.clone(),
        };
        KeyRange { start, end }
    }

    /// Whether the range can contain no key at all.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        }
    }
}

/// How durable a write must be before `Engine::write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Handed to the OS: survives a process crash only if the OS keeps running... and
    /// then only by luck of writeback. Callers that use it must be able to redo the
    /// write from elsewhere (AmberDB redoes state-machine writes from the Raft log).
    Buffered,
    /// fsync'd to disk before returning.
    Sync,
}

/// One operation in a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put(Bytes, Bytes),
    /// Remove `key` (a no-op if absent).
    Delete(Bytes),
}

/// An ordered list of writes applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The operations, applied in order (a later op on the same key wins).
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: Bytes, value: Bytes) {
        self.ops.push(WriteOp::Put(key, value));
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: Bytes) {
        self.ops.push(WriteOp::Delete(key));
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A point-in-time read-only view of an engine.
pub trait EngineSnapshot: Send + Sync {
    /// Reads one key as of the snapshot.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Scans a range as of the snapshot.
    fn scan(&self, range: KeyRange) -> ScanIterator;
}

/// What [`Engine::scan_each`] calls per entry: `Ok(false)` stops the scan.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A bulk load in progress (see [`Engine::ingest`]).
pub trait Ingestion {
    /// Adds the next entry; keys must strictly ascend across calls within each tree
    /// (side keys and the rest, see [`SIDE_TAG`]; an out-of-order key is an error, never
    /// a panic). Takes ownership: bulk loads move, not copy.
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<()>;
    /// Makes everything added durable and visible, at once.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// An ordered key-value store. See the crate docs for the invariants.
pub trait Engine: Send + Sync {
    /// Starts a bulk load that writes sorted entries straight into the engine's on-disk
    /// tables, bypassing its journal and memtables. The keys must not exist in the
    /// engine (callers load under fresh key prefixes). Nothing is visible until
    /// `finish`; an ingestion dropped unfinished leaves nothing visible. A load into both
    /// trees (see [`SIDE_TAG`]) may become visible tree by tree, side first.
    fn ingest(&self) -> Result<Box<dyn Ingestion + '_>>;
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Scans a range in ascending order (call `.rev()` for descending).
    fn scan(&self, range: KeyRange) -> ScanIterator;
    /// Visits a range in ascending order with borrowed keys and values (no copies),
    /// until `f` returns `false`. For bulk readers such as backups.
    fn scan_each(&self, range: KeyRange, f: &mut Visitor<'_>) -> Result<()> {
        for kv in self.scan(range) {
            let (k, v) = kv?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
    /// Applies a batch atomically with the given durability.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<()>;
    /// Takes a consistent point-in-time view.
    fn snapshot(&self) -> Box<dyn EngineSnapshot>;
    /// Approximate bytes on disk (0 for in-memory engines).
    fn disk_space(&self) -> u64;
}

#[cfg(test)]
mod tests;
