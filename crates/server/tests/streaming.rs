//! Query results stream from the real server: a result much larger than the server's
//! memory is sent while its peak RSS stays flat, a client that goes away stops the
//! work producing its result, and the server keeps serving.

mod common;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;
use tokio_postgres::NoTls;

/// A /proc/<pid>/status field in KiB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so that a later peak
/// measures what came after (setting up tables raises it far above a query's needs).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM through /proc/<pid>/clear_refs");
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').expect("comm in stat").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

async fn connect(s: &Server) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, conn) = tokio_postgres::connect(&s.conn_string(), NoTls).await.expect("connect");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_in_bounded_memory() {
    let s = Server::start();
    let pid = s.child.id();
    let (client, _conn) = connect(&s).await;
    // A table read by a streamed scan, in key order without a sort.
    client
        .batch_execute(
            "CREATE TABLE wide (id INT PRIMARY KEY, pad TEXT);
             INSERT INTO wide SELECT g, repeat('p', 100) FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    reset_peak(pid);
    let base = status_kb(pid, "VmHWM:");

    // ~330 MB of rows over the extended protocol, read one at a time.
    const N: i64 = 1_000_000;
    let rows = client.query_raw("SELECT g, repeat('x', 300) FROM generate_series(1, $1::bigint) g", [N]).await.unwrap();
    let mut rows = std::pin::pin!(rows);
    let (mut count, mut sum) = (0i64, 0i64);
    while let Some(r) = rows.try_next().await.unwrap() {
        let g: i64 = r.get(0);
        let pad: &str = r.get(1);
        assert_eq!(pad.len(), 300);
        count += 1;
        sum += g;
    }
    assert_eq!((count, sum), (N, N * (N + 1) / 2));

    // ~330 MB through COPY TO STDOUT.
    let out = client
        .copy_out("COPY (SELECT g, repeat('y', 300) FROM generate_series(1, 1000000) g) TO STDOUT")
        .await
        .unwrap();
    let bytes = out.try_fold(0usize, |n, chunk| async move { Ok(n + chunk.len()) }).await.unwrap();
    assert!(bytes > 300_000_000, "COPY sent {bytes} bytes");

    // The table, in primary-key order (the scan's order: nothing is sorted or held).
    let rows = client.query_raw("SELECT id, pad FROM wide ORDER BY id", Vec::<i64>::new()).await.unwrap();
    let ids: Vec<i32> = rows.map(|r| r.unwrap().get::<_, i32>(0)).collect().await;
    assert_eq!(ids, (1..=100_000).collect::<Vec<_>>());

    let grown = status_kb(pid, "VmHWM:").saturating_sub(base);
    eprintln!("server peak RSS: {base} KiB before, grew by {grown} KiB");
    // Materialized, either 1M-row result alone would take several hundred MiB.
    assert!(grown < 40 * 1024, "server peak RSS grew by {grown} KiB while streaming ~660 MB of results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorts_groupings_distinct_and_joins_spill_past_work_mem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The flag sets the server's default; nothing in the session changes it.
    let s = Server::start_with(&data, &["--work-mem".as_ref(), "1MB".as_ref()]);
    let pid = s.child.id();
    let (client, _conn) = connect(&s).await;
    let show = client.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(show.get::<_, &str>(0), "1MB");
    reset_peak(pid);
    let base = status_kb(pid, "VmHWM:");

    // ~150 MB of rows sorted (no index gives this order), streamed back in order.
    const N: i64 = 500_000;
    let rows = client
        .query_raw("SELECT g, repeat('s', 200) FROM generate_series(1, $1::bigint) g ORDER BY g % 1000, g DESC", [N])
        .await
        .unwrap();
    let mut rows = std::pin::pin!(rows);
    let (mut count, mut last) = (0i64, (-1i64, i64::MAX));
    while let Some(r) = rows.try_next().await.unwrap() {
        let g: i64 = r.get(0);
        let key = (g % 1000, g);
        assert!(key.0 > last.0 || (key.0 == last.0 && key.1 < last.1), "{key:?} after {last:?}");
        last = key;
        count += 1;
    }
    assert_eq!(count, N);

    // 300,000 groups, each with a wide key.
    let rows = client
        .query_raw(
            "SELECT g % 300000, repeat('k', 200), count(*), sum(g) FROM generate_series(1, 900000) g GROUP BY 1, 2",
            Vec::<i64>::new(),
        )
        .await
        .unwrap();
    let (groups, total) = rows
        .try_fold((0i64, 0i64), |(n, t), r| async move {
            assert_eq!(r.get::<_, i64>(2), 3, "every group has three rows");
            Ok((n + 1, t + r.get::<_, i64>(3)))
        })
        .await
        .unwrap();
    assert_eq!((groups, total), (300_000, 900_000 * 900_001 / 2));

    // 400,000 distinct wide rows.
    let rows = client
        .query_raw("SELECT DISTINCT g % 400000, repeat('d', 200) FROM generate_series(1, 800000) g", Vec::<i64>::new())
        .await
        .unwrap();
    let distinct = rows.try_fold(0i64, |n, _| async move { Ok(n + 1) }).await.unwrap();
    assert_eq!(distinct, 400_000);

    // count(DISTINCT …) over 400,000 distinct wide values.
    let row = client
        .query_one(
            "SELECT count(DISTINCT repeat('v', 200) || (g % 400000)::text) FROM generate_series(1, 800000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 400_000);

    // A join of two 300,000-row sides of ~200-byte rows.
    let row = client
        .query_one(
            "SELECT count(*), sum(length(a.p) + length(b.p)) FROM
               (SELECT g, repeat('a', 200) AS p FROM generate_series(1, 300000) g) a
               JOIN (SELECT g, repeat('b', 200) AS p FROM generate_series(1, 300000) g) b ON a.g = b.g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (300_000, 300_000 * 400));

    // A join without equality keys whose right side is 150,000 rows of ~400 bytes.
    let row = client
        .query_one(
            "SELECT count(*), sum(b.g - a.g) FROM
               (SELECT g FROM generate_series(1, 20) g) a
               JOIN (SELECT g, repeat('r', 400) AS p FROM generate_series(1, 150000) g) b
                 ON a.g < b.g AND b.g <= a.g + 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (40, 60));

    // The same DISTINCT aggregate beside plain ones.
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT repeat('w', 200) || (g % 400000)::text), sum(g) FROM generate_series(1, 800000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (800_000, 400_000, 320_000_400_000));

    // IN (subquery) over 400,000 distinct wide values (~90 MiB as constants).
    let row = client
        .query_one(
            "SELECT count(*) FROM generate_series(1, 300000) g
               WHERE repeat('i', 200) || g::text IN (SELECT repeat('i', 200) || (h * 2)::text FROM generate_series(1, 400000) h)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 150_000);

    let grown = status_kb(pid, "VmHWM:").saturating_sub(base);
    eprintln!("server peak RSS: {base} KiB before, grew by {grown} KiB");
    // Held in memory, each of these would take well over 100 MiB.
    assert!(
        grown < 60 * 1024,
        "server peak RSS grew by {grown} KiB over spilling sort/group/distinct/aggregates/joins/IN"
    );
    // Spill files are unnamed: nothing is left behind.
    let left: Vec<_> = std::fs::read_dir(data.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "files left in the spill directory: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_ranges_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        let s = Server::start_on(&data);
        let (client, _conn) = connect(&s).await;
        // Loaded in pieces below the transaction buffer: one 45 MiB insert would be
        // staged (written to the staging area, then moved), and the compactions that
        // clean the staging area up after it would still be running — and holding
        // memory — while the query below is measured.
        client
            .batch_execute(
                "CREATE TABLE tall (id INT PRIMARY KEY, k INT, pad TEXT);
                 CREATE INDEX tall_k ON tall (k);
                 INSERT INTO tall SELECT g, g % 1000, repeat('t', 250) FROM generate_series(1, 30000) g;
                 INSERT INTO tall SELECT g, g % 1000, repeat('t', 250) FROM generate_series(30001, 60000) g;
                 INSERT INTO tall SELECT g, g % 1000, repeat('t', 250) FROM generate_series(60001, 90000) g;
                 INSERT INTO tall SELECT g, g % 1000, repeat('t', 250) FROM generate_series(90001, 120000) g;
                 INSERT INTO tall SELECT g, g % 1000, repeat('t', 250) FROM generate_series(120001, 150000) g",
            )
            .await
            .unwrap();
    }
    // A fresh process: loading the table left hundreds of MiB of heap behind, which a
    // collected result could reuse without raising the peak.
    let s = Server::start_on(&data);
    let pid = s.child.id();
    let (client, _conn) = connect(&s).await;
    // An index range covering the whole table (~55 MiB of rows, were they collected),
    // inside a block that changed some of them first.
    client.batch_execute("BEGIN; UPDATE tall SET k = -1 WHERE id <= 10").await.unwrap();
    reset_peak(pid);
    let base = status_kb(pid, "VmHWM:");
    let rows = client.query_raw("SELECT id, k, pad FROM tall WHERE k >= -1", Vec::<i64>::new()).await.unwrap();
    let (n, moved) = rows
        .try_fold((0i64, 0i64), |(n, moved), r| async move {
            assert_eq!(r.get::<_, &str>(2).len(), 250);
            Ok((n + 1, moved + i64::from(r.get::<_, i32>(1) == -1)))
        })
        .await
        .unwrap();
    assert_eq!((n, moved), (150_000, 10), "the block's own updates are seen through the index");
    client.batch_execute("ROLLBACK").await.unwrap();
    let grown = status_kb(pid, "VmHWM:").saturating_sub(base);
    eprintln!("server peak RSS: {base} KiB before, grew by {grown} KiB");
    assert!(grown < 25 * 1024, "server peak RSS grew by {grown} KiB over an index range of ~55 MiB of rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_results_stop_and_the_server_keeps_serving() {
    let s = Server::start();
    let pid = s.child.id();
    for _ in 0..2 {
        let (client, conn) = connect(&s).await;
        // An endless result: the producer only ever stops because the client leaves.
        let rows = client
            .query_raw("SELECT g, repeat('z', 100) FROM generate_series(1, 9223372036854775807) g", Vec::<i64>::new())
            .await
            .unwrap();
        let first: Vec<_> = rows.take(20_000).collect().await;
        assert_eq!(first.len(), 20_000);
        assert!(first.iter().all(|r| r.is_ok()));
        conn.abort();
        drop(client);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu_ticks(pid) - before;
    // Ticks are 1/100 s: a producer still running would burn ~150 here.
    assert!(used < 50, "server used {used} ticks of CPU after its clients left");

    let (client, _conn) = connect(&s).await;
    let row = client.query_one("SELECT count(*) FROM generate_series(1, 1000)", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 1000);
}

/// Reads an endless result after a cancel request: it must end in 57014, not run on.
async fn assert_canceled<T>(
    mut rows: std::pin::Pin<&mut impl futures::Stream<Item = Result<T, tokio_postgres::Error>>>,
) {
    let err = loop {
        match rows.try_next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an endless result ended"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_streaming_result() {
    let s = Server::start();
    let (client, _conn) = connect(&s).await;
    let endless = "SELECT g FROM generate_series(1, 9223372036854775807) g";
    // Extended protocol (what drivers use).
    let rows = client.query_raw(endless, Vec::<i64>::new()).await.unwrap();
    let mut rows = std::pin::pin!(rows);
    for _ in 0..1000 {
        rows.try_next().await.unwrap().expect("a row");
    }
    client.cancel_token().cancel_query(NoTls).await.unwrap();
    assert_canceled(rows).await;

    // Simple protocol (what psql uses).
    let msgs = client.simple_query_raw(endless).await.unwrap();
    let mut msgs = std::pin::pin!(msgs);
    for _ in 0..1000 {
        msgs.try_next().await.unwrap().expect("a message");
    }
    client.cancel_token().cancel_query(NoTls).await.unwrap();
    assert_canceled(msgs).await;

    // The connection carries on.
    let row = client.query_one("SELECT count(*) FROM generate_series(1, 10)", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_sorts_and_groupings_leave_workers_free_and_can_be_canceled() {
    let s = Server::start();
    // Two statements that would run for hours before their first row: a grouping and a
    // sort over an endless series. The server has two async workers; neither may be
    // held by them.
    let heavy = [
        "SELECT g % 7, count(*) FROM generate_series(1, 9223372036854775807) g GROUP BY 1",
        "SELECT g FROM generate_series(1, 9223372036854775807) g ORDER BY g DESC",
    ];
    let mut running = Vec::new();
    for sql in heavy {
        let (client, conn) = connect(&s).await;
        let cancel = client.cancel_token();
        let task = tokio::spawn(async move {
            let err = client.query(sql, &[]).await.expect_err("an endless statement ended");
            (err, client)
        });
        running.push((cancel, task, conn));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = async {
        let (other, _conn) = connect(&s).await;
        other.query_one("SELECT count(*) FROM generate_series(1, 1000)", &[]).await
    };
    let answered = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("a third connection was not served while two long statements ran")
        .unwrap();
    assert_eq!(answered.get::<_, i64>(0), 1000);
    for (cancel, task, _conn) in running {
        cancel.cancel_query(NoTls).await.unwrap();
        let (err, client) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("a canceled statement kept running")
            .unwrap();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err}");
        // The connection carries on, and its next statement is not canceled.
        let row = client.query_one("SELECT count(*) FROM generate_series(1, 10)", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describing_a_statement_does_not_run_it() {
    use tokio_postgres::types::Type;
    let s = Server::start();
    let (client, _conn) = connect(&s).await;
    // Sorting an endless series never ends: preparing it (Parse + Describe, what every
    // driver does) must only learn its columns.
    let endless = "SELECT g FROM generate_series(1, 9223372036854775807) g ORDER BY g DESC LIMIT 1";
    let stmt = tokio::time::timeout(Duration::from_secs(20), client.prepare(endless))
        .await
        .expect("Describe returned without running the query")
        .unwrap();
    assert_eq!(stmt.columns()[0].type_(), &Type::INT8);
    // A scalar subquery is typed as its column, as in PostgreSQL: count(*) is bigint
    // however small, and a subquery without rows keeps its type.
    let stmt = client.prepare("SELECT (SELECT count(*) FROM generate_series(1, 3)) AS n").await.unwrap();
    assert_eq!(stmt.columns()[0].type_(), &Type::INT8);
    let row = client.query_one(&stmt, &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    let stmt = client.prepare("SELECT (SELECT 1::int WHERE false) AS n, (SELECT 5::smallint) + 1 AS m").await.unwrap();
    assert_eq!(stmt.columns()[0].type_(), &Type::INT4);
    let row = client.query_one(&stmt, &[]).await.unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), None);
}
