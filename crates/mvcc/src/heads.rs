//! Heads not yet in the engine: the newest version of each recently written key, held
//! in memory until a background writer puts the head entries into the engine.
//!
//! ```text
//!  speculate / apply ──▶ data + write record (keys of v) ──▶ engine      (critical path)
//!          │
//!          └──▶ PendingHeads { v → keys, key → newest v }               (memory)
//!                   │ published (applied) versions only
//!                   ▼
//!  heads writer ──▶ heads of v…w + delete their records ──▶ engine     (off the path)
//!
//!  ReadView::get(k): PendingHeads.newest(k)  ──or else──▶  engine head(k)
//! ```
//!
//! A head entry is one engine insert per written key, as costly as the data insert
//! itself (fjall's memtable inserts are memory-latency bound, ~2–4 µs each here), and
//! both used to sit between a commit's log fsync and its reply. Now a commit writes its
//! data and a *write record* (the keys it wrote, one entry) in its batch; its heads
//! follow in a later batch, written by a background thread after the version is
//! published, while the committers are busy with their next transactions.
//!
//! Invariants:
//! 1. For every key, the newest version among the versions held here is in `newest`;
//!    the engine head is the key's newest version among all others. A point read takes
//!    the held one if there is one, else the engine's: that is the key's newest version.
//! 2. A version leaves this table only after the batch holding its heads (and deleting
//!    its write record) is written, so a reader that misses here finds the engine head.
//! 3. Heads are persisted in version order and only for published versions, under the
//!    mvcc write lock: a head never goes back, and the engine never names a version that
//!    may still be undone (a speculation that never commits).
//! 4. A write record stays in the engine until its version's heads are there (same
//!    batch), so a crash loses no head: `Mvcc::open` writes the heads of the records at
//!    or below the applied version, and undoes the speculations above it.

use crate::Version;
use amberdb_error::Result;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Most keys held before an apply persists them itself: bounds the table's memory when
/// the background writer falls behind (or is not running).
pub(crate) const MAX_PENDING_KEYS: usize = 1 << 16;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct PendingHeads {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Versions whose heads are not in the engine yet, with the keys each wrote.
    versions: BTreeMap<Version, Vec<Vec<u8>>>,
    /// Each held key's newest version among `versions`.
    newest: HashMap<Vec<u8>, Version>,
    /// Keys held, summed over `versions`.
    keys: usize,
    /// The newest published version: heads at or below it may be persisted.
    published: Version,
    /// Set when the store closes: the writer thread exits.
    stop: bool,
}

/// The heads of some published versions, ready to be written.
#[derive(Debug, Default)]
pub(crate) struct Persist {
    /// The versions covered (their write records are deleted with the heads).
    pub versions: Vec<Version>,
    /// Key → newest version among them.
    pub heads: BTreeMap<Vec<u8>, Version>,
}

impl PendingHeads {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing can leave the state half-updated (no panics inside), so a poisoned lock
        // still holds a consistent table.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest held version of `key`, if it has one here.
    pub fn newest(&self, key: &[u8]) -> Option<Version> {
        self.lock().newest.get(key).copied()
    }

    /// The oldest version held.
    pub fn oldest(&self) -> Option<Version> {
        self.lock().versions.first_key_value().map(|(&v, _)| v)
    }

    /// Keys held (summed over versions).
    pub fn len(&self) -> usize {
        self.lock().keys
    }

    /// Holds the heads of `version`, which wrote `keys`. Versions arrive in order.
    pub fn add(&self, version: Version, keys: Vec<Vec<u8>>) {
        let mut s = self.lock();
        s.keys += keys.len();
        for k in &keys {
            s.newest.insert(k.clone(), version);
        }
        s.versions.insert(version, keys);
    }

    /// Versions up to `through` are published: their heads may be written.
    pub fn publish(&self, through: Version) {
        let mut s = self.lock();
        s.published = s.published.max(through);
        if s.versions.first_key_value().is_some_and(|(&v, _)| v <= s.published) {
            self.wake.notify_one();
        }
    }

    /// Forgets the versions from `from` on (speculations undone).
    pub fn abandon(&self, from: Version) {
        let mut s = self.lock();
        let dropped = s.versions.split_off(&from);
        if dropped.is_empty() {
            return;
        }
        s.keys -= dropped.values().map(Vec::len).sum::<usize>();
        let mut newest = HashMap::new();
        for (&v, keys) in &s.versions {
            for k in keys {
                newest.insert(k.clone(), v);
            }
        }
        s.newest = newest;
    }

    /// The heads of the held versions at or below `through` (not removed: see
    /// [`Self::persisted`]).
    pub fn take_through(&self, through: Version) -> Persist {
        let s = self.lock();
        let mut p = Persist::default();
        for (&v, keys) in s.versions.range(..=through) {
            p.versions.push(v);
            for k in keys {
                p.heads.insert(k.clone(), v);
            }
        }
        p
    }

    /// The batch holding `p` (and possibly newer heads, `newer`) is written: forget it.
    pub fn persisted(&self, p: &Persist, newer: &[(&[u8], Version)]) {
        let mut s = self.lock();
        for v in &p.versions {
            if let Some(keys) = s.versions.remove(v) {
                s.keys -= keys.len();
            }
        }
        // A key whose held version is no newer than its head now in the engine is done;
        // one with a newer held version (a later speculation) stays.
        let written = p.heads.iter().map(|(k, &v)| (k.as_slice(), v)).chain(newer.iter().copied());
        for (k, v) in written {
            if s.newest.get(k).is_some_and(|&held| held <= v) {
                s.newest.remove(k);
            }
        }
    }

    /// The newest published version.
    pub fn published(&self) -> Version {
        self.lock().published
    }

    /// Blocks until some published version is held (→ `true`) or the store closes
    /// (→ `false`).
    pub fn wait_for_work(&self) -> bool {
        let mut s = self.lock();
        loop {
            if s.stop {
                return false;
            }
            if s.versions.first_key_value().is_some_and(|(&v, _)| v <= s.published) {
                return true;
            }
            s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wakes the writer thread to exit.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }
}

/// Encodes a write record's value: the keys a version wrote.
pub(crate) fn encode_record<'a>(count: u64, keys: impl Iterator<Item = Result<&'a [u8]>>) -> Result<Vec<u8>> {
    let mut w = amberdb_encoding::codec::Writer::new();
    w.varint(count);
    for k in keys {
        w.bytes(k?);
    }
    Ok(w.finish())
}

/// Decodes a write record's value.
pub(crate) fn decode_record(raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut r = amberdb_encoding::codec::Reader::new(raw, "mvcc write record");
    let n = r.varint()?;
    let mut keys = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        keys.push(r.bytes()?.to_vec());
    }
    r.finish()?;
    Ok(keys)
}
