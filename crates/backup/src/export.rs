//! Online snapshot export: one consistent read view, streamed through a pipeline.
//!
//! ```text
//!   scanner thread ──raw 1 MiB blocks──▶ N compression workers ──in order──▶ file assembler
//!   (ReadView at V,   (bounded channel)   (spawn_blocking, zstd)              (≤ file_target)
//!    logical sums)                                                              │
//!                                             ≤ 2 concurrent uploads ◀──────────┘
//!                                                        │ all done
//!                                                        ▼
//!                                              manifest.json (last, create-only)
//! ```
//! The read view registers version V with MVCC, so GC keeps what the backup reads and
//! nothing else is held: writers never wait for a backup. Memory is bounded by the
//! channel, the workers' blocks and at most three files in flight.

use crate::crypto::{Cipher, Secret};
use crate::dest::Destination;
use crate::format::{seal, RangeFileWriter, RawBlock, SealedBlock, BLOCK_TARGET};
use crate::manifest::{
    now_rfc3339, to_hex, BackupKind, Descriptor, FileManifest, Manifest, TableManifest, TableSum, DESCRIPTOR,
    FORMAT_VERSION,
};
use crate::Progress;
use amberdb_error::{Error, Result};
use amberdb_mvcc::{Mvcc, ReadView};
use amberdb_storage::KeyRange;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A table to back up, as the SQL layer describes it.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Name.
    pub name: String,
    /// Definition (stored verbatim in the manifest).
    pub schema: serde_json::Value,
    /// Key prefixes of its entries, in ascending order.
    pub prefixes: Vec<Vec<u8>>,
    /// Which prefix holds the rows.
    pub row_prefix: usize,
}

/// Tuning knobs of backup and restore (`WITH (…)` options).
#[derive(Debug, Clone)]
pub struct Options {
    /// zstd level (1 = fastest; 3 = zstd's default; up to 19).
    pub compression_level: i32,
    /// Concurrent compression / decompression workers.
    pub parallelism: usize,
    /// Size at which a range file is closed.
    pub file_target: usize,
    /// Encrypt the backup with a key derived from this passphrase.
    pub encryption: Option<Secret>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            compression_level: 1,
            parallelism: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            file_target: 32 << 20,
            encryption: None,
        }
    }
}

enum Msg {
    Block(RawBlock),
    End(usize, Box<TableSum>),
}

enum Step {
    Block(SealedBlock),
    End(usize, Box<TableSum>),
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("backup worker failed: {e}"))
}

