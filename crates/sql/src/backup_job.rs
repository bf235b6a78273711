//! Continuous backup jobs: ship every commit to a destination, snapshot periodically.
//!
//! ```text
//!            ┌──────────────────────── job (tokio task) ─────────────────────────┐
//!  commit ─▶ │ commit log ──read_log(shipped+1..)──▶ encode segment (worker) ──▶ │──▶ logs/<a>-<b>.aml
//!   log      │   ▲ hold(shipped+1): Raft may not purge what is not shipped       │    logs/<a>-<b>.json
//!            │   └──────────── move the hold after each segment is written ◀─────│
//!            │ every snapshot_interval: snapshot the database (beside shipping) ─│──▶ snapshots/<v>/…
//!            └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The job's settings and state (running, paused, stopped, destination) are a record in
//! the database (`0x15 u64(id)`), changed only by statements; *what has been shipped*
//! is never stored in the database — the destination is the truth. On start and after
//! any error the job re-reads the destination, resumes at the version after the last
//! one it holds, and re-takes the commit-log hold there. If those entries are gone (the
//! job was stopped, or the hold was lost), that is a gap: the job says so loudly and
//! starts a new restorable range with a fresh snapshot — it never claims coverage it
//! does not have.
//!
//! Invariants:
//! - A segment is written (data, then description) before the hold moves past it, so a
//!   crash at any point leaves either the segment or the entries to re-ship.
//! - Segments tile versions without gaps from the snapshot a range starts at; status
//!   reports only versions whose segment description is written.
//! - Shipping never commits anything, so an idle database produces no segments.

use crate::backup_sql::{database_view, BackupOptions};
use crate::catalog::Catalog;
use amberdb_backup::{BackupKind, Chain, Cipher, DestConfig, Destination, Origin, Progress, Secret};
use amberdb_consensus::Node;
use amberdb_error::{Error, Result};
use amberdb_mvcc::format_micros;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Bytes of commit log read into one segment at most.
const SEGMENT_BYTES: usize = 64 << 20;

/// What a job is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Ship continuously.
    Running,
    /// Ship nothing, but keep the commit log from the last shipped version (coverage
    /// resumes without a gap).
    Paused,
    /// Finished: the commit-log hold is released.
    Stopped,
}

/// A job's persisted settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: u64,
    /// Destination as given.
    pub destination: String,
    /// Requested state.
    pub state: JobState,
    /// Ship at least this often (ms).
    pub flush_interval_ms: u64,
    /// Take a new snapshot this often (s).
    pub snapshot_interval_s: u64,
    /// Report the job as lagging beyond this (s).
    pub max_lag_s: u64,
    /// zstd level.
    pub compression_level: i32,
    /// Workers for snapshots.
    pub parallelism: usize,
    /// Cap on bytes written per second (0 = none).
    #[serde(default)]
    pub rate_limit_bytes: u64,
    /// Sealed with the server's backup key.
    #[serde(default)]
    pub encrypted: bool,
    /// Back off while foreground commit latency is high (`pacing = 'adaptive'`).
    #[serde(default)]
    pub adaptive_pacing: bool,
    /// An incremental chain: idle between `BACKUP … WITH (incremental)` statements,
    /// holding the commit log from its last link.
    #[serde(default)]
    pub incremental: bool,
    /// When the job was created (RFC 3339).
    pub created_at: String,
}

impl JobRecord {
    /// A new job's record from the statement's options (defaults: ship every second,
    /// snapshot daily, lagging beyond 10 minutes).
    fn new(id: u64, dest: &str, state: JobState, options: &BackupOptions, encrypted: bool) -> Self {
        JobRecord {
            id,
            destination: dest.to_string(),
            state,
            flush_interval_ms: options.flush_interval.map_or(1000, |d| d.as_millis() as u64).max(10),
            snapshot_interval_s: options.snapshot_interval.map_or(86_400, |d| d.as_secs()).max(1),
            max_lag_s: options.max_lag.map_or(600, |d| d.as_secs()).max(1),
            compression_level: options.compression_level.unwrap_or(1),
            parallelism: options
                .parallelism
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
            rate_limit_bytes: options.rate_limit.unwrap_or(0),
            adaptive_pacing: options.adaptive_pacing,
            encrypted,
            incremental: false,
            created_at: amberdb_backup::now_rfc3339(),
        }
    }
}

