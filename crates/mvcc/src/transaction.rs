//! Optimistic serializable transactions: read at a version, record what was read,
//! buffer writes, and hand `(read version, read ranges, writes)` to a sequencer.
//!
//! ## Transactions larger than memory
//! A transaction given a [`Stager`] (a consensus node gives one to every read-write
//! transaction it begins) holds at most [`Stager::stage_bytes`] of writes: past it, the
//! buffer is handed to the stager, which makes it a *stage* of the transaction — a
//! commit-log entry applied into a staging area that only this transaction reads — and
//! the buffer starts again. Reads merge three layers, newest first:
//!
//! ```text
//!   buffered writes (memory)  ▶  staged writes (engine, 0x05 ++ txn ++ key)  ▶  snapshot
//! ```
//!
//! Its commit then carries only the last buffer and the list of stages; what it wrote
//! before is summarised for the conflict window as a few key ranges (each stage's
//! first..last key), and what it read is summarised the same way once it has read more
//! than [`MAX_READ_ENTRIES`] keys or ranges: both are supersets, so they can only add
//! conflicts, never miss one, and keep the memory of any transaction bounded. A staged
//! transaction that is dropped without committing asks its stager to abort it.

use crate::{Mutation, ReadView, Version, VersionedScan};
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Arc;

/// Read keys (and, separately, read ranges) a transaction records one by one; past it,
/// they are summarised as a few (at most 64) covering ranges.
pub const MAX_READ_ENTRIES: usize = 1 << 16;

/// How many ranges a summary of reads (or of staged writes) keeps at most.
const SUMMARY_RANGES: usize = 64;

/// Moves a transaction's buffered writes out of memory before it commits (see the
/// module docs). The methods block; a stage returns once its writes are applied.
pub trait Stager: Send + Sync {
    /// Makes `writes` (sorted by key, unique) a stage of transaction `txn` — 0 for its
    /// first stage, after which the receipt's `txn` names it.
    fn stage(&self, txn: u64, writes: &[Mutation]) -> Result<StageReceipt>;

    /// Drops the staged writes of transaction `txn` without waiting (it is gone).
    fn abort(&self, txn: u64);

    /// Bytes of buffered writes (as [`Transaction::write_bytes`] counts them) past which
    /// a transaction stages them.
    fn stage_bytes(&self) -> usize;
}

/// What a stage became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageReceipt {
    /// The transaction's id (the version of its first stage).
    pub txn: u64,
    /// The stage entry's version.
    pub version: Version,
}

/// A transaction's staged part, as its commit request carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedWrites {
    /// The transaction's id.
    pub txn: u64,
    /// Its stage entries' versions, ascending.
    pub stages: Vec<Version>,
}

/// The staged part of a live transaction. Dropped before its commit was handed over,
/// it aborts the transaction's stages.
struct Staged {
    txn: u64,
    stages: Vec<Version>,
    stager: Arc<dyn Stager>,
    /// Inclusive key ranges covering every staged write, sorted, disjoint.
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    handed_over: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.handed_over {
            self.stager.abort(self.txn);
        }
    }
}

/// A commit request's staged part, which aborts the stages if the request is dropped
/// before a sequencer has taken charge of them (see [`CommitRequest::take_staged`]).
pub struct StagedHandle(Staged);

impl std::fmt::Debug for StagedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedHandle").field("txn", &self.0.txn).field("stages", &self.0.stages.len()).finish()
    }
}

impl StagedHandle {
    /// The transaction id and its stages.
    pub fn writes(&self) -> StagedWrites {
        StagedWrites { txn: self.0.txn, stages: self.0.stages.clone() }
    }

    /// The sequencer has proposed the staged commit: its apply (or a restart's
    /// clean-up) disposes of the stages now, not this handle.
    pub fn handed_over(mut self) {
        self.0.handed_over = true;
    }
}

impl PartialEq for StagedHandle {
    fn eq(&self, other: &Self) -> bool {
        self.0.txn == other.0.txn && self.0.stages == other.0.stages
    }
}

impl Eq for StagedHandle {}

/// What a sequencer needs to commit a transaction.
#[derive(Debug, PartialEq, Eq)]
pub struct CommitRequest {
    /// The version the transaction read at.
    pub read_version: Version,
    /// Every user-key range the transaction scanned.
    pub read_ranges: Vec<KeyRange>,
    /// Every key it read by itself (a point read: a third of a one-key range's memory,
    /// and a map lookup rather than a range walk when checked — an INSERT reads each
    /// key it writes).
    pub read_keys: Vec<Vec<u8>>,
    /// The writes, one per key, in key order (after the last stage, if staged).
    pub writes: Vec<Mutation>,
    /// Key ranges covering the staged writes, for the conflict window (empty unless
    /// staged).
    pub write_ranges: Vec<KeyRange>,
    /// The staged part, if the transaction staged writes.
    pub staged: Option<StagedHandle>,
}

