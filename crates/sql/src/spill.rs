//! Bounded memory for the stages that must see every row: sort, grouping, DISTINCT.
//!
//! Each such stage holds rows (or groups, or seen rows) in memory up to the statement's
//! `work_mem` budget, as PostgreSQL does, and past it writes to temporary files:
//!
//! ```text
//!   sort:      rows ─▶ [buffer ≤ work_mem] ─sort─▶ run 1, run 2, … (files) ─┐
//!                                  last buffer (memory) ─────────────────────┴─▶ k-way merge ─▶ out
//!
//!   group /    rows ─▶ in memory already? ─yes─▶ fold / drop
//!   distinct          │ no, room left ─▶ add (distinct: emit now)
//!                     └ no room ─▶ partition file hash(key) % 16 ──▶ after the input:
//!                                          each partition, same algorithm, next hash seed
//! ```
//!
//! Invariants:
//! - Memory per stage is bounded by `work_mem` plus one row per open run/partition
//!   reader (the merge fan-in is capped, so reading never needs more than
//!   [`MERGE_FANIN`] buffered readers at once).
//! - A sort is stable across runs: runs hold consecutive stretches of the input and
//!   ties in the merge go to the earlier run, so equal rows keep their input order.
//! - A partition holds only rows whose key is not in memory at that level, and at least
//!   one key always fits in memory, so every level has fewer keys than the one before:
//!   partitioning terminates, however skewed the keys.
//! - Spill files are unnamed temporary files (`O_TMPFILE`): nothing is left behind
//!   when a query finishes, fails, is abandoned, or the server is killed.
//! - A failed write (full disk) is an error of the statement (SQLSTATE 53100), never a
//!   panic and never silently fewer rows.

use crate::pipeline::{compare, Row, RowIter, SortKey};
use crate::types::Value;
use amberdb_encoding::codec::{Reader, Writer};
use amberdb_error::{Error, Result};
use std::cell::Cell;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::RwLock;

/// The default `work_mem`: memory one sort, grouping or DISTINCT may hold (64 MiB).
pub const DEFAULT_WORK_MEM: usize = 64 << 20;

/// Smallest `work_mem` accepted (PostgreSQL's minimum, 64 kB).
pub const MIN_WORK_MEM: usize = 64 << 10;

/// How many runs are merged at once; more runs are merged in passes.
pub const MERGE_FANIN: usize = 32;

/// Partitions a grouping or DISTINCT spills into per level.
const PARTITIONS: usize = 16;

static DEFAULT: AtomicUsize = AtomicUsize::new(DEFAULT_WORK_MEM);
static DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

