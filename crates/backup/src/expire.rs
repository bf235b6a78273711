//! Expire: delete the snapshots and log segments that no restorable point at or after a
//! cutoff needs.
//!
//! ```text
//!  cutoff ─────────────────────────────┐
//!  snapshots   S1        S2        S3  │     S4
//!  log          [──────────────────────┼─────────]
//!  kept                            S3 ─┴─────S4──]   (S3: the newest snapshot at or before
//!  deleted     S1, S2, segments ending at or before S3        the cutoff in its range)
//! ```
//!
//! Crash safety is *mark, then delete*: the full list of objects to delete is written
//! first (`expire-pending.json`, sealed JSON), then they are deleted oldest first —
//! snapshot manifests before their range files, segment descriptions before their data
//! — so an interruption never leaves a half-deleted snapshot that looks complete or a
//! gap inside what remains. Running expire again first finishes a pending list.

use crate::chain::{Chain, RestorableRange};
use crate::crypto::Secret;
use crate::dest::Destination;
use crate::log::LOG_DIR;
use crate::manifest::{open_json, seal_json, Manifest};
use amberdb_error::{Error, Result};
use amberdb_mvcc::format_micros;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const PENDING: &str = "expire-pending.json";
const PENDING_HEADER: &str = "AMBERDB-EXPIRE 1 blake3=";

/// What an expire did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpireReport {
    /// The destination.
    pub destination: String,
    /// The cutoff (µs since the epoch).
    pub cutoff_micros: u64,
    /// Snapshots deleted.
    pub snapshots_deleted: u64,
    /// Log segments deleted.
    pub segments_deleted: u64,
    /// Objects deleted (including range files and leftovers).
    pub objects_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Objects a previous, interrupted expire had left and this one finished.
    pub resumed_objects: u64,
    /// What remains restorable.
    pub restorable_ranges: Vec<RestorableRange>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    cutoff_micros: u64,
    objects: Vec<String>,
}

/// Finishes an interrupted expire, if one is pending. Returns the objects it deleted.
async fn finish_pending(dest: &Destination) -> Result<u64> {
    let Some(raw) = dest.get(PENDING).await? else { return Ok(0) };
    let name = dest.name(PENDING);
    let body = open_json(PENDING_HEADER, &raw, &format!("expire list {name}"))?;
    let p: Pending =
        serde_json::from_slice(body).map_err(|e| Error::InvalidData(format!("expire list {name}: {e}")))?;
    for o in &p.objects {
        dest.delete(o).await?;
    }
    dest.delete(PENDING).await?;
    Ok(p.objects.len() as u64)
}

/// Deletes what no restorable point at or after `cutoff_micros` needs. Refuses to leave
/// the destination with nothing restorable unless `force`.
pub async fn expire(
    dest: &Destination,
    secret: Option<&Secret>,
    cutoff_micros: u64,
    force: bool,
    dry_run: bool,
) -> Result<ExpireReport> {
    let resumed = if dry_run { 0 } else { finish_pending(dest).await? };
    let chain = Chain::open(dest, secret).await?;
    let ranges = chain.ranges();
    let when = format_micros(cutoff_micros);
    // The first range that still has points at or after the cutoff decides what stays.
    let keep_from = match ranges.iter().find(|r| r.last_time_micros >= cutoff_micros) {
        Some(r) if r.first_time_micros > cutoff_micros => r.first_version,
        Some(r) => chain
            .snapshots
            .iter()
            .filter(|s| s.0 >= r.first_version && s.0 <= r.last_version && s.1 <= cutoff_micros)
            .map(|s| s.0)
            .max()
            .unwrap_or(r.first_version),
        None if force => u64::MAX,
        None => {
            let newest = ranges.last().map_or("nothing".to_string(), |r| r.last_time.clone());
            return Err(Error::InvalidInput(format!(
                "expiring everything before {when} would leave {} with no restorable point (the newest is {newest}); \
                 use --force to delete it all",
                dest.url()
            )));
        }
    };
    let listing = dest.list("").await?;
    let size_of = |p: &str| listing.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n);
    let mut order: Vec<String> = Vec::new();
    let mut report = ExpireReport {
        destination: dest.url().to_string(),
        cutoff_micros,
        resumed_objects: resumed,
        ..ExpireReport::default()
    };
    // Snapshots older than the one kept: manifest first, then everything in its directory.
    // Directories without a manifest (interrupted backups) older than it go too.
    let mut dirs: Vec<(u64, String)> = listing
        .iter()
        .filter_map(|(p, _)| {
            let hex = p.strip_prefix("snapshots/")?.split('/').next()?;
            Some((u64::from_str_radix(hex, 16).ok()?, Manifest::dir_of(u64::from_str_radix(hex, 16).ok()?)))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for (v, dir) in dirs.into_iter().filter(|(v, _)| *v < keep_from) {
        let manifest = Manifest::path_of(v);
        if listing.iter().any(|(p, _)| *p == manifest) {
            report.snapshots_deleted += 1;
            order.push(manifest.clone());
        }
        let prefix = format!("{dir}/");
        order.extend(listing.iter().filter(|(p, _)| p.starts_with(&prefix) && *p != manifest).map(|(p, _)| p.clone()));
    }
    // Segments that end at or before it: description first, then data; leftovers whose
    // range ends there too.
    for seg in chain.segments.iter().filter(|s| s.last_version <= keep_from) {
        report.segments_deleted += 1;
        order.push(seg.meta_path());
        order.extend(seg.files().into_iter().map(|(path, _)| path));
    }
    for (p, _) in &listing {
        let Some(stem) = p.strip_prefix(&format!("{LOG_DIR}/")).and_then(|r| r.strip_suffix(".aml")) else {
            continue;
        };
        // `<first>-<last>` or a part's `<first>-<last>.part<i>`.
        let last = stem.split_once('-').and_then(|(_, b)| b.split('.').next()?.parse::<u64>().ok());
        if last.is_some_and(|l| l <= keep_from) && !order.contains(p) {
            order.push(p.clone());
        }
    }
    report.objects_deleted = order.len() as u64;
    report.bytes_freed = order.iter().map(|p| size_of(p)).sum();
    if !dry_run && !order.is_empty() {
        let body = serde_json::to_vec(&Pending { cutoff_micros, objects: order.clone() })
            .map_err(|e| Error::Internal(format!("encode expire list: {e}")))?;
        dest.put(PENDING, Bytes::from(seal_json(PENDING_HEADER, &body))).await?;
        for o in &order {
            dest.delete(o).await?;
        }
        dest.delete(PENDING).await?;
    }
    report.restorable_ranges = if dry_run {
        ranges.into_iter().filter(|r| r.last_version >= keep_from).collect()
    } else {
        Chain::open(dest, secret).await?.ranges()
    };
    tracing::info!(destination = dest.url(), cutoff = %when, snapshots = report.snapshots_deleted,
        segments = report.segments_deleted, bytes = report.bytes_freed, dry_run, "backup expire");
    Ok(report)
}
