//! Core benchmarks (not tests): commits/s at N concurrent writers, point reads/s, scan
//! MB/s. Each run prints one JSON line; `scripts/bench core` interleaves runs with
//! PostgreSQL 15 and writes `docs/BENCHMARKS.md`.

use crate::config::Config;
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `amberdb bench …`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCmd {
    /// Single-key read-write transactions from N concurrent writers.
    Commits {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
    },
    /// Random point reads over N preloaded keys.
    Reads {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        keys: usize,
        #[arg(long, default_value_t = 2)]
        readers: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// A full ordered scan over N preloaded keys.
    Scan {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        keys: usize,
    },
}

/// Peak resident set size of this process in KiB (VmHWM), 0 if unknown.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn key(i: usize) -> Vec<u8> {
    format!("bench/{i:010}").into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.cmd {
        BenchCmd::Commits { dir, writers, seconds, value_size } => commits(dir, writers, seconds, value_size).await,
        BenchCmd::Reads { dir, keys, readers, seconds } => reads(dir, keys, readers, seconds).await,
        BenchCmd::Scan { dir, keys } => scan(dir, keys).await,
    }
}

async fn commits(dir: PathBuf, writers: usize, seconds: f64, value_size: usize) -> Result<()> {
    if writers == 0 {
        return Err(Error::InvalidInput("--writers must be at least 1".into()));
    }
    let node = crate::open_node(&dir, &Config::default()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let node = node.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let value = vec![b'v'; value_size];
            let mut retries = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("w{w:03}/{:08}", rng.random_range(0..1_000_000u32)).into_bytes();
                let start = Instant::now();
                loop {
                    let mut txn = node.begin()?;
                    txn.get(&k)?;
                    txn.put(k.clone(), value.clone())?;
                    match node.commit(txn).await {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => retries += 1,
                        Err(e) => return Err(e),
                    }
                }
                lat.push(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, Error>((lat, retries))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut retries = 0;
    for t in tasks {
        let (l, r) = t.await.map_err(|e| Error::Internal(e.to_string()))??;
        lat.extend(l);
        retries += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let status = node.status();
    let out = serde_json::json!({
        "bench": "commits",
        "writers": writers,
        "commits": lat.len(),
        "seconds": elapsed,
        "commits_per_sec": lat.len() as f64 / elapsed,
        "p50_ms": percentile(&lat, 0.5),
        "p99_ms": percentile(&lat, 0.99),
        "retries": retries,
        "log_fsyncs": status.log_fsyncs,
        "log_entries": status.log_entries,
        "log_appends": status.log_appends,
        "peak_rss_kb": peak_rss_kb(),
    });
    println!("{out}");
    node.shutdown().await
}

async fn preload(node: &amberdb_consensus::Node, keys: usize) -> Result<()> {
    let mut txn = node.begin_read_only()?;
    if txn.get(&key(keys - 1))?.is_some() {
        return Ok(());
    }
    drop(txn);
    let value = vec![b'x'; 100];
    for chunk in (0..keys).collect::<Vec<_>>().chunks(2_000) {
        let mut txn = node.begin()?;
        for &i in chunk {
            txn.put(key(i), value.clone())?;
        }
        node.commit(txn).await?;
    }
    Ok(())
}

async fn reads(dir: PathBuf, keys: usize, readers: usize, seconds: f64) -> Result<()> {
    if keys == 0 || readers == 0 {
        return Err(Error::InvalidInput("--keys and --readers must be at least 1".into()));
    }
    let node = crate::open_node(&dir, &Config::default()).await?;
    preload(&node, keys).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut threads = Vec::new();
    for _ in 0..readers {
        let node = node.clone();
        threads.push(std::thread::spawn(move || -> Result<u64> {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut n = 0u64;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    let mut txn = node.begin_read_only()?;
                    let k = key(rng.random_range(0..keys));
                    if txn.get(&k)?.is_none() {
                        return Err(Error::Internal(format!("preloaded key {} missing", String::from_utf8_lossy(&k))));
                    }
                    n += 1;
                }
            }
            Ok(n)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| Error::Internal("reader thread panicked".into()))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bench": "reads", "readers": readers, "keys": keys, "reads": total,
            "reads_per_sec": total as f64 / elapsed, "peak_rss_kb": peak_rss_kb()})
    );
    node.shutdown().await
}

async fn scan(dir: PathBuf, keys: usize) -> Result<()> {
    if keys == 0 {
        return Err(Error::InvalidInput("--keys must be at least 1".into()));
    }
    let node = crate::open_node(&dir, &Config::default()).await?;
    preload(&node, keys).await?;
    let mut txn = node.begin_read_only()?;
    let started = Instant::now();
    let (mut rows, mut bytes) = (0u64, 0u64);
    for kv in txn.scan(KeyRange::prefix(b"bench/")) {
        let (k, v) = kv?;
        rows += 1;
        bytes += (k.len() + v.len()) as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if rows != keys as u64 {
        return Err(Error::Internal(format!("scan saw {rows} rows, expected {keys}")));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "scan", "rows": rows, "bytes": bytes, "seconds": elapsed,
            "mb_per_sec": bytes as f64 / 1e6 / elapsed, "rows_per_sec": rows as f64 / elapsed, "peak_rss_kb": peak_rss_kb()})
    );
    drop(txn);
    node.shutdown().await
}
