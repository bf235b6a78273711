//! # Backup: a container of checksummed, compressed snapshots, and restore from it
//!
//! A backup is a set of objects under a destination (a directory or an S3 prefix):
//!
//! ```text
//!   <destination>/amber-backup.json                      descriptor (format, version)
//!   <destination>/snapshots/<version:016x>/ranges/*.amr  range files: sorted entries in
//!                                                        zstd + crc32c blocks, indexed
//!   <destination>/snapshots/<version:016x>/manifest.json written LAST: files, sizes,
//!                                                        blake3, per-table rows and
//!                                                        logical checksums, schemas
//! ```
//!
//! The export reads one MVCC snapshot (a registered read view, so GC keeps exactly what
//! it reads and writers never wait); restore bulk-loads entries under fresh key prefixes
//! and proves the result by recomputing each table's logical checksum from the restored
//! keys before the SQL layer publishes the table in one catalog commit.
//!
//! This crate knows key prefixes and opaque table schemas, not SQL: the SQL layer says
//! which prefixes make up a table and how to check a row. It reads data only through
//! `mvcc` and writes only through `consensus` commits — never engine files.
//!
//! Invariants:
//! - A manifest exists only if every file it names was completely written first; it is
//!   created with create-only semantics, so two backups cannot both claim a destination.
//! - Every byte of a snapshot is covered by a hash: files by blake3 in the manifest,
//!   blocks by crc32c, the manifest by the blake3 in its header line. A damaged,
//!   truncated or missing file is reported by name; restore never loads a file that
//!   does not match its hash, and never publishes a table whose checksum differs.
//! - Memory is bounded by the pipeline (blocks in flight and at most a few files), not
//!   by the size of the data.

mod chain;
mod crypto;
mod dest;
mod expire;
mod export;
mod format;
mod log;
mod manifest;
mod read;
mod restore;
mod verify;

pub use chain::{Chain, Plan, RestorableRange};
pub use crypto::{Cipher, EncryptionParams, Secret};
pub use dest::{install_crypto_provider, DestConfig, Destination, Origin, S3Config};
pub use expire::{expire, ExpireReport};
pub use export::{create, create_snapshot, start_chain, Options, Pacer, TableSpec};
pub use log::{
    encode_part, encode_segment, fetch_data, list_segments, net_changes, read_segment, read_segments, staged_segment,
    write_part, write_segment, LogData, LogSegment, NetChange, SegmentData, LOG_DIR,
};
pub use manifest::{
    from_hex, now_rfc3339, to_hex, BackupKind, Descriptor, FileManifest, Manifest, TableManifest, DESCRIPTOR,
};
pub use read::{latest_manifest, open_descriptor, open_latest, open_snapshot, snapshots, Snapshot};
pub use restore::{delete_prefixes, load_table, replay_changes, replay_log};
pub use verify::{verify, EntryCheck, RowCheck, VerifyReport};

use amberdb_error::Result;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Progress counters of a running operation (read by progress bars and status).
#[derive(Debug, Default)]
pub struct Progress {
    /// Logical bytes processed.
    pub bytes: AtomicU64,
    /// Expected total, if known (0 = unknown).
    pub total_bytes: AtomicU64,
    /// Entries processed.
    pub entries: AtomicU64,
    /// Files written.
    pub files: AtomicU64,
}

impl Progress {
    /// (done, total) bytes.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::Relaxed), self.total_bytes.load(Ordering::Relaxed))
    }
}

/// A summary of one backup, for `SHOW BACKUP(S)` and `backup list/show`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    /// Where it is.
    pub destination: String,
    /// The snapshot's manifest, if a complete one exists.
    pub manifest: Option<Manifest>,
    /// Why it cannot be used, if it cannot.
    pub error: Option<String>,
}

/// Describes the backup at `dest`.
pub async fn describe(dest: &Destination) -> BackupInfo {
    match latest_manifest(dest).await {
        Ok(m) => BackupInfo { destination: dest.url().into(), manifest: Some(m), error: None },
        Err(e) => BackupInfo { destination: dest.url().into(), manifest: None, error: Some(e.message()) },
    }
}

/// Finds every backup at or below `dest` (each directory holding a descriptor).
pub async fn list(dest: &Destination) -> Result<Vec<BackupInfo>> {
    let mut out = Vec::new();
    for (p, _) in dest.list("").await? {
        if p == DESCRIPTOR {
            out.push(describe(dest).await);
        } else if let Some(dir) = p.strip_suffix(&format!("/{DESCRIPTOR}")) {
            out.push(describe(&dest.child(dir)).await);
        }
    }
    Ok(out)
}

/// Deletes a backup: the manifests first (so a half-deleted backup is never taken for a
/// complete one), then everything else. Re-runnable after a crash.
pub async fn delete(dest: &Destination) -> Result<u64> {
    let objects = dest.list("").await?;
    let (manifests, rest): (Vec<_>, Vec<_>) = objects.into_iter().partition(|(p, _)| p.ends_with("/manifest.json"));
    let mut n = 0;
    for (p, _) in manifests.iter().chain(rest.iter().filter(|(p, _)| p != DESCRIPTOR)) {
        dest.delete(p).await?;
        n += 1;
    }
    if rest.iter().any(|(p, _)| p == DESCRIPTOR) {
        dest.delete(DESCRIPTOR).await?;
        n += 1;
    }
    Ok(n)
}
