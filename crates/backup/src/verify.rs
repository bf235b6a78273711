//! Verify a backup without restoring it.
//!
//! Every snapshot and every mutation-log segment is checked. Shallow: every file a
//! manifest or segment description names is present, has the recorded size and blake3
//! hash, and every description's own hash holds; log data files that lost their
//! description are named. Deep: additionally every block is decoded (crc32c, zstd, entry counts, key
//! order and bounds), every entry is handed to the caller's check (the SQL layer decodes
//! rows against the table's schema), and each table's logical checksum and row count are
//! recomputed and compared with the manifest. No database is touched.

use crate::chain::Chain;
use crate::crypto::Secret;
use crate::dest::Destination;
use crate::log::{fetch_data, net_changes, read_segment, LOG_DIR};
use crate::manifest::TableSum;
use crate::read::{fetch_file, open_latest, open_snapshot, snapshots, table_blocks, Snapshot};
use crate::Progress;
use amberdb_error::{Error, Result};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Builds the entry check of one table from its schema (once per table).
pub type EntryCheck = Arc<dyn Fn(&serde_json::Value) -> Result<RowCheck> + Send + Sync>;
/// Checks one entry of a table (prefix number, key, value).
pub type RowCheck = Box<dyn Fn(usize, &[u8], &[u8]) -> Result<()> + Send + Sync>;

/// What verify found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The destination.
    pub destination: String,
    /// Snapshot version.
    pub version: u64,
    /// Whether blocks and rows were decoded.
    pub deep: bool,
    /// Files checked.
    pub files: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// Tables checked.
    pub tables: u64,
    /// Rows counted (deep) or recorded (shallow).
    pub rows: u64,
    /// Mutation-log segments checked.
    pub log_segments: u64,
    /// The versions the destination can restore (after the checks; empty if the
    /// chain could not be read).
    pub restorable_ranges: Vec<crate::chain::RestorableRange>,
    /// Every problem, each naming the object; empty means the backup is sound.
    pub problems: Vec<String>,
}

/// Verifies every snapshot in `dest` and its mutation log.
pub async fn verify(
    dest: &Destination,
    deep: bool,
    secret: Option<&Secret>,
    check: Option<EntryCheck>,
    parallelism: usize,
    progress: &Progress,
) -> Result<VerifyReport> {
    let newest = open_latest(dest, secret).await?;
    let versions = snapshots(dest).await?;
    let m = &newest.manifest;
    let mut total = 0;
    for &v in &versions {
        if let Ok(s) = open_snapshot(dest, v, newest.cipher.clone()).await {
            let m = &s.manifest;
            total += if deep { m.tables.iter().map(|t| t.logical_bytes).sum() } else { m.bytes() };
        }
    }
    progress.total_bytes.store(total, Ordering::Relaxed);
    let mut report = VerifyReport {
        destination: dest.url().to_string(),
        version: m.version,
        deep,
        files: 0,
        bytes: 0,
        tables: m.tables.len() as u64,
        rows: if deep { 0 } else { m.rows() },
        log_segments: 0,
        restorable_ranges: Vec::new(),
        problems: Vec::new(),
    };
    verify_logs(dest, deep, &newest, parallelism, &mut report, progress).await?;
    match Chain::open(dest, secret).await {
        Ok(chain) => report.restorable_ranges = chain.ranges(),
        Err(e) if report.problems.is_empty() => report.problems.push(e.message()),
        Err(_) => {}
    }
    for &v in &versions {
        let snap = match open_snapshot(dest, v, newest.cipher.clone()).await {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(e.message());
                continue;
            }
        };
        let m = &snap.manifest;
        report.files += 1;
        if !deep {
            for f in &m.files {
                match fetch_file(dest, m, f).await {
                    Ok(b) => {
                        report.files += 1;
                        report.bytes += b.len() as u64;
                        progress.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => report.problems.push(e.message()),
                }
            }
            continue;
        }
        for t in &m.tables {
            match verify_table(dest, &snap, t, check.as_ref(), parallelism, progress).await {
                Ok(rows) if v == newest.manifest.version => report.rows += rows,
                Ok(_) => {}
                Err(e) => report.problems.push(e.message()),
            }
            for &i in &t.files {
                report.files += 1;
                report.bytes += m.files[i].size;
            }
        }
    }
    Ok(report)
}

