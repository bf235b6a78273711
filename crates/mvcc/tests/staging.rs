//! Transactions larger than memory (`transaction.rs`, "Transactions larger than
//! memory"): a transaction that stages its writes reads them back as if they were
//! buffered, nobody else sees them before the commit, the commit publishes all of them
//! at one version, a dropped transaction leaves nothing behind, and its staged writes
//! take part in conflict detection.

use amberdb_error::Error;
use amberdb_mvcc::{ConflictWindowConfig, LocalSequencer, ManualClock, Mvcc, MvccConfig, Transaction};
use amberdb_storage::{Durability, Engine, KeyRange, Memory};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn setup(stage_bytes: usize) -> (Arc<Memory>, Arc<LocalSequencer>) {
    let engine = Arc::new(Memory::new());
    let mvcc = Arc::new(Mvcc::open(engine.clone(), MvccConfig::default(), Arc::new(ManualClock::new(1))).unwrap());
    let seq =
        LocalSequencer::new(mvcc, ConflictWindowConfig::default(), Durability::Buffered).with_stage_bytes(stage_bytes);
    (engine, Arc::new(seq))
}

fn key(i: u32) -> Vec<u8> {
    format!("k{i:05}").into_bytes()
}

fn staging_entries(engine: &Memory) -> usize {
    engine.scan(KeyRange::prefix(&[0x05])).count()
}

fn scan_all(txn: &mut Transaction, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let it = if reverse { txn.scan_rev(KeyRange::all()) } else { txn.scan(KeyRange::all()) };
    it.collect::<Result<_, _>>().unwrap()
}

#[test]
fn a_staged_transaction_reads_its_writes_and_commits_them_at_one_version() {
    let (engine, seq) = setup(300);
    let mut t = seq.begin().unwrap();
    for i in 0..50 {
        t.put(key(i), b"old".to_vec()).unwrap();
    }
    seq.commit(t).unwrap();

    let mut big = seq.begin_staging().unwrap();
    for i in 25..400 {
        big.put(key(i), format!("new{i}").into_bytes()).unwrap();
    }
    for i in (0..400).step_by(7) {
        big.delete(key(i)).unwrap();
    }
    let txn = big.staged_txn().expect("300 bytes of writes staged several times");
    assert!(staging_entries(&engine) > 0);

    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = (0..50).map(|i| (key(i), b"old".to_vec())).collect();
    for i in 25..400 {
        model.insert(key(i), format!("new{i}").into_bytes());
    }
    for i in (0..400).step_by(7) {
        model.remove(&key(i));
    }
    for i in 0..410 {
        assert_eq!(big.get(&key(i)).unwrap().as_ref(), model.get(&key(i)), "key {i}");
    }
    let forward: Vec<_> = model.clone().into_iter().collect();
    assert_eq!(scan_all(&mut big, false), forward);
    let mut backward = forward.clone();
    backward.reverse();
    assert_eq!(scan_all(&mut big, true), backward);

    // Nobody else sees the staged writes.
    let mut other = seq.begin().unwrap();
    assert_eq!(other.get(&key(100)).unwrap(), None);
    assert_eq!(scan_all(&mut other, false).len(), 50);
    drop(other);

    let info = seq.commit(big).unwrap();
    assert_eq!(staging_entries(&engine), 0, "the commit moved every staged write of txn {txn}");
    let mut after = seq.begin().unwrap();
    assert_eq!(scan_all(&mut after, false), forward);
    // All of it at the commit's version: one version earlier, none of it.
    let before = seq.mvcc().read_at(info.version - 1).unwrap();
    assert_eq!(before.get(&key(100)).unwrap(), None);
    assert_eq!(before.get(&key(1)).unwrap(), Some(b"old".to_vec()));
    assert_eq!(seq.mvcc().read_at(info.version).unwrap().get(&key(1)).unwrap(), Some(b"old".to_vec()));
    assert_eq!(seq.mvcc().read_at(info.version).unwrap().get(&key(7)).unwrap(), None);
}

#[test]
fn a_dropped_staged_transaction_leaves_nothing() {
    let (engine, seq) = setup(200);
    let mut big = seq.begin_staging().unwrap();
    for i in 0..300 {
        big.put(key(i), b"x".to_vec()).unwrap();
    }
    assert!(big.staged_txn().is_some());
    assert!(staging_entries(&engine) > 0);
    drop(big);
    assert_eq!(staging_entries(&engine), 0);
    assert_eq!(scan_all(&mut seq.begin().unwrap(), false), vec![]);
    assert_eq!(seq.mvcc().staged_transactions().unwrap(), Vec::<u64>::new());
}

#[test]
fn staged_writes_conflict_with_readers_of_their_keys() {
    let (engine, seq) = setup(200);
    // A reader of key 150 that commits after the staged transaction wrote it.
    let mut reader = seq.begin().unwrap();
    assert_eq!(reader.get(&key(150)).unwrap(), None);
    reader.put(b"z".to_vec(), b"1".to_vec()).unwrap();

    let mut big = seq.begin_staging().unwrap();
    for i in 100..300 {
        big.put(key(i), b"x".to_vec()).unwrap();
    }
    big.put(key(999), b"last".to_vec()).unwrap();
    assert!(big.staged_txn().is_some());
    seq.commit(big).unwrap();
    match seq.commit(reader) {
        Err(Error::Serialization(_)) => {}
        other => panic!("expected a serialization failure, got {other:?}"),
    }

    // And a staged transaction that read what another commit then wrote fails, its
    // stages dropped.
    let mut big = seq.begin_staging().unwrap();
    assert_eq!(big.get(b"y").unwrap(), None);
    for i in 0..300 {
        big.put(key(i), b"y".to_vec()).unwrap();
    }
    let mut w = seq.begin().unwrap();
    w.put(b"y".to_vec(), b"1".to_vec()).unwrap();
    seq.commit(w).unwrap();
    assert!(matches!(seq.commit(big), Err(Error::Serialization(_))));
    assert_eq!(staging_entries(&engine), 0);
    assert_eq!(seq.begin().unwrap().get(&key(0)).unwrap(), None);
}

