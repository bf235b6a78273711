//! Optimistic serializable transactions: read at a version, record what was read,
//! buffer writes, and hand `(read version, read ranges, writes)` to a sequencer.

use crate::{Mutation, ReadView, Version, VersionedScan};
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use std::collections::BTreeMap;
use std::iter::Peekable;

/// What a sequencer needs to commit a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    /// The version the transaction read at.
    pub read_version: Version,
    /// Every user-key range the transaction scanned.
    pub read_ranges: Vec<KeyRange>,
    /// Every key it read by itself (a point read: a third of a one-key range's memory,
    /// and a map lookup rather than a range walk when checked — an INSERT reads each
    /// key it writes).
    pub read_keys: Vec<Vec<u8>>,
    /// The writes, one per key, in key order.
    pub writes: Vec<Mutation>,
}

/// See [`Transaction::detached_reader`]. Holds its own registration of the read
/// version, so its reads stay answerable after the transaction is gone.
pub struct DetachedReader {
    view: ReadView,
    own: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl DetachedReader {
    /// Reads a key as the transaction would have (for keys within its range).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.own.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.view.get(key),
        }
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
        }
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

    /// Whether the transaction has buffered any write.
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Reads a key, seeing the transaction's own writes.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !self.read_only {
            self.read_keys.push(key.to_vec());
        }
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        self.view.get(key)
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
        if !self.read_only {
            self.reads.push(range);
        }
        TxnScan { stored: stored.peekable(), own: own.into_iter().peekable(), reverse }
    }

    /// Point reads that outlive the statement (a result produced as the client reads
    /// it): this transaction's snapshot plus a copy of its own writes within `range`.
    /// The whole of `range` counts as read now, as a scan of it would, since the keys
    /// read later are not known yet.
    pub fn detached_reader(&mut self, range: KeyRange) -> DetachedReader {
        let own = self.own_writes(&range).collect();
        if !self.read_only {
            self.reads.push(range);
        }
        DetachedReader { view: self.view.clone(), own }
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
        Ok(())
    }

    /// Turns the transaction into a commit request, or `None` if it wrote nothing (a
    /// read-only transaction commits trivially at its read version).
    pub fn into_request(self) -> Option<CommitRequest> {
        self.into_request_with_view().map(|(req, _)| req)
    }

    /// Like [`Transaction::into_request`], but hands back the read view too: a
    /// sequencer keeps it alive until the request is checked, so that the transaction
    /// still counts as a live reader (and the conflict window keeps what it needs).
    pub fn into_request_with_view(self) -> Option<(CommitRequest, ReadView)> {
        if self.writes.is_empty() {
            return None;
        }
        let req = CommitRequest {
            read_version: self.view.version(),
            read_ranges: self.reads,
            read_keys: self.read_keys,
            writes: self.writes.into_iter().map(|(key, value)| Mutation { key, value }).collect(),
        };
        Some((req, self.view))
    }
}

/// The transaction's own writes inside a scanned range, in scan order.
type OwnWrites = Peekable<std::vec::IntoIter<(Vec<u8>, Option<Vec<u8>>)>>;

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
                (Some(Ok((sk, _))), Some((ok, _))) => {
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
                let (k, v) = self.own.next()?;
                match v {
                    Some(v) => return Some(Ok((k, v))),
                    None => continue, // our own delete
                }
            }
            return self.stored.next();
        }
    }
}
