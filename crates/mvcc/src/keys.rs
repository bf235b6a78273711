//! The mvcc key layout inside the engine's single ordered keyspace.
//!
//! ```text
//!   0x00 ++ str(name)                         → metadata record (applied state, GC watermark,
//!                                               and opaque records of the layer above)
//!   0x01 ++ bytes(user_key) ++ u64(!version)  → [0x00] tombstone | [0x01] ++ value
//!   0x02 ++ u64(version)                      → u64 LE commit time (µs since Unix epoch)
//!   0x03 ++ u64(time) ++ u64(version)         → (empty)   time → version index
//! ```
//!
//! Versions are stored inverted (`!version`) so that a forward scan meets each user key's
//! newest version first: a point read at version V is one seek to `(key, !V)`.
//!
//!
//! ```text
//!   0x04 ++ bytes(user_key)                   → u64 LE: the key's newest version (its head)
//! ```
//! A point read first looks the head up by exact key — which the engine answers through
//! bloom filters, touching one table, where a seek must look into every table — and then
//! the version it names, also by exact key; only a reader older than the key's newest
//! version falls back to the seek. Heads use the storage layer's side tag
//! ([`amberdb_storage::SIDE_TAG`]), so the engine keeps them in their own tree and scans
//! of the data never walk past them. Invariant: a key has a head if and only if it has a
//! data entry, and the head names its newest one — except for keys named by a write
//! record (below: their heads are held in memory, `heads.rs`, and written after the
//! version is published) and inside the *headless* ranges listed in the
//! `mvcc.headless` record (a bulk load writes no heads, so a restore does not pay for
//! them): there a missing head means "seek", until a background pass has added the
//! heads and removed the range.
//!
//! ```text
//!   0x00 ++ str("mvcc.speculated") ++ u64(version) → varint n, n × bytes(user_key)
//! ```
//! A *write record*: the keys `version` wrote, whose heads are not in the engine yet.
//! Written with the version's data (by `Mvcc::speculate` ahead of the commit, or by
//! `Mvcc::apply`), deleted in the batch that writes its heads. Above the applied version
//! it marks a speculation to undo if `version` never commits; at or below it, heads to
//! write at open if the store stopped first. (The name predates the second use.)
//! Invariant: data entries above the applied version exist only for versions with a
//! record, and a key's newest version is either named by its head or by a record —
//! except while a staged commit is applied in pieces (`Mvcc::apply`): its entries and
//! heads are written before its version is published, and a crash in between is
//! finished by applying the same committed entry again, so no record is needed.
//!
//! ```text
//!   0x05 ++ u64(txn) ++ bytes(user_key)       → [0x00] tombstone | [0x01] ++ value
//! ```
//! The *staging area*: writes of transaction `txn` that it moved out of memory before
//! committing (a stage entry of the commit log). Unversioned and read by nobody but that
//! transaction; its staged commit moves them to data entries at its version, its abort
//! deletes them.

use amberdb_encoding::keycode::{prefix_end, KeyDecoder, KeyEncoder};
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use std::ops::Bound;

pub(crate) const TAG_META: u8 = 0x00;
pub(crate) const TAG_DATA: u8 = 0x01;
pub(crate) const TAG_VERSION_TIME: u8 = 0x02;
pub(crate) const TAG_TIME_VERSION: u8 = 0x03;
pub(crate) const TAG_STAGED: u8 = 0x05;

/// Metadata record holding the applied version and its commit time.
pub(crate) const META_APPLIED: &str = "mvcc.applied";
/// Metadata record holding the GC watermark: no read below it is allowed.
pub(crate) const META_GC_WATERMARK: &str = "mvcc.gc_watermark";
/// Metadata record present once heads are maintained: every key has its head except
/// in the ranges listed under [`META_HEADLESS`].
pub(crate) const META_HEADS: &str = "mvcc.heads";
/// Metadata record listing user-key ranges whose keys may lack a head (bulk loads, and
/// a whole store made before heads existed) until a background pass adds them.
pub(crate) const META_HEADLESS: &str = "mvcc.headless";

