//! Both engines against a `BTreeMap` model, plus fjall durability across reopen.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Batch(Vec<(u8, Option<u8>)>),
    Scan(u8, u8, bool),
    SnapshotScan(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k % 32, v)),
        any::<u8>().prop_map(|k| Op::Delete(k % 32)),
        proptest::collection::vec((any::<u8>(), proptest::option::of(any::<u8>())), 0..5)
            .prop_map(|v| Op::Batch(v.into_iter().map(|(k, v)| (k % 32, v)).collect())),
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(a, b, r)| Op::Scan(a % 34, b % 34, r)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::SnapshotScan(a % 34, b % 34)),
    ]
}

fn run_model(engine: &dyn Engine, ops: Vec<Op>) {
    let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let mut b = WriteBatch::new();
                b.put(vec![k], vec![v]);
                engine.write(b, Durability::Buffered).unwrap();
                model.insert(vec![k], vec![v]);
            }
            Op::Delete(k) => {
                let mut b = WriteBatch::new();
                b.delete(vec![k]);
                engine.write(b, Durability::Buffered).unwrap();
                model.remove(&vec![k]);
            }
            Op::Batch(ops) => {
                let mut b = WriteBatch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => {
                            b.put(vec![k], vec![v]);
                            model.insert(vec![k], vec![v]);
                        }
                        None => {
                            b.delete(vec![k]);
                            model.remove(&vec![k]);
                        }
                    }
                }
                engine.write(b, Durability::Buffered).unwrap();
            }
            Op::Scan(a, b, rev) => {
                let range = KeyRange::between(vec![a], vec![b]);
                let got: Vec<KeyValue> = if rev {
                    engine.scan(range).rev().map(Result::unwrap).collect()
                } else {
                    engine.scan(range).map(Result::unwrap).collect()
                };
                let mut want: Vec<KeyValue> = if a < b {
                    model.range(vec![a]..vec![b]).map(|(k, v)| (k.clone(), v.clone())).collect()
                } else {
                    vec![]
                };
                if rev {
                    want.reverse();
                }
                assert_eq!(got, want);
            }
            Op::SnapshotScan(a, b) => {
                let snap = engine.snapshot();
                let before = model.clone();
                let mut w = WriteBatch::new();
                w.put(vec![a], b"changed".to_vec());
                engine.write(w, Durability::Buffered).unwrap();
                model.insert(vec![a], b"changed".to_vec());
                let got: Vec<KeyValue> = snap.scan(KeyRange::all()).map(Result::unwrap).collect();
                let want: Vec<KeyValue> = before.into_iter().collect();
                assert_eq!(got, want);
                assert_eq!(snap.get(&[b]).unwrap(), engine_model_get(&want, b));
            }
        }
        for k in 0..32u8 {
            assert_eq!(engine.get(&[k]).unwrap(), model.get(&vec![k]).cloned());
        }
    }
}

fn engine_model_get(pairs: &[KeyValue], k: u8) -> Option<Bytes> {
    pairs.iter().find(|(key, _)| key == &vec![k]).map(|(_, v)| v.clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn memory_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(&Memory::new(), ops);
    }

    #[test]
    fn fjall_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        run_model(&Fjall::open(dir.path()).unwrap(), ops);
    }
}

#[test]
fn fjall_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Fjall::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put(b"a".to_vec(), b"1".to_vec());
        b.put(b"b".to_vec(), b"2".to_vec());
        e.write(b, Durability::Sync).unwrap();
    }
    let e = Fjall::open(dir.path()).unwrap();
    assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
    let all: Vec<_> = e.scan(KeyRange::prefix(b"")).map(Result::unwrap).collect();
    assert_eq!(all.len(), 2);
}

#[test]
fn key_range_helpers() {
    let r = KeyRange::prefix(&[1, 0xff]);
    assert!(r.contains(&[1, 0xff, 3]));
    assert!(!r.contains(&[2]));
    assert!(KeyRange::between(vec![2], vec![1]).is_empty());
}

/// Ingestion on both engines: invisible until finished, durable after, refuses
/// unsorted input with an error, leaves nothing when abandoned.
fn check_ingestion(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(b"a".to_vec(), b"journal".to_vec());
    e.write(b, Durability::Buffered).unwrap();
    let mut ing = e.ingest().unwrap();
    for i in 0..10_000u32 {
        // Interleaved with keys of the side tree, each tree in ascending order.
        ing.put([&[SIDE_TAG][..], b"m", &i.to_be_bytes()].concat(), vec![1]).unwrap();
        ing.put([b"m".as_slice(), &i.to_be_bytes()].concat(), i.to_le_bytes().to_vec()).unwrap();
    }
    assert_eq!(e.get(&[b"m".as_slice(), &0u32.to_be_bytes()].concat()).unwrap(), None, "invisible before finish");
    ing.finish().unwrap();
    assert_eq!(e.scan(KeyRange::prefix(b"m")).count(), 10_000);
    assert_eq!(e.scan(KeyRange::prefix(&[SIDE_TAG, b'm'])).count(), 10_000);
    assert_eq!(e.get(&[&[SIDE_TAG][..], b"m", &7u32.to_be_bytes()].concat()).unwrap(), Some(vec![1]));
    // A scan across both trees meets every key once, in order, both ways.
    let all: Vec<Bytes> = e.scan(KeyRange::all()).map(|kv| kv.unwrap().0).collect();
    assert_eq!(all.len(), 20_001);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let back: Vec<Bytes> = e.scan(KeyRange::all()).rev().map(|kv| kv.unwrap().0).collect();
    assert_eq!(back, all.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(e.get(b"a").unwrap(), Some(b"journal".to_vec()), "earlier writes survive");
    let mut ing = e.ingest().unwrap();
    ing.put(b"x2".to_vec(), b"v".to_vec()).unwrap();
    assert!(ing.put(b"x1".to_vec(), b"v".to_vec()).is_err(), "out of order is an error, not a panic");
    let mut ing = e.ingest().unwrap();
    ing.put(b"y".to_vec(), b"v".to_vec()).unwrap();
    drop(ing);
    assert_eq!(e.get(b"y").unwrap(), None, "an abandoned ingestion leaves nothing");
}

#[test]
fn ingestion_memory() {
    check_ingestion(&Memory::new());
}

#[test]
fn ingestion_fjall_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Fjall::open(dir.path()).unwrap();
        check_ingestion(&e);
    }
    let e = Fjall::open(dir.path()).unwrap();
    assert_eq!(e.scan(KeyRange::prefix(b"m")).count(), 10_000);
    assert_eq!(e.scan(KeyRange::prefix(&[SIDE_TAG, b'm'])).count(), 10_000);
    assert_eq!(e.get(b"y").unwrap(), None);
}
