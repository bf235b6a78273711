//! Node lifecycle: commit, restart, recover, repair a torn tail, refuse corruption.

use amberdb_consensus::{Node, NodeConfig};
use amberdb_mvcc::SystemClock;
use amberdb_storage::{Fjall, KeyRange};
use std::path::Path;
use std::sync::Arc;

async fn open(dir: &Path) -> amberdb_error::Result<Arc<Node>> {
    let engine = Arc::new(Fjall::open(&dir.join("engine"))?);
    Node::open(
        &dir.join("raft"),
        engine,
        Arc::new(SystemClock),
        NodeConfig { checkpoint_every: 50, keep_log_entries: 5, ..NodeConfig::default() },
    )
    .await
}

async fn put(node: &Node, k: &str, v: &str) -> u64 {
    let mut txn = node.begin().unwrap();
    txn.put(k.as_bytes().to_vec(), v.as_bytes().to_vec()).unwrap();
    node.commit(txn).await.unwrap().version
}

fn all(node: &Node) -> Vec<(String, String)> {
    let mut txn = node.begin_read_only().unwrap();
    txn.scan(KeyRange::all())
        .map(|kv| kv.map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_restart_and_time_travel() {
    let dir = tempfile::tempdir().unwrap();
    let v1;
    {
        let node = open(dir.path()).await.unwrap();
        v1 = put(&node, "a", "1").await;
        let v2 = put(&node, "a", "2").await;
        assert!(v2 > v1);
        let mut old = node.begin_as_of_version(v1).unwrap();
        assert_eq!(old.get(b"a").unwrap(), Some(b"1".to_vec()));
        // Enough commits to cross several checkpoints and purge the log behind them.
        for i in 0..200 {
            put(&node, &format!("k{i:03}"), "x").await;
        }
        node.shutdown().await.unwrap();
    }
    // Checkpoints purged the log behind them.
    let purged = std::fs::read(dir.path().join("raft/purged")).expect("log was purged");
    assert!(!purged.is_empty());
    let node = open(dir.path()).await.unwrap();
    let rows = all(&node);
    assert_eq!(rows.len(), 201);
    assert_eq!(rows[0], ("a".into(), "2".into()));
    let mut old = node.begin_as_of_version(v1).unwrap();
    assert_eq!(old.get(b"a").unwrap(), Some(b"1".to_vec()));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_conflict_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await.unwrap();
    put(&node, "counter", "0").await;
    // 8 tasks increment one counter 20 times each with retry loops: no lost updates.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for _ in 0..20 {
                loop {
                    let mut txn = node.begin().unwrap();
                    let n: u64 = String::from_utf8(txn.get(b"counter").unwrap().unwrap()).unwrap().parse().unwrap();
                    txn.put(b"counter".to_vec(), (n + 1).to_string().into_bytes()).unwrap();
                    match node.commit(txn).await {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => retries += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            retries
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut txn = node.begin_read_only().unwrap();
    assert_eq!(txn.get(b"counter").unwrap(), Some(b"160".to_vec()));
    node.shutdown().await.unwrap();
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("raft/log")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_repaired_and_corruption_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = open(dir.path()).await.unwrap();
        for i in 0..5 {
            put(&node, &format!("k{i}"), "v").await;
        }
        node.shutdown().await.unwrap();
    }
    // A torn tail: half a frame appended, as a crash in the middle of a write leaves it.
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    }
    {
        let node = open(dir.path()).await.unwrap();
        assert_eq!(all(&node).len(), 5);
        node.shutdown().await.unwrap();
    }
    assert!(std::fs::metadata(&seg).unwrap().len() >= len);
    // Corruption in the middle of the log: a flipped byte inside an early entry.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let err = match open(dir.path()).await {
        Ok(_) => panic!("opened a corrupt log"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&seg.display().to_string()), "error does not name the file: {err}");
    assert!(err.contains("corrupt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_transaction_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await.unwrap();
    // Past the size of one log entry in all, it commits (through stages)...
    let mut txn = node.begin().unwrap();
    let chunk = vec![7u8; 1 << 20];
    for i in 0..(amberdb_consensus::MAX_TXN_BYTES >> 20) + 1 {
        txn.put(format!("big{i:04}").into_bytes(), chunk.clone()).unwrap();
    }
    node.commit(txn).await.unwrap();
    let mut txn = node.begin().unwrap();
    for i in 0..(amberdb_consensus::MAX_TXN_BYTES >> 20) + 1 {
        txn.delete(format!("big{i:04}").into_bytes()).unwrap();
    }
    node.commit(txn).await.unwrap();
    // ...but one write larger than a log entry may hold is refused.
    let mut txn = node.begin().unwrap();
    let err = txn.put(b"huge".to_vec(), vec![7u8; amberdb_consensus::MAX_TXN_BYTES + 1]).unwrap_err();
    assert!(err.to_string().contains("transaction too large"), "{err}");
    drop(txn);
    // The node is unharmed and the log still opens after a restart.
    put(&node, "after", "ok").await;
    node.shutdown().await.unwrap();
    drop(node);
    let node = open(dir.path()).await.unwrap();
    assert_eq!(all(&node), vec![("after".to_string(), "ok".to_string())]);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_holds_keep_purged_entries_readable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await.unwrap();
    let first = put(&node, "k0", "v0").await;
    node.hold_log("backup-1", first).unwrap();
    for i in 1..200 {
        put(&node, &format!("k{i}"), &format!("v{i}")).await;
    }
    node.checkpoint().await.unwrap();
    // Raft purged behind the checkpoint, but the hold keeps everything from `first`.
    let read = |node: &Node| {
        let recs = node.read_log(first, usize::MAX).unwrap();
        recs.iter()
            .filter_map(|r| r.batch.as_ref())
            .map(|b| String::from_utf8(b.mutations[0].key.clone()).unwrap())
            .collect::<Vec<_>>()
    };
    let keys = read(&node);
    assert_eq!(keys.len(), 200);
    assert_eq!(keys[0], "k0");
    assert_eq!(keys[199], "k199");
    // Versions are contiguous: markers fill any gaps.
    let recs = node.read_log(first, usize::MAX).unwrap();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.version, first + i as u64);
    }
    // A byte budget stops early but returns at least one entry.
    assert_eq!(node.read_log(first, 1).unwrap().len(), 1);
    node.shutdown().await.unwrap();
    drop(node);

    let node = open(dir.path()).await.unwrap();
    assert_eq!(read(&node).len(), 200, "the hold survives a restart");
    assert_eq!(node.log_holds().get("backup-1"), Some(&first));
    node.release_log_hold("backup-1").unwrap();
    put(&node, "after", "x").await;
    node.checkpoint().await.unwrap();
    let err = node.read_log(first, usize::MAX).unwrap_err().to_string();
    assert!(err.contains("no longer on disk"), "{err}");
    assert!(node.hold_log("late", first).is_err(), "a hold cannot resurrect purged entries");
}

/// A commit is written into the store while its log entry is being made durable. If
/// the node dies before the entry is durable, the entry is gone from the log, but what
/// was written ahead is still in the store: start-up must undo it, or the next entry
/// at that index would show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_written_ahead_but_lost_from_the_log_is_undone() {
    use amberdb_mvcc::{CommitBatch, Mutation};
    let dir = tempfile::tempdir().unwrap();
    {
        let node = open(dir.path()).await.unwrap();
        put(&node, "a", "1").await;
        put(&node, "b", "1").await;
        let next = node.mvcc().applied().version + 1;
        let ghost = CommitBatch {
            commit_time: node.mvcc().clock().now(),
            mutations: vec![
                Mutation { key: b"a".to_vec(), value: Some(b"ghost".to_vec()) },
                Mutation { key: b"b".to_vec(), value: None },
                Mutation { key: b"g".to_vec(), value: Some(b"ghost".to_vec()) },
            ],
        };
        // What the log store does in `append`, for an entry that then never reaches
        // the disk (the node is stopped before anything commits at `next`).
        assert!(node.mvcc().speculate(next, &ghost).unwrap());
        assert_eq!(all(&node), vec![("a".into(), "1".into()), ("b".into(), "1".into())]);
        node.shutdown().await.unwrap();
    }
    let node = open(dir.path()).await.unwrap();
    assert!(node.mvcc().speculated().is_empty());
    assert_eq!(all(&node), vec![("a".into(), "1".into()), ("b".into(), "1".into())]);
    let mut txn = node.begin_read_only().unwrap();
    assert_eq!(txn.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(txn.get(b"b").unwrap(), Some(b"1".to_vec()));
    assert_eq!(txn.get(b"g").unwrap(), None);
    // New commits take the versions the ghost had claimed, without a trace of it.
    put(&node, "c", "1").await;
    put(&node, "a", "2").await;
    assert_eq!(all(&node), vec![("a".into(), "2".into()), ("b".into(), "1".into()), ("c".into(), "1".into())]);
    let mut txn = node.begin_read_only().unwrap();
    assert_eq!(txn.get(b"g").unwrap(), None);
    assert_eq!(txn.get(b"b").unwrap(), Some(b"1".to_vec()));
    node.shutdown().await.unwrap();
}

async fn open_staging(dir: &Path, stage_bytes: usize) -> Arc<Node> {
    let engine = Arc::new(Fjall::open(&dir.join("engine")).unwrap());
    let config = NodeConfig { checkpoint_every: 20, keep_log_entries: 2, stage_bytes, ..NodeConfig::default() };
    Node::open(&dir.join("raft"), engine, Arc::new(SystemClock), config).await.unwrap()
}

/// A transaction far past the stage size commits through stage entries: all of it at
/// one version, with the log holding its stages exactly as long as a continuous backup
/// (any other hold) has not shipped that version, and `read_stage` giving them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_the_stage_size_commits_through_stages() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_staging(dir.path(), 4 << 10).await;
    let before = put(&node, "a", "0").await;
    node.hold_log("backup-test", before + 1).unwrap();
    let mut txn = node.begin().unwrap();
    for i in 0..2000 {
        txn.put(format!("k{i:05}").into_bytes(), vec![b'v'; 40]).unwrap();
    }
    txn.put(b"a".to_vec(), b"1".to_vec()).unwrap();
    assert!(txn.staged_txn().is_some());
    // Others see nothing yet; commits go on around it (and checkpoints purge the log).
    for i in 0..50 {
        put(&node, &format!("other{i}"), "x").await;
    }
    assert_eq!(all(&node).len(), 51);
    let info = node.commit(txn).await.unwrap();
    let rows = all(&node);
    assert_eq!(rows.len(), 2051);
    assert!(rows.contains(&("a".into(), "1".into())));
    let mut old = node.begin_as_of_version(info.version - 1).unwrap();
    assert_eq!(old.get(b"k00000").unwrap(), None);

    // The log, as a continuous backup reads it.
    let records = node.read_log(before + 1, usize::MAX).unwrap();
    let commit = records.iter().find(|r| r.version == info.version).unwrap();
    let staged = commit.staged.clone().expect("a staged commit");
    assert!(staged.stages.len() > 10);
    let mut keys = 0;
    for s in &staged.stages {
        let r = records.iter().find(|r| r.version == *s).unwrap();
        assert!(r.batch.is_none() && r.staged.is_none(), "a stage changes no data at its own version");
        keys += node.read_stage(*s).unwrap().len();
    }
    keys += commit.batch.as_ref().unwrap().mutations.len();
    assert_eq!(keys, 2001);
    let holds = node.log_holds();
    assert_eq!(holds.get(&format!("staged-{}", info.version)), Some(&staged.stages[0]), "{holds:?}");
    // The backup ships past the commit: the stages are no longer held.
    node.hold_log("backup-test", info.version + 1).unwrap();
    assert_eq!(node.log_holds().into_keys().collect::<Vec<_>>(), vec!["backup-test".to_string()]);
    node.shutdown().await.unwrap();
}

