//! The `Mvcc` store: applies commit batches at versions, serves reads at versions,
//! maps versions to commit times and back, and garbage-collects old versions.

use crate::heads::{self, PendingHeads, MAX_PENDING_KEYS};
use crate::keys;
use crate::{Clock, CommitBatch, Timestamp, Version};
use amberdb_encoding::codec::{Reader, Writer};
use amberdb_error::{Error, Result};
use amberdb_storage::{Durability, Engine, KeyRange, ScanIterator, WriteBatch};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Tunables of the mvcc layer.
#[derive(Debug, Clone)]
pub struct MvccConfig {
    /// How long old versions stay readable (`AS OF SYSTEM TIME`, backups). Reads of a
    /// state older than this fail with `TooOld`; GC removes what is older.
    pub retention: Duration,
    /// Whether a background thread writes the heads of published versions (see
    /// `heads.rs`). Off, they are written by [`Mvcc::persist_heads`] or by an apply once
    /// too many are held — for tests that look at the engine's contents step by step.
    pub background_heads: bool,
}

impl Default for MvccConfig {
    fn default() -> Self {
        Self { retention: Duration::from_secs(3600), background_heads: true }
    }
}

/// The version and commit time of the newest applied entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// Newest applied version (commit or marker).
    pub version: Version,
    /// Commit time of the newest applied *commit* (markers carry no time).
    pub time: Timestamp,
}

/// One entry handed to [`Mvcc::apply`].
#[derive(Debug, Clone, Copy)]
pub enum ApplyItem<'a> {
    /// A commit batch at a version.
    Commit(Version, &'a CommitBatch),
    /// A commit-log entry at a version, still encoded ([`crate::Entry`]): applied
    /// without decoding it whole. A commit past [`CHUNKED_APPLY_BYTES`], applied alone,
    /// is written in engine batches of its own before the publish (see
    /// [`Mvcc::apply`]); so are a staged commit and an abort, which must come alone
    /// (see [`applies_alone`]). A stage writes into the staging area only.
    Encoded(Version, &'a [u8]),
    /// A commit whose data [`Mvcc::speculate`] wrote already, with its proposed commit
    /// time: applying it publishes the version (an error if it was not speculated).
    Speculated(Version, Timestamp),
    /// A version that carries no data (e.g. a Raft blank or membership entry). It still
    /// advances the applied version so that the layer above can restart from it.
    Marker(Version),
}

/// An encoded commit larger than this, applied alone, is written in pieces: its engine
/// batches (and their copies in the engine) stay bounded whatever its size.
pub const CHUNKED_APPLY_BYTES: usize = 4 << 20;

/// Bytes of data per engine batch when a large commit is written in pieces.
const CHUNK_BYTES: usize = 4 << 20;

/// The writes of a commit item, decoded or still encoded, borrowed either way.
enum Writes<'a> {
    Decoded(std::slice::Iter<'a, crate::Mutation>),
    Encoded(crate::EncodedBatch<'a>),
}

impl<'a> Iterator for Writes<'a> {
    type Item = Result<crate::Write<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Writes::Decoded(it) => it.next().map(|m| Ok((&m.key[..], m.value.as_deref()))),
            Writes::Encoded(b) => b.next_write().transpose(),
        }
    }
}

impl<'a> ApplyItem<'a> {
    fn version(&self) -> Version {
        match self {
            ApplyItem::Commit(v, _) | ApplyItem::Encoded(v, _) | ApplyItem::Speculated(v, _) | ApplyItem::Marker(v) => {
                *v
            }
        }
    }

    /// A commit's writes and commit time (None: not a commit carrying its writes).
    fn writes(&self) -> Result<Option<(Timestamp, u64, Writes<'a>)>> {
        Ok(match *self {
            ApplyItem::Commit(_, c) => {
                Some((c.commit_time, c.mutations.len() as u64, Writes::Decoded(c.mutations.iter())))
            }
            ApplyItem::Encoded(_, raw) => match crate::Entry::decode(raw)? {
                crate::Entry::Commit(b) => Some((b.commit_time, b.len(), Writes::Encoded(b))),
                _ => None,
            },
            _ => None,
        })
    }
}

/// Whether an encoded commit-log entry must be applied on its own (an [`ApplyItem`]
/// slice of one): a large commit, a staged commit or an abort, which are written in
/// pieces. An entry that does not decode is applied alone too (and fails there).
pub fn applies_alone(raw: &[u8]) -> bool {
    raw.len() > CHUNKED_APPLY_BYTES
        || !matches!(crate::Entry::decode(raw), Ok(crate::Entry::Commit(_) | crate::Entry::Stage { .. }))
}

/// Statistics from one GC pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// The new watermark (0 if GC did nothing).
    pub watermark: Version,
    /// Obsolete data versions removed.
    pub versions_removed: u64,
    /// Time-index entries removed.
    pub index_removed: u64,
}

#[derive(Debug, Default)]
struct Readers {
    /// No read below this version is allowed; GC may have removed what it needs.
    watermark: Version,
    /// Versions held by live readers (version → count): GC never passes the oldest.
    active: BTreeMap<Version, usize>,
}

