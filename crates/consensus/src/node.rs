//! A node: the Raft group member that sequences commits and serves reads.
//!
//! ```text
//!  commit(txn) ──▶ conflict window ──(accepted)──▶ queue ──▶ Batcher: all queued txns → ONE entry
//!     ▲            (check + accept under one lock)             │ client_write_ff (1 in flight)
//!     │                                                        ▼
//!     │                                     Raft core ──▶ LogStore.append + fsync
//!     │                                                        │ committed (quorum = self)
//!     └──── CommitInfo{version, time} ◀── resolve tickets ◀── StateMachine.apply
//! ```
//!
//! openraft 0.9 fsyncs one append at a time, so group commit happens here: while an
//! entry is in flight, newly accepted transactions queue up and the next entry carries
//! them all, at one version. See `docs/architecture/consensus.md`.

use crate::log_store::{LogStore, LogStoreHandle};
use crate::network::NoPeers;
use crate::state_machine::StateMachine;
use crate::types::{Request, TypeConfig};
use amberdb_error::{Error, Result};
use amberdb_mvcc::{
    Clock, CommitBatch, CommitInfo, ConflictWindow, ConflictWindowConfig, Entry, Mutation, Mvcc, MvccConfig,
    StageReceipt, StagedWrites, Stager, Ticket, Timestamp, Transaction, Version,
};
use amberdb_storage::Engine;
use openraft::error::ClientWriteError;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify, Semaphore};

/// Tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id in the Raft group.
    pub node_id: u64,
    /// The address peers would use to reach this node (recorded in the membership).
    pub advertise_addr: String,
    /// Retention window and other mvcc settings.
    pub mvcc: MvccConfig,
    /// Conflict window limits.
    pub conflict: ConflictWindowConfig,
    /// Checkpoint the state machine (and allow purging the log) every this many entries.
    pub checkpoint_every: u64,
    /// Log entries kept behind a checkpoint (for followers that lag a little).
    pub keep_log_entries: u64,
    /// How often garbage collection of old versions runs.
    pub gc_interval: Duration,
    /// Bytes of buffered writes past which a transaction stages them (see
    /// [`amberdb_mvcc::Stager`]): the most a transaction holds in memory.
    pub stage_bytes: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            advertise_addr: "127.0.0.1:0".into(),
            mvcc: MvccConfig::default(),
            conflict: ConflictWindowConfig::default(),
            checkpoint_every: 20_000,
            keep_log_entries: 1_000,
            gc_interval: Duration::from_secs(60),
            stage_bytes: DEFAULT_STAGE_BYTES,
        }
    }
}

/// Default of [`NodeConfig::stage_bytes`].
pub const DEFAULT_STAGE_BYTES: usize = 16 << 20;

/// What a queued request becomes in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A commit (or an ingest): shares an entry with other commits.
    Commit,
    /// A stage of transaction `txn` (0: a new one). Alone in its entry, as are the rest.
    Stage { txn: u64 },
    /// The commit of a staged transaction.
    StagedCommit(StagedWrites),
    /// The abort of a staged transaction.
    Abort { txn: u64 },
}

/// A request waiting to be put in a log entry: a transaction accepted by the conflict
/// window, an ingest, or a staging request.
struct Pending {
    mutations: Vec<Mutation>,
    /// The conflict-window ticket; `None` for ingests, which the window never sees.
    ticket: Option<Ticket>,
    reply: oneshot::Sender<Result<CommitInfo>>,
    kind: Kind,
}

/// Prefix of the commit-log holds that keep a staged transaction's stage entries: while
/// it runs `stage-<txn>`, once committed `staged-<version>` (see [`Node::hold_log`]).
const STAGE_HOLD: &str = "stage-";
const STAGED_HOLD: &str = "staged-";

struct Sequencer {
    window: ConflictWindow,
    queue: VecDeque<Pending>,
    /// Set by `Node::shutdown`: nothing queued from then on would ever be answered.
    stopped: bool,
}