thread_local! {
    static STATEMENT_WORK_MEM: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Sets where spill files go (default: the system's temporary directory) and the
/// server-wide default `work_mem`.
pub fn configure(dir: Option<PathBuf>, work_mem: usize) {
    if let Ok(mut d) = DIR.write() {
        *d = dir;
    }
    DEFAULT.store(work_mem.max(MIN_WORK_MEM), AtomicOrdering::Relaxed);
}

/// The server-wide default `work_mem`.
pub fn default_work_mem() -> usize {
    DEFAULT.load(AtomicOrdering::Relaxed)
}

/// The budget of the statement being planned on this thread.
pub(crate) fn work_mem() -> usize {
    STATEMENT_WORK_MEM.with(Cell::get).unwrap_or_else(default_work_mem)
}

/// Runs `f` (planning a statement) with `bytes` as its `work_mem`.
pub(crate) fn with_work_mem<T>(bytes: Option<usize>, f: impl FnOnce() -> T) -> T {
    let before = STATEMENT_WORK_MEM.with(|c| c.replace(bytes));
    let out = f();
    STATEMENT_WORK_MEM.with(|c| c.set(before));
    out
}

/// Parses a `work_mem` setting as PostgreSQL does: a plain number is kB, or a number
/// with a unit (`B`, `kB`, `MB`, `GB`, `TB`).
pub fn parse_work_mem(text: &str) -> Result<usize> {
    let (num, unit) = number_and_unit(text);
    let invalid = || Error::sql("22023", format!("invalid value for parameter \"work_mem\": \"{text}\""));
    let n: u64 = num.parse().map_err(|_| invalid())?;
    let scale: u64 = match unit {
        "" | "kB" => 1 << 10,
        "B" => 1,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(Error::sql("22023", format!("invalid value for parameter \"work_mem\": \"{text}\"; valid units for this parameter are \"B\", \"kB\", \"MB\", \"GB\", and \"TB\""))),
    };
    let bytes = n.checked_mul(scale).and_then(|b| usize::try_from(b).ok()).ok_or_else(invalid)?;
    if bytes < MIN_WORK_MEM {
        return Err(Error::sql(
            "22023",
            format!("{} kB is outside the valid range for parameter \"work_mem\" (64 .. 2147483647)", bytes >> 10),
        ));
    }
    Ok(bytes)
}

/// A setting's digits and unit (`'64kB'` → `64`, `kB`), quotes and blanks removed.
pub(crate) fn number_and_unit(text: &str) -> (&str, &str) {
    let t = text.trim().trim_matches('\'');
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    (num, unit.trim())
}

/// Formats a `work_mem` value as PostgreSQL's SHOW does.
pub fn format_work_mem(bytes: usize) -> String {
    let kb = bytes >> 10;
    if kb.is_multiple_of(1 << 20) {
        format!("{}GB", kb >> 20)
    } else if kb.is_multiple_of(1 << 10) {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}kB")
    }
}

/// What a row costs in memory, roughly: the vector, each value, and heap data.
pub fn row_bytes(row: &[Value]) -> usize {
    24 + row
        .iter()
        .map(|v| {
            std::mem::size_of::<Value>()
                + match v {
                    Value::Text(s) => s.capacity(),
                    Value::Bytes(b) => b.capacity(),
                    _ => 0,
                }
        })
        .sum::<usize>()
}

pub(crate) fn io_error(what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        Error::sql("53100", format!("could not {what} temporary file: {e}"))
    } else {
        Error::sql("58030", format!("could not {what} temporary file: {e}"))
    }
}

/// Free space spilling leaves on the spill directory's file system for the database's
/// own writes (commit log, engine): 1 GiB, or a tenth of a smaller file system.
const RESERVE_BYTES: u64 = 1 << 30;

/// Bytes a spill file grows by between two free-space checks.
pub(crate) const CHECK_EVERY: u64 = 32 << 20;

/// Fails (53100) rather than let a runaway sort fill the disk the database writes to.
// statvfs field types differ by platform (u32 on some), hence the casts.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn check_space(dir: &std::path::Path) -> Result<()> {
    let Ok(st) = nix::sys::statvfs::statvfs(dir) else { return Ok(()) };
    let frag = st.fragment_size() as u64;
    let (total, avail) = (st.blocks() as u64 * frag, st.blocks_available() as u64 * frag);
    if let Some(reserve) = short_of_reserve(total, avail) {
        return Err(Error::sql(
            "53100",
            format!(
                "could not write to temporary file: {} has {} MiB free, less than the {} MiB kept for the database's own writes; lower the sort's input or free space",
                dir.display(),
                avail >> 20,
                reserve >> 20
            ),
        ));
    }
    Ok(())
}

/// The reserve `avail` falls short of, on a file system of `total` bytes.
fn short_of_reserve(total: u64, avail: u64) -> Option<u64> {
    let reserve = RESERVE_BYTES.min(total / 10);
    (avail < reserve).then_some(reserve)
}

/// A new, unnamed temporary file in the spill directory (which is returned with it, for
/// later free-space checks), if that has room left.
pub(crate) fn temp_file() -> Result<(File, PathBuf)> {
    let dir = DIR.read().ok().and_then(|d| d.clone()).unwrap_or_else(std::env::temp_dir);
    check_space(&dir)?;
    let file = tempfile::tempfile_in(&dir).map_err(|e| io_error("create", e))?;
    Ok((file, dir))
}

/// A temporary file being written, one row after another.
pub struct SpillWriter {
    out: BufWriter<File>,
    rows: u64,
    scratch: Vec<u8>,
    dir: PathBuf,
    unchecked: u64,
}

