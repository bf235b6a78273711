//! Property test: random interleaved transaction histories against a simple model.
//!
//! The model keeps every committed state (one `BTreeMap` per version) and the set of
//! keys each version wrote. It predicts exactly which commits must succeed under our
//! OCC rule (no write to anything read since the read version), what every read returns
//! (the state at the read version overlaid with the transaction's own writes), and what
//! time-travel reads return, including after GC.

use amberdb_mvcc::{Clock, ConflictWindowConfig, LocalSequencer, ManualClock, Mvcc, MvccConfig, Transaction};
use amberdb_storage::{Durability, KeyRange, Memory};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    Begin(usize),
    Get(usize, u8),
    Scan(usize, u8, u8, bool),
    Put(usize, u8, u8),
    Delete(usize, u8),
    Commit(usize),
    Rollback(usize),
    AsOf(u8, u8),
    Advance(u8),
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0usize..4;
    let k = 0u8..8;
    prop_oneof![
        2 => t.clone().prop_map(Op::Begin),
        3 => (t.clone(), k.clone()).prop_map(|(t, k)| Op::Get(t, k)),
        1 => (t.clone(), k.clone(), k.clone(), any::<bool>()).prop_map(|(t, a, b, r)| Op::Scan(t, a, b, r)),
        3 => (t.clone(), k.clone(), any::<u8>()).prop_map(|(t, k, v)| Op::Put(t, k, v)),
        1 => (t.clone(), k.clone()).prop_map(|(t, k)| Op::Delete(t, k)),
        2 => t.clone().prop_map(Op::Commit),
        1 => t.prop_map(Op::Rollback),
        1 => (any::<u8>(), k).prop_map(|(v, k)| Op::AsOf(v, k)),
        1 => (0u8..40).prop_map(Op::Advance),
        1 => Just(Op::Gc),
    ]
}

type State = BTreeMap<u8, u8>;

