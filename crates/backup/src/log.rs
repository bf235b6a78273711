//! Mutation logs: every commit after a snapshot, shipped by a continuous backup, so a
//! destination can be restored to any commit in its restorable range.
//!
//! ```text
//!   <destination>/logs/<first:020>-<last:020>.aml    the mutations of versions first..=last
//!                                                    (range-file format: entries sorted by
//!                                                    key, then version; block index by key)
//!   <destination>/logs/<first:020>-<last:020>.json   sealed JSON, written LAST: versions,
//!                                                    every commit's time, the data file's
//!                                                    size and blake3
//! ```
//!
//! A segment exists only once its `.json` does; consecutive segments tile the versions
//! without gaps. A *restorable range* starts at a snapshot `S` and runs to the last
//! version `E` of the unbroken run of segments after it: every state `S ≤ v ≤ E` is
//! restorable as the snapshot plus the log mutations in `(S, v]`. Sorting a segment's
//! entries by key lets a table restore read only the blocks whose key range touches the
//! table, and lets replay run in parallel by key range (blocks of one segment hold
//! disjoint keys; segments are applied in version order).

use crate::crypto::Cipher;
use crate::dest::Destination;
use crate::format::{
    decode_block_frame, entries, index_location, parse_index, read_index, seal, BlockRef, RangeFileWriter, RawBlock,
    BLOCK_TARGET, TRAILER_BYTES,
};
use crate::manifest::{open_json, seal_json, FORMAT_VERSION};
use amberdb_consensus::LogRecord;
use amberdb_error::{Error, Result};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

/// Directory of the mutation logs inside a destination.
pub const LOG_DIR: &str = "logs";
const SEGMENT_HEADER: &str = "AMBERDB-LOGSEG 1 blake3=";

/// The sealed description of one log segment (its `.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogSegment {
    /// Format version.
    pub format_version: u32,
    /// First version covered.
    pub first_version: u64,
    /// Last version covered (every version in between is covered, commits or not).
    pub last_version: u64,
    /// Commit time of the state just before `first_version` (µs since the epoch).
    pub prev_time_micros: u64,
    /// `[version, commit time µs]` of every commit in the segment, ascending.
    pub commits: Vec<[u64; 2]>,
    /// The data file, absent when no commit in the range wrote anything.
    pub data: Option<LogData>,
    /// A staged commit's writes (the segment holds that one version): one data file
    /// per stage and one for the writes after the last stage, applied in this order
    /// after `data` — a later file's write of a key wins. Each is a range file like
    /// `data`, so no file holds more than a stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<LogData>,
}

/// Format version of a segment with parts: a build that predates parts would ignore
/// them (and restore without the staged commit), so it must refuse the segment.
pub const PARTS_FORMAT_VERSION: u32 = 2;

/// The data file of a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogData {
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the whole file (hex).
    pub blake3: String,
    /// Blocks.
    pub blocks: u32,
    /// Mutations (entries).
    pub entries: u64,
}

impl LogSegment {
    /// Object name stem of the segment covering `first..=last`.
    pub fn stem(first: u64, last: u64) -> String {
        format!("{LOG_DIR}/{first:020}-{last:020}")
    }

    /// The `.json` object.
    pub fn meta_path(&self) -> String {
        format!("{}.json", Self::stem(self.first_version, self.last_version))
    }

    /// The `.aml` object.
    pub fn data_path(&self) -> String {
        format!("{}.aml", Self::stem(self.first_version, self.last_version))
    }

    /// The object of part `i` (see [`LogSegment::parts`]).
    pub fn part_path(&self, i: usize) -> String {
        format!("{}.part{i}.aml", Self::stem(self.first_version, self.last_version))
    }

    /// Every data file, in the order their writes apply: object name and description.
    pub fn files(&self) -> Vec<(String, &LogData)> {
        let main = self.data.iter().map(|d| (self.data_path(), d));
        main.chain(self.parts.iter().enumerate().map(|(i, d)| (self.part_path(i), d))).collect()
    }

    /// Commit time of the state at the segment's last version.
    pub fn last_time(&self) -> u64 {
        self.commits.last().map_or(self.prev_time_micros, |c| c[1])
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(self).map_err(|e| Error::Internal(format!("encode log segment: {e}")))?;
        Ok(seal_json(SEGMENT_HEADER, &body))
    }