impl SpillWriter {
    /// A new, unnamed temporary file.
    pub fn new() -> Result<Self> {
        let (file, dir) = temp_file()?;
        Ok(Self { out: BufWriter::with_capacity(64 << 10, file), rows: 0, scratch: Vec::new(), dir, unchecked: 0 })
    }

    /// Appends a row.
    pub fn push(&mut self, row: &[Value]) -> Result<()> {
        let mut w = Writer::with_capacity(16 * row.len());
        w.varint(row.len() as u64);
        for v in row {
            v.encode(&mut w);
        }
        self.scratch = w.finish();
        let len = u32::try_from(self.scratch.len())
            .map_err(|_| Error::sql("54000", "a row too large to spill (over 4 GiB)"))?;
        self.out.write_all(&len.to_le_bytes()).map_err(|e| io_error("write to", e))?;
        self.out.write_all(&self.scratch).map_err(|e| io_error("write to", e))?;
        self.rows += 1;
        self.unchecked += 4 + self.scratch.len() as u64;
        if self.unchecked > CHECK_EVERY {
            self.unchecked = 0;
            check_space(&self.dir)?;
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finishes writing; the rows are read back in the order written.
    pub fn into_reader(self) -> Result<SpillReader> {
        let mut file = self.out.into_inner().map_err(|e| io_error("write to", e.into_error()))?;
        std::io::Seek::rewind(&mut file).map_err(|e| io_error("seek in", e))?;
        Ok(SpillReader {
            input: BufReader::with_capacity(64 << 10, file),
            remaining: self.rows,
            total: self.rows,
            buf: Vec::new(),
        })
    }
}

/// Rows read back from a [`SpillWriter`]'s file.
pub struct SpillReader {
    input: BufReader<File>,
    remaining: u64,
    total: u64,
    buf: Vec<u8>,
}

impl SpillReader {
    /// Starts reading again from the first row (a block nested loop reads its right side
    /// once per block of left rows).
    pub fn rewind(&mut self) -> Result<()> {
        std::io::Seek::rewind(&mut self.input).map_err(|e| io_error("seek in", e))?;
        self.remaining = self.total;
        Ok(())
    }

    /// How many rows the file holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn read_row(&mut self) -> Result<Row> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len).map_err(|e| io_error("read from", e))?;
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.buf).map_err(|e| io_error("read from", e))?;
        let mut r = Reader::new(&self.buf, "spilled row");
        let n = r.varint()?;
        let row = (0..n).map(|_| Value::decode(&mut r)).collect::<Result<Row>>()?;
        r.finish()?;
        Ok(row)
    }
}

impl Iterator for SpillReader {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let r = self.read_row();
        if r.is_err() {
            self.remaining = 0;
        }
        Some(r)
    }
}

/// Sorts the input by `keys` (stable), holding at most about `budget` bytes of rows in
/// memory; with `top`, only the first `top` rows in order are produced (ORDER BY …
/// LIMIT), and memory is bounded by that as well.
pub fn sort(rows: RowIter, keys: &[SortKey], top: Option<usize>, budget: usize) -> Result<RowIter> {
    let keys: std::sync::Arc<[SortKey]> = keys.into();
    let mut buf: Vec<Row> = Vec::new();
    let mut bytes = 0usize;
    // Runs by merge level, like a binary counter in base MERGE_FANIN: every run of a
    // higher level holds earlier input than every run of a lower one, so reading the
    // levels from the top down gives the runs in input order. Open files stay below
    // MERGE_FANIN per level, however small the budget.
    let mut levels: Vec<Vec<RowIter>> = Vec::new();
    // With a small LIMIT the buffer is cut back to the best `top` rows now and then,
    // which keeps it far below the budget.
    let compact_at = top.map(|k| k.saturating_mul(2).max(1024));
    for r in rows {
        let r = r?;
        bytes += row_bytes(&r);
        buf.push(r);
        if compact_at.is_some_and(|n| buf.len() >= n) {
            sort_buffer(&mut buf, &keys, top);
            bytes = buf.iter().map(|r| row_bytes(r)).sum();
        }
        if bytes > budget && buf.len() > 1 {
            sort_buffer(&mut buf, &keys, top);
            let mut run = SpillWriter::new()?;
            for r in buf.drain(..) {
                run.push(&r)?;
            }
            bytes = 0;
            let mut carry: RowIter = Box::new(run.into_reader()?);
            let mut level = 0;
            loop {
                if levels.len() == level {
                    levels.push(Vec::new());
                }
                levels[level].push(carry);
                if levels[level].len() < MERGE_FANIN {
                    break;
                }
                let group = std::mem::take(&mut levels[level]);
                carry = merge_to_file(group, &keys, top)?;
                level += 1;
            }
        }
    }
    sort_buffer(&mut buf, &keys, top);
    if levels.is_empty() {
        return Ok(crate::pipeline::materialized(buf));
    }
    let mut runs: Vec<RowIter> = levels.into_iter().rev().flatten().collect();
    // The final merge takes the spilled runs and the buffer: fold the oldest runs
    // together until that is at most MERGE_FANIN.
    while runs.len() >= MERGE_FANIN {
        let rest = runs.split_off(MERGE_FANIN);
        let merged = merge_to_file(runs, &keys, top)?;
        runs = std::iter::once(merged).chain(rest).collect();
    }
    runs.push(crate::pipeline::materialized(buf));
    let merged: RowIter = Box::new(Merge::new(runs, keys)?);
    Ok(match top {
        Some(k) => Box::new(merged.take(k)),
        None => merged,
    })
}