#[test]
fn many_point_reads_are_summarised_and_still_conflict() {
    let (_engine, seq) = setup(usize::MAX);
    let mut t = seq.begin().unwrap();
    let n = amberdb_mvcc::MAX_READ_ENTRIES as u32 * 2 + 10;
    for i in 0..n {
        t.get(&format!("r{i:08}").into_bytes()).unwrap();
    }
    t.put(b"out".to_vec(), b"1".to_vec()).unwrap();
    let mut w = seq.begin().unwrap();
    w.put(format!("r{:08}", n / 3).into_bytes(), b"1".to_vec()).unwrap();
    seq.commit(w).unwrap();
    assert!(matches!(seq.commit(t), Err(Error::Serialization(_))));
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Get(u8),
    Scan(u8, u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => any::<u8>().prop_map(Op::Delete),
        2 => any::<u8>().prop_map(Op::Get),
        1 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(a, b, r)| Op::Scan(a.min(b), a.max(b), r)),
    ]
}

proptest! {
    /// Whatever the stage size, a transaction reads exactly what a model of its
    /// snapshot plus its writes holds, and commits that.
    #[test]
    fn staged_reads_match_a_model(initial in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..40),
                                  ops in proptest::collection::vec(op(), 1..200),
                                  stage_bytes in 20usize..400) {
        let (engine, seq) = setup(stage_bytes);
        let mut model = BTreeMap::new();
        let mut t = seq.begin().unwrap();
        for (k, v) in &initial {
            t.put(vec![*k], vec![*v]).unwrap();
            model.insert(vec![*k], vec![*v]);
        }
        seq.commit(t).unwrap();
        let mut t = seq.begin_staging().unwrap();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    t.put(vec![k], vec![v]).unwrap();
                    model.insert(vec![k], vec![v]);
                }
                Op::Delete(k) => {
                    t.delete(vec![k]).unwrap();
                    model.remove(&vec![k]);
                }
                Op::Get(k) => prop_assert_eq!(t.get(&[k]).unwrap(), model.get(&vec![k]).cloned()),
                Op::Scan(a, b, rev) => {
                    let range = KeyRange::between(vec![a], vec![b]);
                    let got: Vec<_> = if rev { t.scan_rev(range) } else { t.scan(range) }
                        .collect::<Result<_, _>>().unwrap();
                    let mut want: Vec<_> = model.range(vec![a]..vec![b]).map(|(k, v)| (k.clone(), v.clone())).collect();
                    if rev {
                        want.reverse();
                    }
                    prop_assert_eq!(got, want);
                }
            }
        }
        seq.commit(t).unwrap();
        prop_assert_eq!(staging_entries(&engine), 0);
        let all = scan_all(&mut seq.begin().unwrap(), false);
        prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }
}

/// Writes that leave the exact window early (here: at once) are remembered by key
/// prefix: a transaction older than the window still commits unless it read what was
/// written since, and then it fails rather than commit on a stale read.
#[test]
fn a_transaction_older_than_the_window_commits_unless_it_read_what_changed() {
    let engine = Arc::new(Memory::new());
    let mvcc = Arc::new(Mvcc::open(engine, MvccConfig::default(), Arc::new(ManualClock::new(1))).unwrap());
    let window = ConflictWindowConfig { max_age: std::time::Duration::ZERO, max_keys: 1 };
    let seq = LocalSequencer::new(mvcc, window, Durability::Buffered);
    let mut t = seq.begin().unwrap();
    t.put(b"a/1".to_vec(), b"0".to_vec()).unwrap();
    t.put(b"b/1".to_vec(), b"0".to_vec()).unwrap();
    seq.commit(t).unwrap();

    let mut reads_a = seq.begin().unwrap();
    reads_a.get(b"a/1").unwrap();
    reads_a.put(b"c/1".to_vec(), b"1".to_vec()).unwrap();
    let mut scans_b = seq.begin().unwrap();
    assert_eq!(scans_b.scan(KeyRange::prefix(b"b/")).count(), 1);
    scans_b.put(b"c/2".to_vec(), b"1".to_vec()).unwrap();
    let mut unrelated = seq.begin().unwrap();
    unrelated.get(b"d/1").unwrap();
    unrelated.scan(KeyRange::prefix(b"e/")).for_each(drop);
    unrelated.put(b"c/3".to_vec(), b"1".to_vec()).unwrap();

    // Many commits since, long gone from the exact window.
    for i in 0..50 {
        let mut w = seq.begin().unwrap();
        w.put(format!("a/{}", i % 3).into_bytes(), b"x".to_vec()).unwrap();
        w.put(format!("b/{i}").into_bytes(), b"x".to_vec()).unwrap();
        seq.commit(w).unwrap();
    }
    assert!(matches!(seq.commit(reads_a), Err(Error::Serialization(_))));
    assert!(matches!(seq.commit(scans_b), Err(Error::Serialization(_))));
    seq.commit(unrelated).expect("read nothing that changed");
}
