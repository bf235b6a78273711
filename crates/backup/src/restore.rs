//! Restore: bulk-load a table's entries under new key prefixes, then prove it.
//!
//! ```text
//!   range files ──fetch+hash──▶ decode blocks (N workers) ──rewrite prefixes──▶ one bulk
//!   load (a fresh commit version; the engine's tables written directly, on a writer
//!   thread) ──▶ recompute the logical checksum by reading the restored keys back
//!   through MVCC ──▶ caller publishes the table
//!   log segments (PITR) ──▶ net change per key ──▶ ≤ 3 concurrent blind-write commits
//! ```
//! The entries land under prefixes no catalog entry points at, so nothing is visible
//! until the caller's final catalog commit. If anything fails, the caller removes what
//! was loaded with [`delete_prefixes`]; after a crash, the SQL layer's pending-restore
//! markers name the prefixes to remove.

use crate::chain::Plan;
use crate::dest::Destination;
use crate::export::{range_splits, split_count, Options};
use crate::log::{LogData, LogSegment, SegmentData};
use crate::manifest::{TableManifest, TableSum};
use crate::read::{table_blocks, Snapshot};
use crate::Progress;
use amberdb_consensus::Node;
use amberdb_error::{Error, Result};
use amberdb_mvcc::Mutation;
use amberdb_storage::KeyRange;
use futures::stream::{FuturesUnordered, StreamExt};
use std::ops::Bound;
use std::sync::atomic::Ordering;

const CHUNK_BYTES: usize = 4 << 20;
const COMMITS_IN_FLIGHT: usize = 3;

