//! The commit log: Raft's log on disk, in segment files of checksummed frames.
//!
//! ```text
//!   <data>/raft/
//!     vote                       frame(json Vote)          replaced atomically (tmp+fsync+rename)
//!     purged                     frame(json LogId)         replaced atomically
//!     holds                      frame(json {name: index}) replaced atomically
//!     log/00000000000000000001.seg   "AMBLOG01" + frame(entry) + frame(entry) + ...
//!     log/00000000000000052311.seg   (named by the index of its first entry)
//! ```
//!
//! ## Group commit
//! `append` writes the frames of a batch with one `write` and returns; a dedicated
//! flusher thread fsyncs the active segment once for *every* append that arrived since
//! its last fsync, then reports them all durable to openraft. Nothing is acknowledged to
//! a client before the fsync that covers it (openraft applies an entry only after its
//! flush callback and a quorum's).
//!
//! ## Writing ahead
//! Once [`LogStore::write_ahead_into`] names the mvcc store, `append` — after handing
//! the fsync to the flusher — writes each commit's data into the store at its index
//! (`Mvcc::speculate`), invisible until the state machine applies that index and only
//! publishes it. The engine inserts, most of an apply, so run during the fsync instead
//! of after it. A commit that never commits is undone: on a log truncation here, after a
//! crash by `Mvcc::open` (the store keeps a record of what it wrote ahead).
//!
//! ## Recovery
//! On open every segment is read and every frame's crc32c checked. A damaged frame at the
//! very end of the *last* segment (shorter than its header claims, or followed only by
//! zero bytes) is a torn write that was never acknowledged: it is truncated away with a
//! warning saying how many bytes were dropped. Any other damage, in any file, stops
//! start-up with an error naming the file and offset: silently dropping acknowledged
//! commits is never an option.
//!
//! ## Holds
//! Raft purges the log once the state machine is checkpointed, but a continuous backup
//! still needs the entries it has not shipped. A *hold* (a name and the first index its
//! owner needs, persisted in `holds`) keeps purged entries on disk and readable through
//! [`LogStore::read_committed`]: Raft's view (`purged`) moves on, the files stay until no
//! hold covers them. Holds are persisted before they take effect, so a restart never
//! drops what a hold protected.

use crate::types::{sto_err, Entry, LogId, StorageError, TypeConfig, Vote};
use amberdb_encoding::codec::{Reader, Writer};
use amberdb_encoding::frame::{self, Decoded};
use amberdb_error::{Error, Result};
use amberdb_mvcc::{CommitBatch, Mvcc};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, StorageIOError};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

const SEGMENT_MAGIC: &[u8; 8] = b"AMBLOG01";
const ENTRY_FORMAT: u8 = 1;
/// A segment is sealed and a new one started past this size.
const SEGMENT_TARGET: u64 = 64 << 20;
/// Recently appended entries kept decoded in memory, so applying them needs no read —
/// at most this many, and at most `CACHE_BYTES` of encoded entries (large commits, such
/// as a restore's bulk loads, must not pin gigabytes).
const CACHE_ENTRIES: usize = 16_384;
const CACHE_BYTES: usize = 64 << 20;
/// Entries larger than this are not written ahead (see `append`), nor kept in the cache:
/// the apply reads them back (from the page cache, most likely) rather than holding a
/// second copy of a large commit for as long as smaller entries keep it there. The
/// same bound as mvcc's for applying a commit in pieces.
const WRITE_AHEAD_MAX_BYTES: usize = amberdb_mvcc::CHUNKED_APPLY_BYTES;

/// Where an entry lives on disk.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

struct State {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// Locations of entries `first_index ..= last`, contiguous.
    index: VecDeque<Loc>,
    first_index: u64,
    last_purged: Option<LogId>,
    /// Named holds: the first index each owner still needs (see the module docs).
    holds: BTreeMap<String, u64>,
    vote: Option<Vote>,
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
}

struct Flusher {
    pending: Mutex<(Vec<LogFlushed<TypeConfig>>, bool)>,
    wake: Condvar,
    stats: FlushStats,
}

