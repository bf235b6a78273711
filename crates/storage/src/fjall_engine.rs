//! The disk engine: one fjall 3 keyspace.
//!
//! fjall is an LSM tree with a shared write-ahead journal. A `WriteBatch` is one journal
//! record, so batches are atomic and recovered as a prefix (crate invariants 1 and 2).
//! Durability is set explicitly on every batch: `Buffered` flushes the journal to the OS,
//! `Sync` fsyncs it before returning.

use crate::{
    Bytes, Durability, Engine, EngineSnapshot, Ingestion, KeyRange, ScanIterator, Visitor, WriteBatch, WriteOp,
};
use amberdb_error::{Error, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const KEYSPACE: &str = "amber";
/// The keyspace holding keys that start with [`crate::SIDE_TAG`].
const SIDE_KEYSPACE: &str = "amber.side";
/// Where the side tree's keys begin and end.
const SIDE_LO: [u8; 1] = [crate::SIDE_TAG];
const SIDE_HI: [u8; 1] = [crate::SIDE_TAG + 1];

/// A fjall-backed engine rooted at a directory.
#[derive(Clone)]
pub struct Fjall {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    ks: Keyspace,
    side: Keyspace,
    path: PathBuf,
}

impl std::fmt::Debug for Fjall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fjall").field("path", &self.inner.path).finish()
    }
}

impl Fjall {
    /// Opens (or creates) the engine in `path`, recovering its journal.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e: fjall::Error| Error::io(path.display(), format!("opening fjall engine: {e}"));
        // Four background workers whatever the core count. fjall 3.1 sizes its pool by
        // the cores (two here), and its worker 0 hands every compaction request back to
        // the queue for the others; with one other worker, busy compacting, worker 0
        // takes its own request again at once — a spin that took ~10 % of both cores
        // while the store grew (perf, commit benchmark). With three others, one is free.
        // One worker would avoid the spin but can deadlock: a worker blocks sending a
        // flush request into the queue it alone drains.
        let db = Database::builder(path).cache_size(256 << 20).worker_threads(4).open().map_err(err)?;
        let ks = db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(err)?;
        let side = db.keyspace(SIDE_KEYSPACE, KeyspaceCreateOptions::default).map_err(err)?;
        Ok(Self { inner: Arc::new(Inner { db, ks, side, path: path.to_path_buf() }) })
    }

    /// The keyspace `key` lives in.
    fn tree(&self, key: &[u8]) -> &Keyspace {
        if crate::is_side(key) {
            &self.inner.side
        } else {
            &self.inner.ks
        }
    }

    /// The non-empty pieces of `range` per keyspace, in key order: the keys before the
    /// side tree's, the side tree's, the keys after.
    fn parts(&self, range: &KeyRange) -> Vec<(&Keyspace, KeyRange)> {
        [
            (&self.inner.ks, range.clamp(None, Some(&SIDE_LO))),
            (&self.inner.side, range.clamp(Some(&SIDE_LO), Some(&SIDE_HI))),
            (&self.inner.ks, range.clamp(Some(&SIDE_HI), None)),
        ]
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .collect()
    }

    fn err(&self, what: &str, e: fjall::Error) -> Error {
        Error::io(self.inner.path.display(), format!("{what}: {e}"))
    }
}

fn iter_to_scan(path: PathBuf, iter: fjall::Iter) -> ScanIterator {
    let map = move |guard: fjall::Guard| {
        guard
            .into_inner()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(|e| Error::io(path.display(), format!("scan: {e}")))
    };
    Box::new(iter.map(map))
}

/// A bulk load into fjall. fjall's ingestion type cannot be named outside it, so it
/// lives on a writer thread fed through a bounded channel (which also overlaps building
/// the engine's tables with the caller's decoding). Ordering is checked here: fjall
/// asserts it.
/// Concatenates per-keyspace scans (already in key order) into one, both directions.
fn chain(parts: impl Iterator<Item = ScanIterator>) -> ScanIterator {
    let mut parts: Vec<ScanIterator> = parts.collect();
    match parts.len() {
        0 => Box::new(std::iter::empty()),
        1 => parts.remove(0),
        _ => parts.into_iter().reduce(|a, b| Box::new(a.chain(b))).unwrap_or_else(|| Box::new(std::iter::empty())),
    }
}

/// A bulk load: puts are batched per tree (index 0: the main keyspace, 1: the side
/// one) and handed to a writer thread that runs one fjall ingestion per tree.
struct FjallIngestion {
    tx: Option<std::sync::mpsc::SyncSender<IngestMsg>>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    batch: [Vec<(Bytes, Bytes)>; 2],
    last: [Option<Bytes>; 2],
}

enum IngestMsg {
    Batch(usize, Vec<(Bytes, Bytes)>),
    Finish,
}

const INGEST_BATCH: usize = 4096;

impl FjallIngestion {
    fn send(&mut self, msg: IngestMsg) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if sent {
            return Ok(());
        }
        // The writer stopped: its result says why.
        self.tx = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(Error::Internal("engine ingestion writer panicked".into())),
            _ => Err(Error::Internal("engine ingestion writer stopped".into())),
        }
    }
}

