//! Held heads (`heads.rs`): reads racing the background heads writer, and the bound on
//! how many heads an apply lets the table hold.

use amberdb_mvcc::{ApplyItem, CommitBatch, ManualClock, Mutation, Mvcc, MvccConfig};
use amberdb_storage::{Durability, Engine, KeyRange, Memory, SIDE_TAG};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn commit(mvcc: &Mvcc, version: u64, keys: impl IntoIterator<Item = Vec<u8>>, value: &[u8]) {
    let mutations = keys.into_iter().map(|key| Mutation { key, value: Some(value.to_vec()) }).collect();
    let batch = CommitBatch { commit_time: version, mutations };
    mvcc.apply(&[ApplyItem::Commit(version, &batch)], &[], Durability::Buffered).unwrap();
}

fn engine_heads(engine: &Memory) -> usize {
    engine.scan(KeyRange::prefix(&[SIDE_TAG])).count()
}

/// Readers never see an older value than the latest one applied before they started,
/// while the background writer moves heads from memory into the engine under them.
#[test]
fn point_reads_see_the_newest_version_while_heads_move_to_the_engine() {
    let engine = Arc::new(Memory::new());
    let mvcc = Arc::new(Mvcc::open(engine.clone(), MvccConfig::default(), Arc::new(ManualClock::new(1))).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (mvcc, stop) = (mvcc.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let view = mvcc.read_latest().unwrap();
                    let v = view.version();
                    for k in 0..4u8 {
                        // Key k is written by every version ≡ k (mod 4), its value the version.
                        let got = view.get(&[k]).unwrap().map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                        let newest = (k as u64..=v).rev().find(|x| x % 4 == k as u64 && *x > 0);
                        assert_eq!(got, newest, "key {k} at version {v}");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    for v in 1..=4000u64 {
        commit(&mvcc, v, [vec![(v % 4) as u8]], &v.to_le_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    // The writer catches up: every head in the engine, no write record left.
    for _ in 0..500 {
        if engine_heads(&engine) == 4 && mvcc.persist_heads().unwrap() == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(engine_heads(&engine), 4);
    let records = engine
        .scan(KeyRange::all())
        .filter(|kv| kv.as_ref().unwrap().0.windows(15).any(|w| w == b"mvcc.speculated"))
        .count();
    assert_eq!(records, 0, "write records are deleted with their heads");
}

/// Past the bound, an apply writes every held head itself (and its own), so memory stays
/// bounded when nothing else writes them; reads are right either way.
#[test]
fn an_apply_past_the_bound_writes_the_held_heads_itself() {
    let engine = Arc::new(Memory::new());
    let config = MvccConfig { background_heads: false, ..MvccConfig::default() };
    let mvcc = Mvcc::open(engine.clone(), config, Arc::new(ManualClock::new(1))).unwrap();
    let key = |i: u32| i.to_be_bytes().to_vec();
    // 40,000 keys held (under the bound of 65,536): no heads in the engine yet.
    commit(&mvcc, 1, (0..40_000).map(key), b"one");
    assert_eq!(engine_heads(&engine), 0);
    // 40,000 more (30,000 of them new) pass the bound: all heads written, newest wins.
    commit(&mvcc, 2, (10_000..50_000).map(key), b"two");
    assert_eq!(engine_heads(&engine), 50_000);
    assert_eq!(mvcc.persist_heads().unwrap(), 0, "nothing left held");
    let view = mvcc.read_latest().unwrap();
    assert_eq!(view.get(&key(5)).unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(view.get(&key(20_000)).unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(view.get(&key(60_000)).unwrap(), None);
    // Held again after that, and written on request.
    commit(&mvcc, 3, [key(5)], b"three");
    assert_eq!(mvcc.read_latest().unwrap().get(&key(5)).unwrap().as_deref(), Some(&b"three"[..]));
    assert_eq!(mvcc.persist_heads().unwrap(), 1);
    assert_eq!(mvcc.read_latest().unwrap().get(&key(5)).unwrap().as_deref(), Some(&b"three"[..]));
}

/// An engine that fails every write after the first `allowed` (a crash, as far as the
/// store can tell), over a memory engine that outlives it.
struct FailingAfter {
    inner: Arc<Memory>,
    allowed: std::sync::atomic::AtomicUsize,
}

impl Engine for FailingAfter {
    fn ingest(&self) -> amberdb_error::Result<Box<dyn amberdb_storage::Ingestion + '_>> {
        self.inner.ingest()
    }
    fn get(&self, key: &[u8]) -> amberdb_error::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn scan(&self, range: KeyRange) -> amberdb_storage::ScanIterator {
        self.inner.scan(range)
    }
    fn write(&self, batch: amberdb_storage::WriteBatch, durability: Durability) -> amberdb_error::Result<()> {
        let left = self.allowed.load(Ordering::SeqCst);
        if left == 0 {
            return Err(amberdb_error::Error::Internal("injected crash".into()));
        }
        self.allowed.store(left - 1, Ordering::SeqCst);
        self.inner.write(batch, durability)
    }
    fn sync(&self) -> amberdb_error::Result<()> {
        self.inner.sync()
    }
    fn snapshot(&self) -> Box<dyn amberdb_storage::EngineSnapshot> {
        self.inner.snapshot()
    }
    fn disk_space(&self) -> u64 {
        0
    }
}

fn large_batch(version_tag: u8, rows: u32) -> Vec<u8> {
    let mutations =
        (0..rows).map(|i| Mutation { key: i.to_be_bytes().to_vec(), value: Some(vec![version_tag; 100]) }).collect();
    CommitBatch { commit_time: 5, mutations }.encode()
}

/// A commit past `CHUNKED_APPLY_BYTES` applied alone is written in several engine
/// batches before the one that publishes it; the result reads as any commit.
#[test]
fn a_large_commit_is_applied_in_pieces() {
    let engine = Arc::new(Memory::new());
    let config = MvccConfig { background_heads: false, ..MvccConfig::default() };
    let counting = Arc::new(FailingAfter { inner: engine.clone(), allowed: usize::MAX.into() });
    let mvcc = Mvcc::open(counting.clone(), config, Arc::new(ManualClock::new(1))).unwrap();
    // A small commit first, whose heads stay held: the large one must not leave them
    // naming the older version.
    commit(&mvcc, 1, [0u32.to_be_bytes().to_vec(), 7u32.to_be_bytes().to_vec()], b"small");
    let raw = large_batch(2, 60_000);
    assert!(raw.len() > amberdb_mvcc::CHUNKED_APPLY_BYTES);
    let before = usize::MAX - counting.allowed.load(Ordering::SeqCst);
    mvcc.apply(&[ApplyItem::Encoded(2, &raw)], &[], Durability::Buffered).unwrap();
    let writes = usize::MAX - counting.allowed.load(Ordering::SeqCst) - before;
    assert!(writes >= 4, "held heads, record, two or more pieces, publish: {writes} engine writes");
    let view = mvcc.read_latest().unwrap();
    assert_eq!(view.version(), 2);
    for k in [0u32, 7, 59_999] {
        assert_eq!(view.get(&k.to_be_bytes()).unwrap(), Some(vec![2; 100]), "{k}");
    }
    assert_eq!(view.get(&60_000u32.to_be_bytes()).unwrap(), None);
    let old = mvcc.read_at(1).unwrap();
    assert_eq!(old.get(&7u32.to_be_bytes()).unwrap().as_deref(), Some(&b"small"[..]));
    assert_eq!(old.get(&8u32.to_be_bytes()).unwrap(), None);
    assert_eq!(engine_heads(&engine), 60_000);
    assert_eq!(mvcc.persist_heads().unwrap(), 0, "nothing held");
}

/// A crash (here: a failed engine write) part way through a large commit leaves its
/// pieces invisible, and the next open undoes them.
#[test]
fn a_large_commit_cut_short_is_undone_at_open() {
    let engine = Arc::new(Memory::new());
    let config = MvccConfig { background_heads: false, ..MvccConfig::default() };
    let clock = Arc::new(ManualClock::new(1));
    {
        let mvcc = Mvcc::open(engine.clone(), config.clone(), clock.clone()).unwrap();
        commit(&mvcc, 1, [3u32.to_be_bytes().to_vec()], b"small");
        mvcc.persist_heads().unwrap();
    }
    // Held heads (none), record and one piece get through; the next piece fails.
    let failing = Arc::new(FailingAfter { inner: engine.clone(), allowed: 3.into() });
    let mvcc = Mvcc::open(failing.clone(), config.clone(), clock.clone()).unwrap();
    let raw = large_batch(2, 60_000);
    assert!(mvcc.apply(&[ApplyItem::Encoded(2, &raw)], &[], Durability::Buffered).is_err());
    let view = mvcc.read_latest().unwrap();
    assert_eq!(view.version(), 1);
    assert_eq!(
        view.get(&3u32.to_be_bytes()).unwrap().as_deref(),
        Some(&b"small"[..]),
        "an unpublished piece is invisible"
    );
    assert_eq!(view.get(&4u32.to_be_bytes()).unwrap(), None);
    drop(view);
    drop(mvcc);
    let mvcc = Mvcc::open(engine.clone(), config, clock).unwrap();
    let view = mvcc.read_latest().unwrap();
    assert_eq!(view.get(&3u32.to_be_bytes()).unwrap().as_deref(), Some(&b"small"[..]));
    assert_eq!(view.get(&4u32.to_be_bytes()).unwrap(), None);
    let data_above: usize = engine
        .scan(KeyRange::all())
        .filter(|kv| {
            let k = &kv.as_ref().unwrap().0;
            k.first() == Some(&1) && k.ends_with(&(!2u64).to_be_bytes())
        })
        .count();
    assert_eq!(data_above, 0, "the pieces' data entries are gone");
    assert_eq!(engine_heads(&engine), 1, "heads back to the key's published version");
    // And the entry applies again, whole.
    mvcc.apply(&[ApplyItem::Encoded(2, &raw)], &[], Durability::Buffered).unwrap();
    assert_eq!(mvcc.read_latest().unwrap().get(&4u32.to_be_bytes()).unwrap(), Some(vec![2; 100]));
}
