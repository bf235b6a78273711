//! In-memory engine for tests: a copy-on-write `BTreeMap`.
//!
//! Snapshots and scans share the map through an `Arc`; a write while one is alive
//! clones the map (O(n)), which is fine for tests and nothing else. It is never
//! durable: `Durability::Sync` is accepted and means nothing.

use crate::{
    Bytes, Durability, Engine, EngineSnapshot, Ingestion, KeyRange, KeyValue, ScanIterator, WriteBatch, WriteOp,
};
use amberdb_error::Result;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

type Map = BTreeMap<Bytes, Bytes>;

/// An in-memory engine.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    map: Arc<RwLock<Arc<Map>>>,
}

impl Memory {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Map> {
        self.map.read().expect("memory engine lock poisoned by a panicking writer").clone()
    }
}

impl Engine for Memory {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.current().get(key).cloned())
    }

    fn scan(&self, range: KeyRange) -> ScanIterator {
        Box::new(Cursor { map: self.current(), lower: range.start, upper: range.end })
    }

    fn ingest(&self) -> Result<Box<dyn Ingestion + '_>> {
        Ok(Box::new(MemoryIngestion { engine: self, entries: Vec::new(), last: [None, None] }))
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<()> {
        let mut guard = self.map.write().expect("memory engine lock poisoned by a panicking writer");
        let map = Arc::make_mut(&mut guard);
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot> {
        Box::new(MemorySnapshot { map: self.current() })
    }

    fn disk_space(&self) -> u64 {
        0
    }
}

struct MemoryIngestion<'a> {
    engine: &'a Memory,
    entries: Vec<(Bytes, Bytes)>,
    /// The last key added to each tree (the rest, side keys).
    last: [Option<Bytes>; 2],
}

impl Ingestion for MemoryIngestion<'_> {
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<()> {
        let last = &mut self.last[usize::from(crate::is_side(&key))];
        if last.as_ref().is_some_and(|l| *l >= key) {
            return Err(amberdb_error::Error::Internal("engine ingestion: keys must strictly ascend".into()));
        }
        *last = Some(key.clone());
        self.entries.push((key, value));
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut guard = self.engine.map.write().expect("memory engine lock poisoned by a panicking writer");
        Arc::make_mut(&mut guard).extend(self.entries);
        Ok(())
    }
}

struct MemorySnapshot {
    map: Arc<Map>,
}

impl EngineSnapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, range: KeyRange) -> ScanIterator {
        Box::new(Cursor { map: self.map.clone(), lower: range.start, upper: range.end })
    }
}

/// Walks a shared map by re-seeking from the last key returned at each end, so it owns
/// no borrow and can be consumed from both ends.
struct Cursor {
    map: Arc<Map>,
    lower: Bound<Bytes>,
    upper: Bound<Bytes>,
}

impl Cursor {
    fn bounds_empty(&self) -> bool {
        KeyRange { start: self.lower.clone(), end: self.upper.clone() }.is_empty()
    }
}

impl Iterator for Cursor {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bounds_empty() {
            return None;
        }
        let (k, v) = self.map.range((self.lower.clone(), self.upper.clone())).next()?;
        self.lower = Bound::Excluded(k.clone());
        Some(Ok((k.clone(), v.clone())))
    }
}

impl DoubleEndedIterator for Cursor {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.bounds_empty() {
            return None;
        }
        let (k, v) = self.map.range((self.lower.clone(), self.upper.clone())).next_back()?;
        self.upper = Bound::Excluded(k.clone());
        Some(Ok((k.clone(), v.clone())))
    }
}