    /// Parses and checks a segment description; `name` names the object in errors.
    pub fn decode(raw: &[u8], name: &str) -> Result<Self> {
        let what = format!("log segment {name}");
        let body = open_json(SEGMENT_HEADER, raw, &what)?;
        let s: LogSegment = serde_json::from_slice(body).map_err(|e| Error::InvalidData(format!("{what}: {e}")))?;
        let bad = |why: &str| Err(Error::InvalidData(format!("{what}: {why}")));
        if s.format_version > FORMAT_VERSION.max(PARTS_FORMAT_VERSION) {
            return bad("format version is newer than this build understands");
        }
        if !s.parts.is_empty() && (s.format_version < PARTS_FORMAT_VERSION || s.first_version != s.last_version) {
            return bad("data parts belong to a segment of format 2 holding one staged commit");
        }
        if s.first_version > s.last_version {
            return bad("first version after last");
        }
        let (mut prev_version, mut prev_time) = (None, s.prev_time_micros);
        for &[v, t] in &s.commits {
            if v < s.first_version || v > s.last_version || prev_version.is_some_and(|p| v <= p) {
                return bad("commit versions out of order or outside the segment");
            }
            if t <= prev_time {
                return bad("commit times do not increase");
            }
            (prev_version, prev_time) = (Some(v), t);
        }
        Ok(s)
    }
}

/// Parses `logs/<first>-<last>.json` into its version range.
fn parse_meta_name(path: &str) -> Option<(u64, u64)> {
    let stem = path.strip_prefix(LOG_DIR)?.strip_prefix('/')?.strip_suffix(".json")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The log key of a mutation: the user key followed by the version (big-endian), so
/// entries sort by key, then version, and the version is the last 8 bytes.
fn log_key(key: &[u8], version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 8);
    k.extend_from_slice(key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Builds a segment from consecutive log records: its description and, if anything was
/// written, its data file. `prev_time` is the commit time of the state before the first
/// record. CPU-heavy: run it on a worker.
pub fn encode_segment(
    records: &[LogRecord],
    prev_time: u64,
    level: i32,
    cipher: Option<&Cipher>,
) -> Result<(LogSegment, Option<Vec<u8>>)> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(Error::Internal("a log segment needs at least one record".into()));
    };
    let mut commits = Vec::new();
    let mut time = prev_time;
    let mut muts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for r in records {
        let Some(b) = &r.batch else { continue };
        // The same rule the state machine applies (Mvcc::apply), so times match exactly.
        time = b.commit_time.max(time + 1);
        commits.push([r.version, time]);
        muts.extend(b.mutations.iter().map(|m| log_entry(m, r.version)));
    }
    // A key written twice in one batch: the later write wins.
    sort_last_wins(&mut muts);
    if records.iter().any(|r| r.staged.is_some()) {
        return Err(Error::Internal("a staged commit is shipped in a segment of its own (staged_segment)".into()));
    }
    let mut seg = LogSegment {
        format_version: FORMAT_VERSION,
        first_version: first.version,
        last_version: last.version,
        prev_time_micros: prev_time,
        commits,
        data: None,
        parts: Vec::new(),
    };
    if muts.is_empty() {
        return Ok((seg, None));
    }
    let (data, bytes) = range_file(&muts, level, cipher)?;
    seg.data = Some(data);
    Ok((seg, Some(bytes)))
}

/// The description of a segment holding only the staged commit at `version` (its
/// parts are added as [`encode_part`] makes them). `prev_time` as for
/// [`encode_segment`]; `commit_time` is the commit's proposed time.
pub fn staged_segment(version: u64, prev_time: u64, commit_time: u64) -> LogSegment {
    LogSegment {
        format_version: PARTS_FORMAT_VERSION,
        first_version: version,
        last_version: version,
        prev_time_micros: prev_time,
        // The same rule the state machine applies (Mvcc::apply).
        commits: vec![[version, commit_time.max(prev_time + 1)]],
        data: None,
        parts: Vec::new(),
    }
}

