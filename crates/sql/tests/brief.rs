//! Which statements run on the async worker (point statements, which must not pay a
//! thread hand-off) and which move off it first (anything that may run long).

mod common;

use amberdb_sql::{Statement, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_point_statements_count_as_brief() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut s) = common::node_and_session(dir.path()).await;
    for stmt in amberdb_sql::parse(
        "CREATE TABLE acc (id INT PRIMARY KEY, bal INT, owner TEXT); CREATE INDEX acc_owner ON acc (owner);
         CREATE TABLE pair (a INT, b INT, v INT, PRIMARY KEY (a, b))",
    )
    .unwrap()
    {
        s.execute(&stmt, &[]).await.unwrap();
    }
    let brief = |sql: &str| {
        let stmts = amberdb_sql::parse(sql).unwrap();
        let [Statement::Sql { ast, .. }] = stmts.as_slice() else { panic!("one SQL statement: {sql}") };
        let mut txn = node.begin().unwrap();
        amberdb_sql::runs_briefly(&mut txn, ast, &[Value::Int(7), Value::Int(8)])
    };
    // pgbench's TPC-B statements.
    assert!(brief("SELECT bal FROM acc WHERE id = $1"));
    assert!(brief("UPDATE acc SET bal = bal + $1 WHERE id = $2"));
    assert!(brief("DELETE FROM acc WHERE id = 3"));
    assert!(brief("INSERT INTO acc VALUES (1, 2, 'x'), (2, 3, 'y')"));
    assert!(brief("SELECT v FROM pair WHERE a = 1 AND b = $2"));
    // Failing statements fail at once.
    assert!(brief("SELECT * FROM missing WHERE id = 1"));
    // Anything that may read many rows.
    for long in [
        "SELECT bal FROM acc",
        "SELECT bal FROM acc WHERE owner = 'x'",
        "SELECT bal FROM acc WHERE id > 5",
        "SELECT v FROM pair WHERE a = 1",
        "SELECT count(*) FROM acc WHERE id = 1",
        "SELECT DISTINCT bal FROM acc WHERE id = 1",
        "SELECT bal FROM acc WHERE id = (SELECT max(id) FROM acc)",
        "SELECT a.bal FROM acc a JOIN acc b ON a.id = b.id WHERE a.id = 1",
        "SELECT g FROM generate_series(1, 10) g",
        "UPDATE acc SET bal = 0",
        "UPDATE acc SET bal = 0 WHERE owner = 'x'",
        "DELETE FROM acc WHERE id IN (SELECT id FROM acc)",
        "INSERT INTO acc SELECT g, g, 'x' FROM generate_series(1, 10) g",
        "CREATE INDEX acc_bal ON acc (bal)",
        "SELECT 1 UNION SELECT 2",
    ] {
        assert!(!brief(long), "{long} counted as brief");
    }
}
