//! The crash-test workload and its checker.
//!
//! `amberdb debug workload` runs concurrent clients, each repeatedly moving a random
//! amount between two random accounts *and* recording the move in a ledger key, in one
//! transaction. After a commit returns it prints `ACK <ledger key> <version>` and
//! flushes: a line on stdout means "acknowledged to the client".
//!
//! `amberdb debug check` recovers the data directory and verifies:
//! - every account's balance equals its initial balance plus the moves in the ledger (a
//!   partially applied commit — a move without its ledger entry or the reverse — breaks
//!   this), and the total is unchanged;
//! - it prints every ledger key, so the test can check that every acknowledged commit
//!   survived.

use crate::config::Config;
use amberdb_error::{Error, Result};
use amberdb_storage::KeyRange;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// `amberdb debug …`
#[derive(Debug, clap::Args)]
pub struct DebugArgs {
    #[command(subcommand)]
    cmd: DebugCmd,
}

#[derive(Debug, clap::Subcommand)]
enum DebugCmd {
    /// Run the bank-transfer workload until killed (or for --seconds).
    Workload {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        accounts: usize,
        /// Distinguishes ledger keys of different runs.
        #[arg(long, default_value_t = 0)]
        run: u32,
        /// Stop after this many seconds (0 = run until killed).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Also run one bulk client: each of its transactions moves this many units
        /// between accounts 0 and 1 (which only it uses), one ledger entry per unit —
        /// with a 64 kB transaction buffer, so it is staged (0 = no bulk client).
        #[arg(long, default_value_t = 0)]
        bulk_rows: u32,
    },
    /// Recover the data directory and verify the workload's invariants.
    Check {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        accounts: usize,
    },
}

const INITIAL: i64 = 1000;

fn account(i: usize) -> Vec<u8> {
    format!("acct/{i:04}").into_bytes()
}

fn parse_i64(raw: &[u8], what: &str) -> Result<i64> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::InvalidData(format!("{what}: not an integer: {raw:?}")))
}

/// Runs a debug subcommand.
pub async fn run(args: DebugArgs) -> Result<()> {
    match args.cmd {
        DebugCmd::Workload { data_dir, clients, accounts, run, seconds, bulk_rows } => {
            workload(data_dir, clients, accounts, run, seconds, bulk_rows).await
        }
        DebugCmd::Check { data_dir, accounts } => check(data_dir, accounts).await,
    }
}

async fn workload(
    data_dir: PathBuf,
    clients: usize,
    accounts: usize,
    run: u32,
    seconds: u64,
    bulk_rows: u32,
) -> Result<()> {
    // The bulk client keeps accounts 0 and 1 to itself (it would always conflict).
    let first = if bulk_rows > 0 { 2 } else { 0 };
    if accounts < first + 2 {
        return Err(Error::InvalidInput(format!("--accounts must be at least {}", first + 2)));
    }
    let mut config = Config::default();
    if bulk_rows > 0 {
        config.transaction_buffer = 64 << 10;
    }
    let node = crate::open_node(&data_dir, &config).await?;
    loop {
        let mut txn = node.begin()?;
        if txn.get(b"meta/init")?.is_some() {
            break;
        }
        for i in 0..accounts {
            txn.put(account(i), INITIAL.to_string().into_bytes())?;
        }
        txn.put(b"meta/init".to_vec(), accounts.to_string().into_bytes())?;
        match node.commit(txn).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e),
        }
    }
    println!("READY");
    std::io::stdout().flush()?;
    let mut tasks = Vec::new();
    if bulk_rows > 0 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq: u64 = 0;
            loop {
                let ledger = |i: u32| format!("ledger/{run:04}/bulk/{seq:08}/{i:06}");
                let mut txn = node.begin()?;
                let a = parse_i64(&txn.get(&account(0))?.unwrap_or_default(), "balance")?;
                let b = parse_i64(&txn.get(&account(1))?.unwrap_or_default(), "balance")?;
                let (from, to) = if seq.is_multiple_of(2) { (0, 1) } else { (1, 0) };
                for i in 0..bulk_rows {
                    txn.put(ledger(i).into_bytes(), format!("{from},{to},1").into_bytes())?;
                }
                let n = i64::from(bulk_rows);
                let (a, b) = if from == 0 { (a - n, b + n) } else { (a + n, b - n) };
                txn.put(account(0), a.to_string().into_bytes())?;
                txn.put(account(1), b.to_string().into_bytes())?;
                let staged = txn.staged_txn().is_some();
                match node.commit(txn).await {
                    Ok(info) => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {} {} staged={staged}", ledger(0), info.version)?;
                        out.flush()?;
                        seq += 1;
                    }
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err::<(), Error>(e),
                }
            }
        }));
    }
    for client in 0..clients {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut seq: u64 = 0;
            loop {
                let from = rng.random_range(first..accounts);
                let to = first + (from - first + rng.random_range(1..accounts - first)) % (accounts - first);
                let amount: i64 = rng.random_range(1..=10);
                let ledger = format!("ledger/{run:04}/{client:03}/{seq:08}");
                let mut txn = node.begin()?;
                let a = parse_i64(&txn.get(&account(from))?.unwrap_or_default(), "balance")?;
                let b = parse_i64(&txn.get(&account(to))?.unwrap_or_default(), "balance")?;
                txn.put(account(from), (a - amount).to_string().into_bytes())?;
                txn.put(account(to), (b + amount).to_string().into_bytes())?;
                txn.put(ledger.clone().into_bytes(), format!("{from},{to},{amount}").into_bytes())?;
                match node.commit(txn).await {
                    Ok(info) => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {ledger} {}", info.version)?;
                        out.flush()?;
                        seq += 1;
                    }
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err::<(), Error>(e),
                }
            }
        }));
    }
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let all = futures_join(tasks);
    if seconds > 0 {
        match tokio::time::timeout(std::time::Duration::from_secs(seconds), all).await {
            Ok(r) => r?,
            Err(_) => aborts.iter().for_each(|a| a.abort()),
        }
        node.shutdown().await?;
        Ok(())
    } else {
        all.await
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    for t in tasks {
        t.await.map_err(|e| Error::Internal(format!("client task: {e}")))??;
    }
    Ok(())
}