/// Encodes one part of a staged commit at `version`: `mutations` (one stage's, or the
/// writes after the last stage) as a range file. CPU-heavy: run it on a worker.
pub fn encode_part(
    version: u64,
    mutations: &[amberdb_mvcc::Mutation],
    level: i32,
    cipher: Option<&Cipher>,
) -> Result<(LogData, Vec<u8>)> {
    let mut muts: Vec<(Vec<u8>, Vec<u8>)> = mutations.iter().map(|m| log_entry(m, version)).collect();
    // Stages are sorted and unique already; a part must be, whatever it was given.
    sort_last_wins(&mut muts);
    range_file(&muts, level, cipher)
}

/// A mutation as a log entry: (user key ‖ version, `0` delete | `1` ‖ value).
fn log_entry(m: &amberdb_mvcc::Mutation, version: u64) -> (Vec<u8>, Vec<u8>) {
    let mut v = Vec::with_capacity(1 + m.value.as_ref().map_or(0, Vec::len));
    match &m.value {
        Some(x) => {
            v.push(1);
            v.extend_from_slice(x);
        }
        None => v.push(0),
    }
    (log_key(&m.key, version), v)
}

/// Sorts log entries by key, keeping only the last of equal keys (a stable sort keeps
/// their order, and the later write wins).
fn sort_last_wins(muts: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    muts.sort_by(|a, b| a.0.cmp(&b.0));
    muts.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            std::mem::swap(later, earlier);
            true
        } else {
            false
        }
    });
}

/// Writes sorted, unique log entries as a range file and describes it.
fn range_file(muts: &[(Vec<u8>, Vec<u8>)], level: i32, cipher: Option<&Cipher>) -> Result<(LogData, Vec<u8>)> {
    let mut file = RangeFileWriter::default();
    let mut block = RawBlock::default();
    let mut prev_user: &[u8] = &[];
    for (k, v) in muts {
        let user = &k[..k.len() - 8];
        // Blocks are cut only between different user keys, so every key's history lies
        // in one block and blocks can be replayed in parallel.
        if block.len() >= BLOCK_TARGET && user != prev_user {
            file.add(seal(std::mem::take(&mut block), level, cipher)?);
        }
        block.push(k, v);
        prev_user = user;
    }
    if !block.is_empty() {
        file.add(seal(block, level, cipher)?);
    }
    let (blocks, n) = (file.blocks(), file.entries());
    let bytes = file.finish(cipher)?;
    let data =
        LogData { size: bytes.len() as u64, blake3: blake3::hash(&bytes).to_hex().to_string(), blocks, entries: n };
    Ok((data, bytes))
}

/// Writes a segment: data first, then its description (create-only), so a segment is
/// never claimed before its data is complete.
pub async fn write_segment(dest: &Destination, seg: &LogSegment, data: Option<Vec<u8>>) -> Result<u64> {
    let mut written = 0u64;
    if let Some(d) = data {
        written += d.len() as u64;
        dest.put(&seg.data_path(), Bytes::from(d)).await?;
    }
    let meta = seg.encode()?;
    written += meta.len() as u64;
    dest.put_new(&seg.meta_path(), Bytes::from(meta)).await?;
    Ok(written)
}

/// Writes part `i` of a staged commit's segment (before the segment's description,
/// which [`write_segment`] writes last). Returns the bytes written.
pub async fn write_part(dest: &Destination, seg: &LogSegment, i: usize, data: Vec<u8>) -> Result<u64> {
    let n = data.len() as u64;
    dest.put(&seg.part_path(i), Bytes::from(data)).await?;
    Ok(n)
}

/// The version ranges of the segments in `dest`, ascending (from names alone).
pub async fn list_segments(dest: &Destination) -> Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> =
        dest.list(LOG_DIR).await?.into_iter().filter_map(|(p, _)| parse_meta_name(&p)).collect();
    out.sort_unstable();
    Ok(out)
}

/// Reads and checks the description of the segment covering `first..=last`.
pub async fn read_segment(dest: &Destination, first: u64, last: u64) -> Result<LogSegment> {
    let path = format!("{}.json", LogSegment::stem(first, last));
    let s = LogSegment::decode(&dest.must_get(&path).await?, &dest.name(&path))?;
    if (s.first_version, s.last_version) != (first, last) {
        return Err(Error::InvalidData(format!(
            "log segment {} claims versions {}..={} but is named for {first}..={last}",
            dest.name(&path),
            s.first_version,
            s.last_version
        )));
    }
    Ok(s)
}