impl CommitRequest {
    /// Takes the staged part out, so that the caller disposes of it.
    pub fn take_staged(&mut self) -> Option<StagedHandle> {
        self.staged.take()
    }
}

/// See [`Transaction::detached_reader`]. Holds its own registration of the read
/// version, so its reads stay answerable after the transaction is gone.
pub struct DetachedReader {
    view: ReadView,
    own: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    staged: Option<u64>,
}

impl DetachedReader {
    /// Reads a key as the transaction would have (for keys within its range). A staged
    /// transaction's staged writes are read when asked for, not copied: they are as of
    /// the read (and gone once the transaction has ended).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.own.get(key) {
            return Ok(v.clone());
        }
        if let Some(txn) = self.staged {
            if let Some(v) = self.view.staged_get(txn, key)? {
                return Ok(v);
            }
        }
        self.view.get(key)
    }
}

/// A serializable transaction. Dropping it without committing discards its writes.
pub struct Transaction {
    view: ReadView,
    reads: Vec<KeyRange>,
    read_keys: Vec<Vec<u8>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Size of `writes` as a commit would count it (key + value + 16 per write).
    write_bytes: usize,
    read_only: bool,
    stager: Option<Arc<dyn Stager>>,
    staged: Option<Staged>,
    /// Why the transaction may not commit (a stage failed: its writes are lost).
    broken: Option<String>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("read_version", &self.view.version())
            .field("read_only", &self.read_only)
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl Transaction {
    /// A read-write transaction reading at `view`'s version.
    pub fn new(view: ReadView) -> Self {
        Self {
            view,
            reads: Vec::new(),
            read_keys: Vec::new(),
            writes: BTreeMap::new(),
            write_bytes: 0,
            read_only: false,
            stager: None,
            staged: None,
            broken: None,
        }
    }

    /// Lets the transaction stage its writes through `stager` once they grow past
    /// [`Stager::stage_bytes`] (see the module docs).
    pub fn with_stager(mut self, stager: Arc<dyn Stager>) -> Self {
        self.stager = Some(stager);
        self
    }

    /// The staged transaction's id, if it has staged writes.
    pub fn staged_txn(&self) -> Option<u64> {
        self.staged.as_ref().map(|s| s.txn)
    }

    /// A read-only transaction (time-travel reads are always read-only).
    pub fn read_only(view: ReadView) -> Self {
        Self { read_only: true, ..Self::new(view) }
    }

    /// The version this transaction reads at.
    pub fn read_version(&self) -> Version {
        self.view.version()
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Bytes of buffered writes, counted as a commit counts them (key + value + 16 per
    /// key), so a statement can stop as soon as its transaction grows past what one
    /// commit may carry instead of at commit time.
    pub fn write_bytes(&self) -> usize {
        self.write_bytes
    }

    /// Whether the transaction has written anything (buffered or staged).
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty() || self.staged.is_some()
    }

    /// Reads a key, seeing the transaction's own writes.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !self.read_only {
            self.read_keys.push(key.to_vec());
            if self.read_keys.len() > MAX_READ_ENTRIES {
                self.summarise_read_keys();
            }
        }
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(st) = &self.staged {
            if let Some(v) = self.view.staged_get(st.txn, key)? {
                return Ok(v);
            }
        }
        self.view.get(key)
    }

    /// Replaces the recorded point reads by a few ranges covering them.
    fn summarise_read_keys(&mut self) {
        let mut keys = std::mem::take(&mut self.read_keys);
        keys.sort_unstable();
        keys.dedup();
        if keys.len() <= MAX_READ_ENTRIES / 2 {
            self.read_keys = keys;
            return;
        }
        let per = keys.len().div_ceil(SUMMARY_RANGES);
        for group in keys.chunks(per) {
            let (first, last) = (&group[0], &group[group.len() - 1]);
            self.reads.push(KeyRange { start: Bound::Included(first.clone()), end: Bound::Included(last.clone()) });
        }
        self.note_read_range_count();
    }

    /// Summarises the recorded read ranges once there are too many.
    fn note_read_range_count(&mut self) {
        if self.reads.len() > MAX_READ_ENTRIES {
            self.reads = summarise_ranges(std::mem::take(&mut self.reads));
        }
    }

    /// Scans a range in ascending order, merging the transaction's own writes. The whole
    /// range counts as read, even if the caller stops early.
    pub fn scan(&mut self, range: KeyRange) -> TxnScan {
        self.scan_dir(range, false)
    }

    /// Scans a range in descending order; see [`Transaction::scan`].
    pub fn scan_rev(&mut self, range: KeyRange) -> TxnScan {
        self.scan_dir(range, true)
    }