/// Loads table `t` of snapshot `snap` under `new_prefixes` (one per table prefix) and
/// checks the result against the manifest. Nothing is published.
pub async fn load_table(
    node: &Node,
    dest: &Destination,
    snap: &Snapshot,
    t: &TableManifest,
    new_prefixes: &[Vec<u8>],
    opts: &Options,
    progress: &Progress,
) -> Result<()> {
    let old = t.prefix_bytes()?;
    if old.len() != new_prefixes.len() {
        return Err(Error::Internal(format!(
            "table {}: {} prefixes to map onto {}",
            t.name,
            old.len(),
            new_prefixes.len()
        )));
    }
    let started = std::time::Instant::now();
    let mut sum = TableSum::new(t.row_prefix);
    let mut blocks = std::pin::pin!(table_blocks(dest, snap, t, opts.parallelism));
    // Decoded blocks go, in key order, to one writer that builds the engine's tables
    // directly (a bulk load); `None` tells it to finish, a closed channel to abandon.
    let load = node.begin_bulk_load().await?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<(Vec<u8>, Vec<u8>)>>>(4);
    let writer = tokio::task::spawn_blocking(move || {
        load.run(|bl| {
            for msg in rx {
                let Some(block) = msg else { return Ok(()) };
                for (k, v) in block {
                    bl.put(&k, &v)?;
                }
            }
            Err(Error::Abort("restore stopped before its data was complete".into()))
        })
    });
    let send = |msg| tx.send(msg).is_ok();
    let mut last: Vec<u8> = Vec::new();
    // (first, last) restored key under each new prefix, for the structural check.
    let mut bounds: Vec<Option<(Vec<u8>, Vec<u8>)>> = vec![None; new_prefixes.len()];
    let produced = async {
        while let Some(block) = blocks.next().await {
            let mut out = Vec::new();
            for (pi, k, v) in block? {
                if !last.is_empty() && k <= last {
                    return Err(Error::InvalidData(format!(
                        "backup of table {} in {}: keys out of order across files",
                        t.name,
                        dest.url()
                    )));
                }
                let suffix = &k[old[pi].len()..];
                sum.add(pi, suffix, &v);
                let mut nk = Vec::with_capacity(new_prefixes[pi].len() + suffix.len());
                nk.extend_from_slice(&new_prefixes[pi]);
                nk.extend_from_slice(suffix);
                progress.entries.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add((k.len() + v.len()) as u64, Ordering::Relaxed);
                match &mut bounds[pi] {
                    Some((_, l)) => l.clone_from(&nk),
                    b @ None => *b = Some((nk.clone(), nk.clone())),
                }
                out.push((nk, v));
                last = k;
            }
            if !send(Some(out)) {
                break; // the writer failed; its result says why
            }
        }
        Ok(())
    }
    .await;
    if produced.is_ok() {
        send(None);
    }
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(format!("bulk load writer: {e}")))?;
    produced?;
    written?;
    sum.check(t, &format!("restore from {}", dest.url()))?;
    let loaded = started.elapsed();
    // What landed is where it belongs: under each prefix, the first and last key read
    // through MVCC are the first and last loaded (and nothing else is there).
    {
        let view = node.mvcc().read_latest()?;
        for (p, b) in new_prefixes.iter().zip(&bounds) {
            let range = KeyRange::prefix(p);
            let first = view.scan(&range).next().transpose()?.map(|(k, _)| k);
            let last = view.scan_rev(&range).next().transpose()?.map(|(k, _)| k);
            let seen = first.zip(last);
            if seen.as_ref() != b.as_ref() {
                return Err(Error::Internal(format!(
                    "restore of table {}: the loaded key range does not read back as written",
                    t.name
                )));
            }
        }
    }
    if !opts.read_back {
        tracing::info!(table = t.name, entries = t.entries, load_ms = loaded.as_millis() as u64, "table restored");
        return Ok(());
    }
    // Read back everything that landed — a second proof that the table equals the
    // backup — in parallel ranges (the checksum does not depend on order).
    let version = node.mvcc().applied().version;
    let mut ranges = Vec::new();
    {
        let view = node.mvcc().read_at(version)?;
        for (pi, p) in new_prefixes.iter().enumerate() {
            let whole = KeyRange::prefix(p);
            let mut start = whole.start.clone();
            if pi == t.row_prefix {
                for b in range_splits(&view, &whole, split_count(opts.parallelism))? {
                    ranges.push((pi, p.len(), KeyRange { start, end: Bound::Excluded(b.clone()) }));
                    start = Bound::Included(b);
                }
            }
            ranges.push((pi, p.len(), KeyRange { start, end: whole.end.clone() }));
        }
    }
    let mvcc = node.mvcc().clone();
    let row_prefix = t.row_prefix;
    let sums: Vec<Result<TableSum>> = futures::stream::iter(ranges)
        .map(|(pi, plen, range)| {
            let mvcc = mvcc.clone();
            async move {
                tokio::task::spawn_blocking(move || -> Result<TableSum> {
                    let view = mvcc.read_at(version)?;
                    let mut sum = TableSum::new(row_prefix);
                    for kv in view.scan(&range) {
                        let (k, v) = kv?;
                        sum.add(pi, &k[plen..], &v);
                    }
                    Ok(sum)
                })
                .await
                .map_err(|e| Error::Internal(format!("read-back worker: {e}")))?
            }
        })
        .buffer_unordered(opts.parallelism.max(1))
        .collect()
        .await;
    let mut back = TableSum::new(t.row_prefix);
    for s in sums {
        back.merge(&s?);
    }
    back.check(t, "restored data read back")?;
    tracing::info!(
        table = t.name,
        entries = t.entries,
        load_ms = loaded.as_millis() as u64,
        read_back_ms = (started.elapsed() - loaded).as_millis() as u64,
        "table restored and verified"
    );
    Ok(())
}