/// Merges `runs` (in input order) into one run on disk; with `top`, only its first
/// `top` rows can matter, so only those are kept.
fn merge_to_file(runs: Vec<RowIter>, keys: &std::sync::Arc<[SortKey]>, top: Option<usize>) -> Result<RowIter> {
    let mut out = SpillWriter::new()?;
    for r in Merge::new(runs, keys.clone())?.take(top.unwrap_or(usize::MAX)) {
        out.push(&r?)?;
    }
    Ok(Box::new(out.into_reader()?))
}

fn sort_buffer(buf: &mut Vec<Row>, keys: &[SortKey], top: Option<usize>) {
    buf.sort_by(|a, b| compare(a, b, keys));
    if let Some(k) = top {
        buf.truncate(k);
    }
}

/// The head row of one run in the merge heap.
struct Head {
    row: Row,
    run: usize,
    keys: std::sync::Arc<[SortKey]>,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: the smallest row (then the earliest run) is greatest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        compare(&other.row, &self.row, &self.keys).then(other.run.cmp(&self.run))
    }
}

/// A k-way merge of sorted runs.
struct Merge {
    runs: Vec<RowIter>,
    heap: BinaryHeap<Head>,
    keys: std::sync::Arc<[SortKey]>,
    failed: bool,
}

impl Merge {
    fn new(mut runs: Vec<RowIter>, keys: std::sync::Arc<[SortKey]>) -> Result<Self> {
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (run, it) in runs.iter_mut().enumerate() {
            if let Some(row) = it.next() {
                heap.push(Head { row: row?, run, keys: keys.clone() });
            }
        }
        Ok(Self { runs, heap, keys, failed: false })
    }
}

impl Iterator for Merge {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        if self.failed {
            return None;
        }
        let Head { row, run, .. } = self.heap.pop()?;
        match self.runs[run].next() {
            Some(Ok(next)) => self.heap.push(Head { row: next, run, keys: self.keys.clone() }),
            Some(Err(e)) => {
                self.failed = true;
                return Some(Err(e));
            }
            None => {}
        }
        Some(Ok(row))
    }
}

/// Routes rows whose key is not held in memory to one of 16 (`PARTITIONS`) files by a
/// hash of the key that differs per level.
pub struct Partitions {
    level: u32,
    files: Vec<Option<SpillWriter>>,
}

impl Partitions {
    /// Empty partitions for recursion level `level`.
    pub fn new(level: u32) -> Self {
        Self { level, files: (0..PARTITIONS).map(|_| None).collect() }
    }

