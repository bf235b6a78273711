//! Online snapshot export: one consistent read view, streamed through a pipeline.
//!
//! ```text
//!   tables ──split──▶ parts (key ranges; a table's rows are split by interpolated keys)
//!   per part, N parts at a time:
//!     scanner thread ──raw 1 MiB blocks──▶ 2 compression workers ──in order──▶ file
//!     (ReadView at V,   (bounded channel)   (spawn_blocking, zstd)              assembler
//!      logical sum)                                                               │
//!                                               ≤ 2 concurrent uploads ◀──────────┘
//!   all parts done ──▶ per-table sums merged ──▶ manifest.json (last, create-only)
//! ```
//! The read view registers version V with MVCC, so GC keeps what the backup reads and
//! nothing else is held: writers never wait for a backup. Memory is bounded per part by
//! the channel, the workers' blocks and at most three files in flight, times the number
//! of parts running at once.

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
use std::ops::Bound;
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
    /// Paces uploads: asked before each file is written, with its size.
    pub pacer: Option<Pacer>,
    /// Restore: after loading, read every restored entry back through MVCC and check
    /// the table's checksum a second time (the first is over the decoded backup).
    pub read_back: bool,
}

/// Says how long to wait before writing `n` more bytes (rate limits, backing off when
/// foreground work suffers).
#[derive(Clone)]
pub struct Pacer(pub Arc<dyn Fn(u64) -> std::time::Duration + Send + Sync>);

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pacer")
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            compression_level: 1,
            parallelism: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            file_target: 16 << 20,
            encryption: None,
            pacer: None,
            read_back: false,
        }
    }
}

enum Msg {
    Block(RawBlock),
    End(Box<TableSum>),
}

enum Step {
    Block(SealedBlock),
    End(Box<TableSum>),
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("backup worker failed: {e}"))
}

/// A unit of export work: one key range of one table, scanned by its own thread. A
/// table's row prefix is split into several parts so that one big table is exported
/// in parallel; the other prefixes are one part each. Parts are in key order.
#[derive(Debug, Clone)]
struct Part {
    table: usize,
    seq: usize,
    prefix_no: usize,
    prefix_len: usize,
    range: KeyRange,
    row_prefix: usize,
}

/// Split keys dividing `[first, last]` into about `n` ranges, by interpolating the first
/// eight bytes after their common prefix (exact for sequential integer keys; uneven but
/// correct for anything else). Empty when the range is too small to split.
fn split_points(first: &[u8], last: &[u8], n: usize) -> Vec<Vec<u8>> {
    let common = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    let word = |k: &[u8]| {
        let mut b = [0u8; 8];
        for (i, x) in k[common..].iter().take(8).enumerate() {
            b[i] = *x;
        }
        u64::from_be_bytes(b)
    };
    let (a, z) = (word(first), word(last));
    if n < 2 || z.saturating_sub(a) < n as u64 * 2 {
        return Vec::new();
    }
    (1..n)
        .map(|i| {
            let v = a + ((u128::from(z - a) * i as u128) / n as u128) as u64;
            let mut k = first[..common].to_vec();
            k.extend_from_slice(&v.to_be_bytes());
            k
        })
        .collect()
}

/// Below this many entries a range is not split.
const SPLIT_MIN_ENTRIES: usize = 50_000;

/// Split keys for scanning `range` in about `n` pieces, or none if it is small. Many
/// short scans rather than a few long ones also keep engine iterators short-lived,
/// which lets the engine free memtables and old versions while a long export or
/// read-back runs.
pub(crate) fn range_splits(view: &ReadView, range: &KeyRange, n: usize) -> Result<Vec<Vec<u8>>> {
    if n < 2 || view.scan(range).take(SPLIT_MIN_ENTRIES).count() < SPLIT_MIN_ENTRIES {
        return Ok(Vec::new());
    }
    let first = view.scan(range).next().transpose()?;
    let last = view.scan_rev(range).next().transpose()?;
    Ok(match (first, last) {
        (Some((f, _)), Some((l, _))) => split_points(&f, &l, n),
        _ => Vec::new(),
    })
}

/// How many pieces a large range is split into for `workers` workers.
pub(crate) fn split_count(workers: usize) -> usize {
    (workers * 4).max(8)
}

