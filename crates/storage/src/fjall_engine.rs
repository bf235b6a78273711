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

/// A fjall-backed engine rooted at a directory.
#[derive(Clone)]
pub struct Fjall {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    ks: Keyspace,
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
        let db = Database::builder(path).cache_size(256 << 20).open().map_err(err)?;
        let ks = db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(err)?;
        Ok(Self { inner: Arc::new(Inner { db, ks, path: path.to_path_buf() }) })
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
struct FjallIngestion {
    tx: Option<std::sync::mpsc::SyncSender<IngestMsg>>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    batch: Vec<(Bytes, Bytes)>,
    last: Option<Bytes>,
}

enum IngestMsg {
    Batch(Vec<(Bytes, Bytes)>),
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
        let prev = self.batch.last().map(|(k, _)| k).or(self.last.as_ref());
        if prev.is_some_and(|l| *l >= key) {
            return Err(Error::Internal("engine ingestion: keys must strictly ascend".into()));
        }
        self.batch.push((key, value));
        if self.batch.len() >= INGEST_BATCH {
            let b = std::mem::take(&mut self.batch);
            self.last = b.last().map(|(k, _)| k.clone());
            self.send(IngestMsg::Batch(b))?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let b = std::mem::take(&mut self.batch);
        self.send(IngestMsg::Batch(b))?;
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
                let mut ing = engine.inner.ks.start_ingestion().map_err(|e| engine.err("start ingestion", e))?;
                for msg in rx {
                    match msg {
                        IngestMsg::Batch(b) => {
                            for (k, v) in b {
                                ing.write(k, v).map_err(|e| engine.err("ingest", e))?;
                            }
                        }
                        IngestMsg::Finish => return ing.finish().map_err(|e| engine.err("finish ingestion", e)),
                    }
                }
                Ok(()) // abandoned: dropped unfinished
            })
            .map_err(|e| Error::Internal(format!("spawn ingestion writer: {e}")))?;
        Ok(Box::new(FjallIngestion { tx: Some(tx), writer: Some(writer), batch: Vec::new(), last: None }))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let v = self.inner.ks.get(key).map_err(|e| self.err("get", e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan(&self, range: KeyRange) -> ScanIterator {
        let iter = self.inner.ks.range::<Bytes, _>((range.start, range.end));
        iter_to_scan(self.inner.path.clone(), iter)
    }

    fn scan_each(&self, range: KeyRange, f: &mut Visitor<'_>) -> Result<()> {
        for guard in self.inner.ks.range::<Bytes, _>((range.start, range.end)) {
            let (k, v) = guard.into_inner().map_err(|e| self.err("scan", e))?;
            if !f(&k, &v)? {
                break;
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
                WriteOp::Put(k, v) => b.insert(&self.inner.ks, k, v),
                WriteOp::Delete(k) => b.remove(&self.inner.ks, k),
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
        let v = self.snap.get(&self.engine.inner.ks, key).map_err(|e| self.engine.err("snapshot get", e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan(&self, range: KeyRange) -> ScanIterator {
        let iter = self.snap.range::<Bytes, _>(&self.engine.inner.ks, (range.start, range.end));
        iter_to_scan(self.engine.inner.path.clone(), iter)
    }
}
