//! The conflict window: which keys were written by commits the sequencer has accepted
//! recently, and at which version.
//!
//! ```text
//!   keys:    BTreeMap<key, Stamp>     Stamp = Committed(version) | Pending(ticket)
//!   log:     VecDeque<(ticket, version?, accepted_at, keys, ranges)>   in acceptance order
//!   history: BTreeMap<key prefix, newest version>   writes that left the log, coarsely
//!   floor:   Version                  requests reading below it cannot be checked
//! ```
//!
//! A commit request conflicts if any key in one of its read ranges has a stamp newer
//! than its read version. A staged transaction's writes are remembered as the key
//! ranges that cover them (`Entry::ranges`, few, checked one by one): a read that
//! touches one conflicts as a read of a written key would. A *pending* stamp (accepted,
//! not yet known to be applied) is newer than every read version, because it will be
//! ordered after all of them.
//!
//! Entries leave the log once no live transaction read below them (they can conflict
//! with nobody), or after `max_age`, or when the log holds more than `max_keys`. What
//! leaves early is not forgotten: its keys are folded into the *history*, a map from
//! the first bytes of a key to the newest version that wrote under them (ranges of
//! staged writes go into a short list). The history holds at most 65,536 prefixes; past
//! that, every prefix is shortened (by a quarter) and entries merged. A read conflicts
//! with the history if a prefix covering it has a newer version — coarser than the
//! log, so an old transaction may fail where an exact check would not, never the other
//! way round — and so a transaction of any duration can still commit (a bulk load
//! running for an hour beside other writers). History entries go once no live
//! transaction read below them. The floor is only where the window started (the
//! applied version at start-up: nothing older was recorded).

use crate::{CommitRequest, Version};
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

/// Limits of the conflict window.
#[derive(Debug, Clone)]
pub struct ConflictWindowConfig {
    /// How long a commit's writes are remembered key by key; after it they are
    /// remembered by key prefix (see the module docs).
    pub max_age: Duration,
    /// Most keys remembered one by one; past it the oldest entries leave early (into
    /// the history).
    pub max_keys: usize,
}

impl Default for ConflictWindowConfig {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(60), max_keys: 4_000_000 }
    }
}

/// Identifies an accepted commit until its version is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Committed(Version),
    Pending(Ticket),
}

#[derive(Debug)]
struct Entry {
    ticket: Ticket,
    version: Option<Version>,
    accepted_at: Instant,
    keys: Vec<Vec<u8>>,
    /// Ranges covering a staged transaction's staged writes.
    ranges: Vec<KeyRange>,
}

/// See the module docs.
#[derive(Debug)]
pub struct ConflictWindow {
    config: ConflictWindowConfig,
    keys: BTreeMap<Vec<u8>, Stamp>,
    log: VecDeque<Entry>,
    floor: Version,
    next_ticket: u64,
    key_count: usize,
    /// Entries in `log` with write ranges.
    ranged_entries: usize,
    history: History,
}

/// Most prefixes the history holds before it shortens them.
const MAX_HISTORY_CELLS: usize = 1 << 16;
/// Prefix length the history starts with: most keys are shorter, and stay exact.
const HISTORY_PREFIX: usize = 32;
/// Most ranges of staged writes the history keeps apart; past it they are merged.
const MAX_HISTORY_RANGES: usize = 64;

/// Writes that left the log early, by key prefix (see the module docs).
#[derive(Debug)]
struct History {
    prefix: usize,
    /// Prefix (a key cut to `prefix` bytes, or a shorter whole key) → newest version
    /// that wrote a key starting with it.
    cells: BTreeMap<Vec<u8>, Version>,
    ranges: Vec<(KeyRange, Version)>,
    /// The newest version in `cells` and `ranges` (0: empty).
    newest: Version,
}

impl Default for History {
    fn default() -> Self {
        Self { prefix: HISTORY_PREFIX, cells: BTreeMap::new(), ranges: Vec::new(), newest: 0 }
    }
}