struct ModelTxn {
    txn: Transaction,
    rv: u64,
    reads: Vec<(u8, u8)>, // inclusive key ranges
    writes: BTreeMap<u8, Option<u8>>,
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn histories_match_model(ops in proptest::collection::vec(op(), 1..80)) {
        const SEC: u64 = 1_000_000;
        let clock = Arc::new(ManualClock::new(1_000 * SEC));
        let mvcc = Arc::new(Mvcc::open(Arc::new(Memory::new()), MvccConfig { retention: Duration::from_secs(60), ..MvccConfig::default() }, clock.clone()).unwrap());
        let seq = LocalSequencer::new(mvcc.clone(), ConflictWindowConfig::default(), Durability::Buffered);
        // states[v] = committed state at version v; written[v] = keys version v wrote; times[v].
        let mut states: Vec<State> = vec![State::new()];
        let mut written: Vec<BTreeSet<u8>> = vec![BTreeSet::new()];
        let mut times: Vec<u64> = vec![0];
        let mut txns: BTreeMap<usize, ModelTxn> = BTreeMap::new();

        for op in ops {
            match op {
                Op::Begin(t) => {
                    let txn = seq.begin().unwrap();
                    let rv = txn.read_version();
                    prop_assert_eq!(rv as usize, states.len() - 1);
                    txns.insert(t, ModelTxn { txn, rv, reads: vec![], writes: BTreeMap::new() });
                }
                Op::Get(t, k) => if let Some(m) = txns.get_mut(&t) {
                    let got = m.txn.get(&key(k)).unwrap();
                    let want = match m.writes.get(&k) { Some(w) => *w, None => states[m.rv as usize].get(&k).copied() };
                    prop_assert_eq!(got, want.map(|v| vec![v]));
                    m.reads.push((k, k));
                },
                Op::Scan(t, a, b, rev) => if let Some(m) = txns.get_mut(&t) {
                    let (a, b) = (a.min(b), a.max(b));
                    let range = KeyRange { start: Bound::Included(key(a)), end: Bound::Included(key(b)) };
                    let it = if rev { m.txn.scan_rev(range) } else { m.txn.scan(range) };
                    let got: Vec<(Vec<u8>, Vec<u8>)> = it.map(Result::unwrap).collect();
                    let mut view = states[m.rv as usize].clone();
                    for (k, w) in &m.writes { match w { Some(v) => { view.insert(*k, *v); } None => { view.remove(k); } } }
                    let mut want: Vec<(Vec<u8>, Vec<u8>)> = view.range(a..=b).map(|(k, v)| (key(*k), vec![*v])).collect();
                    if rev { want.reverse(); }
                    prop_assert_eq!(got, want);
                    m.reads.push((a, b));
                },
                Op::Put(t, k, v) => if let Some(m) = txns.get_mut(&t) {
                    m.txn.put(key(k), vec![v]).unwrap();
                    m.writes.insert(k, Some(v));
                },
                Op::Delete(t, k) => if let Some(m) = txns.get_mut(&t) {
                    m.txn.delete(key(k)).unwrap();
                    m.writes.insert(k, None);
                },
                Op::Rollback(t) => { txns.remove(&t); }
                Op::Commit(t) => if let Some(m) = txns.remove(&t) {
                    let conflict = ((m.rv + 1) as usize..states.len()).any(|v| {
                        written[v].iter().any(|k| m.reads.iter().any(|(a, b)| a <= k && k <= b))
                    });
                    let res = seq.commit(m.txn);
                    if m.writes.is_empty() {
                        prop_assert!(res.is_ok());
                        continue;
                    }
                    if conflict {
                        let err = res.unwrap_err();
                        prop_assert!(err.is_retryable(), "{err}");
                    } else {
                        let info = res.unwrap();
                        prop_assert_eq!(info.version as usize, states.len());
                        let mut next = states.last().unwrap().clone();
                        for (k, w) in &m.writes { match w { Some(v) => { next.insert(*k, *v); } None => { next.remove(k); } } }
                        states.push(next);
                        written.push(m.writes.keys().copied().collect());
                        times.push(info.time);
                    }
                },
                Op::AsOf(v, k) => {
                    let v = u64::from(v) % states.len() as u64;
                    match mvcc.read_at(v) {
                        Ok(view) => {
                            prop_assert_eq!(view.get(&key(k)).unwrap(), states[v as usize].get(&k).map(|x| vec![*x]));
                            let all: Vec<_> = view.scan(&KeyRange::all()).map(Result::unwrap).collect();
                            let want: Vec<_> = states[v as usize].iter().map(|(k, v)| (key(*k), vec![*v])).collect();
                            prop_assert_eq!(&all, &want);
                            // The borrowing visitor sees exactly what the iterator does.
                            let mut visited = Vec::new();
                            view.scan_each(&KeyRange::all(), |k, v| { visited.push((k.to_vec(), v.to_vec())); Ok(true) }).unwrap();
                            prop_assert_eq!(visited, want);
                        }
                        Err(e) => {
                            // Only allowed when the state at v was superseded before the window.
                            let cutoff = clock.now().saturating_sub(60 * SEC);
                            let next_time = times.get(v as usize + 1).copied().unwrap_or(u64::MAX);
                            prop_assert!(next_time <= cutoff && matches!(e, amberdb_error::Error::TooOld(_)), "unexpected {e} at v{v}");
                        }
                    }
                }
                Op::Advance(s) => clock.advance(u64::from(s) * SEC),
                Op::Gc => { mvcc.gc().unwrap(); }
            }
        }
        // Finally, the latest state is exactly the model's.
        let view = mvcc.read_latest().unwrap();
        let all: Vec<_> = view.scan(&KeyRange::all()).map(Result::unwrap).collect();
        let want: Vec<_> = states.last().unwrap().iter().map(|(k, v)| (key(*k), vec![*v])).collect();
        prop_assert_eq!(all, want);
        // Point reads at the latest version take the head path; every key, present or not.
        for k in 0..8u8 {
            prop_assert_eq!(view.get(&key(k)).unwrap(), states.last().unwrap().get(&k).map(|x| vec![*x]));
        }
        // A store that predates head entries gets them at open, and reads the same.
        drop(view);
        drop(seq);
        // Heads of the last versions may still be held in memory: write them (what the
        // background writer does), so the engine holds every head.
        mvcc.persist_heads().unwrap();
        let engine = mvcc.engine().clone();
        let mut strip = amberdb_storage::WriteBatch::new();
        let mut heads = 0;
        for kv in engine.scan(KeyRange::all()) {
            let (k, _) = kv.unwrap();
            let is_head = k.first() == Some(&amberdb_storage::SIDE_TAG);
            heads += usize::from(is_head);
            if is_head || k.windows(10).any(|w| w == b"mvcc.heads") {
                strip.delete(k);
            }
        }
        prop_assert!(heads >= states.last().unwrap().len(), "every live key has a head");
        engine.write(strip, Durability::Buffered).unwrap();
        let reopened = Mvcc::open(engine, MvccConfig { retention: Duration::from_secs(60), ..MvccConfig::default() }, clock.clone()).unwrap();
        let had_data = reopened.engine().scan(KeyRange::prefix(&[1])).next().is_some();
        prop_assert_eq!(reopened.has_headless(), had_data, "a store without heads is headless as a whole");
        let latest = states.last().unwrap();
        let check = |m: &Mvcc| -> Result<(), TestCaseError> {
            let view = m.read_latest().unwrap();
            for k in 0..8u8 {
                prop_assert_eq!(view.get(&key(k)).unwrap(), latest.get(&k).map(|x| vec![*x]));
            }
            Ok(())
        };
        check(&reopened)?;
        reopened.build_missing_heads().unwrap();
        prop_assert!(!reopened.has_headless());
        check(&reopened)?;
        // A bulk load writes no heads; its keys read correctly before and after the pass.
        let version = reopened.applied().version;
        if version > 0 {
            let mut bl = reopened.bulk_load(version).unwrap();
            for i in 0..5u8 {
                bl.put(&[b'z', i], &[i]).unwrap();
            }
            bl.finish().unwrap();
            prop_assert!(reopened.has_headless());
            for pass in 0..2 {
                let view = reopened.read_latest().unwrap();
                for i in 0..5u8 {
                    prop_assert_eq!(view.get(&[b'z', i]).unwrap(), Some(vec![i]), "pass {}", pass);
                }
                prop_assert_eq!(view.get(&[b'z', 9]).unwrap(), None);
                check(&reopened)?;
                reopened.build_missing_heads().unwrap();
            }
            prop_assert!(!reopened.has_headless());
        }
    }
}
