//! # `amberdb`: the one binary
//!
//! ```text
//!   amberdb server                 run a node (data in ./amberdb-data by default)
//!   amberdb backup create|list|show|verify|delete   manage backups (see docs/formats/backup.md)
//!   amberdb restore                restore into a running server or an empty data directory
//!   amberdb bench commits|reads|scan   measure the core (see docs/BENCHMARKS.md)
//!   amberdb debug workload|check   crash-test workload and its checker (tests use these)
//! ```
//!
//! Every subcommand opens the same [`amberdb_consensus::Node`] over the fjall engine, so
//! what the tests and benchmarks exercise is exactly what the server runs.

mod admin;
mod backup_cli;
mod bench;
mod config;
mod workload;

use amberdb_consensus::Node;

// mimalloc: the commit and restore paths allocate millions of small keys and values;
// glibc's per-thread arenas kept freed memory (restore peak RSS 3.7 GB for 650 MB of
// data) and malloc/free took a quarter of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use amberdb_error::{Error, Result};
use amberdb_mvcc::SystemClock;
use amberdb_storage::Fjall;
use clap::{Parser, Subcommand};
use config::Config;
use std::path::Path;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "amberdb",
    version,
    about = "AmberDB: a replicated, transactional SQL database built for recoverability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Server(config::ServerArgs),
    /// Create, list, show, verify and delete backups.
    Backup(backup_cli::BackupCommand),
    /// Restore a backup into a running server (--server) or an empty data directory
    /// (--data-dir, with no server running).
    Restore(backup_cli::RestoreArgs),
    /// Benchmarks of the core (commits, point reads, scans).
    Bench(bench::BenchArgs),
    /// Tools used by the crash tests.
    #[command(hide = true)]
    Debug(workload::DebugArgs),
}

/// Opens a node over the data directory's engine and commit log.
pub(crate) async fn open_node(data_dir: &Path, config: &Config) -> Result<Arc<Node>> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io(data_dir.display(), format!("create data directory: {e}")))?;
    let engine = Arc::new(Fjall::open(&data_dir.join("engine"))?);
    Node::open(&data_dir.join("raft"), engine, Arc::new(SystemClock), config.node_config()).await
}

/// Sorts, groupings and DISTINCT past `work_mem` spill into `<data dir>/tmp`. Their
/// files are unnamed (nothing to clean up after a crash); anything else found there is
/// left from elsewhere and removed.
fn configure_spill(config: &Config) -> Result<()> {
    let dir = config.data_dir.join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), format!("create spill directory: {e}")))?;
    let entries =
        std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display(), format!("list spill directory: {e}")))?;
    for entry in entries.flatten() {
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a leftover spill file");
        }
    }
    amberdb_sql::spill::configure(Some(dir), config.work_mem);
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMBERDB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn run_server(args: config::ServerArgs) -> Result<()> {
    let config = Config::load(&args)?;
    let node = open_node(&config.data_dir, &config).await?;
    configure_spill(&config)?;
    amberdb_sql::cleanup_pending_restores(&node).await?;
    let collector = tokio::spawn(collect_dropped_loop(node.clone()));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::io(&config.listen, format!("cannot listen for PostgreSQL clients: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::io(&config.listen, e))?;
    let http = tokio::net::TcpListener::bind(&config.http)
        .await
        .map_err(|e| Error::io(&config.http, format!("cannot listen for admin HTTP: {e}")))?;
    let http_addr = http.local_addr().map_err(|e| Error::io(&config.http, e))?;
    let status = node.status();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        version = status.applied_version,
        %addr,
        %http_addr,
        "amberdb ready: PostgreSQL protocol on {addr}, admin HTTP on {http_addr}; Ctrl-C or SIGTERM stops it"
    );
    // Scripts and tests read these lines to learn the ports (with port 0). Nobody may be
    // reading stdout, so a failed write is not an error.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "LISTENING {addr}")
            .and_then(|()| writeln!(out, "HTTP {http_addr}"))
            .and_then(|()| out.flush())
        {
            tracing::debug!(error = %e, "could not announce the listening addresses on stdout");
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_stop = stop_rx.clone();
    let backup_key = match &args.backup_key_file {
        Some(p) => Some(amberdb_backup::Secret::new(config::read_key_file(p)?)?),
        None => None,
    };
    let jobs = amberdb_sql::JobManager::new(node.clone(), config.backup.clone(), backup_key.clone());
    let resumed = jobs.start()?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "resumed continuous backup jobs");
    }
    let env = Arc::new(amberdb_sql::Env { backup: config.backup.clone(), jobs: Some(jobs), backup_key });
    let admin = tokio::spawn(admin::serve(http, node.clone(), env.clone(), async move {
        let _ = admin_stop.changed().await;
    }));
    let auth = amberdb_pgwire::AuthConfig { users: config.users.clone() };
    amberdb_pgwire::serve(listener, node.clone(), env, auth, async {
        if let Err(e) = wait_for_shutdown_signal().await {
            tracing::error!(error = %e, "signal handling failed; shutting down");
        }
    })
    .await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    match admin.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "admin HTTP ended with an error"),
        Err(e) => tracing::warn!(error = %e, "admin HTTP task failed"),
        Ok(Ok(())) => {}
    }
    collector.abort();
    node.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Deletes the data of dropped tables in the background (see `Catalog::drop_table`).
async fn collect_dropped_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Err(e) = amberdb_sql::collect_dropped_tables(&node).await {
            // Retried on the next tick; a conflict or shutdown is not worth a warning.
            if !e.is_retryable() {
                tracing::warn!(error = %e, "collecting dropped tables failed; retrying");
            }
        }
    }
}

async fn wait_for_shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::Internal(format!("install SIGTERM handler: {e}")))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| Error::Internal(format!("wait for Ctrl-C: {e}"))),
        _ = term.recv() => Ok(()),
    }
}

/// Turns transparent huge pages off for this process, as PostgreSQL's and Redis's
/// operators are told to do system-wide: the kernel then zeroes (and compacts for) 2 MiB
/// at a time on page faults of a growing memtable or read buffer, which showed up as
/// ~8 % of CPU and multi-millisecond commit latency spikes in the commit benchmark
/// (p99 at 64 writers: ~5–7 ms with THP, ~1.6 ms without).
fn disable_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "could not disable transparent huge pages for this process; carrying on");
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    disable_transparent_huge_pages();
    amberdb_backup::install_crypto_provider();
    // Statements run on these threads (sync execution in `block_in_place`): nested
    // views and subqueries recurse through the planner, so give them 8 MiB stacks.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(8 << 20).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => run_server(args).await,
            Command::Backup(cmd) => backup_cli::run_backup(cmd).await,
            Command::Restore(args) => backup_cli::run_restore(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Debug(args) => workload::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
