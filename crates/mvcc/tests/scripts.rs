//! Goldenscript tests for mvcc: isolation anomalies, time travel, GC, too-old reads.
//!
//! Commands (prefix with a transaction name, e.g. `t1: get a`):
//!   begin [readonly] [as_of=V] [as_of_time=SECS]   start a transaction
//!   get KEY...        set KEY=VALUE...       delete KEY...
//!   scan [FROM] [TO]  scan_rev [FROM] [TO]   commit    rollback
//! Global commands: `advance SECS`, `gc`, `dump`, `status`, `version_at SECS`,
//! `reset retention=SECS`. Times in scripts are seconds after the epoch of the test clock.
//! Speculation (writes ahead of a commit, as the Raft log store does during its fsync):
//! `speculate [version=V] KEY=VALUE|KEY="" ...` (default: the next free version; `""`
//! deletes), `publish` (applies the oldest speculated batch), `abandon FROM`, and
//! `reopen` (a restart on the same engine: pending speculations are lost, as in a crash).
//! Heads of published versions are held in memory (with a write record in the engine)
//! until `persist_heads` writes them: the store runs without its background writer here.

use amberdb_mvcc::{
    ApplyItem, CommitBatch, ConflictWindowConfig, LocalSequencer, ManualClock, Mutation, Mvcc, MvccConfig, Transaction,
};
use amberdb_storage::{Durability, Engine, KeyRange, Memory};
use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

const EPOCH: u64 = 1_700_000_000_000_000;

struct Runner {
    seq: LocalSequencer,
    clock: Arc<ManualClock>,
    engine: Arc<Memory>,
    txns: HashMap<String, Transaction>,
    retention: Duration,
    /// Speculated batches awaiting `publish`, oldest first.
    speculated: Vec<(u64, CommitBatch)>,
}

impl Runner {
    fn new(retention_secs: u64) -> Self {
        let engine = Arc::new(Memory::new());
        let clock = Arc::new(ManualClock::new(EPOCH));
        Self::open(engine, clock, Duration::from_secs(retention_secs))
    }