/// Reads every segment description, in version order.
pub async fn read_segments(dest: &Destination) -> Result<Vec<LogSegment>> {
    stream::iter(list_segments(dest).await?)
        .map(|(a, b)| {
            let dest = dest.clone();
            async move { read_segment(&dest, a, b).await }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Fetches one of a segment's data files ([`LogSegment::files`]) and checks its size
/// and blake3.
pub async fn fetch_data(dest: &Destination, path: &str, d: &LogData) -> Result<Bytes> {
    let claim = "its segment description says";
    crate::read::fetch_checked(dest, path, "log file", claim, d.size, &d.blake3).await
}

/// One key's net change over a version range: `None` deletes it.
pub type NetChange = (Vec<u8>, Option<Vec<u8>>);

/// Where a segment's blocks are read from.
#[derive(Clone)]
pub enum SegmentData {
    /// The whole data file, fetched and checked against its blake3.
    Whole(Bytes),
    /// Read on demand: the trailer and index, then only the blocks needed, each
    /// protected by its crc32c (and AEAD when encrypted) — what a table restore uses,
    /// so it reads only the blocks that touch its table.
    Ranged(Destination),
}

impl SegmentData {
    async fn index(&self, path: &str, size: u64, name: &str, cipher: Option<&Cipher>) -> Result<Vec<BlockRef>> {
        match self {
            SegmentData::Whole(bytes) => read_index(bytes, name, cipher),
            SegmentData::Ranged(dest) => {
                let tail = dest.get_range(path, size.saturating_sub(TRAILER_BYTES)..size).await?;
                let (offset, len) = index_location(&tail, size, name)?;
                let frame = dest.get_range(path, offset..offset + len).await?;
                parse_index(&frame, offset, name, cipher)
            }
        }
    }

    async fn block(&self, path: &str, b: &BlockRef, name: &str) -> Result<Bytes> {
        let range = b.offset..b.offset + u64::from(b.len);
        match self {
            SegmentData::Whole(bytes) if range.end <= bytes.len() as u64 => {
                Ok(bytes.slice(range.start as usize..range.end as usize))
            }
            SegmentData::Whole(_) => Err(Error::InvalidData(format!(
                "range file {name}: block at offset {}: extends past the end of the file",
                b.offset
            ))),
            SegmentData::Ranged(dest) => dest.get_range(path, range).await,
        }
    }
}

/// Decodes the blocks of one of a segment's data files (`file`, from
/// [`LogSegment::files`]) that may hold keys under `prefixes`, and returns, per block
/// (in key order; blocks hold disjoint keys), the net change of every such key over
/// `versions`: its last write in that range. Blocks are fetched and decoded by
/// `parallelism` workers.
#[allow(clippy::too_many_arguments)]
pub async fn net_changes(
    source: SegmentData,
    seg: &LogSegment,
    file: (&str, &LogData),
    name: String,
    cipher: Option<Cipher>,
    prefixes: &[Vec<u8>],
    versions: std::ops::RangeInclusive<u64>,
    parallelism: usize,
) -> Result<Vec<Vec<NetChange>>> {
    let (path, d) = file;
    let index = source.index(path, d.size, &name, cipher.as_ref()).await?;
    let total: u64 = index.iter().map(|b| u64::from(b.entries)).sum();
    if index.len() != d.blocks as usize || total != d.entries {
        return Err(Error::InvalidData(format!(
            "log file {name} holds {} blocks / {total} entries, its description says {} / {}",
            index.len(),
            d.blocks,
            d.entries
        )));
    }
    // A block's keys lie within [first_key, last_key]; the user-key part of a log key
    // is a prefix of it, so the block may touch `p` iff some key in that span starts with p.
    let touches = |first: &[u8], last: &[u8]| {
        prefixes.iter().any(|p| {
            let above_start = last >= p.as_slice();
            let below_end = first.starts_with(p) || first < p.as_slice();
            above_start && below_end
        })
    };
    let wanted: Vec<_> = index.into_iter().filter(|b| touches(&b.first_key, &b.last_key)).collect();
    let prefixes = prefixes.to_vec();
    let span = seg.first_version..=seg.last_version;
    let results: Vec<Result<Vec<NetChange>>> = stream::iter(wanted)
        .map(|b| {
            let (source, name, cipher, prefixes, versions, span) =
                (source.clone(), name.clone(), cipher.clone(), prefixes.clone(), versions.clone(), span.clone());
            async move {
                let frame = source.block(path, &b, &name).await?;
                tokio::task::spawn_blocking(move || -> Result<Vec<NetChange>> {
                    let raw = decode_block_frame(&frame, &b, &name, cipher.as_ref())?;
                    let mut out: Vec<NetChange> = Vec::new();
                    let mut last_key: Option<Vec<u8>> = None;
                    for e in entries(&raw) {
                        let (k, v) = e?;
                        if k.len() < 8 || v.is_empty() || v[0] > 1 {
                            return Err(Error::InvalidData(format!("log file {name}: malformed mutation entry")));
                        }
                        let (user, ver) = k.split_at(k.len() - 8);
                        let version = u64::from_be_bytes(ver.try_into().expect("split at 8 bytes"));
                        if !span.contains(&version) {
                            return Err(Error::InvalidData(format!(
                                "log file {name}: a mutation of version {version} lies outside the segment"
                            )));
                        }
                        if !versions.contains(&version) || !prefixes.iter().any(|p| user.starts_with(p)) {
                            continue;
                        }
                        let value = if v[0] == 1 { Some(v[1..].to_vec()) } else { None };
                        if last_key.as_deref() == Some(user) {
                            // Same key, a newer version (entries sort by key, then version).
                            if let Some(l) = out.last_mut() {
                                l.1 = value;
                            }
                        } else {
                            last_key = Some(user.to_vec());
                            out.push((user.to_vec(), value));
                        }
                    }
                    Ok(out)
                })
                .await
                .map_err(|e| Error::Internal(format!("decode worker: {e}")))?
            }
        })
        .buffered(parallelism.max(1))
        .collect()
        .await;
    let mut out: Vec<Vec<NetChange>> = Vec::with_capacity(results.len());
    for r in results {
        let mut block = r?;
        // Writers never split a key across blocks; merge defensively if one did.
        if let (Some(prev), Some(first)) = (out.last_mut().and_then(|b| b.last_mut()), block.first()) {
            if prev.0 == first.0 {
                prev.1 = block.remove(0).1;
            }
        }
        if !block.is_empty() {
            out.push(block);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amberdb_mvcc::{CommitBatch, Mutation};

    fn put(key: Vec<u8>, value: Vec<u8>) -> Mutation {
        Mutation { key, value: Some(value) }
    }

    /// Two "tables" (prefixes a and b), ~3 MiB each, over three commits.
    fn records() -> Vec<LogRecord> {
        let big = vec![7u8; 1000];
        let rows = |p: u8, v: u8| -> Vec<Mutation> {
            (0..3000u32)
                .map(|i| {
                    let mut val = big.clone();
                    val[0] = v;
                    put([vec![p], i.to_be_bytes().to_vec()].concat(), val)
                })
                .collect()
        };
        let mut second = rows(b'a', 2);
        second.truncate(10);
        second.push(Mutation { key: [vec![b'b'], 5u32.to_be_bytes().to_vec()].concat(), value: None });
        vec![
            LogRecord {
                version: 11,
                batch: Some(CommitBatch { commit_time: 1000, mutations: [rows(b'a', 1), rows(b'b', 1)].concat() }),
                staged: None,
            },
            LogRecord { version: 12, batch: None, staged: None },
            LogRecord { version: 13, batch: Some(CommitBatch { commit_time: 900, mutations: second }), staged: None },
        ]
    }

    #[tokio::test]
    async fn segments_round_trip_and_a_table_reads_only_its_blocks() {
        let (seg, data) = encode_segment(&records(), 500, 1, None).expect("encode");
        // Times follow the state machine's rule: max(proposed, previous + 1).
        assert_eq!(seg.commits, vec![[11, 1000], [13, 1001]]);
        assert_eq!((seg.first_version, seg.last_version, seg.last_time()), (11, 13, 1001));
        let data = data.expect("data");
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::DestConfig { backup_root: dir.path().to_path_buf(), s3: crate::S3Config::default() };
        let dest = Destination::open("d", &cfg, crate::Origin::Cli).expect("dest");
        write_segment(&dest, &seg, Some(data.clone())).await.expect("write");
        let read = read_segment(&dest, 11, 13).await.expect("read back");
        assert_eq!(read, seg);
        let d = seg.data.clone().expect("described");
        let whole = SegmentData::Whole(fetch_data(&dest, &seg.data_path(), &d).await.expect("fetch"));
        let changes = |src: SegmentData, p: u8, upto: u64| {
            let (seg, d) = (seg.clone(), d.clone());
            let name = dest.name(&seg.data_path());
            async move {
                net_changes(src, &seg, (&seg.data_path(), &d), name, None, &[vec![p]], 11..=upto, 2)
                    .await
                    .map(|blocks| blocks.into_iter().flatten().collect::<Vec<_>>())
            }
        };
        let a = changes(whole.clone(), b'a', 13).await.expect("a");
        assert_eq!(a.len(), 3000);
        assert_eq!(a[0].1.as_ref().expect("put")[0], 2, "the later write wins");
        assert_eq!(a[2999].1.as_ref().expect("put")[0], 1);
        let b = changes(whole.clone(), b'b', 13).await.expect("b");
        assert_eq!(b[5].1, None, "deleted at 13");
        assert!(changes(whole, b'b', 11).await.expect("b at 11")[5].1.is_some(), "not yet deleted at 11");
        // Damage a block that holds only a's keys: b (read block by block) still
        // restores; a, and anything reading the whole file, do not.
        let index = read_index(&data, "x", None).expect("index");
        assert!(index.len() >= 4, "several blocks: {}", index.len());
        let victim =
            index.iter().find(|blk| blk.first_key[0] == b'a' && blk.last_key[0] == b'a').expect("an a-only block");
        let mut damaged = data.clone();
        damaged[(victim.offset + 20) as usize] ^= 0x10;
        dest.put(&seg.data_path(), Bytes::from(damaged)).await.expect("overwrite");
        let ranged = SegmentData::Ranged(dest.clone());
        assert_eq!(changes(ranged.clone(), b'b', 13).await.expect("b survives").len(), 3000);
        let err = changes(ranged, b'a', 13).await.expect_err("a's block is damaged");
        assert!(err.to_string().contains(&seg.data_path()), "{err}");
        assert!(fetch_data(&dest, &seg.data_path(), &d).await.is_err(), "the whole file fails its blake3");
    }

    /// A staged commit's segment: one version, a part per stage (a later part's write
    /// of a key wins), format 2, and older formats' readers are told it is newer.
    #[tokio::test]
    async fn a_staged_commit_segment_keeps_its_parts_in_order() {
        let mut seg = staged_segment(20, 500, 400);
        assert_eq!(seg.commits, vec![[20, 501]]);
        let stage1: Vec<Mutation> = (0..100u8).map(|i| put(vec![b'a', i], vec![1])).collect();
        let stage2 = vec![put(vec![b'a', 5], vec![2]), Mutation { key: vec![b'a', 6], value: None }];
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::DestConfig { backup_root: dir.path().to_path_buf(), s3: crate::S3Config::default() };
        let dest = Destination::open("d", &cfg, crate::Origin::Cli).expect("dest");
        for (i, muts) in [stage1, stage2].iter().enumerate() {
            let (d, bytes) = encode_part(20, muts, 1, None).expect("part");
            dest.put(&seg.part_path(i), Bytes::from(bytes)).await.expect("write part");
            seg.parts.push(d);
        }
        write_segment(&dest, &seg, None).await.expect("write");
        let read = read_segment(&dest, 20, 20).await.expect("read back");
        assert_eq!(read, seg);
        let mut net = std::collections::BTreeMap::new();
        for (path, d) in read.files() {
            let src = SegmentData::Whole(fetch_data(&dest, &path, d).await.expect("fetch"));
            for (k, v) in net_changes(src, &read, (&path, d), path.clone(), None, &[vec![b'a']], 20..=20, 2)
                .await
                .expect("changes")
                .into_iter()
                .flatten()
            {
                net.insert(k, v);
            }
        }
        assert_eq!(net.len(), 100);
        assert_eq!(net[&vec![b'a', 5]], Some(vec![2]));
        assert_eq!(net[&vec![b'a', 6]], None);
        assert_eq!(net[&vec![b'a', 7]], Some(vec![1]));
        let mut old = seg.clone();
        old.format_version = 1;
        let raw = old.encode().expect("encode");
        assert!(LogSegment::decode(&raw, "x").is_err(), "parts in a format-1 segment are refused");
    }
}
