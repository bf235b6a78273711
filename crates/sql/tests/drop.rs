//! DROP TABLE unlinks the table in one small commit; the collector deletes its data.

mod common;

use amberdb_consensus::Node;
use amberdb_sql::{Catalog, Session};
use amberdb_storage::KeyRange;

async fn run(session: &mut Session, sql: &str) {
    for stmt in amberdb_sql::parse(sql).expect("parse") {
        session.execute(&stmt, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn entries_under(node: &Node, prefixes: &[Vec<u8>]) -> usize {
    let view = node.mvcc().read_latest().expect("view");
    prefixes.iter().map(|p| view.scan(&KeyRange::prefix(p)).count()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_tables_are_collected_in_bounded_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut s) = common::node_and_session(dir.path()).await;
    run(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)").await;
    run(&mut s, "CREATE INDEX t_v ON t (v)").await;
    run(&mut s, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30000) AS g(g)").await;
    let def = {
        let mut txn = node.begin_read_only().expect("txn");
        Catalog::get(&mut txn, "t").expect("catalog").expect("table t")
    };
    let prefixes = def.key_prefixes();
    assert_eq!(entries_under(&node, &prefixes), 60_000, "rows and index entries");
    let before = node.status().applied_version;
    run(&mut s, "DROP TABLE t").await;
    run(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)").await;
    run(&mut s, "INSERT INTO t VALUES (1, 'new')").await;
    // The drop itself touched only the catalog: the old data is still there, unreachable.
    assert!(node.status().applied_version > before);
    assert_eq!(entries_under(&node, &prefixes), 60_000);
    assert_eq!(amberdb_sql::collect_dropped_tables(&node).await.expect("collect"), 1);
    assert_eq!(entries_under(&node, &prefixes), 0, "the old table's data is gone");
    assert_eq!(amberdb_sql::collect_dropped_tables(&node).await.expect("collect"), 0, "markers are cleared");
    let mut txn = node.begin_read_only().expect("txn");
    let t = Catalog::get(&mut txn, "t").expect("catalog").expect("new table t");
    assert_ne!(t.id, def.id);
    assert_eq!(entries_under(&node, &t.key_prefixes()), 1);
    node.shutdown().await.expect("shutdown");
}