/// Name under which a write record lives (followed by its version, see
/// [`speculated`]).
const SPECULATED: &str = "mvcc.speculated";

/// The write record of `version` (see the module docs): the user keys it wrote, while
/// their heads are not in the engine. It sorts among the metadata records, by version.
pub(crate) fn speculated(version: u64) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_META).str(SPECULATED).u64(version).finish()
}

/// The range holding every write record.
pub(crate) fn speculated_range() -> KeyRange {
    let prefix = KeyEncoder::with_tag(TAG_META).str(SPECULATED).finish();
    match prefix_end(&prefix) {
        Some(end) => KeyRange::between(prefix, end),
        None => KeyRange { start: Bound::Included(prefix), end: Bound::Unbounded },
    }
}

/// The version a write record is for.
pub(crate) fn decode_speculated(key: &[u8]) -> Result<u64> {
    let mut d = KeyDecoder::new(key);
    if d.tag()? != TAG_META || d.string()? != SPECULATED {
        return Err(Error::InvalidData(format!("not an mvcc write record: {key:x?}")));
    }
    let v = d.u64()?;
    d.finish()?;
    Ok(v)
}

/// Tag of the per-key head entries (see the module docs): the storage side tag.
pub(crate) const TAG_HEAD: u8 = amberdb_storage::SIDE_TAG;

/// The head entry of a user key.
pub(crate) fn head(user_key: &[u8]) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_HEAD).bytes(user_key).finish()
}

pub(crate) fn meta(name: &str) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_META).str(name).finish()
}

pub(crate) fn data(user_key: &[u8], version: u64) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_DATA).bytes(user_key).u64(!version).finish()
}

/// Decodes a data key into (user key, version).
pub(crate) fn decode_data(key: &[u8]) -> Result<(Vec<u8>, u64)> {
    let mut d = KeyDecoder::new(key);
    if d.tag()? != TAG_DATA {
        return Err(Error::InvalidData(format!("not an mvcc data key: {key:x?}")));
    }
    let user = d.bytes()?;
    let version = !d.u64()?;
    d.finish()?;
    Ok((user, version))
}

/// [`decode_data`] into a caller's buffer: appends the user key, returns the version.
pub(crate) fn decode_data_into(key: &[u8], user: &mut Vec<u8>) -> Result<u64> {
    let mut d = KeyDecoder::new(key);
    if d.tag()? != TAG_DATA {
        return Err(Error::InvalidData(format!("not an mvcc data key: {key:x?}")));
    }
    d.bytes_into(user)?;
    let version = !d.u64()?;
    d.finish()?;
    Ok(version)
}

pub(crate) fn version_time(version: u64) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_VERSION_TIME).u64(version).finish()
}

pub(crate) fn time_version(time: u64, version: u64) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_TIME_VERSION).u64(time).u64(version).finish()
}

pub(crate) fn decode_time_version(key: &[u8]) -> Result<(u64, u64)> {
    let mut d = KeyDecoder::new(key);
    if d.tag()? != TAG_TIME_VERSION {
        return Err(Error::InvalidData(format!("not a time index key: {key:x?}")));
    }
    let t = d.u64()?;
    let v = d.u64()?;
    d.finish()?;
    Ok((t, v))
}

pub(crate) fn decode_version_time_key(key: &[u8]) -> Result<u64> {
    let mut d = KeyDecoder::new(key);
    if d.tag()? != TAG_VERSION_TIME {
        return Err(Error::InvalidData(format!("not a version index key: {key:x?}")));
    }
    let v = d.u64()?;
    d.finish()?;
    Ok(v)
}

pub(crate) fn encode_value(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(1);
            out.extend_from_slice(v);
            out
        }
    }
}