/// A multi-version key-value store over an [`Engine`]. See the crate docs.
pub struct Mvcc {
    engine: Arc<dyn Engine>,
    config: MvccConfig,
    clock: Arc<dyn Clock>,
    applied: RwLock<AppliedState>,
    readers: Arc<Mutex<Readers>>,
    /// Serializes `apply` calls, GC passes and head writes against each other.
    write_lock: Arc<Mutex<()>>,
    /// Ranges whose keys may lack a head (see `keys.rs`).
    headless: HeadlessRanges,
    /// Versions written ahead of their commit and not yet applied (see
    /// [`Mvcc::speculate`]): always the versions right after the applied one, in a row.
    speculated: Mutex<BTreeSet<Version>>,
    /// Heads of recent versions not yet in the engine (see `heads.rs`).
    pending: Arc<PendingHeads>,
    /// The background heads writer, joined on drop.
    heads_writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Mvcc {
    fn drop(&mut self) {
        self.pending.stop();
        if let Some(t) = self.heads_writer.take() {
            // A panicked writer has nothing left to clean up; its records settle at open.
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc").field("applied", &self.applied()).finish()
    }
}

fn encode_applied(s: &AppliedState) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.u64(s.version).u64(s.time);
    w.finish()
}

fn decode_applied(raw: &[u8]) -> Result<AppliedState> {
    let mut r = Reader::new(raw, "mvcc applied-state record");
    let s = AppliedState { version: r.u64()?, time: r.u64()? };
    r.finish()?;
    Ok(s)
}

fn decode_u64(raw: &[u8], what: &'static str) -> Result<u64> {
    let mut r = Reader::new(raw, what);
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

/// Settles the write records left in the engine (see `heads.rs`).
///
/// At start-up (`undo_from` is `None`), every record is settled: one at or below
/// `applied` is a published version whose heads were not written yet — they are written
/// now — and one above it is a speculation whose entry never committed (a crash before
/// the log fsync): its data entries go. On a log truncation (`Some(from)`), only the
/// speculations from `from` on (and above `applied`) are undone; published versions
/// are left to the heads writer. Either way each record handled is deleted, and every
/// undone key's head is set to its newest remaining version, found by a seek as a read
/// without a head would (stores written before heads moved off the commit path had
/// heads naming speculated versions). Synced: this runs before any read, or on a
/// truncation.
fn settle_records(engine: &dyn Engine, applied: Version, undo_from: Option<Version>) -> Result<()> {
    let from = undo_from.unwrap_or(0);
    let mut batch = WriteBatch::new();
    let mut heads: BTreeMap<Vec<u8>, Option<Version>> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    for kv in engine.scan(keys::speculated_range()) {
        let (raw_key, raw_value) = kv?;
        let version = keys::decode_speculated(&raw_key)?;
        let undo = version > applied && version >= from;
        if !undo && (undo_from.is_some() || version > applied) {
            continue;
        }
        batch.delete(raw_key);
        for key in heads::decode_record(&raw_value)? {
            if undo {
                batch.delete(keys::data(&key, version));
                touched.insert(key);
            } else {
                // Records are met in version order: the last one naming a key wins.
                heads.insert(key, Some(version));
            }
        }
        if undo {
            tracing::info!(version, "undid the speculative write of an entry that never committed");
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    for key in touched {
        // The newest published version: heads of speculations still pending (between
        // `applied` and `from`) are held in memory, never in the engine.
        let newest = engine
            .scan(KeyRange {
                start: Bound::Included(keys::data(&key, applied)),
                end: Bound::Included(keys::data(&key, 0)),
            })
            .next()
            .transpose()?
            .map(|(k, _)| keys::decode_data(&k).map(|(_, v)| v))
            .transpose()?;
        heads.insert(key, newest);
    }
    for (key, newest) in heads {
        match newest {
            Some(v) => batch.put(keys::head(&key), v.to_le_bytes().to_vec()),
            None => batch.delete(keys::head(&key)),
        }
    }
    engine.write(batch, Durability::Sync)
}

/// Writes the heads of every published version held in `pending` (see `heads.rs`),
/// deleting their write records in the same batch. Returns how many heads it wrote.
fn persist_heads(engine: &dyn Engine, write_lock: &Mutex<()>, pending: &PendingHeads) -> Result<usize> {
    let _guard = write_lock.lock().expect("mvcc write lock poisoned");
    persist_heads_locked(engine, pending)
}

/// [`persist_heads`] for a caller holding the write lock.
fn persist_heads_locked(engine: &dyn Engine, pending: &PendingHeads) -> Result<usize> {
    let through = pending.published();
    let p = pending.take_through(through);
    if p.versions.is_empty() {
        return Ok(0);
    }
    let mut batch = WriteBatch::new();
    for (key, v) in &p.heads {
        batch.put(keys::head(key), v.to_le_bytes().to_vec());
    }
    for v in &p.versions {
        batch.delete(keys::speculated(*v));
    }
    engine.write(batch, Durability::Buffered)?;
    pending.persisted(&p, &[]);
    Ok(p.heads.len())
}

/// The heads writer thread (see `heads.rs`): persists published heads as they come,
/// and what is left when the store closes (a restart then has no records to settle).
fn heads_writer(engine: Arc<dyn Engine>, write_lock: Arc<Mutex<()>>, pending: Arc<PendingHeads>) {
    while pending.wait_for_work() {
        if let Err(e) = persist_heads(engine.as_ref(), &write_lock, &pending) {
            // Reads stay correct (the heads are held in memory) and applies persist them
            // themselves past a bound; retry after a pause rather than spin.
            tracing::error!(error = %e, "could not write mvcc heads; retrying");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if let Err(e) = persist_heads(engine.as_ref(), &write_lock, &pending) {
        tracing::warn!(error = %e, "could not write the last mvcc heads at close; the next open writes them");
    }
}

/// A user-key range (inclusive; `None`: no upper bound) whose keys may lack a head.
type Headless = (Vec<u8>, Option<Vec<u8>>);
/// The headless ranges, shared by the store and its read views.
type HeadlessRanges = Arc<RwLock<Vec<Headless>>>;

fn encode_headless(ranges: &[Headless]) -> Vec<u8> {
    let mut out = Vec::new();
    for (lo, hi) in ranges {
        out.extend_from_slice(&(lo.len() as u32).to_le_bytes());
        out.extend_from_slice(lo);
        match hi {
            Some(hi) => {
                out.push(1);
                out.extend_from_slice(&(hi.len() as u32).to_le_bytes());
                out.extend_from_slice(hi);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode_headless(mut raw: &[u8]) -> Result<Vec<Headless>> {
    let bad = || Error::InvalidData("corrupt mvcc headless-ranges record".into());
    let take = |raw: &mut &[u8], n: usize| -> Result<Vec<u8>> {
        if raw.len() < n {
            return Err(bad());
        }
        let (a, b) = raw.split_at(n);
        *raw = b;
        Ok(a.to_vec())
    };
    let mut out = Vec::new();
    while !raw.is_empty() {
        let n = u32::from_le_bytes(take(&mut raw, 4)?.try_into().map_err(|_| bad())?) as usize;
        let lo = take(&mut raw, n)?;
        let hi = match take(&mut raw, 1)?.first() {
            Some(1) => {
                let n = u32::from_le_bytes(take(&mut raw, 4)?.try_into().map_err(|_| bad())?) as usize;
                Some(take(&mut raw, n)?)
            }
            Some(0) => None,
            _ => return Err(bad()),
        };
        out.push((lo, hi));
    }
    Ok(out)
}

fn in_headless(ranges: &HeadlessRanges, key: &[u8]) -> bool {
    // A poisoned lock is treated as "maybe headless": a seek is always correct.
    ranges.read().map_or(true, |r| {
        r.iter().any(|(lo, hi)| key >= lo.as_slice() && hi.as_ref().is_none_or(|h| key <= h.as_slice()))
    })
}

impl Mvcc {
    /// Opens the store, loading the applied state and GC watermark from the engine.
    pub fn open(engine: Arc<dyn Engine>, config: MvccConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let applied = match engine.get(&keys::meta(keys::META_APPLIED))? {
            Some(raw) => decode_applied(&raw)?,
            None => AppliedState::default(),
        };
        let watermark = match engine.get(&keys::meta(keys::META_GC_WATERMARK))? {
            Some(raw) => decode_u64(&raw, "mvcc GC watermark record")?,
            None => 0,
        };
        let mut headless = match engine.get(&keys::meta(keys::META_HEADLESS))? {
            Some(raw) => decode_headless(&raw)?,
            None => Vec::new(),
        };
        if engine.get(&keys::meta(keys::META_HEADS))?.is_none() {
            // A store that predates heads: all of it is headless until the background
            // pass (`build_missing_heads`) has been through it. A new store has no data.
            if engine.scan(keys::data_range(&KeyRange::all())).next().is_some() {
                headless = vec![(Vec::new(), None)];
            }
            let mut b = WriteBatch::new();
            b.put(keys::meta(keys::META_HEADLESS), encode_headless(&headless));
            b.put(keys::meta(keys::META_HEADS), vec![1]);
            engine.write(b, Durability::Sync)?;
        }
        settle_records(engine.as_ref(), applied.version, None)?;
        let write_lock = Arc::new(Mutex::new(()));
        let pending = Arc::new(PendingHeads::default());
        let heads_writer = if config.background_heads {
            let (e, l, p) = (engine.clone(), write_lock.clone(), pending.clone());
            let spawned = std::thread::Builder::new().name("mvcc-heads".into()).spawn(move || heads_writer(e, l, p));
            Some(spawned.map_err(|e| Error::Internal(format!("could not start the mvcc heads writer thread: {e}")))?)
        } else {
            None
        };
        Ok(Self {
            engine,
            config,
            clock,
            applied: RwLock::new(applied),
            readers: Arc::new(Mutex::new(Readers { watermark, active: BTreeMap::new() })),
            write_lock,
            headless: Arc::new(RwLock::new(headless)),
            speculated: Mutex::new(BTreeSet::new()),
            pending,
            heads_writer,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &MvccConfig {
        &self.config
    }

    /// The clock in use.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The engine underneath (for the layer above's own metadata records).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The newest applied version and commit time.
    pub fn applied(&self) -> AppliedState {
        *self.applied.read().expect("applied-state lock poisoned")
    }

    /// The GC watermark: the oldest version a read may use.
    pub fn gc_watermark(&self) -> Version {
        self.readers.lock().expect("readers lock poisoned").watermark
    }

    /// The oldest version any live reader holds, if any.
    pub fn oldest_reader(&self) -> Option<Version> {
        self.readers.lock().expect("readers lock poisoned").active.keys().next().copied()
    }

    /// Reads a metadata record written by `apply`'s `meta` argument.
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.engine.get(&keys::meta(name))
    }

    /// Applies entries in order, atomically, together with metadata records of the layer
    /// above (e.g. the Raft applied log id), in one engine batch. Returns the effective
    /// commit time of each item (0 for markers).
    ///
    /// Commit times are made strictly increasing here, deterministically from the input
    /// and the current state, so that every replica derives the same version↔time map.
    pub fn apply(
        &self,
        items: &[ApplyItem<'_>],
        meta: &[(&str, Vec<u8>)],
        durability: Durability,
    ) -> Result<Vec<Timestamp>> {
        let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
        let mut speculated = self.speculated.lock().expect("mvcc speculation lock poisoned");
        if let [ApplyItem::Encoded(version, raw)] = items {
            match crate::Entry::decode(raw)? {
                crate::Entry::StagedCommit { txn, writes, .. } => {
                    return self.apply_staged_commit(*version, txn, writes, meta, durability);
                }
                crate::Entry::Abort { txn } => return self.apply_abort(*version, txn, meta, durability),
                crate::Entry::Commit(_) if raw.len() > CHUNKED_APPLY_BYTES && !speculated.contains(version) => {
                    return self.apply_in_pieces(*version, raw, meta, durability);
                }
                _ => {}
            }
        }
        let mut state = self.applied();
        let mut batch = WriteBatch::new();
        let mut times = Vec::with_capacity(items.len());
        let mut published = Vec::new();
        // Heads of the commits applied in full here: held like a speculation's (a write
        // record now, the heads later), unless too many are held already — then every
        // published head goes into this batch, and these commits' heads with them.
        let mut new_keys = 0usize;
        for item in items {
            if let Some((_, n, _)) = item.writes()? {
                new_keys = new_keys.saturating_add(n as usize);
            }
        }
        let inline = new_keys > 0 && self.pending.len() + new_keys > MAX_PENDING_KEYS;
        let mut held: Vec<(Version, Vec<Vec<u8>>)> = Vec::new();
        for item in items {
            let version = item.version();
            if version <= state.version {
                return Err(Error::Internal(format!(
                    "apply of version {version} at or below applied version {}",
                    state.version
                )));
            }
            state.version = version;
            let is_speculated = speculated.contains(&version);
            let (commit_time, commit) = match item {
                ApplyItem::Marker(_) if is_speculated => {
                    return Err(Error::Internal(format!(
                        "version {version} was speculated as a commit but is applied as a marker"
                    )));
                }
                ApplyItem::Marker(_) => {
                    times.push(0);
                    continue;
                }
                ApplyItem::Speculated(_, _) if !is_speculated => {
                    return Err(Error::Internal(format!("version {version} is applied as speculated but was not")));
                }
                ApplyItem::Speculated(_, t) => (*t, None),
                ApplyItem::Encoded(_, raw) if !matches!(crate::Entry::decode(raw)?, crate::Entry::Commit(_)) => {
                    match crate::Entry::decode(raw)? {
                        crate::Entry::Stage { txn, mut writes } => {
                            // A stage changes no visible state: a version like a marker's.
                            let txn = if txn == 0 { version } else { txn };
                            while let Some((key, value)) = writes.next_write()? {
                                batch.put(keys::staged(txn, key), keys::encode_value(value));
                            }
                            times.push(0);
                            continue;
                        }
                        _ => {
                            return Err(Error::Internal(format!(
                                "version {version}: a staged commit or abort must be applied on its own"
                            )))
                        }
                    }
                }
                ApplyItem::Commit(..) | ApplyItem::Encoded(..) => match item.writes()? {
                    Some((t, n, writes)) => (t, Some((n, writes))),
                    None => (0, None),
                },
            };
            let time = commit_time.max(state.time + 1);
            state.time = time;
            times.push(time);
            if is_speculated {
                // Data and write record are in the engine already: only publish.
                published.push(version);
            } else if let Some((n, writes)) = commit {
                let mut written = Vec::with_capacity(if inline { 0 } else { n.min(1 << 20) as usize });
                for w in writes {
                    let (key, value) = w?;
                    batch.put(keys::data(key, version), keys::encode_value(value));
                    if !inline {
                        written.push(key.to_vec());
                    }
                }
                if !inline {
                    batch.put(keys::speculated(version), heads::encode_record(n, written.iter().map(|k| Ok(&k[..])))?);
                    held.push((version, written));
                }
            }
            batch.put(keys::version_time(version), time.to_le_bytes().to_vec());
            batch.put(keys::time_version(time, version), Vec::new());
        }
        let flushed = inline.then(|| self.pending.take_through(state.version));
        if let Some(p) = &flushed {
            for (key, v) in &p.heads {
                batch.put(keys::head(key), v.to_le_bytes().to_vec());
            }
            for v in &p.versions {
                batch.delete(keys::speculated(*v));
            }
            // Later in the batch, so these (newer) heads win over held ones.
            for item in items {
                if let Some((_, _, writes)) = item.writes()? {
                    for w in writes {
                        batch.put(keys::head(w?.0), item.version().to_le_bytes().to_vec());
                    }
                }
            }
        }
        batch.put(keys::meta(keys::META_APPLIED), encode_applied(&state));
        for (name, value) in meta {
            batch.put(keys::meta(name), value.clone());
        }
        self.engine.write(batch, durability)?;
        if let Some(p) = &flushed {
            let mut newer: Vec<(&[u8], Version)> = Vec::new();
            for item in items {
                if let Some((_, _, writes)) = item.writes()? {
                    for w in writes {
                        newer.push((w?.0, item.version()));
                    }
                }
            }
            self.pending.persisted(p, &newer);
        }
        for (v, keys) in held {
            self.pending.add(v, keys);
        }
        *self.applied.write().expect("applied-state lock poisoned") = state;
        self.pending.publish(state.version);
        for v in published {
            speculated.remove(&v);
        }
        Ok(times)
    }

    /// Applies one large encoded commit (see [`CHUNKED_APPLY_BYTES`]) in pieces, so
    /// that no engine batch — nor its copy in the engine — holds the whole of it:
    ///
    /// 1. the heads still held are written (so no held head is older than this
    ///    commit's, which go straight to the engine below);
    /// 2. its write record (the keys), in a batch of its own;
    /// 3. its data entries and heads, [`CHUNK_BYTES`] at a time — invisible meanwhile,
    ///    as a speculation's (reads are at or below the applied version; a head naming
    ///    a newer version sends a point read to the seek);
    /// 4. the publish: time index, applied state, `meta`, the record deleted.
    ///
    /// A crash before 4 leaves the record above the applied version: `Mvcc::open`
    /// undoes the pieces (and the commit log applies the entry again).
    fn apply_in_pieces(
        &self,
        version: Version,
        raw: &[u8],
        meta: &[(&str, Vec<u8>)],
        durability: Durability,
    ) -> Result<Vec<Timestamp>> {
        let state = self.next_applied(version)?;
        persist_heads_locked(self.engine.as_ref(), &self.pending)?;
        let writes = crate::EncodedBatch::new(raw)?;
        let mut b = WriteBatch::new();
        let keys_only = {
            let mut w = writes.clone();
            std::iter::from_fn(move || w.next_write().transpose()).map(|r| r.map(|(k, _)| k))
        };
        b.put(keys::speculated(version), heads::encode_record(writes.len(), keys_only)?);
        self.engine.write(b, Durability::Buffered)?;
        self.write_in_pieces(version, &mut writes.clone())?;
        self.publish_alone(state, version, Some(writes.commit_time), meta, durability, |b| {
            b.delete(keys::speculated(version))
        })
    }

    /// Applies the staged commit of transaction `txn` at `version`, in pieces as
    /// [`Mvcc::apply_in_pieces`] does: each piece moves up to [`CHUNK_BYTES`] of staged
    /// writes to data entries at `version` (with their heads) and deletes them from the
    /// staging area, in one engine batch; then `writes` (made after the last stage, so
    /// they win) are written; then the version is published. Nothing is visible before
    /// the publish (reads are at or below the applied version; a head naming a newer
    /// version sends a point read to the seek). A crash in between leaves the version
    /// unpublished with part of its data moved: the committed entry is applied again at
    /// start-up and moves the rest — every step can be repeated, so no write record is
    /// needed.
    fn apply_staged_commit(
        &self,
        version: Version,
        txn: u64,
        mut writes: crate::EncodedBatch<'_>,
        meta: &[(&str, Vec<u8>)],
        durability: Durability,
    ) -> Result<Vec<Timestamp>> {
        let state = self.next_applied(version)?;
        persist_heads_locked(self.engine.as_ref(), &self.pending)?;
        self.drain_staged(txn, |b, user, raw_value| {
            b.put(keys::data(user, version), raw_value.to_vec());
            b.put(keys::head(user), version.to_le_bytes().to_vec());
        })?;
        self.write_in_pieces(version, &mut writes)?;
        self.publish_alone(state, version, Some(writes.commit_time), meta, durability, |_| {})
    }

    /// Applies the abort of staged transaction `txn` at `version` (a version that
    /// changes no visible state): its staged writes are deleted in pieces, then the
    /// version is published. Repeatable, as [`Mvcc::apply_staged_commit`].
    fn apply_abort(
        &self,
        version: Version,
        txn: u64,
        meta: &[(&str, Vec<u8>)],
        durability: Durability,
    ) -> Result<Vec<Timestamp>> {
        let state = self.next_applied(version)?;
        self.drain_staged(txn, |_, _, _| {})?;
        self.publish_alone(state, version, None, meta, durability, |_| {})
    }

    /// The applied state, checked to be below `version` (the next one to apply).
    fn next_applied(&self, version: Version) -> Result<AppliedState> {
        let state = self.applied();
        if version <= state.version {
            return Err(Error::Internal(format!(
                "apply of version {version} at or below applied version {}",
                state.version
            )));
        }
        Ok(state)
    }

    /// Writes a commit's data entries and heads at `version`, [`CHUNK_BYTES`] per
    /// engine batch (invisible until the version is published).
    fn write_in_pieces(&self, version: Version, writes: &mut crate::EncodedBatch<'_>) -> Result<()> {
        let mut b = WriteBatch::new();
        let mut bytes = 0usize;
        while let Some((key, value)) = writes.next_write()? {
            bytes += 2 * key.len() + value.map_or(0, <[u8]>::len) + 48;
            b.put(keys::data(key, version), keys::encode_value(value));
            b.put(keys::head(key), version.to_le_bytes().to_vec());
            if bytes >= CHUNK_BYTES {
                self.engine.write(std::mem::take(&mut b), Durability::Buffered)?;
                bytes = 0;
            }
        }
        if !b.is_empty() {
            self.engine.write(b, Durability::Buffered)?;
        }
        Ok(())
    }

    /// Publishes `version`, applied alone after `state`: a commit (with its proposed
    /// time, made strictly increasing) gets its time-index entries; a version without
    /// one only advances the applied version. `also` adds to the same batch.
    fn publish_alone(
        &self,
        mut state: AppliedState,
        version: Version,
        commit_time: Option<Timestamp>,
        meta: &[(&str, Vec<u8>)],
        durability: Durability,
        also: impl FnOnce(&mut WriteBatch),
    ) -> Result<Vec<Timestamp>> {
        let mut b = WriteBatch::new();
        state.version = version;
        let time = match commit_time {
            Some(t) => {
                state.time = t.max(state.time + 1);
                b.put(keys::version_time(version), state.time.to_le_bytes().to_vec());
                b.put(keys::time_version(state.time, version), Vec::new());
                state.time
            }
            None => 0,
        };
        also(&mut b);
        b.put(keys::meta(keys::META_APPLIED), encode_applied(&state));
        for (name, value) in meta {
            b.put(keys::meta(name), value.clone());
        }
        self.engine.write(b, durability)?;
        *self.applied.write().expect("applied-state lock poisoned") = state;
        self.pending.publish(version);
        Ok(vec![time])
    }

    /// Deletes transaction `txn`'s staged writes, [`CHUNK_BYTES`] at a time, letting
    /// `also` add to each piece's batch for every write (user key, encoded value).
    fn drain_staged(&self, txn: u64, mut also: impl FnMut(&mut WriteBatch, &[u8], &[u8])) -> Result<()> {
        let mut range = keys::staged_txn_range(txn);
        loop {
            // A fresh scan per piece (this one writes to what it scans), starting after
            // the last key deleted: from the start, each scan would walk every
            // tombstone the earlier pieces left — quadratic in the transaction's size.
            let mut b = WriteBatch::new();
            let mut bytes = 0usize;
            let mut last = None;
            for kv in self.engine.scan(range.clone()) {
                let (raw_key, raw_value) = kv?;
                let (_, user) = keys::decode_staged(&raw_key)?;
                bytes += raw_key.len() + 2 * user.len() + raw_value.len() + 48;
                also(&mut b, &user, &raw_value);
                b.delete(raw_key.clone());
                last = Some(raw_key);
                if bytes >= CHUNK_BYTES {
                    break;
                }
            }
            let Some(last) = last else { return Ok(()) };
            self.engine.write(b, Durability::Buffered)?;
            range.start = Bound::Excluded(last);
        }
    }

    /// The transactions with writes in the staging area (for a restart's clean-up:
    /// a transaction does not outlive its node).
    pub fn staged_transactions(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let all = keys::staged_all();
        let mut start = all.start.clone();
        loop {
            let range = KeyRange { start: start.clone(), end: all.end.clone() };
            let Some(kv) = self.engine.scan(range).next() else { return Ok(out) };
            let (txn, _) = keys::decode_staged(&kv?.0)?;
            out.push(txn);
            match keys::staged_txn_range(txn).end {
                Bound::Excluded(e) => start = Bound::Included(e),
                _ => return Ok(out),
            }
        }
    }

    /// Writes a commit batch's data at `version` *before* it is known to be committed —
    /// while the commit log is being made durable — so that [`Mvcc::apply`] of that
    /// version later only publishes it: the engine inserts, most of an apply's work,
    /// then overlap the log's fsync instead of following it.
    ///
    /// Nothing written here is visible until `apply` publishes the version: every read
    /// is at or below the applied version, so a data entry above it is skipped, and the
    /// key's head (held in memory until published, see `heads.rs`) names a version
    /// above the read's, which sends a point read to the seek path. A write record (the
    /// keys written) goes into the same engine batch; it stays until the heads writer
    /// puts the version's heads in the engine. [`Mvcc::open`] undoes any record left
    /// above the applied version (a crash before the commit), as does
    /// [`Mvcc::abandon_speculation`] when the commit log drops the entries (a Raft log
    /// truncation).
    ///
    /// Only the version right after the applied one, or after the last speculated one,
    /// is taken, so an apply that is not a publish never runs after a speculation of a
    /// newer version. Returns whether it wrote anything; a version it skips is applied
    /// in full later, as without speculation.
    pub fn speculate(&self, version: Version, batch: &CommitBatch) -> Result<bool> {
        if batch.mutations.is_empty() {
            return Ok(false);
        }
        let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
        let mut speculated = self.speculated.lock().expect("mvcc speculation lock poisoned");
        let after = speculated.last().copied().unwrap_or(self.applied().version);
        if version != after + 1 {
            return Ok(false);
        }
        let mut b = WriteBatch::new();
        for m in &batch.mutations {
            b.put(keys::data(&m.key, version), keys::encode_value(m.value.as_deref()));
        }
        b.put(
            keys::speculated(version),
            heads::encode_record(batch.mutations.len() as u64, batch.mutations.iter().map(|m| Ok(&m.key[..])))?,
        );
        self.engine.write(b, Durability::Buffered)?;
        // Held before the version can be published, so a read finds its heads here.
        self.pending.add(version, batch.mutations.iter().map(|m| m.key.clone()).collect());
        speculated.insert(version);
        Ok(true)
    }

    /// Undoes the speculation of every version from `from` on (see [`Mvcc::speculate`]):
    /// for when the commit log drops those entries before they commit.
    pub fn abandon_speculation(&self, from: Version) -> Result<()> {
        let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
        let mut speculated = self.speculated.lock().expect("mvcc speculation lock poisoned");
        let floor = from.max(self.applied().version + 1);
        if speculated.range(floor..).next().is_none() {
            return Ok(());
        }
        settle_records(self.engine.as_ref(), self.applied().version, Some(floor))?;
        self.pending.abandon(floor);
        speculated.retain(|&v| v < floor);
        Ok(())
    }

    /// Whether `version` was speculated and is not applied yet (see
    /// [`ApplyItem::Speculated`]).
    pub fn is_speculated(&self, version: Version) -> bool {
        self.speculated.lock().is_ok_and(|s| s.contains(&version))
    }

    /// The versions speculated and not yet applied (for tests and status).
    pub fn speculated(&self) -> Vec<Version> {
        self.speculated.lock().map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// Starts a bulk load of entries written at `version` straight into the engine's
    /// tables (see [`amberdb_storage::Engine::ingest`]). Only for keys no transaction
    /// can read yet — a restore's table id that no catalog entry names — because the
    /// entries appear at `version`, in the past, when [`BulkLoad::finish`] returns.
    /// `version` must be a commit version (its time is in the index).
    pub fn bulk_load(&self, version: Version) -> Result<BulkLoad<'_>> {
        Ok(BulkLoad { mvcc: self, inner: self.engine.ingest()?, version, first: None, last: None })
    }

    /// Adds heads to the keys of every headless range (bulk loads, stores that predate
    /// heads), then drops the range. Meant for a background thread: reads stay correct
    /// throughout (they seek inside those ranges). A head is written under the write
    /// lock and only where none exists, so a commit's newer head is never overwritten.
    /// Returns how many heads it wrote.
    pub fn build_missing_heads(&self) -> Result<u64> {
        let ranges = self
            .headless
            .read()
            .map_err(|_| Error::Internal("mvcc headless-ranges lock poisoned by a panicking thread".into()))?
            .clone();
        let mut built = 0;
        for (lo, hi) in ranges {
            let user_range = KeyRange {
                start: Bound::Included(lo.clone()),
                end: hi.clone().map_or(Bound::Unbounded, Bound::Included),
            };
            let mut pending: Vec<(Vec<u8>, Version)> = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            for kv in self.engine.scan(keys::data_range(&user_range)) {
                let (raw_key, _) = kv?;
                let (user, version) = keys::decode_data(&raw_key)?;
                if last.as_deref() == Some(user.as_slice()) {
                    continue;
                }
                // The first version met for a key is its newest.
                last = Some(user.clone());
                pending.push((user, version));
                if pending.len() >= 1024 {
                    built += self.put_missing_heads(std::mem::take(&mut pending))?;
                }
            }
            built += self.put_missing_heads(pending)?;
            let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
            let mut list = self.headless.write().expect("headless ranges lock poisoned");
            list.retain(|r| *r != (lo.clone(), hi.clone()));
            let mut b = WriteBatch::new();
            b.put(keys::meta(keys::META_HEADLESS), encode_headless(&list));
            self.engine.write(b, Durability::Buffered)?;
        }
        if built > 0 {
            tracing::info!(heads = built, "added mvcc heads to bulk-loaded or older data");
        }
        Ok(built)
    }

    fn put_missing_heads(&self, keys_versions: Vec<(Vec<u8>, Version)>) -> Result<u64> {
        let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
        let mut batch = WriteBatch::new();
        for (user, version) in keys_versions {
            let head = keys::head(&user);
            if self.engine.get(&head)?.is_none() {
                batch.put(head, version.to_le_bytes().to_vec());
            }
        }
        let n = batch.len() as u64;
        self.engine.write(batch, Durability::Buffered)?;
        Ok(n)
    }

    /// Whether some range still lacks heads (see [`Mvcc::build_missing_heads`]).
    pub fn has_headless(&self) -> bool {
        self.headless.read().map_or(true, |r| !r.is_empty())
    }

    /// Records `(lo, hi)` as headless before a bulk load makes its keys visible.
    fn add_headless(&self, lo: Vec<u8>, hi: Vec<u8>) -> Result<()> {
        let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
        let mut list = self.headless.write().expect("headless ranges lock poisoned");
        list.push((lo, Some(hi)));
        let mut b = WriteBatch::new();
        b.put(keys::meta(keys::META_HEADLESS), encode_headless(&list));
        self.engine.write(b, Durability::Sync)
    }

    /// The commit time of `version`, if it is a retained commit version.
    pub fn time_of_version(&self, version: Version) -> Result<Option<Timestamp>> {
        match self.engine.get(&keys::version_time(version))? {
            Some(raw) => Ok(Some(decode_u64(&raw, "mvcc version→time record")?)),
            None => Ok(None),
        }
    }

    /// The commit time of the state at `version`: that of the newest commit at or before
    /// it (versions that change no data — leader changes — keep the previous time).
    /// `None` if that commit is no longer in the retained time index.
    pub fn state_time(&self, version: Version) -> Result<Option<Timestamp>> {
        let range = KeyRange::between(keys::version_time(0), keys::version_time(version.saturating_add(1)));
        match self.engine.scan(range).next_back() {
            Some(kv) => Ok(Some(decode_u64(&kv?.1, "mvcc version→time record")?)),
            None => Ok(None),
        }
    }

    /// The newest commit version whose commit time is at or before `time`, with its time.
    pub fn version_at_time(&self, time: Timestamp) -> Result<Option<(Version, Timestamp)>> {
        let range = KeyRange {
            start: Bound::Included(vec![keys::TAG_TIME_VERSION]),
            end: Bound::Included(keys::time_version(time, u64::MAX)),
        };
        match self.engine.scan(range).next_back() {
            Some(kv) => {
                let (t, v) = keys::decode_time_version(&kv?.0)?;
                Ok(Some((v, t)))
            }
            None => Ok(None),
        }
    }

    /// The oldest version whose state is still inside the retention window at `now`:
    /// the state that was current at `now - retention`.
    fn retention_floor(&self, now: Timestamp) -> Result<Version> {
        let cutoff = now.saturating_sub(self.config.retention.as_micros() as u64);
        Ok(self.version_at_time(cutoff)?.map_or(0, |(v, _)| v))
    }

    /// Starts a read of the latest applied state.
    pub fn read_latest(&self) -> Result<ReadView> {
        let v = self.applied().version;
        self.register(v)
    }

    /// Starts a read at `version`. Fails with `TooOld` if that state is older than the
    /// retention window or already garbage-collected.
    pub fn read_at(&self, version: Version) -> Result<ReadView> {
        let applied = self.applied().version;
        if version > applied {
            return Err(Error::InvalidInput(format!(
                "version {version} is newer than the newest committed version {applied}"
            )));
        }
        let floor = self.retention_floor(self.clock.now())?;
        if version < floor {
            return Err(Error::TooOld(format!(
                "version {version} is older than the retention window ({}s; oldest readable version is {floor})",
                self.config.retention.as_secs()
            )));
        }
        self.register(version)
    }

    /// Starts a read of the state as of wall-clock `time` (µs since the Unix epoch): the
    /// state after the newest commit at or before `time`.
    pub fn read_at_time(&self, time: Timestamp) -> Result<ReadView> {
        let now = self.clock.now();
        if time > now {
            return Err(Error::InvalidInput(format!(
                "timestamp {} is in the future (now is {})",
                format_micros(time),
                format_micros(now)
            )));
        }
        let retention_us = self.config.retention.as_micros() as u64;
        if time < now.saturating_sub(retention_us) {
            return Err(Error::TooOld(format!(
                "timestamp {} is older than the retention window of {}s",
                format_micros(time),
                self.config.retention.as_secs()
            )));
        }
        match self.version_at_time(time)? {
            Some((v, _)) => self.read_at(v),
            // Nothing committed at or before `time`: the empty state at version 0, unless
            // GC has removed the index entries that would have answered.
            None if self.gc_watermark() == 0 => self.register(0),
            None => {
                Err(Error::TooOld(format!("timestamp {} predates the oldest retained version", format_micros(time))))
            }
        }
    }

    fn register(&self, version: Version) -> Result<ReadView> {
        let mut readers = self.readers.lock().expect("readers lock poisoned");
        if version < readers.watermark {
            return Err(Error::TooOld(format!(
                "version {version} has been garbage-collected (oldest readable version is {})",
                readers.watermark
            )));
        }
        *readers.active.entry(version).or_insert(0) += 1;
        drop(readers);
        Ok(ReadView {
            engine: self.engine.clone(),
            version,
            readers: self.readers.clone(),
            headless: self.headless.clone(),
            pending: self.pending.clone(),
        })
    }

    /// Writes the heads of every published version still held in memory (the background
    /// writer's job, see `heads.rs`; for tests and a store opened without it). Returns
    /// how many heads it wrote.
    pub fn persist_heads(&self) -> Result<usize> {
        persist_heads(self.engine.as_ref(), &self.write_lock, &self.pending)
    }

    /// Removes versions no reader can need: those older than the retention window and
    /// older than every live reader. Returns what it did.
    pub fn gc(&self) -> Result<GcStats> {
        let time_floor = self.retention_floor(self.clock.now())?;
        let horizon = {
            let mut readers = self.readers.lock().expect("readers lock poisoned");
            let oldest_reader = readers.active.keys().next().copied().unwrap_or(Version::MAX);
            // Below every version whose heads are still held: collecting a held tombstone
            // would leave the head written after it naming nothing.
            let held = self.pending.oldest().map_or(Version::MAX, |v| v - 1);
            let horizon = time_floor.min(oldest_reader).min(self.applied().version).min(held);
            if horizon <= readers.watermark {
                return Ok(GcStats::default());
            }
            // From here on no new reader can start below `horizon`.
            readers.watermark = horizon;
            horizon
        };
        // Persist the watermark before deleting anything, in its own batch: batches are
        // recovered as a prefix, so after a crash the watermark is at least as new as the
        // newest deletion.
        {
            let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
            let mut b = WriteBatch::new();
            b.put(keys::meta(keys::META_GC_WATERMARK), horizon.to_le_bytes().to_vec());
            self.engine.write(b, Durability::Buffered)?;
        }
        let mut stats = GcStats { watermark: horizon, ..GcStats::default() };
        let mut batch = WriteBatch::new();
        let flush = |batch: &mut WriteBatch| -> Result<()> {
            if !batch.is_empty() {
                self.engine.write(std::mem::take(batch), Durability::Buffered)?;
            }
            Ok(())
        };
        // Data: for each key keep the newest version ≤ horizon (unless it is a tombstone)
        // and everything newer; delete everything older. A key whose newest version is a
        // collected tombstone loses its head too — checked again under the write lock,
        // because a commit may have given the key a newer version since it was read.
        let mut current: Option<Vec<u8>> = None;
        let mut anchored = false;
        let mut heads_to_drop: Vec<(Vec<u8>, Version)> = Vec::new();
        let flush_all = |batch: &mut WriteBatch, heads: &mut Vec<(Vec<u8>, Version)>| -> Result<()> {
            let _guard = self.write_lock.lock().expect("mvcc write lock poisoned");
            for (key, expected) in heads.drain(..) {
                let still = match self.engine.get(&key)? {
                    Some(raw) => decode_u64(&raw, "mvcc head entry")? == expected,
                    None => false,
                };
                if still {
                    batch.delete(key);
                }
            }
            flush(batch)
        };
        for kv in self.engine.scan(keys::data_range(&KeyRange::all())) {
            let (raw_key, raw_value) = kv?;
            let (user, version) = keys::decode_data(&raw_key)?;
            if current.as_deref() != Some(user.as_slice()) {
                current = Some(user);
                anchored = false;
            }
            if version > horizon {
                continue;
            }
            if anchored {
                batch.delete(raw_key);
                stats.versions_removed += 1;
            } else {
                anchored = true;
                if keys::decode_value(&raw_value)?.is_none() {
                    batch.delete(raw_key);
                    stats.versions_removed += 1;
                    // The head goes too if this tombstone is the key's newest version.
                    let user = current.as_deref().unwrap_or_default();
                    heads_to_drop.push((keys::head(user), version));
                }
            }
            if batch.len() >= 4096 {
                flush_all(&mut batch, &mut heads_to_drop)?;
            }
        }
        flush_all(&mut batch, &mut heads_to_drop)?;
        // Time index: entries for versions below the horizon describe states nobody may
        // read any more. The horizon's own entry stays so it can still be resolved.
        let vt_range = KeyRange::between(keys::version_time(0), keys::version_time(horizon));
        for kv in self.engine.scan(vt_range) {
            let (raw_key, raw_value) = kv?;
            let version = keys::decode_version_time_key(&raw_key)?;
            let time = decode_u64(&raw_value, "mvcc version→time record")?;
            batch.delete(raw_key);
            batch.delete(keys::time_version(time, version));
            stats.index_removed += 1;
            if batch.len() >= 4096 {
                flush(&mut batch)?;
            }
        }
        flush(&mut batch)?;
        tracing::debug!(?stats, "mvcc gc pass");
        Ok(stats)
    }
}

/// A bulk load in progress (see [`Mvcc::bulk_load`]).
pub struct BulkLoad<'a> {
    mvcc: &'a Mvcc,
    inner: Box<dyn amberdb_storage::Ingestion + 'a>,
    version: Version,
    /// The first and last user keys loaded: the range recorded as headless.
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
}

impl BulkLoad<'_> {
    /// Adds the next entry; user keys must strictly ascend (the engine checks the
    /// encoded keys, whose order is the user keys' at one version).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        // No heads: the loaded range is recorded as headless at `finish`, and a
        // background pass adds them (`Mvcc::build_missing_heads`).
        self.inner.put(keys::data(key, self.version), keys::encode_value(Some(value)))?;
        if self.first.is_none() {
            self.first = Some(key.to_vec());
        }
        match &mut self.last {
            Some(l) => {
                l.clear();
                l.extend_from_slice(key);
            }
            None => self.last = Some(key.to_vec()),
        }
        Ok(())
    }

    /// Makes everything durable and visible (the loaded range is recorded as headless
    /// first, so no reader ever trusts a missing head there).
    pub fn finish(self) -> Result<()> {
        if let (Some(lo), Some(hi)) = (self.first, self.last) {
            self.mvcc.add_headless(lo, hi)?;
        }
        self.inner.finish()
    }
}

/// Formats µs since the Unix epoch as RFC 3339 UTC (for error messages).
pub fn format_micros(us: Timestamp) -> String {
    let secs = us / 1_000_000;
    let micros = us % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// A consistent read of the store at one version. While it lives, GC keeps every
/// version it may need.
pub struct ReadView {
    engine: Arc<dyn Engine>,
    version: Version,
    readers: Arc<Mutex<Readers>>,
    headless: HeadlessRanges,
    pending: Arc<PendingHeads>,
}

impl std::fmt::Debug for ReadView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").field("version", &self.version).finish()
    }
}

impl Clone for ReadView {
    /// Another registration of the same version: GC keeps it readable until every
    /// clone is dropped.
    fn clone(&self) -> Self {
        if let Ok(mut readers) = self.readers.lock() {
            *readers.active.entry(self.version).or_insert(0) += 1;
        }
        Self {
            engine: self.engine.clone(),
            version: self.version,
            readers: self.readers.clone(),
            headless: self.headless.clone(),
            pending: self.pending.clone(),
        }
    }
}

impl Drop for ReadView {
    fn drop(&mut self) {
        // A poisoned lock means another thread panicked; leaking the registration only
        // makes GC more conservative, so never panic in drop.
        if let Ok(mut readers) = self.readers.lock() {
            if let Some(n) = readers.active.get_mut(&self.version) {
                *n -= 1;
                if *n == 0 {
                    readers.active.remove(&self.version);
                }
            }
        }
    }
}

impl ReadView {
    /// The version this view reads at.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Reads one key: by its head when the newest version is visible here (two exact
    /// lookups), else by a seek to the newest version at or below this view's.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // Asked before the head is read: the head pass writes a range's heads before it
        // drops the range, so a range gone by now means the head below is authoritative.
        let maybe_headless = in_headless(&self.headless, key);
        // A head held in memory is newer than the engine's (heads.rs, invariant 1); asked
        // first, because one leaves memory only once it is in the engine.
        let head = match self.pending.newest(key) {
            Some(v) => Some(v),
            None => self.engine.get(&keys::head(key))?.map(|raw| decode_u64(&raw, "mvcc head entry")).transpose()?,
        };
        match head {
            // No head: no version, unless the key is in a range still without heads.
            None if !maybe_headless => return Ok(None),
            // Missing only if GC just collected it, which it does to a newest version
            // only when that is a tombstone: absent either way.
            Some(newest) if newest <= self.version => {
                return match self.engine.get(&keys::data(key, newest))? {
                    Some(v) => keys::decode_value(&v),
                    None => Ok(None),
                };
            }
            // Headless, or newer than this view: seek.
            None | Some(_) => {}
        }
        let range = KeyRange {
            start: Bound::Included(keys::data(key, self.version)),
            end: Bound::Included(keys::data(key, 0)),
        };
        match self.engine.scan(range).next() {
            Some(kv) => keys::decode_value(&kv?.1),
            None => Ok(None),
        }
    }

    /// Scans user keys in `range` in ascending order.
    pub fn scan(&self, range: &KeyRange) -> VersionedScan {
        VersionedScan::new(self.engine.scan(keys::data_range(range)), self.clone(), false)
    }

    /// Visits the user keys in `range` visible at this view's version, in ascending
    /// order, with borrowed key and value, until `f` returns `false` — [`Self::scan`]
    /// without a copy or allocation per entry (the key is decoded into a reused buffer).
    pub fn scan_each(&self, range: &KeyRange, mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        // Versions of one key are adjacent, newest first, sharing the encoded key before
        // the 8-byte version: once one is taken (or found deleted), the rest are skipped.
        let mut current: Option<Vec<u8>> = None;
        let mut user = Vec::new();
        self.engine.scan_each(keys::data_range(range), &mut |raw_key, raw_value| {
            let encoded = raw_key.len().checked_sub(8).map(|n| &raw_key[..n]);
            if let (Some(e), Some(c)) = (encoded, &current) {
                if c.as_slice() == e {
                    return Ok(true);
                }
            }
            user.clear();
            let version = keys::decode_data_into(raw_key, &mut user)?;
            if version > self.version {
                return Ok(true);
            }
            let e = encoded.expect("a decoded data key ends with its 8-byte version");
            match &mut current {
                Some(c) => {
                    c.clear();
                    c.extend_from_slice(e);
                }
                None => current = Some(e.to_vec()),
            }
            match raw_value.split_first() {
                Some((0, [])) => Ok(true),
                Some((1, v)) => f(&user, v),
                _ => Err(Error::InvalidData(format!(
                    "invalid mvcc value tag in {:x?}",
                    &raw_value[..raw_value.len().min(8)]
                ))),
            }
        })
    }

    /// Scans user keys in `range` in descending order.
    pub fn scan_rev(&self, range: &KeyRange) -> VersionedScan {
        VersionedScan::new(self.engine.scan(keys::data_range(range)), self.clone(), true)
    }

    /// Transaction `txn`'s staged write of `key` (see `keys.rs`): `None` if it staged
    /// none, `Some(None)` for a staged delete.
    pub(crate) fn staged_get(&self, txn: u64, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        self.engine.get(&keys::staged(txn, key))?.map(keys::decode_value_owned).transpose()
    }

    /// Transaction `txn`'s staged writes within `range`, deletes included, in key order
    /// (descending with `reverse`).
    pub(crate) fn staged_scan(&self, txn: u64, range: &KeyRange, reverse: bool) -> StagedScan {
        StagedScan { inner: self.engine.scan(keys::staged_range(txn, range)), reverse }
    }
}

/// See [`ReadView::staged_scan`].
pub(crate) struct StagedScan {
    inner: ScanIterator,
    reverse: bool,
}

impl Iterator for StagedScan {
    type Item = Result<(Vec<u8>, Option<Vec<u8>>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let kv = if self.reverse { self.inner.next_back() } else { self.inner.next() }?;
        Some(kv.and_then(|(k, v)| Ok((keys::decode_staged(&k)?.1, keys::decode_value_owned(v)?))))
    }
}

/// Turns a scan of raw versioned keys into the visible (key, value) pairs at a version.
/// The scan holds its own registration of the version, so it stays correct however long
/// it outlives the view or transaction that started it (a streamed query result).
pub struct VersionedScan {
    inner: ScanIterator,
    version: Version,
    _view: ReadView,
    reverse: bool,
    /// Forward: the encoded key (data key without its version) whose older versions
    /// are being skipped.
    /// Reverse: the key being collected and its newest visible value so far.
    current: Option<(Vec<u8>, Option<Vec<u8>>)>,
    done: bool,
}

impl VersionedScan {
    fn new(inner: ScanIterator, view: ReadView, reverse: bool) -> Self {
        Self { inner, version: view.version, _view: view, reverse, current: None, done: false }
    }

    fn next_forward(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        for kv in self.inner.by_ref() {
            let (raw_key, raw_value) = kv?;
            // Versions of one key are adjacent and share the encoded key before the
            // 8-byte version: older ones are skipped by comparing that, without decoding
            // (and without allocating: the buffer is reused).
            let encoded = raw_key.len().checked_sub(8).map(|n| &raw_key[..n]);
            if let (Some(e), Some((last, _))) = (encoded, &self.current) {
                if last.as_slice() == e {
                    continue;
                }
            }
            let (user, version) = keys::decode_data(&raw_key)?;
            if version > self.version {
                continue;
            }
            let value = keys::decode_value_owned(raw_value)?;
            let e = encoded.expect("a decoded data key ends with its 8-byte version");
            match &mut self.current {
                Some((last, _)) => {
                    last.clear();
                    last.extend_from_slice(e);
                }
                None => self.current = Some((e.to_vec(), None)),
            }
            if let Some(value) = value {
                return Ok(Some((user, value)));
            }
        }
        Ok(None)
    }

    fn next_reverse(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        // Walking backwards, each key's versions arrive oldest first; the visible value
        // is the last one at or below our version, known only once the key changes.
        loop {
            let Some(kv) = self.inner.next_back() else {
                return Ok(match self.current.take() {
                    Some((k, Some(v))) => Some((k, v)),
                    _ => None,
                });
            };
            let (raw_key, raw_value) = kv?;
            let (user, version) = keys::decode_data(&raw_key)?;
            let same = matches!(&self.current, Some((k, _)) if *k == user);
            let mut emit = None;
            if !same {
                if let Some((k, Some(v))) = self.current.take() {
                    emit = Some((k, v));
                }
                self.current = Some((user, None));
            }
            if version <= self.version {
                if let Some((_, slot)) = self.current.as_mut() {
                    *slot = keys::decode_value(&raw_value)?;
                }
            }
            if emit.is_some() {
                return Ok(emit);
            }
        }
    }
}

impl Iterator for VersionedScan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = if self.reverse { self.next_reverse() } else { self.next_forward() };
        match r {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