async fn check(data_dir: PathBuf, accounts: usize) -> Result<()> {
    let node = crate::open_node(&data_dir, &Config::default()).await?;
    let mut txn = node.begin_read_only()?;
    let mut balances: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for kv in txn.scan(KeyRange::prefix(b"acct/")) {
        let (k, v) = kv?;
        balances.insert(k, parse_i64(&v, "balance")?);
    }
    let mut expected: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    if !balances.is_empty() {
        if balances.len() != accounts {
            return Err(Error::InvalidData(format!("found {} accounts, expected {accounts}", balances.len())));
        }
        for i in 0..accounts {
            expected.insert(account(i), INITIAL);
        }
    }
    let mut out = std::io::stdout().lock();
    let mut ledger_entries = 0u64;
    for kv in txn.scan(KeyRange::prefix(b"ledger/")) {
        let (k, v) = kv?;
        let text = String::from_utf8_lossy(&v).into_owned();
        let parts: Vec<&str> = text.split(',').collect();
        let [from, to, amount] = parts.as_slice() else {
            return Err(Error::InvalidData(format!("bad ledger entry {text}")));
        };
        let parse = |s: &str| s.parse::<usize>().map_err(|_| Error::InvalidData(format!("bad ledger entry {text}")));
        let amount: i64 = amount.parse().map_err(|_| Error::InvalidData(format!("bad ledger entry {text}")))?;
        *expected.entry(account(parse(from)?)).or_insert(INITIAL) -= amount;
        *expected.entry(account(parse(to)?)).or_insert(INITIAL) += amount;
        writeln!(out, "LEDGER {}", String::from_utf8_lossy(&k))?;
        ledger_entries += 1;
    }
    if balances != expected {
        let diff: Vec<String> = expected
            .iter()
            .filter(|(k, v)| balances.get(*k) != Some(v))
            .take(5)
            .map(|(k, v)| format!("{}: have {:?}, ledger says {v}", String::from_utf8_lossy(k), balances.get(k)))
            .collect();
        return Err(Error::InvalidData(format!(
            "balances disagree with the ledger (partial commit?): {}",
            diff.join("; ")
        )));
    }
    let total: i64 = balances.values().sum();
    if !balances.is_empty() && total != INITIAL * accounts as i64 {
        return Err(Error::InvalidData(format!("total balance {total} != {}", INITIAL * accounts as i64)));
    }
    // Staged writes of transactions cut off by the kill are gone once the node is open.
    let staged = node.mvcc().staged_transactions()?;
    if !staged.is_empty() {
        return Err(Error::InvalidData(format!("staged writes of dead transactions remain: {staged:?}")));
    }
    writeln!(out, "OK accounts={} ledger={ledger_entries} version={}", balances.len(), txn.read_version())?;
    out.flush()?;
    drop(txn);
    node.shutdown().await
}