/// The parts of every table, in key order.
fn plan_parts(view: &ReadView, tables: &[TableSpec], split: usize) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        let mut seq = 0;
        for (pi, prefix) in t.prefixes.iter().enumerate() {
            let whole = KeyRange::prefix(prefix);
            let mut bounds: Vec<Vec<u8>> = Vec::new();
            if pi == t.row_prefix {
                bounds = range_splits(view, &whole, split)?;
            }
            let mut start = whole.start.clone();
            for b in bounds {
                parts.push(Part {
                    table: ti,
                    seq,
                    prefix_no: pi,
                    prefix_len: prefix.len(),
                    range: KeyRange { start, end: Bound::Excluded(b.clone()) },
                    row_prefix: t.row_prefix,
                });
                seq += 1;
                start = Bound::Included(b);
            }
            parts.push(Part {
                table: ti,
                seq,
                prefix_no: pi,
                prefix_len: prefix.len(),
                range: KeyRange { start, end: whole.end.clone() },
                row_prefix: t.row_prefix,
            });
            seq += 1;
        }
    }
    Ok(parts)
}

/// Reads one part's entries at the view's version and feeds raw blocks to `tx`.
fn scan_part(view: ReadView, part: Part, tx: mpsc::Sender<Result<Msg>>, p: Arc<Progress>) {
    let mut sum = TableSum::new(part.row_prefix);
    let mut block = RawBlock::default();
    let scanned = view.scan_each(&part.range, |k, v| {
        sum.add(part.prefix_no, &k[part.prefix_len..], v);
        block.push(k, v);
        p.entries.fetch_add(1, Ordering::Relaxed);
        p.bytes.fetch_add((k.len() + v.len()) as u64, Ordering::Relaxed);
        if block.len() >= BLOCK_TARGET && tx.blocking_send(Ok(Msg::Block(std::mem::take(&mut block)))).is_err() {
            return Ok(false); // the writer failed and dropped the channel
        }
        Ok(true)
    });
    if let Err(e) = scanned {
        let _ = tx.blocking_send(Err(e));
        return;
    }
    if tx.is_closed() {
        return;
    }
    if !block.is_empty() && tx.blocking_send(Ok(Msg::Block(block))).is_err() {
        return;
    }
    let _ = tx.blocking_send(Ok(Msg::End(Box::new(sum))));
}

/// Makes sure `dest` can take a new backup: it must not hold a complete one. Files of an
/// interrupted backup (a snapshot directory without a manifest) are left alone — they
/// may belong to a backup still running, and nothing ever reads them; `backup delete`
/// removes them. Writes a fresh descriptor (with new key parameters when encrypting) and
/// returns the cipher.
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
    if !objects.is_empty() {
        tracing::warn!(
            destination = dest.url(),
            objects = objects.len(),
            "the destination holds files of an interrupted or running backup; they are left in place"
        );
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
    let cipher = prepare(dest, opts.encryption.as_ref()).await?;
    create_snapshot(mvcc, view, dest, kind, tables, opts, cipher, progress).await
}

/// Prepares `dest` for a new backup chain (it must not hold a complete backup), writes
/// its descriptor and returns the cipher new snapshots and logs are sealed with.
pub async fn start_chain(dest: &Destination, encryption: Option<&Secret>) -> Result<Option<Cipher>> {
    prepare(dest, encryption).await
}