impl Sequencer {
    /// Queues `p`, or answers it at once if the node has stopped.
    fn push(&mut self, p: Pending) {
        if self.stopped {
            let _ = p.reply.send(Err(stopped_error()));
        } else {
            self.queue.push_back(p);
        }
    }
}

fn stopped_error() -> Error {
    Error::Unavailable("the node is shutting down; the request was not committed".into())
}

/// Largest write set one transaction may commit: a log entry must stay well below the
/// commit log's frame limit (256 MiB), and the whole set is held in memory until commit.
pub const MAX_TXN_BYTES: usize = 64 << 20;

/// Most transactions in one log entry, and most mutation bytes: bounds entry size.
const MAX_BATCH_TXNS: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Log entries in flight at once. One: openraft 0.9 appends, fsyncs and applies entries
/// strictly one after another anyway, so a second slot only split each group in two —
/// twice the fsyncs and per-entry work for the same transactions. Measured (64 writers,
/// 2 cores, ~0.3 ms fsync): 2 slots carried 21 transactions per entry at ~46k commits/s,
/// 1 slot carries 60 at ~62–70k with lower latency at every concurrency.
const MAX_IN_FLIGHT: usize = 1;

/// A running node. See the module docs.
pub struct Node {
    id: u64,
    raft: Raft<TypeConfig>,
    mvcc: Arc<Mvcc>,
    sequencer: Arc<Mutex<Sequencer>>,
    wake_batcher: Arc<Notify>,
    log: LogStore,
    _log_handle: LogStoreHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Exponentially weighted moving average of commit latency (µs, f64 bits): the
    /// signal background work (backups) backs off on.
    commit_latency: std::sync::atomic::AtomicU64,
    stager: Arc<NodeStager>,
}

/// The node's [`Stager`]: proposes stage and abort entries through the same queue as
/// commits (and holds the commit log from a transaction's first stage, for continuous
/// backups, which ship the stages again when the transaction commits).
struct NodeStager {
    sequencer: Arc<Mutex<Sequencer>>,
    wake: Arc<Notify>,
    log: LogStore,
    stage_bytes: usize,
}

impl NodeStager {
    fn enqueue(&self, mutations: Vec<Mutation>, kind: Kind) -> oneshot::Receiver<Result<CommitInfo>> {
        let (reply, rx) = oneshot::channel();
        self.sequencer.lock().expect("sequencer lock poisoned").push(Pending { mutations, ticket: None, reply, kind });
        self.wake.notify_one();
        rx
    }
}

impl Stager for NodeStager {
    fn stage(&self, txn: u64, writes: &[Mutation]) -> Result<StageReceipt> {
        check_size(writes)?;
        let rx = self.enqueue(writes.to_vec(), Kind::Stage { txn });
        // Statements run synchronously (on a worker moved aside with `block_in_place`,
        // or on a blocking thread): wait here for the stage to apply.
        let info = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(rx))
            }
            _ => {
                return Err(Error::Internal(
                    "a transaction can stage its writes only on a multi-threaded tokio runtime".into(),
                ))
            }
        }
        .unwrap_or_else(|_| Err(Error::Unavailable("the node stopped; the stage's outcome is unknown".into())))?;
        let txn = if txn == 0 { info.version } else { txn };
        if txn == info.version {
            self.log.set_hold(&format!("{STAGE_HOLD}{txn}"), info.version)?;
        }
        Ok(StageReceipt { txn, version: info.version })
    }

    fn abort(&self, txn: u64) {
        drop(self.enqueue(Vec::new(), Kind::Abort { txn }));
        if let Err(e) = self.log.release_hold(&format!("{STAGE_HOLD}{txn}")) {
            tracing::warn!(txn, error = %e, "could not release an aborted transaction's commit-log hold");
        }
    }

    fn stage_bytes(&self) -> usize {
        self.stage_bytes
    }
}