/// Checks the mutation log: every segment description's hash and every data file's
/// size and blake3 (deep: every block and mutation decoded), and names data files no
/// description claims unless an interrupted write explains them.
async fn verify_logs(
    dest: &Destination,
    deep: bool,
    snap: &Snapshot,
    parallelism: usize,
    report: &mut VerifyReport,
    progress: &Progress,
) -> Result<()> {
    let objects = dest.list(LOG_DIR).await?;
    let parse = |p: &str, ext: &str| -> Option<(u64, u64)> {
        let stem = p.strip_prefix(LOG_DIR)?.strip_prefix('/')?.strip_suffix(ext)?;
        let (a, b) = stem.split_once('-')?;
        // A staged commit's part: `<first>-<last>.part<i>`.
        let b = b.split_once(".part").map_or(b, |(b, _)| b);
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let described: Vec<(u64, u64)> = objects.iter().filter_map(|(p, _)| parse(p, ".json")).collect();
    let newest = described.iter().map(|d| d.1).max().unwrap_or(0);
    for &(a, b) in &described {
        report.files += 1;
        let seg = match read_segment(dest, a, b).await {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(e.message());
                continue;
            }
        };
        report.log_segments += 1;
        for (path, d) in seg.files() {
            let bytes = match fetch_data(dest, &path, d).await {
                Ok(b) => b,
                Err(e) => {
                    report.problems.push(e.message());
                    continue;
                }
            };
            report.files += 1;
            report.bytes += bytes.len() as u64;
            progress.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if deep {
                let name = dest.name(&path);
                let all = seg.first_version..=seg.last_version;
                let source = crate::log::SegmentData::Whole(bytes);
                let everything = [Vec::new()];
                let changes =
                    net_changes(source, &seg, (&path, d), name, snap.cipher.clone(), &everything, all, parallelism);
                if let Err(e) = changes.await {
                    report.problems.push(e.message());
                }
            }
        }
    }
    for (p, _) in &objects {
        let Some((a, b)) = parse(p, ".aml") else { continue };
        if described.contains(&(a, b)) {
            continue;
        }
        // A retried write covers the same start under another end; a write cut short
        // lies past everything described. Anything else lost its description.
        if a > newest || described.iter().any(|d| d.0 == a) {
            continue;
        }
        report.problems.push(format!(
            "log file {} has no segment description (deleted?): versions {a}..={b} cannot be restored",
            dest.name(p)
        ));
    }
    Ok(())
}

async fn verify_table(
    dest: &Destination,
    m: &Snapshot,
    t: &crate::manifest::TableManifest,
    check: Option<&EntryCheck>,
    parallelism: usize,
    progress: &Progress,
) -> Result<u64> {
    use futures::StreamExt;
    let prefixes = t.prefix_bytes()?;
    let mut sum = TableSum::new(t.row_prefix);
    let mut last: Vec<u8> = Vec::new();
    let check = match check {
        Some(c) => Some(c(&t.schema).map_err(|e| Error::InvalidData(format!("table {}: {}", t.name, e.message())))?),
        None => None,
    };
    let mut blocks = std::pin::pin!(table_blocks(dest, m, t, parallelism));
    while let Some(block) = blocks.next().await {
        for (pi, k, v) in block? {
            if !last.is_empty() && k <= last {
                return Err(Error::InvalidData(format!("table {}: keys out of order across range files", t.name)));
            }
            if let Some(check) = &check {
                check(pi, &k, &v).map_err(|e| {
                    Error::InvalidData(format!("table {}: entry does not decode: {}", t.name, e.message()))
                })?;
            }
            sum.add(pi, &k[prefixes[pi].len()..], &v);
            progress.entries.fetch_add(1, Ordering::Relaxed);
            progress.bytes.fetch_add((k.len() - prefixes[pi].len() + v.len()) as u64, Ordering::Relaxed);
            last = k;
        }
    }
    sum.check(t, &format!("verify {}", dest.url()))?;
    Ok(sum.rows)
}