    /// Copies of this transaction's writes within `range`, in key order.
    fn own_writes(&self, range: &KeyRange) -> impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> + '_ {
        // BTreeMap::range panics on an empty (inverted) range.
        let bounds = (!range.is_empty()).then(|| (range.start.clone(), range.end.clone()));
        bounds.into_iter().flat_map(|b| self.writes.range::<Vec<u8>, _>(b)).map(|(k, v)| (k.clone(), v.clone()))
    }

    fn scan_dir(&mut self, range: KeyRange, reverse: bool) -> TxnScan {
        let mut own: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.own_writes(&range).collect();
        if reverse {
            own.reverse();
        }
        let stored = if reverse { self.view.scan_rev(&range) } else { self.view.scan(&range) };
        let own: OwnIter = match &self.staged {
            None => Box::new(own.into_iter().map(Ok)),
            Some(st) => Box::new(Overlay {
                top: own.into_iter().map(Ok).peekable(),
                bottom: self.view.staged_scan(st.txn, &range, reverse).peekable(),
                reverse,
            }),
        };
        if !self.read_only {
            self.reads.push(range);
            self.note_read_range_count();
        }
        TxnScan { stored: stored.peekable(), own: own.peekable(), reverse }
    }

    /// Point reads that outlive the statement (a result produced as the client reads
    /// it): this transaction's snapshot plus a copy of its own writes within `range`.
    /// The whole of `range` counts as read now, as a scan of it would, since the keys
    /// read later are not known yet.
    pub fn detached_reader(&mut self, range: KeyRange) -> DetachedReader {
        let own = self.own_writes(&range).collect();
        if !self.read_only {
            self.reads.push(range);
            self.note_read_range_count();
        }
        DetachedReader { view: self.view.clone(), own, staged: self.staged_txn() }
    }

    /// Buffers a write.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.write(key, Some(value))
    }

    /// Buffers a delete.
    pub fn delete(&mut self, key: Vec<u8>) -> Result<()> {
        self.write(key, None)
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "cannot write in a read-only transaction at version {}",
                self.view.version()
            )));
        }
        let size = |k: usize, v: &Option<Vec<u8>>| k + v.as_ref().map_or(0, Vec::len) + 16;
        let (key_len, added) = (key.len(), size(key.len(), &value));
        if let Some(old) = self.writes.insert(key, value) {
            self.write_bytes -= size(key_len, &old);
        }
        self.write_bytes += added;
        if let Some(stager) = &self.stager {
            if self.write_bytes > stager.stage_bytes() {
                self.stage(stager.clone())?;
            }
        }
        Ok(())
    }

    /// Moves the buffered writes into a stage (see the module docs).
    fn stage(&mut self, stager: Arc<dyn Stager>) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::Internal(why.clone()));
        }
        let writes: Vec<Mutation> =
            std::mem::take(&mut self.writes).into_iter().map(|(key, value)| Mutation { key, value }).collect();
        self.write_bytes = 0;
        let (Some(first), Some(last)) = (writes.first(), writes.last()) else { return Ok(()) };
        let span = (first.key.clone(), last.key.clone());
        let receipt = match stager.stage(self.staged_txn().unwrap_or(0), &writes) {
            Ok(r) => r,
            Err(e) => {
                // The stage may or may not have been applied: the transaction no longer
                // knows what it wrote, so it must not commit.
                self.broken = Some(format!("the transaction cannot commit: staging its writes failed: {e}"));
                return Err(e);
            }
        };
        let st = self.staged.get_or_insert_with(|| Staged {
            txn: receipt.txn,
            stages: Vec::new(),
            stager,
            ranges: Vec::new(),
            handed_over: false,
        });
        st.stages.push(receipt.version);
        add_span(&mut st.ranges, span);
        Ok(())
    }

    /// Fails if the transaction must not commit (a stage of it failed).
    pub fn check_committable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::Internal(why.clone())),
            None => Ok(()),
        }
    }

    /// Turns the transaction into a commit request, or `None` if it wrote nothing (a
    /// read-only transaction commits trivially at its read version).
    pub fn into_request(self) -> Option<CommitRequest> {
        self.into_request_with_view().map(|(req, _)| req)
    }

    /// Like [`Transaction::into_request`], but hands back the read view too: a
    /// sequencer keeps it alive until the request is checked, so that the transaction
    /// still counts as a live reader (and the conflict window keeps what it needs).
    pub fn into_request_with_view(mut self) -> Option<(CommitRequest, ReadView)> {
        if !self.has_writes() {
            return None;
        }
        let staged = self.staged.take();
        let write_ranges = staged
            .as_ref()
            .map(|st| {
                st.ranges
                    .iter()
                    .map(|(a, b)| KeyRange { start: Bound::Included(a.clone()), end: Bound::Included(b.clone()) })
                    .collect()
            })
            .unwrap_or_default();
        let req = CommitRequest {
            read_version: self.view.version(),
            read_ranges: std::mem::take(&mut self.reads),
            read_keys: std::mem::take(&mut self.read_keys),
            writes: std::mem::take(&mut self.writes).into_iter().map(|(key, value)| Mutation { key, value }).collect(),
            write_ranges,
            staged: staged.map(StagedHandle),
        };
        Some((req, self.view.clone()))
    }
}