/// Replays the plan's log segments over a table whose snapshot entries were loaded
/// under `new_prefixes` (or over nothing, for a table created after the snapshot): the
/// net change of every key under `old_prefixes` in `(snapshot version, target]`, moved
/// to the new prefixes. Segments are applied in version order; the blocks of one
/// segment hold disjoint keys and are written concurrently. Returns the number of keys
/// changed. Nothing is published.
///
/// With `ranged`, only the blocks touching the prefixes are read (a table restore);
/// otherwise each segment's data file is fetched whole and checked against its blake3.
#[allow(clippy::too_many_arguments)]
pub async fn replay_log(
    node: &Node,
    dest: &Destination,
    plan: &Plan,
    old_prefixes: &[Vec<u8>],
    new_prefixes: &[Vec<u8>],
    ranged: bool,
    opts: &Options,
    progress: &Progress,
) -> Result<u64> {
    if old_prefixes.len() != new_prefixes.len() {
        return Err(Error::Internal("replay: prefix lists differ in length".into()));
    }
    let after = plan.snapshot.manifest.version;
    let cipher = plan.snapshot.cipher.clone();
    let mut changed = 0u64;
    // Every data file in the order its writes apply (a segment's main file, then a
    // staged commit's parts); the next one is fetched while this one is applied.
    let files: Vec<(LogSegment, String, LogData)> = plan
        .segments
        .iter()
        .flat_map(|seg| seg.files().into_iter().map(|(path, d)| (seg.clone(), path, d.clone())))
        .collect();
    let mut fetches = std::pin::pin!(futures::stream::iter(files)
        .map(|(seg, path, d)| {
            let dest = dest.clone();
            async move {
                if ranged {
                    return Ok((seg, path, d, SegmentData::Ranged(dest)));
                }
                let whole = SegmentData::Whole(crate::log::fetch_data(&dest, &path, &d).await?);
                Ok::<_, Error>((seg, path, d, whole))
            }
        })
        .buffered(2));
    while let Some(fetched) = fetches.next().await {
        let (seg, path, d, source) = fetched?;
        let seg = &seg;
        let name = dest.name(&path);
        let blocks = crate::log::net_changes(
            source,
            seg,
            (&path, &d),
            name,
            cipher.clone(),
            old_prefixes,
            after + 1..=plan.target,
            opts.parallelism,
        )
        .await?;
        let mut inflight = FuturesUnordered::new();
        let mut chunk: Vec<Mutation> = Vec::new();
        let mut chunk_bytes = 0usize;
        for block in blocks {
            for (k, v) in block {
                let Some(pi) = old_prefixes.iter().position(|p| k.starts_with(p)) else { continue };
                let mut key = new_prefixes[pi].clone();
                key.extend_from_slice(&k[old_prefixes[pi].len()..]);
                chunk_bytes += key.len() + v.as_ref().map_or(0, Vec::len);
                progress.entries.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add((k.len() + v.as_ref().map_or(0, Vec::len)) as u64, Ordering::Relaxed);
                chunk.push(Mutation { key, value: v });
                changed += 1;
                if chunk_bytes >= CHUNK_BYTES {
                    chunk_bytes = 0;
                    inflight.push(ingest_sorted(node, std::mem::take(&mut chunk)));
                    while inflight.len() >= COMMITS_IN_FLIGHT {
                        if let Some(r) = inflight.next().await {
                            r?;
                        }
                    }
                }
            }
        }
        if !chunk.is_empty() {
            inflight.push(ingest_sorted(node, chunk));
        }
        while let Some(r) = inflight.next().await {
            r?;
        }
    }
    Ok(changed)
}

/// Moving several tables to new ids can reorder their keys: ingest wants them sorted.
async fn ingest_sorted(node: &Node, mut chunk: Vec<Mutation>) -> Result<()> {
    chunk.sort_by(|a, b| a.key.cmp(&b.key));
    node.ingest(chunk).await.map(|_| ())
}

/// The net change of every key under `prefixes` over the plan's log range, merged
/// across segments (for small key spaces such as the catalog), in key order.
pub async fn replay_changes(
    dest: &Destination,
    plan: &Plan,
    prefixes: &[Vec<u8>],
    opts: &Options,
) -> Result<Vec<crate::log::NetChange>> {
    let mut net = std::collections::BTreeMap::new();
    // Collected first: an iterator of closures held across the awaits below would make
    // this future's `Send` depend on higher-ranked lifetimes the compiler cannot prove.
    let files: Vec<(&LogSegment, String, &LogData)> =
        plan.segments.iter().flat_map(|s| s.files().into_iter().map(move |(p, d)| (s, p, d))).collect();
    for (seg, path, d) in files {
        // Only the blocks that touch the prefixes are read (each checked by its crc32c).
        let blocks = crate::log::net_changes(
            SegmentData::Ranged(dest.clone()),
            seg,
            (&path, d),
            dest.name(&path),
            plan.snapshot.cipher.clone(),
            prefixes,
            plan.snapshot.manifest.version + 1..=plan.target,
            opts.parallelism,
        )
        .await?;
        for (k, v) in blocks.into_iter().flatten() {
            net.insert(k, v);
        }
    }
    Ok(net.into_iter().collect())
}

/// Deletes every key under `prefixes`, in bounded transactions. Returns the count.
pub async fn delete_prefixes(node: &Node, prefixes: &[Vec<u8>]) -> Result<u64> {
    let mut n = 0u64;
    for p in prefixes {
        loop {
            let view = node.mvcc().read_latest()?;
            let keys: Vec<Vec<u8>> =
                view.scan(&KeyRange::prefix(p)).take(20_000).map(|kv| kv.map(|(k, _)| k)).collect::<Result<_>>()?;
            drop(view);
            if keys.is_empty() {
                break;
            }
            let mut txn = node.begin()?;
            n += keys.len() as u64;
            for k in keys {
                txn.delete(k)?;
            }
            node.commit(txn).await?;
        }
    }
    Ok(n)
}