impl History {
    fn cell<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        &key[..key.len().min(self.prefix)]
    }

    fn add_key(&mut self, key: &[u8], version: Version) {
        self.newest = self.newest.max(version);
        let cell = self.cell(key);
        match self.cells.get_mut(cell) {
            Some(v) => *v = (*v).max(version),
            None => {
                self.cells.insert(cell.to_vec(), version);
            }
        }
    }

    fn add_range(&mut self, range: KeyRange, version: Version) {
        self.newest = self.newest.max(version);
        self.ranges.push((range, version));
        if self.ranges.len() > MAX_HISTORY_RANGES {
            // One range over all of them, at the newest version: rare (staged
            // transactions), and still a superset.
            let start =
                self.ranges.iter().map(|(r, _)| r.start.clone()).min_by(|a, b| start_rank(a).cmp(&start_rank(b)));
            let end = self.ranges.iter().map(|(r, _)| r.end.clone()).max_by(|a, b| end_rank(a).cmp(&end_rank(b)));
            let newest = self.ranges.iter().map(|(_, v)| *v).max().unwrap_or(version);
            let merged = KeyRange { start: start.unwrap_or(Bound::Unbounded), end: end.unwrap_or(Bound::Unbounded) };
            self.ranges = vec![(merged, newest)];
        }
    }

    /// Forgets what no live or future transaction can conflict with, then shortens the
    /// prefixes while there are too many.
    fn trim(&mut self, needed_above: Version) {
        if self.newest <= needed_above {
            if self.newest > 0 {
                *self = History { prefix: self.prefix, ..History::default() };
            }
            return;
        }
        if self.cells.len() <= MAX_HISTORY_CELLS {
            return;
        }
        self.cells.retain(|_, v| *v > needed_above);
        self.ranges.retain(|(_, v)| *v > needed_above);
        while self.cells.len() > MAX_HISTORY_CELLS / 2 && self.prefix > 1 {
            self.prefix = (self.prefix * 3 / 4).max(1);
            let old = std::mem::take(&mut self.cells);
            for (k, v) in old {
                let cell = self.cell(&k).to_vec();
                let e = self.cells.entry(cell).or_insert(v);
                *e = (*e).max(v);
            }
        }
    }

    /// The newest version under which the history saw a write that a read of `key`
    /// could have seen.
    fn key_version(&self, key: &[u8]) -> Option<Version> {
        let cell = self.cells.get(self.cell(key)).copied();
        let range = self.ranges.iter().filter(|(r, _)| r.contains(key)).map(|(_, v)| *v).max();
        cell.max(range)
    }

    /// The same for a scanned range: the newest version of a prefix whose keys may
    /// lie in it.
    fn range_version(&self, range: &KeyRange) -> Option<Version> {
        let from: Bound<Vec<u8>> = match &range.start {
            Bound::Included(k) | Bound::Excluded(k) => Bound::Included(self.cell(k).to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let cells = self
            .cells
            .range((from, Bound::Unbounded))
            .take_while(|(c, _)| match &range.end {
                Bound::Included(e) => c.as_slice() <= e.as_slice(),
                Bound::Excluded(e) => c.as_slice() < e.as_slice(),
                Bound::Unbounded => true,
            })
            .map(|(_, v)| *v)
            .max();
        let ranges = self.ranges.iter().filter(|(r, _)| overlap(r, range)).map(|(_, v)| *v).max();
        cells.max(ranges)
    }
}

fn start_rank(b: &Bound<Vec<u8>>) -> (u8, Vec<u8>, u8) {
    match b {
        Bound::Unbounded => (0, Vec::new(), 0),
        Bound::Included(k) => (1, k.clone(), 0),
        Bound::Excluded(k) => (1, k.clone(), 1),
    }
}

fn end_rank(b: &Bound<Vec<u8>>) -> (u8, Vec<u8>, u8) {
    match b {
        Bound::Unbounded => (1, Vec::new(), 0),
        Bound::Included(k) => (0, k.clone(), 1),
        Bound::Excluded(k) => (0, k.clone(), 0),
    }
}

impl ConflictWindow {
    /// An empty window whose floor is `floor` (the applied version at start-up: nothing
    /// older can be checked, since the window starts empty).
    pub fn new(config: ConflictWindowConfig, floor: Version) -> Self {
        Self {
            config,
            keys: BTreeMap::new(),
            log: VecDeque::new(),
            floor,
            next_ticket: 0,
            key_count: 0,
            ranged_entries: 0,
            history: History::default(),
        }
    }

    /// The oldest read version that can still be checked.
    pub fn floor(&self) -> Version {
        self.floor
    }

    /// Checks `req` against the window; on success remembers its writes as pending and
    /// returns a ticket to resolve once the commit's fate is known.
    ///
    /// `oldest_reader` is the oldest read version of any live transaction (None: none):
    /// writes at or below it can conflict with nobody and are forgotten at once.
    pub fn check_and_accept(
        &mut self,
        req: &CommitRequest,
        now: Instant,
        applied: Version,
        oldest_reader: Option<Version>,
    ) -> Result<Ticket> {
        self.prune(now, applied, oldest_reader);
        if req.read_version < self.floor {
            return Err(Error::Serialization(format!(
                "transaction read at version {}, before this node started sequencing commits (version {}) — retry it",
                req.read_version, self.floor
            )));
        }
        if self.history.newest > req.read_version {
            let older = |v: Option<Version>| v.is_some_and(|v| v > req.read_version);
            let hit = req.read_keys.iter().find(|k| older(self.history.key_version(k))).cloned().or_else(|| {
                req.read_ranges.iter().find(|r| older(self.history.range_version(r))).map(|r| match &r.start {
                    Bound::Included(k) | Bound::Excluded(k) => k.clone(),
                    Bound::Unbounded => Vec::new(),
                })
            });
            if let Some(key) = hit {
                return Err(Error::Serialization(format!(
                    "could not serialize access: a key near {} was written after this transaction read it at version {} \
                     (the transaction ran longer than the exact conflict window)",
                    display_key(&key),
                    req.read_version
                )));
            }
        }
        let conflict = |key: &[u8], stamp: &Stamp| -> Result<()> {
            let newer = match stamp {
                Stamp::Pending(_) => true,
                Stamp::Committed(v) => *v > req.read_version,
            };
            if newer {
                let at = match stamp {
                    Stamp::Pending(_) => "a concurrent commit in flight".to_string(),
                    Stamp::Committed(v) => format!("version {v}"),
                };
                return Err(Error::Serialization(format!(
                    "could not serialize access: key {} was written at {at} after this transaction read it at version {}",
                    display_key(key),
                    req.read_version
                )));
            }
            Ok(())
        };
        for key in &req.read_keys {
            if let Some(stamp) = self.keys.get(key) {
                conflict(key, stamp)?;
            }
        }
        for range in &req.read_ranges {
            if range.is_empty() {
                continue;
            }
            let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (bound_ref(&range.start), bound_ref(&range.end));
            for (key, stamp) in self.keys.range::<[u8], _>(bounds) {
                conflict(key, stamp)?;
            }
        }
        // Entries with ranges are rare (staged transactions): skip the walk without any.
        let ranged = if self.ranged_entries == 0 { None } else { Some(self.log.iter()) };
        for e in ranged.into_iter().flatten().filter(|e| !e.ranges.is_empty()) {
            let stamp = match e.version {
                Some(v) => Stamp::Committed(v),
                None => Stamp::Pending(e.ticket),
            };
            for w in &e.ranges {
                let hit = req.read_keys.iter().find(|k| w.contains(k)).cloned().or_else(|| {
                    req.read_ranges.iter().find(|r| overlap(r, w)).map(|r| match &r.start {
                        Bound::Included(k) | Bound::Excluded(k) => k.clone(),
                        Bound::Unbounded => Vec::new(),
                    })
                });
                if let Some(key) = hit {
                    conflict(&key, &stamp)?;
                }
            }
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let keys: Vec<Vec<u8>> = req.writes.iter().map(|m| m.key.clone()).collect();
        for k in &keys {
            self.keys.insert(k.clone(), Stamp::Pending(ticket));
        }
        self.key_count += keys.len();
        let ranges: Vec<KeyRange> = req.write_ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        self.ranged_entries += usize::from(!ranges.is_empty());
        self.log.push_back(Entry { ticket, version: None, accepted_at: now, keys, ranges });
        Ok(ticket)
    }

    /// Records the version an accepted commit got, or `None` if its fate is unknown (it
    /// then stays pending, i.e. conflicts with everything, until it ages out).
    pub fn resolve(&mut self, ticket: Ticket, version: Option<Version>) {
        let Some(version) = version else { return };
        // Tickets are issued in order and entries leave only from the front, so the
        // entry's position is its distance from the front ticket.
        let Some(front) = self.log.front().map(|e| e.ticket.0) else { return };
        let Some(pos) = ticket.0.checked_sub(front) else { return };
        let Some(entry) = usize::try_from(pos).ok().and_then(|p| self.log.get_mut(p)) else { return };
        debug_assert_eq!(entry.ticket, ticket);
        entry.version = Some(version);
        for k in &entry.keys {
            if let Some(stamp) = self.keys.get_mut(k) {
                if *stamp == Stamp::Pending(ticket) {
                    *stamp = Stamp::Committed(version);
                }
            }
        }
    }

    /// Drops entries no live transaction can conflict with (version at or below the
    /// oldest live read version), and moves entries older than `max_age` (or beyond
    /// `max_keys`) into the history.
    pub fn prune(&mut self, now: Instant, applied: Version, oldest_reader: Option<Version>) {
        // Every future transaction reads at or above `applied`; every live one at or
        // above `oldest_reader`. Only writes newer than that can still conflict.
        let needed_above = oldest_reader.unwrap_or(applied).min(applied);
        while let Some(front) = self.log.front() {
            let expired = now.duration_since(front.accepted_at) > self.config.max_age;
            let overflow = self.key_count > self.config.max_keys;
            let unneeded = front.version.is_some_and(|v| v <= needed_above);
            // A pending entry is kept until it expires: its version is still unknown.
            if !(unneeded || expired || (overflow && front.version.is_some())) {
                break;
            }
            let Some(entry) = self.log.pop_front() else { break };
            // Unknown fate: it cannot be newer than what is applied by the time it expires
            // unless it never applies at all, so `applied` is a safe upper bound.
            let version = entry.version.unwrap_or(applied);
            // Still needed by some transaction: remembered coarsely from now on.
            let remember = version > needed_above;
            self.key_count -= entry.keys.len();
            for k in entry.keys {
                let remove = match self.keys.get(&k) {
                    Some(Stamp::Committed(v)) => *v <= version,
                    Some(Stamp::Pending(t)) => *t == entry.ticket,
                    None => false,
                };
                if remove {
                    self.keys.remove(&k);
                }
                if remember {
                    self.history.add_key(&k, version);
                }
            }
            self.ranged_entries -= usize::from(!entry.ranges.is_empty());
            if remember {
                for r in entry.ranges {
                    self.history.add_range(r, version);
                }
            }
        }
        self.history.trim(needed_above);
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Shows a key as text when printable, hex otherwise (for error messages).
pub(crate) fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!("0x{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

fn bound_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether two key ranges share a key.
fn overlap(a: &KeyRange, b: &KeyRange) -> bool {
    // a starts before b ends, and b starts before a ends.
    let starts_before_end = |s: &Bound<Vec<u8>>, e: &Bound<Vec<u8>>| match (s, e) {
        (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
        (Bound::Included(s), Bound::Included(e)) => s <= e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s < e
        }
    };
    !a.is_empty() && !b.is_empty() && starts_before_end(&a.start, &b.end) && starts_before_end(&b.start, &a.end)
}
