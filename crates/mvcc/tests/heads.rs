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