    /// Writes `row` to the partition of `key` (the row's identity bytes).
    pub fn push(&mut self, key: &[u8], row: &[Value]) -> Result<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.level.hash(&mut h);
        key.hash(&mut h);
        let slot = &mut self.files[(h.finish() % PARTITIONS as u64) as usize];
        if slot.is_none() {
            *slot = Some(SpillWriter::new()?);
        }
        slot.as_mut().expect("the slot was just filled").push(row)
    }

    /// Whether any row was spilled.
    pub fn is_empty(&self) -> bool {
        self.files.iter().all(Option::is_none)
    }

    /// The partitions written, to be read back.
    pub fn finish(self) -> Result<Vec<SpillReader>> {
        self.files.into_iter().flatten().map(SpillWriter::into_reader).collect()
    }

    /// Every partition by its number (None: no row went there), so that two inputs
    /// partitioned at the same level pair up.
    pub fn finish_aligned(self) -> Result<Vec<Option<SpillReader>>> {
        self.files.into_iter().map(|f| f.map(SpillWriter::into_reader).transpose()).collect()
    }

    /// The level the partitions' rows are processed at.
    pub fn next_level(&self) -> u32 {
        self.level + 1
    }
}

/// DISTINCT over the first `width` columns of each row: rows come out as soon as they
/// are first seen while the seen set fits in `budget`; past it, unseen rows go to
/// partitions that are de-duplicated the same way after the input ends.
pub fn distinct(rows: RowIter, width: usize, budget: usize) -> RowIter {
    distinct_some(rows, width, budget, None)
}

/// Rows `passes` picks out, unchanged and unremembered.
pub type Passes = Box<dyn Fn(&[Value]) -> bool + Send>;

/// [`distinct`] for the rows `passes` does not pick out; the rows it picks come out
/// as they arrive, never de-duplicated, held or spilled (the plain rows beside a
/// DISTINCT aggregate's values, see `exec.rs`).
pub fn distinct_some(rows: RowIter, width: usize, budget: usize, passes: Option<Passes>) -> RowIter {
    Box::new(Distinct {
        input: Some(rows),
        passes,
        width,
        budget,
        seen: std::collections::HashSet::new(),
        bytes: 0,
        spill: Partitions::new(0),
        pending: VecDeque::new(),
        failed: false,
    })
}

struct Distinct {
    input: Option<RowIter>,
    passes: Option<Passes>,
    width: usize,
    budget: usize,
    seen: std::collections::HashSet<Vec<u8>>,
    bytes: usize,
    spill: Partitions,
    /// Partitions still to de-duplicate, with their level.
    pending: VecDeque<(SpillReader, u32)>,
    failed: bool,
}

impl Distinct {
    fn step(&mut self) -> Result<Option<Row>> {
        loop {
            let Some(input) = self.input.as_mut() else {
                // Input done: move to the next partition, one level down.
                let level = self.spill.next_level();
                let spilled = std::mem::replace(&mut self.spill, Partitions::new(level));
                // Depth first, as for groupings: few partition files open at once.
                for part in spilled.finish()?.into_iter().rev() {
                    self.pending.push_front((part, level));
                }
                let Some((next, level)) = self.pending.pop_front() else { return Ok(None) };
                self.input = Some(Box::new(next));
                self.seen = std::collections::HashSet::new();
                self.bytes = 0;
                self.spill = Partitions::new(level);
                continue;
            };
            let Some(row) = input.next() else {
                self.input = None;
                continue;
            };
            let row = row?;
            if self.passes.as_ref().is_some_and(|p| p(&row)) {
                return Ok(Some(row));
            }
            let id = crate::exec::row_identity(&row[..self.width.min(row.len())]);
            if self.seen.contains(&id) {
                continue;
            }
            if self.bytes < self.budget || self.seen.is_empty() {
                self.bytes += id.len() + 48;
                self.seen.insert(id);
                return Ok(Some(row));
            }
            self.spill.push(&id, &row)?;
        }
    }
}