/// A bulk load's version, from [`Node::begin_bulk_load`].
#[derive(Clone)]
pub struct BulkLoadHandle {
    mvcc: Arc<Mvcc>,
    version: Version,
}

impl BulkLoadHandle {
    /// The version the entries are written at.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Runs `load` with a loader on this thread (blocking: call it from a worker) and
    /// finishes the load only if `load` succeeds; otherwise nothing becomes visible.
    pub fn run<T>(&self, load: impl FnOnce(&mut amberdb_mvcc::BulkLoad<'_>) -> Result<T>) -> Result<T> {
        let mut bl = self.mvcc.bulk_load(self.version)?;
        let out = load(&mut bl)?;
        bl.finish()?;
        spawn_head_builder(self.mvcc.clone());
        Ok(out)
    }
}

/// Adds heads to bulk-loaded (or pre-head) data in the background; reads are correct
/// meanwhile, only slower there (they seek).
fn spawn_head_builder(mvcc: Arc<Mvcc>) {
    let spawned = std::thread::Builder::new().name("amber-heads".into()).spawn(move || {
        if let Err(e) = mvcc.build_missing_heads() {
            tracing::error!(error = %e, "adding mvcc heads failed; reads there keep seeking until the next start");
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the mvcc head builder; reads keep seeking where heads are missing");
    }
}

/// One applied commit-log entry, as [`Node::read_log`] returns it.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Its version (= log index).
    pub version: Version,
    /// The commit's writes and proposed time; `None` for entries that change no data.
    /// The applied commit time is `max(proposed, previous commit's time + 1)`. For a
    /// staged commit, only the writes made after its last stage.
    pub batch: Option<CommitBatch>,
    /// For a staged commit, its stages: their writes ([`Node::read_stage`]) come
    /// before `batch`'s, all at this version. (Stage and abort entries themselves
    /// change no data: `batch` and `staged` are both `None` for them.)
    pub staged: Option<StagedWrites>,
}

/// A snapshot of a node's state for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// Newest applied version.
    pub applied_version: Version,
    /// Commit time of the newest applied commit.
    pub applied_time: Timestamp,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// GC watermark.
    pub gc_watermark: Version,
    /// Commit-log fsyncs so far (since start).
    pub log_fsyncs: u64,
    /// Log appends made durable by those fsyncs.
    pub log_appends: u64,
    /// Entries appended to the log.
    pub log_entries: u64,
}

fn raft_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Unavailable(format!("raft: {e}"))
}