/// Staged writes of a transaction that never committed — rolled back, or cut off by a
/// restart — are dropped, and so are the log holds they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_writes_of_unfinished_transactions_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = open_staging(dir.path(), 1 << 10).await;
        let mut rolled_back = node.begin().unwrap();
        for i in 0..200 {
            rolled_back.put(format!("r{i:04}").into_bytes(), vec![b'v'; 20]).unwrap();
        }
        assert!(rolled_back.staged_txn().is_some());
        drop(rolled_back);
        put(&node, "after", "1").await; // queued behind the abort
        assert_eq!(node.mvcc().staged_transactions().unwrap(), Vec::<u64>::new());
        let mut cut_off = node.begin().unwrap();
        for i in 0..200 {
            cut_off.put(format!("c{i:04}").into_bytes(), vec![b'v'; 20]).unwrap();
        }
        let txn = cut_off.staged_txn().unwrap();
        assert_eq!(node.mvcc().staged_transactions().unwrap(), vec![txn]);
        assert!(node.log_holds().contains_key(&format!("stage-{txn}")));
        // As if the process died: the node stops before the transaction can abort.
        node.shutdown().await.unwrap();
        // A stage asked of a stopped node fails at once (it used to wait for ever).
        let staged = (0..200).try_for_each(|i| cut_off.put(format!("d{i:04}").into_bytes(), vec![b'v'; 20]));
        assert!(matches!(staged, Err(amberdb_error::Error::Unavailable(_))), "{staged:?}");
        drop(cut_off);
    }
    let node = open_staging(dir.path(), 1 << 10).await;
    assert_eq!(node.mvcc().staged_transactions().unwrap(), Vec::<u64>::new());
    assert!(node.log_holds().is_empty(), "{:?}", node.log_holds());
    assert_eq!(all(&node), vec![("after".to_string(), "1".to_string())]);
    node.shutdown().await.unwrap();
}