impl Iterator for Distinct {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Levels of re-partitioning for INTERSECT/EXCEPT before a partition's right side is
/// counted in memory whatever its size.
const MAX_SET_LEVELS: u32 = 4;

/// INTERSECT / EXCEPT (with `all`: INTERSECT ALL / EXCEPT ALL; without, the caller
/// removes duplicates afterwards): the right side's rows are counted and the left side
/// streams past the counts. Past `budget`, both sides are partitioned by a hash of the
/// whole row (equal rows land in partitions of the same number) and each pair is
/// handled the same way, one level down.
pub fn intersect_except(left: RowIter, right: RowIter, intersect: bool, all: bool, budget: usize) -> Result<RowIter> {
    set_op_at(left, right, intersect, all, budget, 0)
}

fn set_op_at(
    left: RowIter,
    mut right: RowIter,
    intersect: bool,
    all: bool,
    budget: usize,
    level: u32,
) -> Result<RowIter> {
    let mut counts: std::collections::HashMap<Vec<u8>, (Row, usize)> = std::collections::HashMap::new();
    let mut bytes = 0usize;
    while let Some(r) = right.next() {
        let r = r?;
        let id = crate::exec::row_identity(&r);
        if let Some(e) = counts.get_mut(&id) {
            e.1 += 1;
            continue;
        }
        bytes += id.len() + row_bytes(&r) + 48;
        counts.insert(id, (r, 1));
        if bytes > budget && level + 1 < MAX_SET_LEVELS {
            let mut right_parts = Partitions::new(level);
            for (id, (row, n)) in counts.drain() {
                for _ in 0..n {
                    right_parts.push(&id, &row)?;
                }
            }
            for r in right {
                let r = r?;
                right_parts.push(&crate::exec::row_identity(&r), &r)?;
            }
            let mut left_parts = Partitions::new(level);
            for r in left {
                let r = r?;
                left_parts.push(&crate::exec::row_identity(&r), &r)?;
            }
            let mut pairs: VecDeque<(SpillReader, Option<SpillReader>)> = left_parts
                .finish_aligned()?
                .into_iter()
                .zip(right_parts.finish_aligned()?)
                .filter_map(|(l, r)| l.map(|l| (l, r)))
                .collect();
            // Each pair is handled the same way, one level down, when its turn comes.
            return Ok(crate::pipeline::parts(move || {
                let Some((left, right)) = pairs.pop_front() else { return Ok(None) };
                let right: RowIter = match right {
                    Some(r) => Box::new(r),
                    None => Box::new(std::iter::empty()),
                };
                set_op_at(Box::new(left), right, intersect, all, budget, level + 1).map(Some)
            }));
        }
    }
    let mut counts: std::collections::HashMap<Vec<u8>, usize> = counts.into_iter().map(|(k, (_, n))| (k, n)).collect();
    Ok(crate::pipeline::filter(left, move |r| {
        Ok(match counts.get_mut(&crate::exec::row_identity(r)) {
            Some(n) if *n > 0 => {
                if intersect || all {
                    *n -= 1;
                }
                intersect
            }
            _ => !intersect,
        })
    }))
}

/// Rows kept in memory up to work_mem, then in a temporary file; read back in order.
pub(crate) struct RowStore {
    mem: Vec<Row>,
    bytes: usize,
    file: Option<SpillWriter>,
}

impl RowStore {
    pub(crate) fn new() -> Self {
        RowStore { mem: Vec::new(), bytes: 0, file: None }
    }

