//! The set an uncorrelated `x [NOT] IN (SELECT …)` looks its values up in.
//!
//! ```text
//!  subquery rows ──▶ identity bytes (equal values encode equally)
//!        │ fits in work_mem                │ past work_mem
//!        ▼                                 ▼
//!  Memory: HashSet<bytes>          spill::sort ──▶ dedupe ──▶ Disk: one file
//!                                   [u32 len][bytes] … sorted, plus an index of the
//!                                   first key of every ~4 KiB block (in memory)
//!  contains(k): hash lookup        contains(k): binary search of the index, one read
//!                                   of the block that may hold k, a scan of it
//! ```
//!
//! The subquery runs once, while the outer statement is planned (its result becomes a
//! constant of the outer query, as PostgreSQL's hashed subplan). A result past
//! `work_mem` no longer stays in memory: it is sorted externally and kept in a temporary
//! file (deleted when the set is dropped) with a sparse index, ~1/100 of the file for
//! small keys, so each lookup costs one positioned read of a block the page cache
//! mostly holds.
//!
//! Invariant: the file's keys strictly ascend (bytewise), and `index[i]` is the first
//! key of block `i` and its offset; a key lies in the block whose first key is the last
//! one ≤ it.

use crate::pipeline::RowIter;
use crate::types::Value;
use amberdb_error::{Error, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

/// Bytes between two index entries of a spilled set.
const BLOCK: u64 = 4096;

/// See the module docs.
#[derive(Debug)]
pub enum ValueSet {
    /// Fits in `work_mem`.
    Memory(HashSet<Vec<u8>>),
    /// Spilled to a sorted file.
    Disk(DiskSet),
}

/// A sorted, deduplicated set of keys in a temporary file (see the module docs).
#[derive(Debug)]
pub struct DiskSet {
    file: File,
    /// First key and offset of each block.
    index: Vec<(Vec<u8>, u64)>,
    /// End of the last block.
    len: u64,
    /// Keys held (for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    keys: u64,
}

impl ValueSet {
    /// Whether the set holds `key`.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        match self {
            ValueSet::Memory(set) => Ok(set.contains(key)),
            ValueSet::Disk(d) => d.contains(key),
        }
    }

    /// How many keys it holds.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        match self {
            ValueSet::Memory(set) => set.len() as u64,
            ValueSet::Disk(d) => d.keys,
        }
    }

    /// Whether it is empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it spilled to disk.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        matches!(self, ValueSet::Disk(_))
    }

    /// Builds a spilled set from `keys` (any order, duplicates allowed), sorting them
    /// externally within `budget` bytes of memory.
    pub fn spill(keys: RowIter, budget: usize) -> Result<ValueSet> {
        let sorted = crate::spill::sort(keys, &[(0, false, false)], None, budget)?;
        let (file, dir) = crate::spill::temp_file()?;
        let mut out = BufWriter::with_capacity(64 << 10, &file);
        let mut index = Vec::new();
        let (mut offset, mut block_start, mut count, mut unchecked) = (0u64, 0u64, 0u64, 0u64);
        let mut last: Option<Vec<u8>> = None;
        for row in sorted {
            let key = match row?.into_iter().next() {
                Some(Value::Bytes(b)) => b,
                other => return Err(Error::Internal(format!("value set: expected a key, got {other:?}"))),
            };
            if last.as_ref() == Some(&key) {
                continue;
            }
            let len = u32::try_from(key.len()).map_err(|_| Error::sql("54000", "a value too large for an IN set"))?;
            if index.is_empty() || offset - block_start >= BLOCK {
                index.push((key.clone(), offset));
                block_start = offset;
            }
            out.write_all(&len.to_le_bytes()).map_err(|e| crate::spill::io_error("write to", e))?;
            out.write_all(&key).map_err(|e| crate::spill::io_error("write to", e))?;
            offset += 4 + key.len() as u64;
            unchecked += 4 + key.len() as u64;
            if unchecked > crate::spill::CHECK_EVERY {
                unchecked = 0;
                crate::spill::check_space(&dir)?;
            }
            count += 1;
            last = Some(key);
        }
        out.flush().map_err(|e| crate::spill::io_error("write to", e))?;
        drop(out);
        Ok(ValueSet::Disk(DiskSet { file, index, len: offset, keys: count }))
    }
}

impl DiskSet {
    fn contains(&self, key: &[u8]) -> Result<bool> {
        // The last block whose first key is ≤ key.
        let i = self.index.partition_point(|(first, _)| first.as_slice() <= key);
        let Some((first, start)) = i.checked_sub(1).and_then(|i| self.index.get(i)) else { return Ok(false) };
        if first.as_slice() == key {
            return Ok(true);
        }
        let end = self.index.get(i).map_or(self.len, |(_, o)| *o);
        let mut block = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut block, *start).map_err(|e| crate::spill::io_error("read from", e))?;
        let mut rest = block.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some(k) = tail.get(..len) else { break };
            match k.cmp(key) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Greater => return Ok(false),
                std::cmp::Ordering::Less => rest = &tail[len..],
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spilled set answers exactly as a hash set of the same keys, for keys inside,
    /// between, before and after them, across many blocks.
    #[test]
    fn a_spilled_set_answers_as_the_hash_set() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys: Vec<Vec<u8>> = (0..20_000).map(|_| (next() % 50_000).to_string().into_bytes()).collect();
        let rows: RowIter = Box::new(keys.clone().into_iter().map(|k| Ok(vec![Value::Bytes(k)])));
        // A budget far below the keys: several sorted runs merged.
        let set = ValueSet::spill(rows, 64 << 10).unwrap();
        let model: HashSet<Vec<u8>> = keys.into_iter().collect();
        assert!(set.spilled());
        assert_eq!(set.len(), model.len() as u64);
        for probe in 0..50_100u64 {
            let k = probe.to_string().into_bytes();
            assert_eq!(set.contains(&k).unwrap(), model.contains(&k), "{probe}");
        }
        assert!(!set.contains(b"").unwrap());
        assert!(!set.contains(b"\xff\xff").unwrap());
        let empty = ValueSet::spill(Box::new(std::iter::empty()), 64 << 10).unwrap();
        assert!(!empty.contains(b"1").unwrap() && empty.is_empty());
    }
}