/// Writes one more snapshot into a destination [`start_chain`] prepared (a continuous
/// backup takes one at its start and every `snapshot_interval`).
#[allow(clippy::too_many_arguments)]
pub async fn create_snapshot(
    mvcc: &Mvcc,
    view: ReadView,
    dest: &Destination,
    kind: BackupKind,
    tables: Vec<TableSpec>,
    opts: &Options,
    cipher: Option<Cipher>,
    progress: Arc<Progress>,
) -> Result<Manifest> {
    for t in &tables {
        if t.prefixes.windows(2).any(|w| w[0] >= w[1]) || t.row_prefix >= t.prefixes.len() {
            return Err(Error::Internal(format!("table {}: prefixes must be ascending", t.name)));
        }
    }
    let started_at = now_rfc3339();
    let version = view.version();
    let commit_time_micros = mvcc.state_time(version)?.unwrap_or_else(|| mvcc.applied().time);
    let dir = Manifest::dir_of(version);
    let ctx = Ctx { mvcc, version, dest, dir: &dir, opts, cipher: cipher.clone(), progress };
    let result = write_snapshot(view, &ctx, &tables).await;
    let (mut table_manifests, files) = match result {
        Ok(r) => r,
        Err(e) => {
            // Leave nothing behind that a later backup would have to explain.
            let leftovers = dest.list(&dir).await.unwrap_or_else(|le| {
                tracing::warn!(error = %le, "could not list the files of the failed backup to remove them");
                Vec::new()
            });
            for (p, _) in leftovers {
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
    // Defence in depth before the manifest claims them: every file is there, whole.
    let present: std::collections::HashMap<String, u64> = dest.list(&dir).await?.into_iter().collect();
    for f in &manifest.files {
        let rel = format!("{dir}/{}", f.path);
        if present.get(&rel) != Some(&f.size) {
            return Err(Error::Io(format!("{} vanished or changed before the manifest was written", dest.name(&rel))));
        }
    }
    dest.put_new(&Manifest::path_of(version), Bytes::from(manifest.encode(cipher.as_ref())?)).await?;
    Ok(manifest)
}

type Upload = tokio::task::JoinHandle<Result<FileManifest>>;

/// Context shared by the parts of one export.
struct Ctx<'a> {
    mvcc: &'a Mvcc,
    version: u64,
    dest: &'a Destination,
    dir: &'a str,
    opts: &'a Options,
    cipher: Option<Cipher>,
    progress: Arc<Progress>,
}

async fn write_snapshot(
    view: ReadView,
    ctx: &Ctx<'_>,
    tables: &[TableSpec],
) -> Result<(Vec<TableManifest>, Vec<FileManifest>)> {
    let workers = ctx.opts.parallelism.max(1);
    let parts = plan_parts(&view, tables, split_count(workers))?;
    let results: Vec<(Part, Vec<FileManifest>, TableSum)> = futures::stream::iter(parts)
        .map(|part| export_part(ctx, part))
        .buffered(workers)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    drop(view);
    let mut sums: Vec<TableSum> = tables.iter().map(|t| TableSum::new(t.row_prefix)).collect();
    let mut files = Vec::new();
    for (part, part_files, sum) in results {
        sums[part.table].merge(&sum);
        files.extend(part_files);
    }
    // Paths sort as (table, part, file): the manifest lists each table's files in key order.
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let table_manifests = sums
        .iter()
        .enumerate()
        .map(|(ti, sum)| TableManifest {
            name: String::new(),
            schema: serde_json::Value::Null,
            prefixes: Vec::new(),
            row_prefix: 0,
            rows: sum.rows,
            entries: sum.entries,
            logical_bytes: sum.logical_bytes,
            checksum: sum.finish(),
            files: files.iter().enumerate().filter(|(_, f)| f.table == ti).map(|(i, _)| i).collect(),
        })
        .collect();
    Ok((table_manifests, files))
}

/// Exports one part: its own scanner thread, compression workers, file assembler and
/// uploads. Returns its files (in key order) and its logical checksum.
async fn export_part(ctx: &Ctx<'_>, part: Part) -> Result<(Part, Vec<FileManifest>, TableSum)> {
    // Each part reads through its own registered view at the snapshot's version (the
    // caller's view keeps that version from GC meanwhile).
    let view = ctx.mvcc.read_at(ctx.version)?;
    let (tx, rx) = mpsc::channel(4);
    let p = ctx.progress.clone();
    let scanned = part.clone();
    let scanner = tokio::task::spawn_blocking(move || scan_part(view, scanned, tx, p));
    let level = ctx.opts.compression_level;
    let block_cipher = ctx.cipher.clone();
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
                    Msg::End(sum) => Ok(Step::End(sum)),
                }
            }
        })
        .buffered(2));

    let mut uploads: FuturesUnordered<Upload> = FuturesUnordered::new();
    let mut files: Vec<FileManifest> = Vec::new();
    let mut writer = RangeFileWriter::default();
    let mut file_seq = 0usize;
    let mut flush = |writer: &mut RangeFileWriter| -> Upload {
        let w = std::mem::take(writer);
        let rel_in_snapshot = format!("ranges/{:05}-{:04}-{:04}.amr", part.table, part.seq, file_seq);
        file_seq += 1;
        let rel = format!("{}/{rel_in_snapshot}", ctx.dir);
        let dest = ctx.dest.clone();
        let progress = ctx.progress.clone();
        let cipher = ctx.cipher.clone();
        let table = part.table;
        let pacer = ctx.opts.pacer.clone();
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
            if let Some(p) = pacer {
                tokio::time::sleep((p.0)(size)).await;
            }
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

    let mut sum = None;
    while let Some(step) = steps.next().await {
        match step? {
            Step::Block(b) => {
                if !writer.is_empty() && writer.len() + b.size() > ctx.opts.file_target {
                    uploads.push(flush(&mut writer));
                }
                writer.add(b);
            }
            Step::End(s) => sum = Some(*s),
        }
        while uploads.len() >= 2 {
            if let Some(done) = uploads.next().await {
                files.push(done.map_err(join_err)??);
            }
        }
    }
    if !writer.is_empty() {
        uploads.push(flush(&mut writer));
    }
    while let Some(done) = uploads.next().await {
        files.push(done.map_err(join_err)??);
    }
    scanner.await.map_err(join_err)?;
    let sum = sum.ok_or_else(|| Error::Internal("backup scanner stopped early".into()))?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((part, files, sum))
}
