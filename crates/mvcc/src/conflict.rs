//! The conflict window: which keys were written by commits the sequencer has accepted
//! recently, and at which version.
//!
//! ```text
//!   keys: BTreeMap<key, Stamp>        Stamp = Committed(version) | Pending(ticket)
//!   log:  VecDeque<(ticket, version?, accepted_at, keys)>   in acceptance order
//!   floor: Version                    requests reading below it cannot be checked
//! ```
//!
//! A commit request conflicts if any key in one of its read ranges has a stamp newer
//! than its read version. A staged transaction's writes are remembered as the key
//! ranges that cover them (`Entry::ranges`, few, checked one by one): a read that
//! touches one conflicts as a read of a written key would. A *pending* stamp (accepted, not yet known to be applied) is
//! newer than every read version, because it will be ordered after all of them.
//! Entries leave the window after `max_age` (or when it exceeds `max_keys`); the floor
//! rises to the newest version that left, and requests that read below the floor are
//! refused with a retryable error, because their conflicts can no longer be seen.

use crate::{CommitRequest, Version};
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

/// Limits of the conflict window.
#[derive(Debug, Clone)]
pub struct ConflictWindowConfig {
    /// How long a commit's writes are remembered: the longest a read-write transaction
    /// may run and still commit.
    pub max_age: Duration,
    /// Most keys remembered; past it the oldest entries leave early.
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
}

impl ConflictWindow {
    /// An empty window whose floor is `floor` (the applied version at start-up: nothing
    /// older can be checked, since the window starts empty).
    pub fn new(config: ConflictWindowConfig, floor: Version) -> Self {
        Self { config, keys: BTreeMap::new(), log: VecDeque::new(), floor, next_ticket: 0, key_count: 0 }
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
                "transaction read at version {} which is older than the conflict window (floor {}); \
                 it ran longer than {}s or the window overflowed — retry it",
                req.read_version,
                self.floor,
                self.config.max_age.as_secs()
            )));
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
        for e in self.log.iter().filter(|e| !e.ranges.is_empty()) {
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
        let ranges = req.write_ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
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
    /// oldest live read version), and entries older than `max_age` (or beyond
    /// `max_keys`), raising the floor.
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
            self.floor = self.floor.max(version);
            self.key_count -= entry.keys.len();
            for k in entry.keys {
                let remove = match self.keys.get(&k) {
                    Some(Stamp::Committed(v)) => *v <= self.floor,
                    Some(Stamp::Pending(t)) => *t == entry.ticket,
                    None => false,
                };
                if remove {
                    self.keys.remove(&k);
                }
            }
        }
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