/// A job's live figures (not persisted; rebuilt from the destination on start).
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStatus {
    /// Job id.
    pub id: u64,
    /// Destination.
    pub destination: String,
    /// `running`, `paused`, `stopped`, `starting`, `snapshotting`, `lagging`, `failing`.
    pub state: String,
    /// First version of the restorable range being extended.
    pub first_version: Option<u64>,
    /// Its commit time (µs).
    pub first_time_micros: Option<u64>,
    /// Newest restorable version (its segment is written).
    pub last_version: Option<u64>,
    /// Its commit time (µs).
    pub last_time_micros: Option<u64>,
    /// How far the newest restorable commit trails the newest commit (µs): the live RPO.
    pub lag_micros: u64,
    /// Bytes written since the server started.
    pub bytes_written: u64,
    /// Objects written since the server started.
    pub files_written: u64,
    /// Snapshots completed since the server started.
    pub snapshots: u64,
    /// Average bytes per second written since the job (re)started.
    pub throughput_bytes_per_sec: f64,
    /// The last error, if the latest attempt failed.
    pub last_error: Option<String>,
}

struct Job {
    record: watch::Sender<JobRecord>,
    status: Mutex<JobStatus>,
}

impl Job {
    fn status(&self) -> std::sync::MutexGuard<'_, JobStatus> {
        self.status.lock().expect("job status lock poisoned")
    }

    fn set_state(&self, s: &str) {
        self.status().state = s.to_string();
    }

    fn hold_name(&self) -> String {
        format!("backup-job-{}", self.record.borrow().id)
    }
}

/// Runs and controls the server's backup jobs.
pub struct JobManager {
    node: Arc<Node>,
    dest: DestConfig,
    /// The server's backup key (`--backup-key-file`): what encrypted jobs seal with,
    /// available again after a restart without anyone typing a passphrase.
    key: Option<Secret>,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager").finish_non_exhaustive()
    }
}

/// Parses a duration such as `500ms`, `1s`, `10m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| Error::sql("22023", format!("invalid duration \"{s}\"")))?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" | "min" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        u => return Err(Error::sql("22023", format!("invalid duration unit \"{u}\" (use ms, s, m, h or d)"))),
    };
    Ok(Duration::from_millis(ms))
}

impl JobManager {
    /// A manager with no jobs running; [`JobManager::start`] resumes persisted ones.
    pub fn new(node: Arc<Node>, dest: DestConfig, key: Option<Secret>) -> Arc<Self> {
        Arc::new(Self { node, dest, key, jobs: Mutex::new(BTreeMap::new()) })
    }

    /// The key a job with `encrypted` set seals with: the server's key file. A
    /// passphrase typed into the statement is refused, since the job could not get it
    /// back after a restart (and storing it would put the key into the database).
    fn job_key(&self, options: &BackupOptions) -> Result<Option<Secret>> {
        if options.encryption_passphrase.is_some() {
            return Err(Error::sql(
                "0A000",
                "continuous and incremental backups are encrypted with the server's key file (start the server \
                 with --backup-key-file and use WITH (encrypted)); a passphrase in the statement could not be \
                 recovered after a restart",
            ));
        }
        match (options.encrypted, &self.key) {
            (false, _) => Ok(None),
            (true, Some(k)) => Ok(Some(k.clone())),
            (true, None) => Err(Error::sql(
                "0A000",
                "WITH (encrypted) needs the server's backup key: start it with --backup-key-file",
            )),
        }
    }