pub(crate) fn decode_value(raw: &[u8]) -> Result<Option<Vec<u8>>> {
    match raw.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, v)) => Ok(Some(v.to_vec())),
        _ => Err(Error::InvalidData(format!("invalid mvcc value tag in {:x?}", &raw[..raw.len().min(8)]))),
    }
}

/// [`decode_value`] reusing the stored value's buffer (no copy of the bytes).
pub(crate) fn decode_value_owned(mut raw: Vec<u8>) -> Result<Option<Vec<u8>>> {
    match raw.first() {
        Some(0) if raw.len() == 1 => Ok(None),
        Some(1) => {
            raw.remove(0);
            Ok(Some(raw))
        }
        _ => Err(Error::InvalidData(format!("invalid mvcc value tag in {:x?}", &raw[..raw.len().min(8)]))),
    }
}

/// Maps a range of user keys to the range of data keys holding all their versions.
pub(crate) fn data_range(range: &KeyRange) -> KeyRange {
    let space = KeyRange { start: Bound::Included(vec![TAG_DATA]), end: Bound::Excluded(vec![TAG_DATA + 1]) };
    map_user_range(range, |k| KeyEncoder::with_tag(TAG_DATA).bytes(k).finish(), space)
}

/// Maps a range of user keys to the engine keys `prefix(key) ++ …` inside `space`
/// (the engine range holding every such key): a key's entries all start with
/// `prefix(key)`, so an excluded start skips past that prefix, an included end reaches
/// its end, and an unbounded side is the side of `space`.
fn map_user_range(range: &KeyRange, prefix: impl Fn(&[u8]) -> Vec<u8>, space: KeyRange) -> KeyRange {
    let start = match &range.start {
        Bound::Included(k) => Bound::Included(prefix(k)),
        Bound::Excluded(k) => match prefix_end(&prefix(k)) {
            Some(e) => Bound::Included(e),
            None => space.end.clone(),
        },
        Bound::Unbounded => space.start,
    };
    let end = match &range.end {
        Bound::Included(k) => match prefix_end(&prefix(k)) {
            Some(e) => Bound::Excluded(e),
            None => space.end.clone(),
        },
        Bound::Excluded(k) => Bound::Excluded(prefix(k)),
        Bound::Unbounded => space.end,
    };
    KeyRange { start, end }
}

/// A staged write of transaction `txn` (see the module docs).
pub(crate) fn staged(txn: u64, user_key: &[u8]) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_STAGED).u64(txn).bytes(user_key).finish()
}

/// Every staged write of transaction `txn`.
pub(crate) fn staged_txn_range(txn: u64) -> KeyRange {
    let prefix = KeyEncoder::with_tag(TAG_STAGED).u64(txn).finish();
    match prefix_end(&prefix) {
        Some(end) => KeyRange::between(prefix, end),
        None => KeyRange { start: Bound::Included(prefix), end: Bound::Excluded(vec![TAG_STAGED + 1]) },
    }
}

/// The whole staging area.
pub(crate) fn staged_all() -> KeyRange {
    KeyRange::between(vec![TAG_STAGED], vec![TAG_STAGED + 1])
}

/// Maps a range of user keys to the staged writes of `txn` within it.
pub(crate) fn staged_range(txn: u64, range: &KeyRange) -> KeyRange {
    map_user_range(range, |k| KeyEncoder::with_tag(TAG_STAGED).u64(txn).bytes(k).finish(), staged_txn_range(txn))
}

/// Decodes a staging key into (transaction, user key).
pub(crate) fn decode_staged(key: &[u8]) -> Result<(u64, Vec<u8>)> {
    let mut d = KeyDecoder::new(key);
    if d.tag()? != TAG_STAGED {
        return Err(Error::InvalidData(format!("not an mvcc staging key: {key:x?}")));
    }
    let txn = d.u64()?;
    let user = d.bytes()?;
    d.finish()?;
    Ok((txn, user))
}