/// Reads every table's entries at the view's version and feeds raw blocks to `tx`.
fn scan_tables(view: ReadView, tables: Vec<(Vec<Vec<u8>>, usize)>, tx: mpsc::Sender<Result<Msg>>, p: Arc<Progress>) {
    for (ti, (prefixes, row_prefix)) in tables.into_iter().enumerate() {
        let mut sum = TableSum::new(row_prefix);
        let mut block = RawBlock::default();
        for (pi, prefix) in prefixes.iter().enumerate() {
            for kv in view.scan(&KeyRange::prefix(prefix)) {
                let (k, v) = match kv {
                    Ok(kv) => kv,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                sum.add(pi, &k[prefix.len()..], &v);
                block.push(&k, &v);
                p.entries.fetch_add(1, Ordering::Relaxed);
                p.bytes.fetch_add((k.len() + v.len()) as u64, Ordering::Relaxed);
                if block.len() >= BLOCK_TARGET && tx.blocking_send(Ok(Msg::Block(std::mem::take(&mut block)))).is_err()
                {
                    return; // the writer failed and dropped the channel
                }
            }
        }
        if !block.is_empty() && tx.blocking_send(Ok(Msg::Block(block))).is_err() {
            return;
        }
        if tx.blocking_send(Ok(Msg::End(ti, Box::new(sum)))).is_err() {
            return;
        }
    }
}

/// Makes sure `dest` can take a new backup: it must not hold a complete one; objects of
/// an interrupted one (snapshot files without a manifest) are removed. Writes a fresh
/// descriptor (with new key parameters when encrypting) and returns the cipher.
async fn prepare(dest: &Destination, encryption: Option<&Secret>) -> Result<Option<Cipher>> {
    if let Some(raw) = dest.get(DESCRIPTOR).await? {
        Descriptor::decode(&raw, &dest.name(DESCRIPTOR))?;
    }
    let objects = dest.list("snapshots").await?;
    if let Some((m, _)) = objects.iter().find(|(p, _)| p.ends_with("/manifest.json")) {
        return Err(Error::InvalidInput(format!(
            "backup destination {} already holds a backup ({}); choose a new destination or delete it first",
            dest.url(),
            dest.name(m)
        )));
    }
    for (p, _) in &objects {
        dest.delete(p).await?;
    }
    if !objects.is_empty() {
        tracing::warn!(destination = dest.url(), objects = objects.len(), "removed the files of an interrupted backup");
    }
    let (cipher, params) = match encryption {
        Some(secret) => {
            let s = secret.clone();
            let (c, p) = tokio::task::spawn_blocking(move || Cipher::create(&s)).await.map_err(join_err)??;
            (Some(c), Some(p))
        }
        None => (None, None),
    };
    // No complete backup depends on an existing descriptor, so it is replaced.
    let d = Descriptor::new(now_rfc3339(), params);
    dest.put(DESCRIPTOR, Bytes::from(d.encode()?)).await?;
    Ok(cipher)
}

/// Writes a snapshot of `tables` as seen by `view` to `dest` and returns its manifest.
/// The manifest is written last and only if everything before it succeeded.
pub async fn create(
    mvcc: &Mvcc,
    view: ReadView,
    dest: &Destination,
    kind: BackupKind,
    tables: Vec<TableSpec>,
    opts: &Options,
    progress: Arc<Progress>,
) -> Result<Manifest> {
    for t in &tables {
        if t.prefixes.windows(2).any(|w| w[0] >= w[1]) || t.row_prefix >= t.prefixes.len() {
            return Err(Error::Internal(format!("table {}: prefixes must be ascending", t.name)));
        }
    }
    let cipher = prepare(dest, opts.encryption.as_ref()).await?;
    let started_at = now_rfc3339();
    let version = view.version();
    let commit_time_micros = mvcc.time_of_version(version)?.unwrap_or_else(|| mvcc.applied().time);
    let dir = Manifest::dir_of(version);
    let result = write_snapshot(view, dest, &dir, &tables, opts, cipher.clone(), progress).await;
    let (mut table_manifests, files) = match result {
        Ok(r) => r,
        Err(e) => {
            // Leave nothing behind that a later backup would have to explain.
            for (p, _) in dest.list(&dir).await.unwrap_or_default() {
                if let Err(de) = dest.delete(&p).await {
                    tracing::warn!(error = %de, "could not remove a file of the failed backup");
                }
            }
            return Err(e);
        }
    };
    for (t, spec) in table_manifests.iter_mut().zip(&tables) {
        t.name = spec.name.clone();
        t.schema = spec.schema.clone();
        t.prefixes = spec.prefixes.iter().map(|p| to_hex(p)).collect();
        t.row_prefix = spec.row_prefix;
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind,
        version,
        commit_time_micros,
        commit_time: amberdb_mvcc::format_micros(commit_time_micros),
        started_at,
        finished_at: now_rfc3339(),
        amberdb_version: env!("CARGO_PKG_VERSION").into(),
        tables: table_manifests,
        files,
    };
    dest.put_new(&Manifest::path_of(version), Bytes::from(manifest.encode(cipher.as_ref())?)).await?;
    Ok(manifest)
}

type Upload = tokio::task::JoinHandle<Result<FileManifest>>;

async fn write_snapshot(
    view: ReadView,
    dest: &Destination,
    dir: &str,
    tables: &[TableSpec],
    opts: &Options,
    cipher: Option<Cipher>,
    progress: Arc<Progress>,
) -> Result<(Vec<TableManifest>, Vec<FileManifest>)> {
    let (tx, rx) = mpsc::channel(4);
    let specs = tables.iter().map(|t| (t.prefixes.clone(), t.row_prefix)).collect();
    let p = progress.clone();
    let scanner = tokio::task::spawn_blocking(move || scan_tables(view, specs, tx, p));
    let level = opts.compression_level;
    let block_cipher = cipher.clone();
    let msgs = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut steps = std::pin::pin!(msgs
        .map(move |m| {
            let c = block_cipher.clone();
            async move {
                match m? {
                    Msg::Block(raw) => tokio::task::spawn_blocking(move || seal(raw, level, c.as_ref()))
                        .await
                        .map_err(join_err)?
                        .map(Step::Block),
                    Msg::End(t, sum) => Ok(Step::End(t, sum)),
                }
            }
        })
        .buffered(opts.parallelism.max(1)));

    let mut table_manifests: Vec<TableManifest> = Vec::with_capacity(tables.len());
    let mut file_count = 0usize;
    let mut uploads: FuturesUnordered<Upload> = FuturesUnordered::new();
    let mut files: Vec<FileManifest> = Vec::new();
    let mut writer = RangeFileWriter::default();
    let mut table_files: Vec<usize> = Vec::new();

    let mut flush = |writer: &mut RangeFileWriter, table: usize, table_files: &mut Vec<usize>| -> Upload {
        let w = std::mem::take(writer);
        let index = file_count;
        file_count += 1;
        table_files.push(index);
        let rel_in_snapshot = format!("ranges/{table:05}-{index:06}.amr");
        let rel = format!("{dir}/{rel_in_snapshot}");
        let dest = dest.clone();
        let progress = progress.clone();
        let cipher = cipher.clone();
        tokio::spawn(async move {
            let blocks = w.blocks();
            let entries = w.entries();
            let (first, last) = w.key_range();
            let (bytes, hash) = tokio::task::spawn_blocking(move || -> Result<_> {
                let bytes = w.finish(cipher.as_ref())?;
                let hash = blake3::hash(&bytes).to_hex().to_string();
                Ok((bytes, hash))
            })
            .await
            .map_err(join_err)??;
            let size = bytes.len() as u64;
            dest.put(&rel, Bytes::from(bytes)).await?;
            progress.files.fetch_add(1, Ordering::Relaxed);
            Ok(FileManifest {
                path: rel_in_snapshot,
                table,
                size,
                blake3: hash,
                blocks,
                entries,
                first_key: to_hex(&first),
                last_key: to_hex(&last),
            })
        })
    };

    let mut current_table = 0usize;
    while let Some(step) = steps.next().await {
        match step? {
            Step::Block(b) => {
                if !writer.is_empty() && writer.len() + b.size() > opts.file_target {
                    uploads.push(flush(&mut writer, current_table, &mut table_files));
                }
                writer.add(b);
            }
            Step::End(t, sum) => {
                if !writer.is_empty() {
                    uploads.push(flush(&mut writer, t, &mut table_files));
                }
                table_manifests.push(TableManifest {
                    name: String::new(),
                    schema: serde_json::Value::Null,
                    prefixes: Vec::new(),
                    row_prefix: 0,
                    rows: sum.rows,
                    entries: sum.entries,
                    logical_bytes: sum.logical_bytes,
                    checksum: sum.finish(),
                    files: std::mem::take(&mut table_files),
                });
                current_table = t + 1;
            }
        }
        while uploads.len() >= 2 {
            if let Some(done) = uploads.next().await {
                files.push(done.map_err(join_err)??);
            }
        }
    }
    while let Some(done) = uploads.next().await {
        files.push(done.map_err(join_err)??);
    }
    scanner.await.map_err(join_err)?;
    if table_manifests.len() != tables.len() {
        return Err(Error::Internal("backup scanner stopped early".into()));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((table_manifests, files))
}