    pub(crate) fn push(&mut self, row: Row) -> Result<()> {
        if let Some(f) = &mut self.file {
            return f.push(&row);
        }
        self.bytes += row_bytes(&row);
        self.mem.push(row);
        if self.bytes > crate::spill::work_mem() {
            let mut f = SpillWriter::new()?;
            for r in self.mem.drain(..) {
                f.push(&r)?;
            }
            self.file = Some(f);
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.file.as_ref().is_none_or(|f| f.rows() == 0)
    }

    pub(crate) fn into_rows(self) -> Result<RowIter> {
        Ok(match self.file {
            Some(f) => Box::new(f.into_reader()?),
            None => crate::pipeline::materialized(self.mem),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[(i64, i64)]) -> RowIter {
        crate::pipeline::materialized(v.iter().map(|&(a, b)| vec![Value::Int(a), Value::Int(b)]).collect())
    }

    fn pairs(rows: RowIter) -> Vec<(i64, i64)> {
        rows.map(|r| match r.unwrap().as_slice() {
            [Value::Int(a), Value::Int(b)] => (*a, *b),
            other => panic!("unexpected row {other:?}"),
        })
        .collect()
    }

    #[test]
    fn external_sort_is_stable_and_equals_an_in_memory_sort() {
        // (key, input position): equal keys must keep increasing positions.
        let input: Vec<(i64, i64)> = (0..20_000).map(|i| ((i * 7919) % 101, i)).collect();
        let mut expected = input.clone();
        expected.sort_by_key(|&(k, _)| k);
        // A budget of a few rows: hundreds of runs, so merge passes happen too.
        for budget in [1, 4_000, 100_000, usize::MAX] {
            let got = pairs(sort(ints(&input), &[(0, false, false)], None, budget).unwrap());
            assert_eq!(got, expected, "budget {budget}");
        }
        let mut desc = input.clone();
        desc.sort_by_key(|&(k, _)| std::cmp::Reverse(k));
        assert_eq!(pairs(sort(ints(&input), &[(0, true, true)], None, 4_000).unwrap()), desc);
        for top in [0, 1, 37, 5_000, 30_000] {
            let got = pairs(sort(ints(&input), &[(0, false, false)], Some(top), 4_000).unwrap());
            assert_eq!(got, expected[..top.min(expected.len())].to_vec(), "top {top}");
        }
    }

    #[test]
    fn an_error_in_the_input_is_the_sorts_error() {
        let rows: RowIter = Box::new(
            (0..10_000)
                .map(|i| Ok(vec![Value::Int(i)]))
                .chain(std::iter::once(Err(Error::sql("22012", "division by zero")))),
        );
        assert!(sort(rows, &[(0, false, false)], None, 1_000).is_err());
    }

    #[test]
    fn distinct_with_spilling_yields_each_row_once() {
        let input: Vec<(i64, i64)> = (0..30_000).map(|i| ((i * 31) % 9_973, 0)).collect();
        for budget in [1, 10_000, usize::MAX] {
            let mut got = pairs(distinct(ints(&input), 2, budget));
            got.sort();
            let expected: Vec<(i64, i64)> = (0..9_973).map(|k| (k, 0)).collect();
            assert_eq!(got, expected, "budget {budget}");
        }
        // Only the first `width` columns decide.
        let got = pairs(distinct(ints(&[(1, 1), (1, 2), (2, 3)]), 1, 1));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn spilling_keeps_a_reserve_of_free_space() {
        assert_eq!(short_of_reserve(100 << 30, 2 << 30), None);
        assert_eq!(short_of_reserve(100 << 30, 512 << 20), Some(1 << 30));
        // A small file system keeps a tenth.
        assert_eq!(short_of_reserve(1 << 30, 200 << 20), None);
        assert_eq!(short_of_reserve(1 << 30, 50 << 20), Some((1 << 30) / 10));
        // The spill directory of this machine has room: creating a file works.
        assert!(SpillWriter::new().is_ok());
    }

    #[test]
    fn spilled_intersect_and_except_equal_in_memory_ones() {
        let side = |n: i64, m: i64| -> Vec<(i64, i64)> { (0..n).map(|i| ((i * 7) % m, 0)).collect() };
        let (left, right) = (side(3_000, 500), side(2_000, 700));
        for intersect in [true, false] {
            for all in [true, false] {
                let run = |budget: usize| {
                    let mut out = pairs(intersect_except(ints(&left), ints(&right), intersect, all, budget).unwrap());
                    out.sort();
                    out
                };
                assert_eq!(run(2_000), run(usize::MAX), "intersect {intersect}, all {all}");
            }
        }
    }

    #[test]
    fn work_mem_parses_like_postgresql() {
        assert_eq!(parse_work_mem("4MB").unwrap(), 4 << 20);
        assert_eq!(parse_work_mem("'64kB'").unwrap(), 64 << 10);
        assert_eq!(parse_work_mem("1024").unwrap(), 1 << 20);
        assert_eq!(parse_work_mem("1GB").unwrap(), 1 << 30);
        assert!(parse_work_mem("63kB").is_err());
        assert!(parse_work_mem("4 parsecs").is_err());
        assert!(parse_work_mem("").is_err());
        assert_eq!(format_work_mem(4 << 20), "4MB");
        assert_eq!(format_work_mem(64 << 10), "64kB");
        assert_eq!(format_work_mem(1 << 30), "1GB");
    }
}