/// Adds the inclusive span of a stage to `ranges` (sorted, disjoint), merging what
/// overlaps, and keeps at most [`SUMMARY_RANGES`] of them by merging neighbours.
fn add_span(ranges: &mut Vec<(Vec<u8>, Vec<u8>)>, (mut lo, mut hi): (Vec<u8>, Vec<u8>)) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for (a, b) in ranges.drain(..) {
        if b < lo || a > hi {
            out.push((a, b));
        } else {
            lo = lo.min(a);
            hi = hi.max(b);
        }
    }
    let at = out.partition_point(|(a, _)| *a < lo);
    out.insert(at, (lo, hi));
    while out.len() > SUMMARY_RANGES {
        // Merge the pair of neighbours at an even position: halves the count in a pass.
        let mut merged = Vec::with_capacity(out.len() / 2 + 1);
        let mut it = out.into_iter();
        while let Some((a, b)) = it.next() {
            match it.next() {
                Some((_, d)) => merged.push((a, d)),
                None => merged.push((a, b)),
            }
        }
        out = merged;
    }
    *ranges = out;
}

/// Where a range starts, as a comparable key (`None`: the beginning of the keyspace).
fn start_key(b: &Bound<Vec<u8>>) -> Option<&[u8]> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

/// Covers `ranges` with at most [`SUMMARY_RANGES`] ranges: a superset of what they read.
fn summarise_ranges(mut ranges: Vec<KeyRange>) -> Vec<KeyRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by(|a, b| start_key(&a.start).cmp(&start_key(&b.start)));
    let per = ranges.len().div_ceil(SUMMARY_RANGES).max(1);
    ranges
        .chunks(per)
        .map(|group| {
            // Sorted by start: the first starts lowest (an `Included` bound at a key
            // covers the `Excluded` one at the same key). The end is the highest.
            let start = match &group[0].start {
                Bound::Excluded(k) => Bound::Included(k.clone()),
                b => b.clone(),
            };
            // The highest end: unbounded above all, then by key, `Included` above
            // `Excluded` at the same key.
            let rank = |b: &Bound<Vec<u8>>| match b {
                Bound::Unbounded => (1, Vec::new(), 0),
                Bound::Included(k) => (0, k.clone(), 1),
                Bound::Excluded(k) => (0, k.clone(), 0),
            };
            let end = group.iter().map(|r| &r.end).max_by_key(|b| rank(b)).cloned().unwrap_or(Bound::Unbounded);
            KeyRange { start, end }
        })
        .collect()
}

/// The transaction's own writes inside a scanned range (buffered, and staged if any),
/// in scan order, deletes included.
type OwnWrites = Peekable<OwnIter>;
type OwnIter = Box<dyn Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>> + Send>;

/// Two sources of writes in scan order, `top` winning where both have a key.
struct Overlay<T: Iterator, B: Iterator> {
    top: Peekable<T>,
    bottom: Peekable<B>,
    reverse: bool,
}

impl<T, B> Iterator for Overlay<T, B>
where
    T: Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>>,
    B: Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>>,
{
    type Item = Result<(Vec<u8>, Option<Vec<u8>>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let take_top = match (self.top.peek(), self.bottom.peek()) {
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(Ok((tk, _))), Some(Ok((bk, _)))) => {
                if tk == bk {
                    self.bottom.next(); // shadowed
                    true
                } else {
                    (tk < bk) != self.reverse
                }
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_top {
            self.top.next()
        } else {
            self.bottom.next()
        }
    }
}

/// A scan merging stored data at the read version with the transaction's own writes.
pub struct TxnScan {
    stored: Peekable<VersionedScan>,
    own: OwnWrites,
    reverse: bool,
}

impl Iterator for TxnScan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_own = match (self.stored.peek(), self.own.peek()) {
                (Some(Err(_)), _) => false,
                (_, Some(Err(_))) => true,
                (Some(Ok((sk, _))), Some(Ok((ok, _)))) => {
                    if sk == ok {
                        self.stored.next(); // shadowed by our own write
                        true
                    } else {
                        (ok < sk) != self.reverse
                    }
                }
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if take_own {
                match self.own.next()? {
                    Ok((k, Some(v))) => return Some(Ok((k, v))),
                    Ok((_, None)) => continue, // our own delete
                    Err(e) => return Some(Err(e)),
                }
            }
            return self.stored.next();
        }
    }
}