    fn open(engine: Arc<Memory>, clock: Arc<ManualClock>, retention: Duration) -> Self {
        let mvcc =
            Mvcc::open(engine.clone(), MvccConfig { retention, background_heads: false }, clock.clone()).unwrap();
        let seq = LocalSequencer::new(Arc::new(mvcc), ConflictWindowConfig::default(), Durability::Buffered);
        Self { seq, clock, engine, txns: HashMap::new(), retention, speculated: Vec::new() }
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn secs(t: u64) -> String {
    let d = t - EPOCH;
    if d.is_multiple_of(1_000_000) {
        format!("{}s", d / 1_000_000)
    } else {
        format!("{}.{:06}s", d / 1_000_000, d % 1_000_000)
    }
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        command: &goldenscript::Command,
        context: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        let mut out = String::new();
        let mut args = command.consume_args();
        let mvcc = self.seq.mvcc().clone();
        if let Some(name) = &context.prefix {
            let name = name.clone();
            if command.name == "begin" {
                let mut readonly = false;
                let mut view = None;
                while let Some(a) = args.next_pos() {
                    if a == "readonly" {
                        readonly = true
                    } else {
                        return Err(format!("bad arg {a}").into());
                    }
                }
                if let Some(v) = args.take_key("as_of") {
                    view = Some(mvcc.read_at(v.parse()?)?);
                    readonly = true;
                }
                if let Some(t) = args.take_key("as_of_time") {
                    let t: f64 = t.parse()?;
                    view = Some(mvcc.read_at_time(EPOCH + (t * 1e6) as u64)?);
                    readonly = true;
                }
                args.reject_next()?;
                let view = match view {
                    Some(v) => v,
                    None => mvcc.read_latest()?,
                };
                let txn = if readonly { Transaction::read_only(view) } else { Transaction::new(view) };
                writeln!(
                    out,
                    "begin → read version {}{}",
                    txn.read_version(),
                    if readonly { " (read-only)" } else { "" }
                )?;
                self.txns.insert(name, txn);
                return Ok(out);
            }
            let txn = self.txns.get_mut(&name).ok_or(format!("no transaction {name}"))?;
            match command.name.as_str() {
                "get" => {
                    while let Some(k) = args.next_pos() {
                        let v = txn.get(k.as_bytes())?;
                        writeln!(out, "{k} → {}", v.as_deref().map(show).unwrap_or_else(|| "None".into()))?;
                    }
                }
                "set" => {
                    while let Some((k, v)) = args.next_key() {
                        txn.put(k.as_bytes().to_vec(), v.as_bytes().to_vec())?;
                    }
                }
                "delete" => {
                    while let Some(k) = args.next_pos() {
                        txn.delete(k.as_bytes().to_vec())?;
                    }
                }
                "scan" | "scan_rev" => {
                    let from =
                        args.next_pos().map(|s| Bound::Included(s.as_bytes().to_vec())).unwrap_or(Bound::Unbounded);
                    let to =
                        args.next_pos().map(|s| Bound::Excluded(s.as_bytes().to_vec())).unwrap_or(Bound::Unbounded);
                    let range = KeyRange { start: from, end: to };
                    let iter = if command.name == "scan" { txn.scan(range) } else { txn.scan_rev(range) };
                    for kv in iter {
                        let (k, v) = kv?;
                        writeln!(out, "{} = {}", show(&k), show(&v))?;
                    }
                }
                "commit" => {
                    let txn = self.txns.remove(&name).ok_or("gone")?;
                    let info = self.seq.commit(txn)?;
                    writeln!(out, "commit → version {} at {}", info.version, secs(info.time))?;
                }
                "rollback" => {
                    self.txns.remove(&name);
                }
                other => return Err(format!("unknown command {other}").into()),
            }
            args.reject_next()?;
            return Ok(out);
        }
        match command.name.as_str() {
            "advance" => {
                let s: f64 = args.next_pos().ok_or("seconds")?.parse()?;
                self.clock.advance((s * 1e6) as u64);
            }
            "reset" => {
                let r: u64 = args.take_key("retention").ok_or("retention=")?.parse()?;
                *self = Runner::new(r);
            }
            "gc" => {
                let s = mvcc.gc()?;
                writeln!(
                    out,
                    "gc → watermark {} removed {} versions, {} index entries",
                    s.watermark, s.versions_removed, s.index_removed
                )?;
            }
            "status" => {
                let a = mvcc.applied();
                writeln!(
                    out,
                    "applied version {} at {}, gc watermark {}",
                    a.version,
                    if a.time == 0 { "-".into() } else { secs(a.time) },
                    mvcc.gc_watermark()
                )?;
            }
            "version_at" => {
                let t: f64 = args.next_pos().ok_or("seconds")?.parse()?;
                match mvcc.version_at_time(EPOCH + (t * 1e6) as u64)? {
                    Some((v, at)) => writeln!(out, "version {v} (committed at {})", secs(at))?,
                    None => writeln!(out, "no version")?,
                }
            }
            "speculate" => {
                let next = mvcc.applied().version + 1 + self.speculated.len() as u64;
                let version = match args.take_key("version") {
                    Some(v) => v.parse()?,
                    None => next,
                };
                let mut mutations = Vec::new();
                while let Some((k, v)) = args.next_key() {
                    let value = (!v.is_empty()).then(|| v.as_bytes().to_vec());
                    mutations.push(Mutation { key: k.as_bytes().to_vec(), value });
                }
                mutations.sort_by(|a, b| a.key.cmp(&b.key));
                let batch = CommitBatch { commit_time: mvcc.clock().now(), mutations };
                let taken = mvcc.speculate(version, &batch)?;
                writeln!(out, "speculate v{version} → {}", if taken { "written" } else { "skipped" })?;
                if taken {
                    self.speculated.push((version, batch));
                }
            }
            "publish" => {
                if self.speculated.is_empty() {
                    return Err("nothing speculated".into());
                }
                let (version, batch) = self.speculated.remove(0);
                mvcc.apply(&[ApplyItem::Commit(version, &batch)], &[], Durability::Buffered)?;
                writeln!(out, "published v{version}")?;
            }
            "abandon" => {
                let from: u64 = args.next_pos().ok_or("FROM")?.parse()?;
                mvcc.abandon_speculation(from)?;
                self.speculated.retain(|(v, _)| *v < from);
                writeln!(out, "speculated now {:?}", mvcc.speculated())?;
            }
            "reopen" => {
                self.txns.clear();
                *self = Runner::open(self.engine.clone(), self.clock.clone(), self.retention);
                writeln!(out, "reopened at version {}", self.seq.mvcc().applied().version)?;
            }
            "persist_heads" => {
                writeln!(out, "persisted {} heads", mvcc.persist_heads()?)?;
            }
            "dump" => {
                for kv in self.engine.scan(KeyRange::all()) {
                    let (k, v) = kv?;
                    writeln!(out, "{}", describe(&k, &v))?;
                }
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        args.reject_next()?;
        Ok(out)
    }
}

/// Decodes raw engine entries into a readable form (mirrors keys.rs; a change in the
/// layout shows up here as a diff).
fn describe(k: &[u8], v: &[u8]) -> String {
    use amberdb_encoding::keycode::KeyDecoder;
    let mut d = KeyDecoder::new(k);
    match d.tag().unwrap() {
        0 => {
            let name = d.string().unwrap();
            if name == "mvcc.speculated" {
                let ver = d.u64().unwrap();
                let mut r = amberdb_encoding::codec::Reader::new(v, "speculation record");
                let keys: Vec<String> = (0..r.varint().unwrap()).map(|_| show(r.bytes().unwrap())).collect();
                format!("meta {name} v{ver} = keys {}", keys.join(","))
            } else {
                format!("meta {name} = {v:?}")
            }
        }
        1 => {
            let key = d.bytes().unwrap();
            let ver = !d.u64().unwrap();
            let val = match v.split_first() {
                Some((1, rest)) => show(rest),
                _ => "tombstone".into(),
            };
            format!("data {}@{} = {}", show(&key), ver, val)
        }
        2 => format!("time-index v{} = {}", d.u64().unwrap(), secs(u64::from_le_bytes(v.try_into().unwrap()))),
        3 => {
            let t = d.u64().unwrap();
            format!("version-index {} = v{}", secs(t), d.u64().unwrap())
        }
        4 => format!("head {} → v{}", show(&d.bytes().unwrap()), u64::from_le_bytes(v.try_into().unwrap())),
        t => format!("unknown tag {t}"),
    }
}

test_each_file::test_each_path! { in "crates/mvcc/tests/scripts" as scripts => test_goldenscript }

fn test_goldenscript(path: &std::path::Path) {
    goldenscript::run(&mut Runner::new(3600), path).expect("goldenscript failed")
}