/// Counters of the commit log's group commit.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// fsyncs performed by the flusher.
    pub fsyncs: std::sync::atomic::AtomicU64,
    /// appends (openraft calls) made durable by those fsyncs.
    pub appends: std::sync::atomic::AtomicU64,
    /// entries appended.
    pub entries: std::sync::atomic::AtomicU64,
}

/// The commit log. Cheap to clone: clones share one log.
#[derive(Clone)]
pub struct LogStore {
    state: Arc<Mutex<State>>,
    flusher: Arc<Flusher>,
    /// The store whose commits are written ahead while their entries are made durable
    /// (see the module docs, "Writing ahead").
    ahead: Arc<OnceLock<Arc<Mvcc>>>,
}

/// Stops the flusher thread when the last `LogStore` handle is dropped.
struct FlusherGuard(Arc<Flusher>);

impl Drop for FlusherGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.0.pending.lock() {
            p.1 = true;
            self.0.wake.notify_all();
        }
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::io(path.display(), format!("{what}: {e}"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, "fsync directory", e))
}

/// Writes `payload` in one checksummed frame to `path` atomically.
fn write_atomic(path: &Path, payload: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut buf = Vec::new();
    frame::encode_into(&mut buf, payload);
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
    f.write_all(&buf).map_err(|e| io_err(&tmp, "write", e))?;
    f.sync_all().map_err(|e| io_err(&tmp, "fsync", e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, "rename into place", e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a file written by `write_atomic`, or `None` if absent.
fn read_atomic(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(buf) => {
            let payload = frame::decode_exact(&buf, &path.display().to_string())?;
            Ok(Some(payload.to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "read", e)),
    }
}

/// Encodes an entry (layout in `docs/formats/commit-log.md`) as one frame: the payload
/// written after room for the frame header, which is then filled in, in one
/// allocation sized up front — a large commit is copied once, not grown by doubling
/// and then copied again into a frame.
fn encode_frame(entry: &Entry) -> Result<Vec<u8>> {
    let payload = match &entry.payload {
        EntryPayload::Normal(req) => req.batch.len(),
        _ => 0,
    };
    let mut w = Writer::with_capacity(frame::HEADER_LEN + 64 + payload);
    w.u64(0); // room for the frame header
    w.u8(ENTRY_FORMAT).u64(entry.log_id.leader_id.term).u64(entry.log_id.leader_id.node_id).u64(entry.log_id.index);
    match &entry.payload {
        EntryPayload::Blank => {
            w.u8(0);
        }
        EntryPayload::Normal(req) => {
            w.u8(1).bytes(&req.batch);
        }
        EntryPayload::Membership(m) => {
            let json = serde_json::to_vec(m).map_err(|e| Error::Internal(format!("encode membership: {e}")))?;
            w.u8(2).bytes(&json);
        }
    }
    let mut framed = w.finish();
    frame::seal(&mut framed);
    Ok(framed)
}

/// Decodes an entry, rejecting anything malformed.
pub(crate) fn decode_entry(raw: &[u8]) -> Result<Entry> {
    let mut r = Reader::new(raw, "commit log entry");
    let format = r.u8()?;
    if format != ENTRY_FORMAT {
        return Err(Error::InvalidData(format!("commit log entry: unknown format {format}")));
    }
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    let log_id = LogId::new(openraft::CommittedLeaderId::new(term, node_id), index);
    let payload = match r.u8()? {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Normal(crate::types::Request { batch: r.bytes()?.to_vec() }),
        2 => {
            let m = serde_json::from_slice(r.bytes()?)
                .map_err(|e| Error::InvalidData(format!("commit log entry {index}: bad membership: {e}")))?;
            EntryPayload::Membership(m)
        }
        t => return Err(Error::InvalidData(format!("commit log entry {index}: unknown payload tag {t}"))),
    };
    r.finish()?;
    Ok(Entry { log_id, payload })
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering as described in the module docs.
    pub fn open(dir: &Path) -> Result<Self> {
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir).map_err(|e| io_err(&log_dir, "create directory", e))?;
        let vote = match read_atomic(&dir.join("vote"))? {
            Some(raw) => Some(
                serde_json::from_slice(&raw)
                    .map_err(|e| Error::InvalidData(format!("{}: bad vote: {e}", dir.join("vote").display())))?,
            ),
            None => None,
        };
        let last_purged: Option<LogId> =
            match read_atomic(&dir.join("purged"))? {
                Some(raw) => Some(serde_json::from_slice(&raw).map_err(|e| {
                    Error::InvalidData(format!("{}: bad purge record: {e}", dir.join("purged").display()))
                })?),
                None => None,
            };
        let holds: BTreeMap<String, u64> = match read_atomic(&dir.join("holds"))? {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| {
                Error::InvalidData(format!("{}: bad log hold record: {e}", dir.join("holds").display()))
            })?,
            None => BTreeMap::new(),
        };
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for de in fs::read_dir(&log_dir).map_err(|e| io_err(&log_dir, "list", e))? {
            let de = de.map_err(|e| io_err(&log_dir, "list", e))?;
            let name = de.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".seg") {
                let first: u64 = stem.parse().map_err(|_| {
                    Error::InvalidData(format!("{}: unexpected file in commit log directory", de.path().display()))
                })?;
                names.push((first, de.path()));
            }
        }
        names.sort();
        let mut state = State {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            index: VecDeque::new(),
            first_index: retain_from(last_purged, &holds),
            last_purged,
            holds,
            vote,
            cache: BTreeMap::new(),
            cache_bytes: 0,
        };
        let n = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            state.recover_segment(first, &path, i + 1 == n)?;
        }
        if state.segments.is_empty() {
            let first = state.last_purged.map_or(0, |l| l.index + 1);
            state.first_index = first;
            state.create_segment(first)?;
        }
        let flusher = Arc::new(Flusher {
            pending: Mutex::new((Vec::new(), false)),
            wake: Condvar::new(),
            stats: FlushStats::default(),
        });
        let store =
            LogStore { state: Arc::new(Mutex::new(state)), flusher: flusher.clone(), ahead: Arc::new(OnceLock::new()) };
        let state = store.state.clone();
        std::thread::Builder::new()
            .name("amber-log-flush".into())
            .spawn(move || flush_loop(flusher, state))
            .map_err(|e| Error::Internal(format!("spawn log flusher: {e}")))?;
        Ok(store)
    }

    /// From now on, writes each appended commit into `mvcc` while the flusher makes it
    /// durable (see the module docs, "Writing ahead"). Set once; later calls are ignored.
    pub fn write_ahead_into(&self, mvcc: Arc<Mvcc>) {
        let _ = self.ahead.set(mvcc);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("commit log lock poisoned")
    }

    /// Index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.lock().index.back().map(|l| l.log_id.index)
    }

    /// Group-commit counters.
    pub fn flush_stats(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.flusher.stats;
        (s.fsyncs.load(Relaxed), s.appends.load(Relaxed), s.entries.load(Relaxed))
    }

    /// Reads entries in `[start, end)` (for tools and tests).
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry>> {
        self.lock().read_range(start, end)
    }

    /// The first index still on disk (purged entries kept by a hold count).
    pub fn first_retained(&self) -> u64 {
        self.lock().first_index
    }

    /// The current holds: owner name → first index it needs.
    pub fn holds(&self) -> BTreeMap<String, u64> {
        self.lock().holds.clone()
    }

    /// Sets (or moves) hold `name` so entries from `from` on stay on disk. Fails if they
    /// are already gone. Persisted before it returns.
    pub fn set_hold(&self, name: &str, from: u64) -> Result<()> {
        let mut state = self.lock();
        if from < state.first_index {
            return Err(Error::Unavailable(format!(
                "commit log entries from {from} are no longer on disk (the oldest kept is {})",
                state.first_index
            )));
        }
        let mut holds = state.holds.clone();
        holds.insert(name.to_string(), from);
        state.save_holds(holds)?;
        state.drop_unneeded()
    }

    /// Removes hold `name` (no-op if absent) and frees what only it kept.
    pub fn release_hold(&self, name: &str) -> Result<()> {
        let mut state = self.lock();
        if !state.holds.contains_key(name) {
            return Ok(());
        }
        let mut holds = state.holds.clone();
        holds.remove(name);
        state.save_holds(holds)?;
        state.drop_unneeded()
    }

    /// Reads entries from `start` up to (excluding) `end`, stopping after about
    /// `max_bytes` of encoded entries (at least one entry is returned if any exists).
    /// The disk reads happen outside the log's lock, so appends are not held up.
    pub fn read_committed(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<Entry>> {
        let mut todo = Vec::new();
        {
            let state = self.lock();
            if start < state.first_index {
                return Err(Error::Unavailable(format!(
                    "commit log entries from {start} are no longer on disk (the oldest kept is {}); \
                     a backup that needs them must start over from a new snapshot",
                    state.first_index
                )));
            }
            let mut bytes = 0usize;
            for index in start..end {
                let Some(loc) = state.loc(index) else { break };
                let seg = state.segments.get(&loc.segment).ok_or_else(|| {
                    Error::Internal(format!("commit log: segment {} missing for index {index}", loc.segment))
                })?;
                todo.push((loc, seg.file.clone(), seg.path.clone()));
                bytes += loc.len as usize;
                if bytes >= max_bytes {
                    break;
                }
            }
        }
        todo.into_iter()
            .map(|(loc, file, path)| {
                let mut buf = vec![0u8; loc.len as usize];
                file.read_exact_at(&mut buf, loc.offset).map_err(|e| io_err(&path, "read entry", e))?;
                let payload = frame::decode_exact(&buf, &format!("{} at offset {}", path.display(), loc.offset))?;
                decode_entry(payload)
            })
            .collect()
    }
}

