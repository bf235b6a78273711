//! Verify a backup without restoring it.
//!
//! Shallow: every file the manifest names is present, has the recorded size and blake3
//! hash. Deep: additionally every block is decoded (crc32c, zstd, entry counts, key
//! order and bounds), every entry is handed to the caller's check (the SQL layer decodes
//! rows against the table's schema), and each table's logical checksum and row count are
//! recomputed and compared with the manifest. No database is touched.

use crate::crypto::Secret;
use crate::dest::Destination;
use crate::manifest::TableSum;
use crate::read::{fetch_file, open_latest, table_blocks, Snapshot};
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
    /// Every problem, each naming the object; empty means the backup is sound.
    pub problems: Vec<String>,
}

/// Verifies the newest snapshot in `dest`.
pub async fn verify(
    dest: &Destination,
    deep: bool,
    secret: Option<&Secret>,
    check: Option<EntryCheck>,
    parallelism: usize,
    progress: &Progress,
) -> Result<VerifyReport> {
    let snap = open_latest(dest, secret).await?;
    let m = &snap.manifest;
    let total = if deep { m.tables.iter().map(|t| t.logical_bytes).sum() } else { m.bytes() };
    progress.total_bytes.store(total, Ordering::Relaxed);
    let mut report = VerifyReport {
        destination: dest.url().to_string(),
        version: m.version,
        deep,
        files: 0,
        bytes: 0,
        tables: m.tables.len() as u64,
        rows: if deep { 0 } else { m.rows() },
        problems: Vec::new(),
    };
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
        return Ok(report);
    }
    for t in &m.tables {
        match verify_table(dest, &snap, t, check.as_ref(), parallelism, progress).await {
            Ok(rows) => report.rows += rows,
            Err(e) => report.problems.push(e.message()),
        }
        for &i in &t.files {
            report.files += 1;
            report.bytes += m.files[i].size;
        }
    }
    Ok(report)
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