    /// Opens a job's destination chain with the server key if it is encrypted.
    async fn open_chain(&self, dest: &Destination) -> Result<Chain> {
        Chain::open(dest, self.key.as_ref()).await.map_err(|e| match &self.key {
            None => Error::InvalidInput(format!("{} (start the server with --backup-key-file)", e.message())),
            Some(_) => e,
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Job>>> {
        self.jobs.lock().expect("job table lock poisoned")
    }

    /// Resumes every persisted job that is not stopped (run at start-up).
    pub fn start(self: &Arc<Self>) -> Result<usize> {
        let records = {
            let mut txn = self.node.begin_read_only()?;
            Catalog::jobs(&mut txn)?
        };
        let mut n = 0;
        for (id, raw) in records {
            let rec: JobRecord =
                serde_json::from_slice(&raw).map_err(|e| Error::InvalidData(format!("backup job record {id}: {e}")))?;
            if rec.state == JobState::Stopped {
                // Make sure a job stopped just before a crash holds nothing.
                self.node.release_log_hold(&format!("backup-job-{id}"))?;
            } else {
                n += 1;
            }
            self.spawn(rec);
        }
        Ok(n)
    }

    fn spawn(self: &Arc<Self>, rec: JobRecord) {
        let (tx, rx) = watch::channel(rec.clone());
        let job = Arc::new(Job {
            record: tx,
            status: Mutex::new(JobStatus {
                id: rec.id,
                destination: rec.destination.clone(),
                // What the record says until the runner reports (a paused job is paused
                // from the moment the server is up, not "starting").
                state: match rec.state {
                    JobState::Running => "starting",
                    JobState::Paused if rec.incremental => "incremental",
                    JobState::Paused => "paused",
                    JobState::Stopped => "stopped",
                }
                .into(),
                ..JobStatus::default()
            }),
        });
        self.jobs().insert(rec.id, job.clone());
        let me = self.clone();
        tokio::spawn(async move { me.supervise(job, rx).await });
    }

    /// Creates a continuous job for `dest`, waits for its first snapshot and returns
    /// the job's status then. The destination must not hold a backup yet.
    pub async fn create(self: &Arc<Self>, dest: &str, options: &BackupOptions) -> Result<JobStatus> {
        let key = self.job_key(options)?;
        let d = Destination::open(dest, &self.dest, Origin::Sql)?;
        amberdb_backup::start_chain(&d, key.as_ref()).await?;
        let mut txn = self.node.begin()?;
        let id = Catalog::allocate_job_id(&mut txn)?;
        let defaults = JobRecord::new(id, dest, JobState::Running, options, key.is_some());
        Catalog::put_job(&mut txn, id, &encode(&defaults)?)?;
        self.node.commit(txn).await?;
        self.spawn(defaults);
        // Wait for the first snapshot (or the first failure, which stops the job).
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = self.status(id)?;
            if s.first_version.is_some() {
                return Ok(s);
            }
            if let Some(e) = s.last_error {
                if let Err(se) = self.control(id, Control::Stop).await {
                    tracing::error!(job = id, error = %se, "could not stop the job whose first snapshot failed");
                }
                return Err(Error::Unavailable(format!("backup job {id} could not take its first snapshot: {e}")));
            }
        }
    }

    /// `BACKUP DATABASE TO dest WITH (incremental)`: into an empty destination, a full
    /// snapshot that starts an incremental chain (an idle job that holds the commit log
    /// from there); into a chain's destination, the commits since its last link, as log
    /// segments. Restores walk the chain: any commit in it can be restored.
    pub async fn incremental(self: &Arc<Self>, dest: &str, options: &BackupOptions) -> Result<Increment> {
        let key = self.job_key(options)?;
        let d = Destination::open(dest, &self.dest, Origin::Sql)?;
        let existing = self
            .jobs()
            .values()
            .find(|j| j.record.borrow().destination == dest && j.record.borrow().state != JobState::Stopped)
            .cloned();
        let Some(job) = existing else {
            // A new chain: the destination must be empty.
            let cipher = amberdb_backup::start_chain(&d, key.as_ref()).await?;
            let mut txn = self.node.begin()?;
            let id = Catalog::allocate_job_id(&mut txn)?;
            let rec =
                JobRecord { incremental: true, ..JobRecord::new(id, dest, JobState::Paused, options, key.is_some()) };
            Catalog::put_job(&mut txn, id, &encode(&rec)?)?;
            self.node.commit(txn).await?;
            let hold = format!("backup-job-{id}");
            self.node.hold_log(&hold, self.node.mvcc().applied().version + 1)?;
            let taken = take_snapshot(&self.node, &d, &rec, cipher).await;
            let (v, t) = match taken {
                Ok(vt) => vt,
                Err(e) => {
                    let mut txn = self.node.begin()?;
                    Catalog::put_job(&mut txn, id, &encode(&JobRecord { state: JobState::Stopped, ..rec })?)?;
                    self.node.commit(txn).await?;
                    self.node.release_log_hold(&hold)?;
                    return Err(e);
                }
            };
            self.node.hold_log(&hold, v + 1)?;
            self.spawn(rec);
            if let Some(job) = self.jobs().get(&id) {
                let mut s = job.status();
                (s.first_version, s.first_time_micros) = (Some(v), Some(t));
                (s.last_version, s.last_time_micros) = (Some(v), Some(t));
                s.snapshots += 1;
            }
            return Ok(Increment { job_id: id, full: true, version: v, commit_time_micros: t, bytes: 0, segments: 0 });
        };
        let rec = job.record.borrow().clone();
        let target = self.node.mvcc().applied().version;
        if rec.state == JobState::Running {
            // A continuous job already ships this destination: wait until it has this.
            loop {
                let s = job.status().clone();
                if let (Some(v), Some(t)) = (s.last_version, s.last_time_micros) {
                    if v >= target {
                        return Ok(Increment {
                            job_id: rec.id,
                            full: false,
                            version: v,
                            commit_time_micros: t,
                            bytes: 0,
                            segments: 0,
                        });
                    }
                }
                if let Some(e) = s.last_error {
                    return Err(Error::Unavailable(format!("backup job {} is failing: {e}", rec.id)));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let chain = self.open_chain(&d).await?;
        let Some((mut shipped, mut time)) = chain.resume_point() else {
            return Err(Error::InvalidData(format!("{} holds no snapshot to extend", d.url())));
        };
        let hold = job.hold_name();
        self.node.hold_log(&hold, shipped + 1).map_err(|e| {
            Error::sql(
                "55000",
                format!(
                    "the incremental chain at {} cannot be extended: {}; start a new chain in an empty destination",
                    d.url(),
                    e.message()
                ),
            )
        })?;
        let (mut bytes, mut segments) = (0, 0);
        while shipped < target {
            let level = rec.compression_level;
            let Some(sh) = ship_segment(&self.node, &d, &hold, shipped, time, level, chain.cipher.clone()).await?
            else {
                break;
            };
            (shipped, time) = (sh.last_version, sh.last_time);
            bytes += sh.bytes;
            segments += 1;
            let mut s = job.status();
            s.bytes_written += sh.bytes;
            s.files_written += sh.files;
            (s.last_version, s.last_time_micros) = (Some(shipped), Some(time));
        }
        Ok(Increment { job_id: rec.id, full: false, version: shipped, commit_time_micros: time, bytes, segments })
    }

    /// One job's status.
    pub fn status(&self, id: u64) -> Result<JobStatus> {
        let job = self.jobs().get(&id).cloned().ok_or_else(|| no_job(id))?;
        let s = job.status().clone();
        Ok(s)
    }

    /// Every job's status, by id, with the lag brought up to date.
    pub fn statuses(&self) -> Vec<JobStatus> {
        let jobs: Vec<Arc<Job>> = self.jobs().values().cloned().collect();
        let applied = self.node.mvcc().applied();
        jobs.iter()
            .map(|j| {
                let mut s = j.status().clone();
                if let (Some(v), Some(t)) = (s.last_version, s.last_time_micros) {
                    s.lag_micros = if v >= applied.version { 0 } else { applied.time.saturating_sub(t) };
                }
                let max_lag = j.record.borrow().max_lag_s.saturating_mul(1_000_000);
                if (s.state == "running" || s.state == "snapshotting") && s.lag_micros > max_lag {
                    s.state = "lagging".into();
                }
                s
            })
            .collect()
    }

    /// Pauses, resumes or stops a job, or points it at a new destination (which starts
    /// a new chain there with a fresh snapshot).
    pub async fn control(&self, id: u64, c: Control) -> Result<JobStatus> {
        let job = self.jobs().get(&id).cloned().ok_or_else(|| no_job(id))?;
        let mut rec = job.record.borrow().clone();
        match &c {
            Control::Pause | Control::Resume if rec.state == JobState::Stopped => {
                return Err(Error::sql("55000", format!("backup job {id} is stopped")));
            }
            Control::Pause => rec.state = JobState::Paused,
            Control::Resume => rec.state = JobState::Running,
            Control::Stop => rec.state = JobState::Stopped,
            Control::Destination(d) => {
                let dest = Destination::open(d, &self.dest, Origin::Sql)?;
                let key = if rec.encrypted { self.key.clone() } else { None };
                amberdb_backup::start_chain(&dest, key.as_ref()).await?;
                rec.destination = d.clone();
            }
        }
        let mut txn = self.node.begin()?;
        Catalog::put_job(&mut txn, id, &encode(&rec)?)?;
        self.node.commit(txn).await?;
        job.status().destination = rec.destination.clone();
        job.record.send_replace(rec);
        // Let the job notice, so the returned status reflects the change.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.status(id)
    }

    /// Keeps a job running across errors until it is stopped.
    async fn supervise(self: Arc<Self>, job: Arc<Job>, mut rx: watch::Receiver<JobRecord>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let rec = rx.borrow_and_update().clone();
            match rec.state {
                JobState::Stopped => {
                    job.set_state("stopped");
                    if let Err(e) = self.node.release_log_hold(&job.hold_name()) {
                        tracing::error!(job = rec.id, error = %e, "could not release the stopped job's commit-log hold");
                    }
                    return;
                }
                JobState::Paused => {
                    job.set_state(if rec.incremental { "incremental" } else { "paused" });
                    self.refresh_from_destination(&job, &rec).await;
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                JobState::Running => {}
            }
            match self.run(&job, &mut rx).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    tracing::error!(job = rec.id, destination = rec.destination, error = %e,
                        "continuous backup job failed; retrying (the commit log is kept from the last shipped version)");
                    {
                        let mut s = job.status();
                        s.state = "failing".into();
                        s.last_error = Some(e.message());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        r = rx.changed() => if r.is_err() { return },
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Fills an idle job's restorable range from its destination (best effort: a job
    /// that is not shipping only reports what is there).
    async fn refresh_from_destination(&self, job: &Job, rec: &JobRecord) {
        if job.status().last_version.is_some() {
            return;
        }
        let Ok(dest) = Destination::open(&rec.destination, &self.dest, Origin::Sql) else { return };
        match self.open_chain(&dest).await {
            Ok(chain) => {
                if let (Some((v, t)), ranges) = (chain.resume_point(), chain.ranges()) {
                    let mut s = job.status();
                    if let Some(r) = ranges.iter().find(|r| r.first_version <= v && v <= r.last_version) {
                        (s.first_version, s.first_time_micros) = (Some(r.first_version), Some(r.first_time_micros));
                    }
                    (s.last_version, s.last_time_micros) = (Some(v), Some(t));
                }
            }
            Err(e) => job.status().last_error = Some(e.message()),
        }
    }

    /// Resumes the job at its destination and ships until its record changes.
    async fn run(&self, job: &Job, rx: &mut watch::Receiver<JobRecord>) -> Result<()> {
        let rec = rx.borrow().clone();
        let node = &self.node;
        let dest = Destination::open(&rec.destination, &self.dest, Origin::Sql)?;
        let hold = job.hold_name();
        let chain = self.open_chain(&dest).await?;
        let cipher = chain.cipher.clone();
        // Where to resume: after the newest version the destination holds, if the
        // commit log still has what follows it.
        let resume = match chain.resume_point() {
            Some((v, t)) => match node.hold_log(&hold, v + 1) {
                Ok(()) => {
                    let range = chain.ranges().into_iter().find(|r| r.first_version <= v && v <= r.last_version);
                    Some((v, t, range.map(|r| (r.first_version, r.first_time_micros))))
                }
                Err(e) => {
                    tracing::error!(job = rec.id, destination = dest.url(), shipped_through = v, error = %e,
                        "continuous backup coverage GAP: commits after the destination's newest version are no \
                         longer in the commit log; starting a new restorable range with a fresh snapshot");
                    None
                }
            },
            None => None,
        };
        let mut newest_snapshot = chain.snapshots.last().map(|s| s.1);
        let (mut shipped, mut prev_time, first) = match resume {
            Some((v, t, first)) => (v, t, first.unwrap_or((v, t))),
            None => {
                job.set_state("snapshotting");
                node.hold_log(&hold, node.mvcc().applied().version + 1)?;
                let (v, t) = take_snapshot(&self.node, &dest, &rec, cipher.clone()).await?;
                job.status().snapshots += 1;
                node.hold_log(&hold, v + 1)?;
                newest_snapshot = Some(t);
                (v, t, (v, t))
            }
        };
        let mut last_snapshot = Instant::now()
            .checked_sub(Duration::from_micros(
                node.mvcc().clock().now().saturating_sub(newest_snapshot.unwrap_or(first.1)),
            ))
            .unwrap_or_else(Instant::now);
        {
            let mut s = job.status();
            s.state = "running".into();
            s.last_error = None;
            (s.first_version, s.first_time_micros) = (Some(first.0), Some(first.1));
            (s.last_version, s.last_time_micros) = (Some(shipped), Some(prev_time));
        }
        let mut snapshot_task: Option<tokio::task::JoinHandle<Result<(u64, u64)>>> = None;
        let mut lag_reported = Instant::now() - Duration::from_secs(3600);
        let flush = Duration::from_millis(rec.flush_interval_ms);
        let started = Instant::now();
        let mut written_here = 0u64;
        let pace = Pace::new(self.node.clone(), rec.rate_limit_bytes, rec.adaptive_pacing);
        loop {
            if rx.has_changed().unwrap_or(true) {
                // Settings changed (pause, stop, new destination): the supervisor decides.
                if let Some(t) = snapshot_task.take() {
                    t.abort();
                }
                return Ok(());
            }
            // Ship everything applied so far, in segments of bounded size.
            let mut behind = false;
            let shippable = ship_segment(node, &dest, &hold, shipped, prev_time, rec.compression_level, cipher.clone());
            if let Some(sh) = shippable.await? {
                (shipped, prev_time, behind) = (sh.last_version, sh.last_time, sh.behind);
                written_here += sh.bytes;
                {
                    let mut s = job.status();
                    s.bytes_written += sh.bytes;
                    s.files_written += sh.files;
                    (s.last_version, s.last_time_micros) = (Some(shipped), Some(prev_time));
                    s.throughput_bytes_per_sec = written_here as f64 / started.elapsed().as_secs_f64().max(1e-3);
                }
                let wait = pace.delay(sh.bytes);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            // Lag: loud when past the bound (the log is still held, nothing is lost).
            let applied = node.mvcc().applied();
            let lag = if shipped >= applied.version { 0 } else { applied.time.saturating_sub(prev_time) };
            {
                let mut s = job.status();
                s.lag_micros = lag;
                let lagging = lag > rec.max_lag_s * 1_000_000;
                s.state = if lagging {
                    "lagging".into()
                } else if snapshot_task.is_some() {
                    "snapshotting".into()
                } else {
                    "running".into()
                };
                if lagging && lag_reported.elapsed() > Duration::from_secs(10) {
                    lag_reported = Instant::now();
                    tracing::error!(
                        job = rec.id,
                        destination = dest.url(),
                        lag_seconds = lag / 1_000_000,
                        max_lag_seconds = rec.max_lag_s,
                        shipped_through = shipped,
                        "continuous backup is LAGGING beyond its bound; the commit log is kept until it catches up"
                    );
                }
            }
            // Periodic snapshots run beside shipping.
            if let Some(t) = &snapshot_task {
                if t.is_finished() {
                    let t = snapshot_task.take().expect("checked is_some");
                    match t.await {
                        Ok(Ok(_)) => job.status().snapshots += 1,
                        Ok(Err(e)) => {
                            tracing::error!(job = rec.id, error = %e, "periodic snapshot failed; retrying next interval");
                            job.status().last_error = Some(format!("snapshot: {}", e.message()));
                        }
                        Err(e) => tracing::error!(job = rec.id, error = %e, "periodic snapshot task failed"),
                    }
                    last_snapshot = Instant::now();
                }
            } else if last_snapshot.elapsed() >= Duration::from_secs(rec.snapshot_interval_s) {
                let (node, dest, rec, cipher) = (self.node.clone(), dest.clone(), rec.clone(), cipher.clone());
                snapshot_task = Some(tokio::spawn(async move { take_snapshot(&node, &dest, &rec, cipher).await }));
            }
            if !behind {
                tokio::select! {
                    _ = tokio::time::sleep(flush) => {}
                    _ = rx.changed() => {
                        if let Some(t) = snapshot_task.take() {
                            t.abort();
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What one shipped segment covered.
struct Shipped {
    last_version: u64,
    last_time: u64,
    bytes: u64,
    files: u64,
    /// The read hit its size bound: more is waiting.
    behind: bool,
}

/// Ships the applied commit log after `shipped` (whose state has commit time
/// `prev_time`) as one segment of bounded size, then moves the hold past it. `None` if
/// there was nothing to ship.
async fn ship_segment(
    node: &Node,
    dest: &Destination,
    hold: &str,
    shipped: u64,
    prev_time: u64,
    level: i32,
    cipher: Option<Cipher>,
) -> Result<Option<Shipped>> {
    let mut records = node.read_log(shipped + 1, SEGMENT_BYTES)?;
    // A staged commit ships alone, in a segment of its own whose parts are its stages.
    if let Some(pos) = records.iter().position(|r| r.staged.is_some()) {
        if pos == 0 {
            let staged = records.swap_remove(0);
            return ship_staged(node, dest, hold, staged, prev_time, level, cipher).await.map(Some);
        }
        records.truncate(pos);
    }
    let read_bytes: usize = records
        .iter()
        .filter_map(|r| r.batch.as_ref())
        .flat_map(|b| &b.mutations)
        .map(|m| m.key.len() + m.value.as_ref().map_or(0, Vec::len) + 16)
        .sum();
    let Some(last_version) = records.last().map(|r| r.version) else { return Ok(None) };
    let (seg, data) = tokio::task::spawn_blocking(move || {
        amberdb_backup::encode_segment(&records, prev_time, level, cipher.as_ref())
    })
    .await
    .map_err(|e| Error::Internal(format!("log segment worker: {e}")))??;
    let files = 1 + u64::from(data.is_some());
    let bytes = amberdb_backup::write_segment(dest, &seg, data).await?;
    node.hold_log(hold, last_version + 1)?;
    Ok(Some(Shipped {
        last_version,
        last_time: seg.last_time(),
        bytes,
        files,
        behind: read_bytes >= SEGMENT_BYTES / 2,
    }))
}

/// Ships the staged commit `rec` as a segment of its own: one part per stage, read back
/// from the commit log (which holds them for us, see `Node::read_stage`) one at a time,
/// and one for the writes after the last stage. Memory stays at one stage however
/// large the transaction.
async fn ship_staged(
    node: &Node,
    dest: &Destination,
    hold: &str,
    rec: amberdb_consensus::LogRecord,
    prev_time: u64,
    level: i32,
    cipher: Option<Cipher>,
) -> Result<Shipped> {
    let (Some(batch), Some(staged)) = (rec.batch, rec.staged) else {
        return Err(Error::Internal(format!("commit-log record {} is not a staged commit", rec.version)));
    };
    let version = rec.version;
    let mut seg = amberdb_backup::staged_segment(version, prev_time, batch.commit_time);
    let mut bytes = 0u64;
    let last = (!batch.mutations.is_empty()).then_some(batch.mutations);
    let parts = staged.stages.iter().map(Some).chain(std::iter::once(None));
    for (i, stage) in parts.enumerate() {
        let muts = match stage {
            Some(&s) => node.read_stage(s).map_err(|e| {
                Error::Internal(format!(
                    "continuous backup: the stages of the staged commit at version {version} are gone from the                      commit log: {}",
                    e.message()
                ))
            })?,
            None => match &last {
                Some(m) => m.clone(),
                None => break,
            },
        };
        let c = cipher.clone();
        let (d, data) =
            tokio::task::spawn_blocking(move || amberdb_backup::encode_part(version, &muts, level, c.as_ref()))
                .await
                .map_err(|e| Error::Internal(format!("log segment worker: {e}")))??;
        bytes += amberdb_backup::write_part(dest, &seg, i, data).await?;
        seg.parts.push(d);
    }
    let files = seg.parts.len() as u64 + 1;
    bytes += amberdb_backup::write_segment(dest, &seg, None).await?;
    node.hold_log(hold, version + 1)?;
    Ok(Shipped { last_version: version, last_time: seg.last_time(), bytes, files, behind: true })
}

/// Paces a backup's writes: an average rate cap, and (adaptive) a back-off while the
/// foreground commit latency is well above its recent floor.
pub(crate) struct Pace {
    node: Arc<Node>,
    rate_limit_bytes: u64,
    adaptive: bool,
    started: Instant,
    bytes: std::sync::atomic::AtomicU64,
    /// (latency floor µs, when it was last updated).
    floor: Mutex<(f64, Instant)>,
}

impl Pace {
    pub(crate) fn new(node: Arc<Node>, rate_limit_bytes: u64, adaptive: bool) -> Arc<Self> {
        Arc::new(Self {
            node,
            rate_limit_bytes,
            adaptive,
            started: Instant::now(),
            bytes: std::sync::atomic::AtomicU64::new(0),
            floor: Mutex::new((f64::MAX, Instant::now())),
        })
    }

    /// How long to wait before writing `n` more bytes.
    pub(crate) fn delay(&self, n: u64) -> Duration {
        let total = self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        let mut wait = Duration::ZERO;
        if self.rate_limit_bytes > 0 {
            let due = Duration::from_secs_f64(total as f64 / self.rate_limit_bytes as f64);
            wait = due.saturating_sub(self.started.elapsed());
        }
        if self.adaptive {
            wait = wait.max(self.backoff());
        }
        wait
    }

    /// The adaptive part: the floor is the lowest commit latency seen, allowed to drift
    /// up by 1 % a second (so a lasting change of workload becomes the new normal within
    /// about a minute); while latency is more than twice the floor, wait 50 ms per
    /// multiple of it (at most 2 s) before each write.
    fn backoff(&self) -> Duration {
        let lat = self.node.commit_latency_micros();
        if lat <= 0.0 {
            return Duration::ZERO;
        }
        let mut f = self.floor.lock().expect("pace lock poisoned");
        let drifted = if f.0 == f64::MAX { lat } else { f.0 * 1.01f64.powf(f.1.elapsed().as_secs_f64()) };
        *f = (lat.min(drifted), Instant::now());
        let ratio = lat / f.0.max(1.0);
        if ratio > 2.0 {
            Duration::from_millis((50.0 * ratio).min(2000.0) as u64)
        } else {
            Duration::ZERO
        }
    }

    /// As the backup crate's upload pacer.
    pub(crate) fn pacer(self: &Arc<Self>) -> amberdb_backup::Pacer {
        let me = self.clone();
        amberdb_backup::Pacer(Arc::new(move |n| me.delay(n)))
    }
}

/// Takes one snapshot of the database into a job's destination.
async fn take_snapshot(
    node: &Arc<Node>,
    dest: &Destination,
    rec: &JobRecord,
    cipher: Option<Cipher>,
) -> Result<(u64, u64)> {
    let (view, specs) = database_view(node, None)?;
    let pace = Pace::new(node.clone(), rec.rate_limit_bytes, rec.adaptive_pacing);
    let opts = amberdb_backup::Options {
        compression_level: rec.compression_level,
        parallelism: rec.parallelism.max(1),
        pacer: (rec.rate_limit_bytes > 0 || rec.adaptive_pacing).then(|| pace.pacer()),
        ..amberdb_backup::Options::default()
    };
    let m = amberdb_backup::create_snapshot(
        node.mvcc(),
        view,
        dest,
        BackupKind::Database,
        specs,
        &opts,
        cipher,
        Arc::new(Progress::default()),
    )
    .await?;
    tracing::info!(job = rec.id, destination = dest.url(), version = m.version,
        commit_time = %format_micros(m.commit_time_micros), "continuous backup snapshot complete");
    Ok((m.version, m.commit_time_micros))
}

/// What `BACKUP … WITH (incremental)` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Increment {
    /// The chain's job.
    pub job_id: u64,
    /// Whether this started the chain (a full snapshot).
    pub full: bool,
    /// The version the chain now reaches.
    pub version: u64,
    /// Its commit time (µs).
    pub commit_time_micros: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Log segments written.
    pub segments: u64,
}

/// A change to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Stop shipping, keep coverage.
    Pause,
    /// Ship again.
    Resume,
    /// End the job.
    Stop,
    /// Continue at a new destination.
    Destination(String),
}

fn encode(rec: &JobRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(rec).map_err(|e| Error::Internal(format!("encode backup job: {e}")))
}

fn no_job(id: u64) -> Error {
    Error::sql("42704", format!("backup job {id} does not exist"))
}