/// The first index the log must keep: the one after the purge point, or a hold's if lower.
fn retain_from(last_purged: Option<LogId>, holds: &BTreeMap<String, u64>) -> u64 {
    let after_purge = last_purged.map_or(0, |l| l.index + 1);
    holds.values().copied().min().map_or(after_purge, |h| h.min(after_purge))
}

impl State {
    fn create_segment(&mut self, first: u64) -> Result<()> {
        let path = self.dir.join("log").join(segment_name(first));
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, "create segment", e))?;
        file.write_all(SEGMENT_MAGIC).map_err(|e| io_err(&path, "write segment header", e))?;
        file.sync_all().map_err(|e| io_err(&path, "fsync segment", e))?;
        sync_dir(&self.dir.join("log"))?;
        self.segments.insert(first, Segment { path, file: Arc::new(file), len: SEGMENT_MAGIC.len() as u64 });
        Ok(())
    }

    fn recover_segment(&mut self, first: u64, path: &Path, is_last: bool) -> Result<()> {
        let buf = fs::read(path).map_err(|e| io_err(path, "read segment", e))?;
        let corrupt = |offset: usize, why: &str| {
            Error::InvalidData(format!(
                "commit log segment {} is corrupt at byte offset {offset}: {why}; refusing to start \
                 (restore from a backup or move the file aside only if you accept losing the commits in it)",
                path.display()
            ))
        };
        let mut valid_len = SEGMENT_MAGIC.len();
        if buf.len() < SEGMENT_MAGIC.len() || &buf[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
            let torn = is_last && SEGMENT_MAGIC.starts_with(&buf[..buf.len().min(SEGMENT_MAGIC.len())]);
            if !torn {
                return Err(corrupt(0, "bad segment header"));
            }
            tracing::warn!(segment = %path.display(), "commit log: repairing a torn segment header");
            valid_len = 0;
        } else {
            let mut offset = SEGMENT_MAGIC.len();
            let mut expect = first;
            while offset < buf.len() {
                match frame::decode(&buf[offset..]) {
                    Decoded::Frame { payload, size } => {
                        let entry = decode_entry(payload).map_err(|e| corrupt(offset, &e.to_string()))?;
                        if entry.log_id.index != expect {
                            return Err(corrupt(
                                offset,
                                &format!("entry index {} where {expect} was expected", entry.log_id.index),
                            ));
                        }
                        expect += 1;
                        if entry.log_id.index >= self.first_index {
                            if self.index.is_empty() {
                                self.first_index = entry.log_id.index;
                            } else if self.index.back().map(|l| l.log_id.index + 1) != Some(entry.log_id.index) {
                                return Err(corrupt(offset, "gap between segments"));
                            }
                            self.index.push_back(Loc {
                                segment: first,
                                offset: offset as u64,
                                len: size as u32,
                                log_id: entry.log_id,
                            });
                        }
                        offset += size;
                        valid_len = offset;
                    }
                    Decoded::Incomplete if is_last => break,
                    Decoded::Corrupt(why) if is_last && buf[offset..].iter().skip(8).all(|&b| b == 0) => {
                        tracing::warn!(segment = %path.display(), offset, %why, "commit log: damaged frame followed only by zeros");
                        break;
                    }
                    Decoded::Corrupt(why) if is_last && claims_to_reach_eof(&buf[offset..]) => {
                        tracing::warn!(segment = %path.display(), offset, %why, "commit log: damaged final frame");
                        break;
                    }
                    Decoded::Incomplete => return Err(corrupt(offset, "truncated frame in a sealed segment")),
                    Decoded::Corrupt(why) => return Err(corrupt(offset, &why)),
                }
            }
        }
        let file =
            OpenOptions::new().read(true).append(true).open(path).map_err(|e| io_err(path, "open segment", e))?;
        if valid_len < buf.len() {
            let dropped = buf.len() - valid_len;
            tracing::warn!(
                segment = %path.display(),
                dropped_bytes = dropped,
                at_offset = valid_len,
                "commit log: repaired a torn tail left by a crash (these bytes were never acknowledged)"
            );
            file.set_len(valid_len as u64).map_err(|e| io_err(path, "truncate torn tail", e))?;
            if valid_len == 0 {
                (&file).write_all(SEGMENT_MAGIC).map_err(|e| io_err(path, "rewrite segment header", e))?;
                valid_len = SEGMENT_MAGIC.len();
            }
            file.sync_all().map_err(|e| io_err(path, "fsync repaired segment", e))?;
        }
        self.segments.insert(first, Segment { path: path.to_path_buf(), file: Arc::new(file), len: valid_len as u64 });
        Ok(())
    }

    fn loc(&self, index: u64) -> Option<Loc> {
        let i = index.checked_sub(self.first_index)?;
        self.index.get(usize::try_from(i).ok()?).copied()
    }

    fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for index in start..end {
            if let Some((e, _)) = self.cache.get(&index) {
                out.push(e.clone());
                continue;
            }
            let Some(loc) = self.loc(index) else { break };
            let seg = self.segments.get(&loc.segment).ok_or_else(|| {
                Error::Internal(format!("commit log: segment {} missing for index {index}", loc.segment))
            })?;
            let mut buf = vec![0u8; loc.len as usize];
            seg.file.read_exact_at(&mut buf, loc.offset).map_err(|e| io_err(&seg.path, "read entry", e))?;
            let payload = frame::decode_exact(&buf, &format!("{} at offset {}", seg.path.display(), loc.offset))?;
            out.push(decode_entry(payload)?);
        }
        Ok(out)
    }

    fn active(&mut self) -> Result<(&u64, &mut Segment)> {
        self.segments.iter_mut().next_back().ok_or_else(|| Error::Internal("commit log has no segment".into()))
    }

    fn append(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(first) = entries.first() else { return Ok(()) };
        if let Some(last) = self.index.back() {
            if first.log_id.index != last.log_id.index + 1 {
                return Err(Error::Internal(format!(
                    "commit log: append of index {} after {}",
                    first.log_id.index, last.log_id.index
                )));
            }
        } else {
            self.first_index = first.log_id.index;
        }
        // Seal the active segment if it is full: fsync it now, so the flusher only ever
        // needs to fsync the newest one.
        let (_, seg) = self.active()?;
        if seg.len >= SEGMENT_TARGET {
            seg.file.sync_data().map_err(|e| io_err(&seg.path, "fsync sealed segment", e))?;
            self.create_segment(first.log_id.index)?;
        }
        let (&seg_first, seg) = self.active()?;
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        for e in &entries {
            let framed = encode_frame(e)?;
            let offset = seg.len + buf.len() as u64;
            if buf.is_empty() {
                // The usual case, and the one of large commits: no second copy.
                buf = framed;
            } else {
                buf.extend_from_slice(&framed);
            }
            locs.push(Loc {
                segment: seg_first,
                offset,
                len: (buf.len() as u64 + seg.len - offset) as u32,
                log_id: e.log_id,
            });
        }
        (&*seg.file).write_all(&buf).map_err(|e| io_err(&seg.path, "append", e))?;
        seg.len += buf.len() as u64;
        let n = locs.len();
        self.index.extend(locs);
        for (e, loc) in entries.into_iter().zip(self.index.iter().rev().take(n).rev()) {
            if loc.len as usize > WRITE_AHEAD_MAX_BYTES {
                continue;
            }
            self.cache_bytes += loc.len as usize;
            self.cache.insert(e.log_id.index, (e, loc.len as usize));
        }
        while self.cache.len() > CACHE_ENTRIES || (self.cache_bytes > CACHE_BYTES && self.cache.len() > 1) {
            if let Some((_, (_, size))) = self.cache.pop_first() {
                self.cache_bytes -= size;
            }
        }
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> Result<()> {
        self.cache.retain(|&i, _| i < from);
        self.cache_bytes = self.cache.values().map(|(_, n)| n).sum();
        let Some(loc) = self.loc(from) else { return Ok(()) };
        while let Some(back) = self.index.back() {
            if back.log_id.index >= from {
                self.index.pop_back();
            } else {
                break;
            }
        }
        let later: Vec<u64> = self.segments.range(loc.segment + 1..).map(|(k, _)| *k).collect();
        for k in later {
            if let Some(seg) = self.segments.remove(&k) {
                fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, "remove segment", e))?;
            }
        }
        let seg = self
            .segments
            .get_mut(&loc.segment)
            .ok_or_else(|| Error::Internal(format!("commit log: segment {} missing", loc.segment)))?;
        seg.file.set_len(loc.offset).map_err(|e| io_err(&seg.path, "truncate", e))?;
        seg.file.sync_all().map_err(|e| io_err(&seg.path, "fsync after truncate", e))?;
        seg.len = loc.offset;
        sync_dir(&self.dir.join("log"))
    }

    fn purge(&mut self, upto: LogId) -> Result<()> {
        write_atomic(
            &self.dir.join("purged"),
            &serde_json::to_vec(&upto).map_err(|e| Error::Internal(e.to_string()))?,
        )?;
        self.last_purged = Some(upto);
        self.cache.retain(|&i, _| i > upto.index);
        self.cache_bytes = self.cache.values().map(|(_, n)| n).sum();
        self.drop_unneeded()
    }

    fn save_holds(&mut self, holds: BTreeMap<String, u64>) -> Result<()> {
        write_atomic(
            &self.dir.join("holds"),
            &serde_json::to_vec(&holds).map_err(|e| Error::Internal(e.to_string()))?,
        )?;
        self.holds = holds;
        Ok(())
    }

    /// Forgets entries that are purged and not held, and deletes segments holding only
    /// such entries (never the active one).
    fn drop_unneeded(&mut self) -> Result<()> {
        let keep_from = retain_from(self.last_purged, &self.holds);
        while let Some(idx) = self.index.front().map(|f| f.log_id.index) {
            if idx >= keep_from {
                break;
            }
            self.index.pop_front();
            self.first_index = idx + 1;
        }
        if self.index.is_empty() {
            self.first_index = self.first_index.max(keep_from);
        }
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            if pair[1] <= keep_from {
                if let Some(seg) = self.segments.remove(&pair[0]) {
                    fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, "remove purged segment", e))?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a frame header at the start of `rest` claims a length reaching the end of
/// the file: the signature of a torn final write.
fn claims_to_reach_eof(rest: &[u8]) -> bool {
    if rest.len() < frame::HEADER_LEN {
        return true;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    frame::HEADER_LEN + len >= rest.len()
}

fn flush_loop(flusher: Arc<Flusher>, state: Arc<Mutex<State>>) {
    loop {
        let batch = {
            let Ok(mut p) = flusher.pending.lock() else { return };
            while p.0.is_empty() && !p.1 {
                p = match flusher.wake.wait(p) {
                    Ok(p) => p,
                    Err(_) => return,
                };
            }
            if p.0.is_empty() && p.1 {
                return;
            }
            std::mem::take(&mut p.0)
        };
        // Every append in `batch` wrote its bytes before registering its callback, and
        // segments other than the active one were fsync'd when sealed.
        let target =
            state.lock().ok().and_then(|mut s| s.active().ok().map(|(_, seg)| (seg.file.clone(), seg.path.clone())));
        let result = match target {
            Some((file, path)) => file.sync_data().map_err(|e| {
                tracing::error!(segment = %path.display(), error = %e, "commit log fsync failed");
                e
            }),
            None => Err(std::io::Error::other("commit log state unavailable")),
        };
        flusher.stats.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        flusher.stats.appends.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for cb in batch {
            cb.log_io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let state = self.lock();
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => state.index.back().map_or(0, |l| l.log_id.index + 1),
        };
        let start = start.max(state.first_index);
        state.read_range(start, end).map_err(|e| sto_err(StorageIOError::read_logs, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let state = self.lock();
        let last = state.index.back().map(|l| l.log_id).or(state.last_purged);
        Ok(LogState { last_purged_log_id: state.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError> {
        let mut state = self.lock();
        let json = serde_json::to_vec(vote).map_err(|e| sto_err(StorageIOError::write_vote, e))?;
        write_atomic(&state.dir.join("vote"), &json).map_err(|e| sto_err(StorageIOError::write_vote, e))?;
        state.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.flusher.stats.entries.fetch_add(entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // The commits to write ahead (the entries themselves move into the log's cache).
        // Large ones are left to the apply: copying them here would raise the peak
        // memory of a big transaction by its size, for little gain.
        let ahead: Vec<(u64, Vec<u8>)> = match self.ahead.get() {
            Some(_) => entries
                .iter()
                .filter_map(|e| match &e.payload {
                    // Only plain commits: stages, staged commits and aborts touch the
                    // staging area, which a speculation could not undo.
                    EntryPayload::Normal(req)
                        if req.batch.len() <= WRITE_AHEAD_MAX_BYTES
                            && matches!(
                                amberdb_mvcc::Entry::decode(&req.batch),
                                Ok(amberdb_mvcc::Entry::Commit(_))
                            ) =>
                    {
                        Some((e.log_id.index, req.batch.clone()))
                    }
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        self.lock().append(entries).map_err(|e| sto_err(StorageIOError::write_logs, e))?;
        {
            let mut p = self.flusher.pending.lock().expect("flusher lock poisoned");
            p.0.push(callback);
            self.flusher.wake.notify_one();
        }
        if let Some(mvcc) = self.ahead.get() {
            for (index, raw) in ahead {
                // Best effort: an entry not written ahead is applied in full later.
                let written = CommitBatch::decode(&raw).and_then(|batch| mvcc.speculate(index, &batch));
                if let Err(e) = written {
                    tracing::warn!(index, error = %e, "could not write a commit ahead; it is applied in full");
                }
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        // Entries written ahead must go with the log entries they came from.
        if let Some(mvcc) = self.ahead.get() {
            mvcc.abandon_speculation(log_id.index).map_err(|e| sto_err(StorageIOError::write_logs, e))?;
        }
        self.lock().truncate(log_id.index).map_err(|e| sto_err(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.lock().purge(log_id).map_err(|e| sto_err(StorageIOError::write_logs, e))
    }
}

/// Keeps the flusher alive exactly as long as some handle to the log exists.
pub struct LogStoreHandle {
    /// The log.
    pub store: LogStore,
    _guard: FlusherGuard,
}

impl LogStoreHandle {
    /// Wraps a freshly opened log.
    pub fn new(store: LogStore) -> Self {
        let guard = FlusherGuard(store.flusher.clone());
        Self { store, _guard: guard }
    }
}