impl Node {
    /// Opens the node: recovers the commit log in `raft_dir` and the state machine in
    /// `engine`, forms (or rejoins) its single-member group and waits until it leads
    /// and has re-applied every committed entry.
    pub async fn open(
        raft_dir: &Path,
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        config: NodeConfig,
    ) -> Result<Arc<Node>> {
        let mvcc = Arc::new(Mvcc::open(engine, config.mvcc.clone(), clock)?);
        if mvcc.has_headless() {
            spawn_head_builder(mvcc.clone());
        }
        let log = LogStore::open(raft_dir)?;
        log.write_ahead_into(mvcc.clone());
        let log_handle = LogStoreHandle::new(log.clone());
        let sm = StateMachine::open(mvcc.clone())?;
        let raft_config = openraft::Config {
            cluster_name: "amberdb".into(),
            heartbeat_interval: 100,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.checkpoint_every),
            max_in_snapshot_log_to_keep: config.keep_log_entries,
            max_payload_entries: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::InvalidInput(format!("raft config: {e}")))?;
        let raft =
            Raft::new(config.node_id, Arc::new(raft_config), NoPeers, log.clone(), sm).await.map_err(raft_err)?;
        if !raft.is_initialized().await.map_err(raft_err)? {
            let mut members = BTreeMap::new();
            members.insert(config.node_id, BasicNode { addr: config.advertise_addr.clone() });
            raft.initialize(members).await.map_err(raft_err)?;
        }
        // Wait until we lead and have applied everything in the log (the new leader's
        // blank entry commits every earlier entry).
        let target = log.last_index();
        let deadline = Duration::from_secs(60);
        raft.wait(Some(deadline))
            .metrics(
                |m| m.current_leader == Some(config.node_id) && m.last_applied.map(|l| l.index) >= target,
                "leader with log applied",
            )
            .await
            .map_err(|e| Error::Unavailable(format!("node {} did not become ready: {e}", config.node_id)))?;
        let applied = mvcc.applied();
        let sequencer = Arc::new(Mutex::new(Sequencer {
            window: ConflictWindow::new(config.conflict.clone(), applied.version),
            queue: VecDeque::new(),
            stopped: false,
        }));
        let wake_batcher = Arc::new(Notify::new());
        let batcher = Batcher {
            raft: raft.clone(),
            mvcc: mvcc.clone(),
            sequencer: sequencer.clone(),
            wake: wake_batcher.clone(),
            last_time: applied.time,
        };
        let tasks = vec![tokio::spawn(batcher.run()), tokio::spawn(gc_loop(mvcc.clone(), config.gc_interval))];
        let stager = Arc::new(NodeStager {
            sequencer: sequencer.clone(),
            wake: wake_batcher.clone(),
            log: log.clone(),
            stage_bytes: config.stage_bytes,
        });
        let node = Arc::new(Node {
            id: config.node_id,
            raft,
            mvcc,
            sequencer,
            wake_batcher,
            log,
            _log_handle: log_handle,
            tasks,
            commit_latency: std::sync::atomic::AtomicU64::new(0f64.to_bits()),
            stager,
        });
        node.abort_orphaned_stages().await?;
        tracing::info!(node = config.node_id, version = applied.version, "node ready");
        Ok(node)
    }

    /// A transaction does not outlive its node: staged writes found at start-up belong
    /// to transactions that can never commit. Aborts them (and waits, so that their
    /// staging area is gone before anyone begins) and frees the log they held.
    async fn abort_orphaned_stages(&self) -> Result<()> {
        for txn in self.mvcc.staged_transactions()? {
            tracing::info!(txn, "dropping the staged writes of a transaction that did not survive the restart");
            let rx = self.stager.enqueue(Vec::new(), Kind::Abort { txn });
            rx.await.unwrap_or_else(|_| Err(Error::Unavailable("the node stopped during start-up".into())))?;
        }
        for name in self.log.holds().into_keys().filter(|n| n.starts_with(STAGE_HOLD)) {
            self.log.release_hold(&name)?;
        }
        self.release_shipped_stages()
    }

    /// Releases the `staged-<version>` holds that no other hold needs any more: every
    /// other owner (a continuous backup) has moved past that staged commit.
    fn release_shipped_stages(&self) -> Result<()> {
        let holds = self.log.holds();
        let others = holds
            .iter()
            .filter(|(n, _)| !n.starts_with(STAGE_HOLD) && !n.starts_with(STAGED_HOLD))
            .map(|(_, v)| *v)
            .min();
        for name in holds.keys() {
            let Some(version) = name.strip_prefix(STAGED_HOLD).and_then(|v| v.parse::<Version>().ok()) else {
                continue;
            };
            if others.is_none_or(|o| o > version) {
                self.log.release_hold(name)?;
            }
        }
        Ok(())
    }

    /// The mvcc store (for reads and time travel).
    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.mvcc
    }

    /// Begins a read-write transaction at the newest applied version. It stages its
    /// writes past [`NodeConfig::stage_bytes`] (see [`amberdb_mvcc::Stager`]).
    pub fn begin(&self) -> Result<Transaction> {
        Ok(Transaction::new(self.mvcc.read_latest()?).with_stager(self.stager.clone()))
    }

    /// Begins a read-only transaction at the newest applied version.
    pub fn begin_read_only(&self) -> Result<Transaction> {
        Ok(Transaction::read_only(self.mvcc.read_latest()?))
    }

    /// Begins a read-only transaction at an older version.
    pub fn begin_as_of_version(&self, version: Version) -> Result<Transaction> {
        Ok(Transaction::read_only(self.mvcc.read_at(version)?))
    }

    /// Begins a read-only transaction as of a wall-clock time (µs since the Unix epoch).
    pub fn begin_as_of_time(&self, time: Timestamp) -> Result<Transaction> {
        Ok(Transaction::read_only(self.mvcc.read_at_time(time)?))
    }

    /// Commits a transaction: returns once its writes are durable in the commit log and
    /// applied. A conflict is a retryable `Serialization` error.
    ///
    /// Concurrent commits share log entries (and so fsyncs): transactions accepted while
    /// an entry is in flight go into the next one, all at that entry's version.
    pub async fn commit(&self, txn: Transaction) -> Result<CommitInfo> {
        txn.check_committable()?;
        let read_version = txn.read_version();
        // The read view stays registered until the request is checked (see
        // `Transaction::into_request_with_view`).
        let Some((mut req, _view)) = txn.into_request_with_view() else {
            return Ok(CommitInfo { version: read_version, time: self.mvcc.applied().time });
        };
        // Until it is queued, dropping the staged part aborts the stages.
        let staged = req.take_staged();
        check_size(&req.writes)?;
        let (reply, rx) = oneshot::channel();
        let kind = staged.as_ref().map_or(Kind::Commit, |s| Kind::StagedCommit(s.writes()));
        let accepted = {
            let mut seq = self.sequencer.lock().expect("sequencer lock poisoned");
            let applied = self.mvcc.applied().version;
            let oldest = self.mvcc.oldest_reader();
            if seq.stopped {
                Err(stopped_error())
            } else {
                seq.window.check_and_accept(&req, Instant::now(), applied, oldest).map(|ticket| {
                    seq.queue.push_back(Pending {
                        mutations: req.writes,
                        ticket: Some(ticket),
                        reply,
                        kind: kind.clone(),
                    })
                })
            }
        };
        // The read sets are checked: not held while the commit waits (an INSERT of
        // many rows read every key it wrote).
        drop(req.read_keys);
        drop(req.read_ranges);
        if let (Ok(()), Some(s)) = (&accepted, staged) {
            // The staged commit's apply disposes of the stages now (or, if its entry
            // never commits, the next start's clean-up).
            s.handed_over();
        }
        if let Err(e) = accepted {
            // A conflict is found without awaiting anything; yield so that a client
            // retrying in a tight loop cannot starve the tasks that would resolve the
            // commit it conflicts with.
            tokio::task::yield_now().await;
            return Err(e);
        }
        self.wake_batcher.notify_one();
        let started = Instant::now();
        match rx.await {
            Ok(result) => {
                if let Ok(info) = &result {
                    self.record_commit_latency(started.elapsed());
                    if let Kind::StagedCommit(w) = &kind {
                        // The commit stands whatever happens to the hold; a backup that
                        // then misses the stages fails loudly when it reads them.
                        if let Err(e) = self.tether_stages(w, info.version) {
                            tracing::error!(version = info.version, error = %e, "could not hold a staged commit's stages for continuous backups");
                        }
                    }
                }
                result
            }
            Err(_) => {
                Err(Error::Unavailable(format!("node {} is shutting down; the commit outcome is unknown", self.id)))
            }
        }
    }

    /// A staged transaction committed at `version`: its stage entries stay in the log
    /// (hold `staged-<version>`) until every continuous backup has shipped `version`,
    /// for which it reads them again ([`Node::read_stage`]).
    fn tether_stages(&self, w: &StagedWrites, version: Version) -> Result<()> {
        let held = format!("{STAGE_HOLD}{}", w.txn);
        if let Some(&from) = self.log.holds().get(&held) {
            self.log.set_hold(&format!("{STAGED_HOLD}{version}"), from)?;
            self.log.release_hold(&held)?;
        }
        self.release_shipped_stages()
    }

    fn record_commit_latency(&self, d: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let sample = d.as_secs_f64() * 1e6;
        // Lost updates between racing commits only blur an average.
        let old = f64::from_bits(self.commit_latency.load(Relaxed));
        let new = if old == 0.0 { sample } else { old * 0.95 + sample * 0.05 };
        self.commit_latency.store(new.to_bits(), Relaxed);
    }

    /// Recent commit latency (µs, a moving average over roughly the last 20 commits;
    /// 0 before the first).
    pub fn commit_latency_micros(&self) -> f64 {
        f64::from_bits(self.commit_latency.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Writes `mutations` (sorted by key, unique) as one commit WITHOUT conflict
    /// detection: no transaction's reads are checked against them and they never enter
    /// the conflict window. This is the bulk-load path of restores, and it is only
    /// serializable for keys no transaction reads before a later ordinary commit makes
    /// them reachable (a restore writes under a table id that no catalog entry names,
    /// then publishes the catalog entry in a normal, conflict-checked commit).
    pub async fn ingest(&self, mutations: Vec<Mutation>) -> Result<CommitInfo> {
        if mutations.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(Error::Internal("ingest: mutations must be sorted by key and unique".into()));
        }
        check_size(&mutations)?;
        let (reply, rx) = oneshot::channel();
        self.sequencer.lock().expect("sequencer lock poisoned").push(Pending {
            mutations,
            ticket: None,
            reply,
            kind: Kind::Commit,
        });
        self.wake_batcher.notify_one();
        rx.await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!("node {} is shutting down; the ingest outcome is unknown", self.id)))
        })
    }

    /// Starts a bulk load: commits an empty entry to obtain a fresh commit version and
    /// returns a loader that writes entries at that version straight into the engine's
    /// tables ([`Mvcc::bulk_load`]) — neither through the commit log nor through the
    /// conflict window, so only for keys no transaction can read yet (a restore's
    /// unpublished table id; see [`Node::ingest`] for the same argument). The entries
    /// are durable when the loader's `finish` returns. They are not in the commit log,
    /// so a future follower would not receive them: the cluster transport must ship a
    /// bulk load's source (a log entry naming verified backup files) instead.
    pub async fn begin_bulk_load(&self) -> Result<BulkLoadHandle> {
        let version = self.ingest(Vec::new()).await?.version;
        Ok(BulkLoadHandle { mvcc: self.mvcc.clone(), version })
    }

    /// Current status.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let applied = self.mvcc.applied();
        let (fsyncs, appends, entries) = self.log.flush_stats();
        NodeStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            applied_version: applied.version,
            applied_time: applied.time,
            last_log_index: self.log.last_index(),
            gc_watermark: self.mvcc.gc_watermark(),
            log_fsyncs: fsyncs,
            log_appends: appends,
            log_entries: entries,
        }
    }

    /// Keeps commit-log entries from `from` on (a version) until the hold named `name` is
    /// moved past them or released — a continuous backup holds what it has not shipped.
    /// Fails if they are already gone.
    pub fn hold_log(&self, name: &str, from: Version) -> Result<()> {
        self.log.set_hold(name, from)?;
        self.release_shipped_stages()
    }

    /// Releases the hold `name` (see [`Node::hold_log`]).
    pub fn release_log_hold(&self, name: &str) -> Result<()> {
        self.log.release_hold(name)?;
        self.release_shipped_stages()
    }

    /// The writes of the stage entry at `version` (named by a staged commit's
    /// [`LogRecord::staged`]), sorted by key. An error if it is no longer on disk or is
    /// not a stage.
    pub fn read_stage(&self, version: Version) -> Result<Vec<Mutation>> {
        let entries = self.log.read_committed(version, version + 1, usize::MAX)?;
        let raw = match entries.into_iter().next().map(|e| e.payload) {
            Some(openraft::EntryPayload::Normal(req)) => req.batch,
            _ => return Err(Error::InvalidData(format!("commit log: entry {version} is not a stage"))),
        };
        match Entry::decode(&raw)? {
            Entry::Stage { writes, .. } => amberdb_mvcc::collect_writes(writes),
            _ => Err(Error::InvalidData(format!("commit log: entry {version} is not a stage"))),
        }
    }

    /// The commit log's holds: owner → first version it keeps.
    pub fn log_holds(&self) -> BTreeMap<String, Version> {
        self.log.holds()
    }

    /// Reads applied commit-log entries from version `from` on, oldest first, stopping at
    /// the newest applied version or after about `max_bytes`. Every version in the range
    /// appears once: a commit with its batch, or a marker (leader change, membership)
    /// that changes no data. An error if the entries are no longer on disk.
    pub fn read_log(&self, from: Version, max_bytes: usize) -> Result<Vec<LogRecord>> {
        let end = self.mvcc.applied().version + 1;
        if from >= end {
            return Ok(Vec::new());
        }
        let entries = self.log.read_committed(from, end, max_bytes)?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let version = e.log_id.index;
            if version != from + i as u64 {
                return Err(Error::Internal(format!(
                    "commit log read: entry {version} where {} was expected",
                    from + i as u64
                )));
            }
            let (batch, staged) = match e.payload {
                openraft::EntryPayload::Normal(req) if version > 0 => match Entry::decode(&req.batch)? {
                    Entry::Commit(w) => (
                        Some(CommitBatch { commit_time: w.commit_time, mutations: amberdb_mvcc::collect_writes(w)? }),
                        None,
                    ),
                    Entry::StagedCommit { txn, stages, writes } => (
                        Some(CommitBatch {
                            commit_time: writes.commit_time,
                            mutations: amberdb_mvcc::collect_writes(writes)?,
                        }),
                        Some(StagedWrites { txn, stages }),
                    ),
                    Entry::Stage { .. } | Entry::Abort { .. } => (None, None),
                },
                _ => (None, None),
            };
            out.push(LogRecord { version, batch, staged });
        }
        Ok(out)
    }

    /// Asks Raft to checkpoint the state machine now (and purge the log behind it).
    pub async fn checkpoint(&self) -> Result<()> {
        self.raft.trigger().snapshot().await.map_err(raft_err)
    }

    /// Stops Raft and background tasks. In-flight commits fail with `Unavailable`.
    pub async fn shutdown(&self) -> Result<()> {
        self.tasks.iter().for_each(|t| t.abort());
        // Answer what the batcher will never take: a statement blocked on a stage (or
        // a commit waiting in the queue) must not wait for ever.
        let queued: Vec<Pending> = {
            let mut seq = self.sequencer.lock().expect("sequencer lock poisoned");
            seq.stopped = true;
            seq.queue.drain(..).collect()
        };
        finish(&self.sequencer, queued, Err(stopped_error()));
        self.raft.shutdown().await.map_err(|e| Error::Internal(format!("raft shutdown: {e}")))?;
        // Make applied state durable so the next start has nothing to replay.
        self.mvcc.engine().sync()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// Refuses a write set over [`MAX_TXN_BYTES`] (one commit-log entry must stay bounded).
fn check_size(writes: &[Mutation]) -> Result<()> {
    let bytes: usize = writes.iter().map(|m| m.key.len() + m.value.as_ref().map_or(0, Vec::len) + 16).sum();
    if bytes > MAX_TXN_BYTES {
        return Err(Error::InvalidInput(format!(
            "transaction too large: {} MiB of writes, the limit is {} MiB; split it into smaller transactions",
            bytes >> 20,
            MAX_TXN_BYTES >> 20
        )));
    }
    Ok(())
}

/// Turns queued transactions into log entries, one entry at a time per free slot.
struct Batcher {
    raft: Raft<TypeConfig>,
    mvcc: Arc<Mvcc>,
    sequencer: Arc<Mutex<Sequencer>>,
    wake: Arc<Notify>,
    /// Commit time of the last entry proposed: times follow log order.
    last_time: Timestamp,
}

impl Batcher {
    async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            // Wait for a free slot first: while both slots are busy, arrivals queue up and
            // the next entry carries all of them.
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let batch = loop {
                let batch = self.take_batch();
                if !batch.is_empty() {
                    break batch;
                }
                self.wake.notified().await;
            };
            let time = self.mvcc.clock().now().max(self.last_time + 1);
            self.last_time = time;
            // Last write per key wins, in acceptance order; sorted keys help the engine.
            // Each request's writes are already sorted and unique, so a lone request is
            // taken as it is; several are merged, moving (not copying) their writes.
            let mut batch = batch;
            let mutations = if batch.len() == 1 {
                std::mem::take(&mut batch[0].mutations)
            } else {
                let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                for p in &mut batch {
                    for m in std::mem::take(&mut p.mutations) {
                        merged.insert(m.key, m.value);
                    }
                }
                merged.into_iter().map(|(key, value)| Mutation { key, value }).collect()
            };
            let commit = CommitBatch { commit_time: time, mutations };
            let encoded = match &batch[0].kind {
                Kind::Commit => commit.encode(),
                Kind::Stage { txn } => Entry::encode_stage(*txn, &commit.mutations),
                Kind::StagedCommit(w) => Entry::encode_staged_commit(w.txn, &w.stages, &commit),
                Kind::Abort { txn } => Entry::encode_abort(*txn),
            };
            match self.raft.client_write_ff(Request { batch: encoded }).await {
                Ok(rx) => {
                    let sequencer = self.sequencer.clone();
                    tokio::spawn(async move {
                        let result = match rx.await {
                            Ok(Ok(resp)) => Ok(CommitInfo { version: resp.data.version, time: resp.data.time }),
                            Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(Error::Unavailable(format!(
                                "not the leader (leader: {:?}); the commit was not applied here",
                                f.leader_id
                            ))),
                            Ok(Err(e)) => Err(Error::Unavailable(format!("commit failed: {e}"))),
                            Err(_) => Err(Error::Unavailable("the node stopped; the commit outcome is unknown".into())),
                        };
                        finish(&sequencer, batch, result);
                        drop(slot);
                    });
                }
                Err(e) => {
                    finish(&self.sequencer, batch, Err(Error::Unavailable(format!("raft: {e}"))));
                    drop(slot);
                }
            }
        }
    }

    fn take_batch(&self) -> Vec<Pending> {
        let mut seq = self.sequencer.lock().expect("sequencer lock poisoned");
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(p) = seq.queue.front() {
            let size: usize = p.mutations.iter().map(|m| m.key.len() + m.value.as_ref().map_or(0, Vec::len)).sum();
            let alone = p.kind != Kind::Commit;
            if !batch.is_empty() && (alone || batch.len() >= MAX_BATCH_TXNS || bytes + size > MAX_BATCH_BYTES) {
                break;
            }
            bytes += size;
            batch.extend(seq.queue.pop_front());
            if alone {
                break;
            }
        }
        batch
    }
}

/// Resolves the batch's tickets and answers its transactions.
fn finish(sequencer: &Mutex<Sequencer>, batch: Vec<Pending>, result: Result<CommitInfo>) {
    let version = result.as_ref().ok().map(|c| c.version);
    {
        let mut seq = sequencer.lock().expect("sequencer lock poisoned");
        for p in &batch {
            if let Some(ticket) = p.ticket {
                seq.window.resolve(ticket, version);
            }
        }
    }
    for p in batch {
        // The client may have gone away; its commit stands regardless.
        let _ = p.reply.send(result.clone());
    }
}

async fn gc_loop(mvcc: Arc<Mvcc>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let m = mvcc.clone();
        match tokio::task::spawn_blocking(move || m.gc()).await {
            Ok(Ok(stats)) if stats.watermark > 0 => tracing::info!(?stats, "garbage-collected old versions"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "garbage collection failed"),
            Err(e) => tracing::error!(error = %e, "garbage collection task failed"),
        }
    }
}