impl Ingestion for FjallIngestion {
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<()> {
        let t = usize::from(crate::is_side(&key));
        let prev = self.batch[t].last().map(|(k, _)| k).or(self.last[t].as_ref());
        if prev.is_some_and(|l| *l >= key) {
            return Err(Error::Internal("engine ingestion: keys must strictly ascend".into()));
        }
        self.batch[t].push((key, value));
        if self.batch[t].len() >= INGEST_BATCH {
            let b = std::mem::take(&mut self.batch[t]);
            self.last[t] = b.last().map(|(k, _)| k.clone());
            self.send(IngestMsg::Batch(t, b))?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        for t in 0..2 {
            let b = std::mem::take(&mut self.batch[t]);
            if !b.is_empty() {
                self.send(IngestMsg::Batch(t, b))?;
            }
        }
        self.send(IngestMsg::Finish)?;
        self.tx = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Internal("engine ingestion writer panicked".into())),
            None => Err(Error::Internal("engine ingestion writer missing".into())),
        }
    }
}

impl Drop for FjallIngestion {
    fn drop(&mut self) {
        // Unfinished: closing the channel without `Finish` makes the writer drop the
        // ingestion, which registers nothing.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Engine for Fjall {
    fn ingest(&self) -> Result<Box<dyn Ingestion + '_>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<IngestMsg>(4);
        let engine = self.clone();
        let writer = std::thread::Builder::new()
            .name("amber-ingest".into())
            .spawn(move || -> Result<()> {
                // The main tree's ingestion always runs (an empty one is cheap); the
                // side tree's starts with its first key.
                let mut main = engine.inner.ks.start_ingestion().map_err(|e| engine.err("start ingestion", e))?;
                let mut side = None;
                for msg in rx {
                    match msg {
                        IngestMsg::Batch(0, b) => {
                            for (k, v) in b {
                                main.write(k, v).map_err(|e| engine.err("ingest", e))?;
                            }
                        }
                        IngestMsg::Batch(_, b) => {
                            let ing = match &mut side {
                                Some(ing) => ing,
                                None => side.insert(
                                    engine
                                        .inner
                                        .side
                                        .start_ingestion()
                                        .map_err(|e| engine.err("start ingestion", e))?,
                                ),
                            };
                            for (k, v) in b {
                                ing.write(k, v).map_err(|e| engine.err("ingest", e))?;
                            }
                        }
                        IngestMsg::Finish => {
                            // Two trees become visible one after the other, side first;
                            // loads go under prefixes nobody reads until they return.
                            if let Some(ing) = side {
                                ing.finish().map_err(|e| engine.err("finish ingestion", e))?;
                            }
                            return main.finish().map_err(|e| engine.err("finish ingestion", e));
                        }
                    }
                }
                Ok(()) // abandoned: dropped unfinished
            })
            .map_err(|e| Error::Internal(format!("spawn ingestion writer: {e}")))?;
        Ok(Box::new(FjallIngestion {
            tx: Some(tx),
            writer: Some(writer),
            batch: [Vec::new(), Vec::new()],
            last: [None, None],
        }))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let v = self.tree(key).get(key).map_err(|e| self.err("get", e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan(&self, range: KeyRange) -> ScanIterator {
        chain(
            self.parts(&range)
                .into_iter()
                .map(|(ks, r)| iter_to_scan(self.inner.path.clone(), ks.range::<Bytes, _>((r.start, r.end)))),
        )
    }

    fn scan_each(&self, range: KeyRange, f: &mut Visitor<'_>) -> Result<()> {
        for (ks, r) in self.parts(&range) {
            for guard in ks.range::<Bytes, _>((r.start, r.end)) {
                let (k, v) = guard.into_inner().map_err(|e| self.err("scan", e))?;
                if !f(&k, &v)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mode = match durability {
            Durability::Buffered => PersistMode::Buffer,
            Durability::Sync => PersistMode::SyncAll,
        };
        let mut b = self.inner.db.batch().durability(Some(mode));
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => b.insert(self.tree(&k), k, v),
                WriteOp::Delete(k) => b.remove(self.tree(&k), k),
            }
        }
        b.commit().map_err(|e| self.err("write batch", e))
    }

    fn sync(&self) -> Result<()> {
        self.inner.db.persist(PersistMode::SyncAll).map_err(|e| self.err("sync", e))
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot> {
        Box::new(FjallSnapshot { snap: self.inner.db.snapshot(), engine: self.clone() })
    }

    fn disk_space(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }
}

struct FjallSnapshot {
    snap: fjall::Snapshot,
    engine: Fjall,
}

impl EngineSnapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let v = self.snap.get(self.engine.tree(key), key).map_err(|e| self.engine.err("snapshot get", e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan(&self, range: KeyRange) -> ScanIterator {
        chain(self.engine.parts(&range).into_iter().map(|(ks, r)| {
            iter_to_scan(self.engine.inner.path.clone(), self.snap.range::<Bytes, _>(ks, (r.start, r.end)))
        }))
    }
}
