//! Continuous backup and point-in-time restore end to end: the real server, a random
//! write workload, restores at many instants checked against time-travel reads, and
//! kill -9 of the server while the job runs.

mod common;

use common::{all_bytes, bin, copy_dir, http_get, walk, Server};
use rand::prelude::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn server(data: &Path, root: &Path) -> Server {
    server_with(data, root, &[])
}

/// A server with its backup root and extra flags.
fn server_with(data: &Path, root: &Path, extra: &[&std::ffi::OsStr]) -> Server {
    let mut args = vec!["--backup-root".as_ref(), root.as_os_str()];
    args.extend_from_slice(extra);
    Server::start_full(data, &args, &[])
}

async fn connect(s: &Server) -> Client {
    let (client, conn) = tokio_postgres::connect(&s.conn_string(), NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// Runs SQL; returns the rows as `a|b|c` lines (NULL as empty), or the error text.
async fn try_q(c: &Client, sql: &str) -> Result<String, String> {
    let msgs = c.simple_query(sql).await.map_err(|e| match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    })?;
    let mut out = String::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let cols: Vec<&str> = (0..r.len()).map(|i| r.get(i).unwrap_or("")).collect();
            out.push_str(&cols.join("|"));
            out.push('\n');
        }
    }
    Ok(out)
}

async fn q(c: &Client, sql: &str) -> String {
    try_q(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Like `q`, retrying serialization failures (concurrent writers are running).
async fn q_retry(c: &Client, sql: &str) -> String {
    for _ in 0..100 {
        match c.simple_query(sql).await {
            Ok(_) => return String::new(),
            Err(e) if e.code().map(|c| c.code()) == Some("40001") => continue,
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    panic!("{sql}: still conflicting after 100 attempts");
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_micros() as u64
}

/// The server's newest applied version (admin /status).
fn applied_version(s: &Server) -> u64 {
    let (_, body) = http_get(s.http_port, "/status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    v["applied_version"].as_u64().expect("applied_version")
}

/// `(first_version, last_version, last_time)` of job `id` from SHOW BACKUP JOBS.
async fn job(c: &Client, id: u64) -> (u64, u64, String, String) {
    let rows = q(c, "SHOW BACKUP JOBS").await;
    let line = rows.lines().find(|l| l.starts_with(&format!("{id}|"))).expect("job listed").to_string();
    let f: Vec<&str> = line.split('|').collect();
    (f[3].parse().unwrap_or(0), f[5].parse().unwrap_or(0), f[6].to_string(), f[2].to_string())
}

/// Waits until job `id` has shipped everything the server has applied.
async fn wait_caught_up(s: &Server, c: &Client, id: u64) -> (u64, String) {
    let target = applied_version(s);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, last, time, state) = job(c, id).await;
        if last >= target {
            return (last, time);
        }
        assert!(Instant::now() < deadline, "job {id} did not catch up to {target} (at {last}, {state})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One writer: random inserts, updates and deletes until `stop`.
async fn writer(c: Client, seed: u64, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let id = rng.random_range(1..800);
        let sql = match rng.random_range(0..5) {
            0 => format!("INSERT INTO acct VALUES ({id}, {}, 'n{}') ON CONFLICT DO NOTHING", id * 3, id % 10),
            1 | 2 => format!(
                "UPDATE acct SET bal = bal + {}, note = 'n{}' WHERE id = {id}",
                rng.random_range(1..9),
                rng.random_range(0..10)
            ),
            3 => format!("DELETE FROM acct WHERE id = {id}"),
            _ => format!("INSERT INTO ev VALUES ('s{seed}-{n}', {id})"),
        };
        match c.simple_query(&sql).await {
            Ok(_) => n += 1,
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{sql}: {e}"),
        }
        // The late table exists only in the middle of the run.
        if n % 7 == 0 {
            let _ = c.simple_query(&format!("INSERT INTO late VALUES ({}, 'x{seed}')", rng.random::<u32>())).await;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restores_match_time_travel_reads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let a = server(&dir.path().join("a"), &root);
    let c = connect(&a).await;
    q(
        &c,
        "CREATE TABLE acct (id INT PRIMARY KEY, bal BIGINT NOT NULL, note TEXT);
         CREATE INDEX acct_note ON acct (note);
         CREATE TABLE ev (v TEXT, n INT);
         INSERT INTO acct SELECT g, g * 3, 'n' || (g % 10) FROM generate_series(1, 400) g;",
    )
    .await;
    let started =
        q(&c, "BACKUP DATABASE TO 'pitr' WITH (continuous, flush_interval = '100ms', snapshot_interval = '2s')").await;
    let id: u64 = started.split('|').next().unwrap().parse().unwrap();
    let t_start = now_micros();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for seed in 0..2u64 {
        let w = connect(&a).await;
        writers.push(tokio::spawn(writer(w, seed, stop.clone())));
    }
    // Schema changes in the middle: a table created, its key's type changed (the table
    // is rebuilt under a new id), a column added, the table dropped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    q_retry(&c, "CREATE TABLE late (k BIGINT PRIMARY KEY, s TEXT)").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    q_retry(&c, "ALTER TABLE late ALTER COLUMN k TYPE NUMERIC(12, 0)").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    q_retry(&c, "ALTER TABLE acct ADD COLUMN extra INT").await;
    q_retry(&c, "UPDATE acct SET extra = id WHERE id < 50").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    q_retry(&c, "DROP TABLE late").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    assert!(writes > 200, "the workload made progress ({writes} writes)");
    let (_, last_time) = wait_caught_up(&a, &c, id).await;
    let t_end = amberdb_sql_time(&last_time);
    assert!(t_end > t_start);
    let (_, _, _, state) = job(&c, id).await;
    assert_eq!(state, "running");
    let snapshots = std::fs::read_dir(root.join("pitr/snapshots")).unwrap().count();
    assert!(snapshots >= 2, "periodic snapshots were taken ({snapshots})");

    // Table restores at random instants equal time-travel reads at the same instants.
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut instants: Vec<u64> = (0..50).map(|_| rng.random_range(t_start..=t_end)).collect();
    instants.push(t_end);
    for (i, &t) in instants.iter().enumerate() {
        let ts = amberdb_mvcc::format_micros(t);
        let expected = q(&c, &format!("SELECT * FROM acct AS OF SYSTEM TIME '{ts}' ORDER BY id")).await;
        q(&c, &format!("RESTORE TABLE acct FROM 'pitr' AS OF SYSTEM TIME '{ts}' AS r{i}")).await;
        let got = q(&c, &format!("SELECT * FROM r{i} ORDER BY id")).await;
        assert_eq!(got, expected, "table acct restored as of {ts}");
        // The restored index agrees with the data.
        let by_index = q(&c, &format!("SELECT count(*) FROM r{i} WHERE note = 'n3'")).await;
        let by_scan =
            q(&c, &format!("SELECT count(*) FROM acct AS OF SYSTEM TIME '{ts}' WHERE note || '' = 'n3'")).await;
        assert_eq!(by_index, by_scan, "index of acct restored as of {ts}");
        q(&c, &format!("DROP TABLE r{i}")).await;
    }

    // Database restores at some of them, into a fresh server.
    let b = server(&dir.path().join("b"), &root);
    let cb = connect(&b).await;
    for &t in instants.iter().step_by(5) {
        let ts = amberdb_mvcc::format_micros(t);
        q(&cb, &format!("RESTORE DATABASE FROM 'pitr' AS OF SYSTEM TIME '{ts}'")).await;
        for (table, order) in [("acct", "id"), ("ev", "v"), ("late", "k")] {
            let expected = try_q(&c, &format!("SELECT * FROM {table} AS OF SYSTEM TIME '{ts}' ORDER BY {order}")).await;
            let got = try_q(&cb, &format!("SELECT * FROM {table} ORDER BY {order}")).await;
            match (expected, got) {
                (Ok(e), Ok(g)) => assert_eq!(g, e, "table {table} of the database restored as of {ts}"),
                (Err(e), Err(g)) => assert!(e.contains("does not exist") && g.contains("does not exist"), "{e} / {g}"),
                (e, g) => panic!("table {table} as of {ts}: expected {e:?}, restored {g:?}"),
            }
        }
        for table in ["acct", "ev", "late"] {
            let _ = try_q(&cb, &format!("DROP TABLE {table}")).await;
        }
    }

    // Outside the restorable range: a clear refusal, nothing restored.
    let before = amberdb_mvcc::format_micros(t_start - 60_000_000);
    let err = try_q(&c, &format!("RESTORE TABLE acct FROM 'pitr' AS OF SYSTEM TIME '{before}' AS too_early"))
        .await
        .unwrap_err();
    assert!(err.contains("outside every restorable range"), "{err}");
    let after = amberdb_mvcc::format_micros(now_micros() + 3_600_000_000);
    let err = try_q(&c, &format!("RESTORE TABLE acct FROM 'pitr' AS OF SYSTEM TIME '{after}' AS too_late"))
        .await
        .unwrap_err();
    assert!(err.contains("after the newest commit"), "{err}");
    assert!(try_q(&c, "SELECT 1 FROM too_early").await.is_err());

    // The CLI resolves the same points from the files alone.
    let out = Command::new(bin())
        .args(["backup", "show", "--json", "--backup-root"])
        .arg(&root)
        .arg("pitr")
        .env("AMBERDB_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranges = shown["restorable_ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "one unbroken restorable range: {shown}");
    assert!(ranges[0]["last_time_micros"].as_u64().unwrap() >= t_end);

    // Stopping the job releases its hold on the commit log.
    let stopped = q(&c, &format!("ALTER BACKUP JOB {id} STOP")).await;
    assert!(stopped.contains("|stopped|"), "{stopped}");
    let (_, body) = http_get(a.http_port, "/metrics");
    assert!(body.contains(&format!("amberdb_backup_job_lag_seconds{{job=\"{id}\"")), "{body}");
}

/// Parses the `last_time` column (`2026-11-22 20:04:48.976407+00`) into µs.
fn amberdb_sql_time(s: &str) -> u64 {
    let (date, rest) = s.split_once(' ').expect("date and time");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let clock = rest.trim_end_matches("+00");
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let micros: i64 = format!("{frac:0<6}")[..6].parse().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000 + micros) as u64
}

fn sigkill(s: &mut Server) {
    // SAFETY: kill(2) on a child process id we own; no memory is touched.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGKILL);
    }
    let _ = s.child.wait();
}

/// Inserts consecutive ids until the connection dies; records each acknowledged one.
async fn inserter(c: Client, ids: std::ops::Range<u64>, acked: std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    for id in ids {
        match c.simple_query(&format!("INSERT INTO k VALUES ({id}, {})", id % 97)).await {
            Ok(_) => acked.lock().unwrap().push(id),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_backup_survives_kill9_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let data = dir.path().join("data");
    // Frequent checkpoints: Raft purges its log often, so only the job's hold keeps
    // what the job has not shipped.
    let cfg = dir.path().join("amberdb.toml");
    std::fs::write(&cfg, "checkpoint_every = 100\n").unwrap();
    let start = |data: &Path| server_with(data, &root, &["--config".as_ref(), cfg.as_os_str()]);
    let mut s = start(&data);
    let c = connect(&s).await;
    q(&c, "CREATE TABLE k (id BIGINT PRIMARY KEY, w INT)").await;
    let started =
        q(&c, "BACKUP DATABASE TO 'k9' WITH (continuous, flush_interval = '50ms', snapshot_interval = '1s')").await;
    let id: u64 = started.split('|').next().unwrap().parse().unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut claims: Vec<u64> = Vec::new();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut next = 1u64;
    for round in 0..6 {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let w = connect(&s).await;
            tasks.push(tokio::spawn(inserter(w, next..next + 1_000_000, acked.clone())));
            next += 1_000_000;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        let c = connect(&s).await;
        let (_, claimed, _, state) = job(&c, id).await;
        assert_ne!(state, "failing", "round {round}");
        claims.push(claimed);
        sigkill(&mut s);
        for t in tasks {
            t.await.unwrap();
        }
        s = start(&data);
    }
    // Paused across a crash with far more commits than Raft keeps: resuming leaves no gap.
    let c = connect(&s).await;
    q(&c, &format!("ALTER BACKUP JOB {id} PAUSE")).await;
    for _ in 0..1500 {
        q(&c, &format!("INSERT INTO k VALUES ({next}, 1)")).await;
        acked.lock().unwrap().push(next);
        next += 1;
    }
    sigkill(&mut s);
    s = start(&data);
    let c = connect(&s).await;
    assert_eq!(job(&c, id).await.3, "paused");
    q(&c, &format!("ALTER BACKUP JOB {id} RESUME")).await;
    // Some load after the last restart too, then let the job catch up.
    q(&c, &format!("INSERT INTO k VALUES ({next}, 0)")).await;
    acked.lock().unwrap().push(next);
    let (last, _) = wait_caught_up(&s, &c, id).await;
    claims.push(last);

    // One unbroken restorable range from the first snapshot to the newest commit.
    let out = Command::new(bin())
        .args(["backup", "show", "--json", "--backup-root"])
        .arg(&root)
        .arg("k9")
        .env("AMBERDB_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranges = shown["restorable_ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "kill -9 left a gap: {shown}");
    assert!(ranges[0]["last_version"].as_u64().unwrap() >= last);

    // Every version the status ever claimed is restorable, and equals a time-travel read.
    for (i, v) in claims.iter().enumerate() {
        q(&c, &format!("RESTORE TABLE k FROM 'k9' AS OF SYSTEM TIME {v} AS c{i}")).await;
        let got = q(&c, &format!("SELECT * FROM c{i} ORDER BY id")).await;
        let expected = q(&c, &format!("SELECT * FROM k AS OF SYSTEM TIME {v} ORDER BY id")).await;
        assert_eq!(got, expected, "claimed version {v}");
    }
    // Every acknowledged insert is in the newest restorable state.
    let newest = q(&c, &format!("SELECT id FROM c{} ORDER BY id", claims.len() - 1)).await;
    let restored: std::collections::HashSet<u64> = newest.lines().map(|l| l.parse().unwrap()).collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the load made progress ({} inserts)", acked.len());
    for a in acked {
        assert!(restored.contains(&a), "acknowledged insert {a} is missing from the backup");
    }
}

fn cli(args: &[&str], root: &Path) -> (bool, String) {
    let out =
        Command::new(bin()).args(args).arg("--backup-root").arg(root).env("AMBERDB_LOG", "warn").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_log_files_are_named_by_verify_and_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let s = server(&dir.path().join("data"), &root);
    let c = connect(&s).await;
    q(&c, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)").await;
    let started = q(&c, "BACKUP DATABASE TO 'good' WITH (continuous, flush_interval = '50ms')").await;
    let id: u64 = started.split('|').next().unwrap().parse().unwrap();
    for round in 0..6 {
        q(
            &c,
            &format!(
                "INSERT INTO t SELECT g, 'r{round}' FROM generate_series({}, {}) g",
                round * 100,
                round * 100 + 99
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_caught_up(&s, &c, id).await;
    q(&c, &format!("ALTER BACKUP JOB {id} STOP")).await;
    let (ok, out) = cli(&["backup", "verify", "--deep", "good"], &root);
    assert!(ok && out.contains("OK"), "{out}");
    let mut data: Vec<String> = std::fs::read_dir(root.join("good/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".aml"))
        .collect();
    data.sort();
    assert!(data.len() >= 4, "several log segments: {data:?}");
    let victim = data[data.len() / 2].clone();
    let meta = victim.replace(".aml", ".json");
    type Damage = fn(&Path);
    let flip: Damage = |p| {
        let mut b = std::fs::read(p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x40;
        std::fs::write(p, b).unwrap();
    };
    let truncate: Damage = |p| {
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() - 7]).unwrap();
    };
    let delete: Damage = |p| std::fs::remove_file(p).unwrap();
    let cases: [(&str, &str, Damage); 5] = [
        ("flip-data", &victim, flip),
        ("truncate-data", &victim, truncate),
        ("delete-data", &victim, delete),
        ("flip-meta", &meta, flip),
        ("delete-meta", &meta, delete),
    ];
    for (name, file, damage) in cases {
        let copy = root.join(name);
        copy_dir(&root.join("good"), &copy);
        damage(&copy.join("logs").join(file));
        for deep in [false, true] {
            let mut args = vec!["backup", "verify", name];
            if deep {
                args.insert(2, "--deep");
            }
            let (ok, out) = cli(&args, &root);
            assert!(!ok, "{name}: verify (deep: {deep}) passed: {out}");
            let stem = file.split('.').next().unwrap();
            assert!(out.contains(stem), "{name}: verify does not name {stem}: {out}");
        }
        // Restoring the newest state needs the damaged segment: refused, nothing left.
        let err =
            try_q(&c, &format!("RESTORE TABLE t FROM '{name}' AS t_{}", name.replace('-', "_"))).await.unwrap_err();
        let stem = file.split('.').next().unwrap();
        assert!(err.contains(stem) || err.contains("broken after version"), "{name}: {err}");
        assert!(try_q(&c, &format!("SELECT 1 FROM t_{}", name.replace('-', "_"))).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_chain_restores_every_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let data = dir.path().join("a");
    let mut a = server(&data, &root);
    let mut c = connect(&a).await;
    q(
        &c,
        "CREATE TABLE inc (id INT PRIMARY KEY, v TEXT, n BIGINT);
         CREATE TABLE bag (s TEXT);
         INSERT INTO inc SELECT g, 'v' || g, g FROM generate_series(1, 5000) g;",
    )
    .await;
    let first = q(&c, "BACKUP DATABASE TO 'chain' WITH (incremental)").await;
    let f: Vec<&str> = first.trim().split('|').collect();
    assert_eq!(f[2], "full", "{first}");
    let full_bytes: u64 = walk(&root.join("chain/snapshots")).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut links: Vec<(u64, String, String)> = Vec::new();
    for link in 1..=6 {
        // About 1 % of the rows change in each link.
        for _ in 0..50 {
            let id = rng.random_range(1..5200);
            let sql = match rng.random_range(0..4) {
                0 => format!("DELETE FROM inc WHERE id = {id}"),
                1 => format!("INSERT INTO inc VALUES ({id}, 'new{link}', 0) ON CONFLICT DO NOTHING"),
                2 => format!("INSERT INTO bag VALUES ('l{link}-{id}')"),
                _ => format!("UPDATE inc SET v = 'l{link}', n = n + 1 WHERE id = {id}"),
            };
            q(&c, &sql).await;
        }
        if link == 3 {
            // A link taken through the CLI, after a crash: the chain's log hold survives.
            sigkill(&mut a);
            a = server(&data, &root);
            let out = Command::new(bin())
                .args(["backup", "create", "--incremental", "chain", "--server"])
                .arg(format!("http://127.0.0.1:{}", a.http_port))
                .env("AMBERDB_LOG", "warn")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("incremental backup to chain"), "{text}");
            c = connect(&a).await;
        }
        let out = q(&c, "BACKUP DATABASE TO 'chain' WITH (incremental)").await;
        let f: Vec<&str> = out.trim().split('|').collect();
        assert_eq!(f[2], "incremental", "{out}");
        let version: u64 = f[3].parse().unwrap();
        let bytes: u64 = f[5].parse().unwrap();
        // ~1 % of the rows changed; the link is a small fraction of the full snapshot.
        assert!(bytes * 10 < full_bytes, "link {link}: {bytes} bytes vs the full {full_bytes}");
        let inc = q(&c, &format!("SELECT * FROM inc AS OF SYSTEM TIME {version} ORDER BY id")).await;
        let bag = q(&c, &format!("SELECT s FROM bag AS OF SYSTEM TIME {version} ORDER BY s")).await;
        links.push((version, inc, bag));
    }
    let jobs = q(&c, "SHOW BACKUP JOBS").await;
    assert!(jobs.contains("|incremental|"), "{jobs}");

    let b = server(&dir.path().join("b"), &root);
    let cb = connect(&b).await;
    for (version, inc, bag) in &links {
        q(&cb, &format!("RESTORE DATABASE FROM 'chain' AS OF SYSTEM TIME {version}")).await;
        assert_eq!(&q(&cb, "SELECT * FROM inc ORDER BY id").await, inc, "link at version {version}");
        assert_eq!(&q(&cb, "SELECT s FROM bag ORDER BY s").await, bag, "link at version {version}");
        q(&cb, "DROP TABLE inc; DROP TABLE bag").await;
    }
    // Without a point: the newest link.
    q(&cb, "RESTORE DATABASE FROM 'chain'").await;
    assert_eq!(q(&cb, "SELECT * FROM inc ORDER BY id").await, links.last().unwrap().1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_keeps_every_point_after_the_cutoff_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let s = server(&dir.path().join("data"), &root);
    let c = connect(&s).await;
    q(&c, "CREATE TABLE e (id BIGINT PRIMARY KEY, v INT)").await;
    let started =
        q(&c, "BACKUP DATABASE TO 'ex' WITH (continuous, flush_interval = '10ms', snapshot_interval = '1s')").await;
    let id: u64 = started.split('|').next().unwrap().parse().unwrap();
    let t0 = now_micros();
    let mut n = 0u64;
    while now_micros() < t0 + 4_500_000 {
        n += 1;
        q(&c, &format!("INSERT INTO e VALUES ({n}, {}); UPDATE e SET v = v + 1 WHERE id = {}", n % 13, n / 2 + 1))
            .await;
    }
    let (_, last_time) = wait_caught_up(&s, &c, id).await;
    q(&c, &format!("ALTER BACKUP JOB {id} STOP")).await;
    let t_end = amberdb_sql_time(&last_time);
    let count = |d: &str| std::fs::read_dir(root.join("ex").join(d)).map_or(0, |r| r.count());
    let snapshots = || count("snapshots");
    let segments = || count("logs");
    let (snaps_before, segs_before) = (snapshots(), segments());
    assert!(snaps_before >= 3, "periodic snapshots ({snaps_before})");

    // Expire with crashes: kill the CLI part-way through; whatever it left must still
    // restore every point after its cutoff, and a re-run must finish the job.
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut cutoff = t0 + 1_500_000;
    let mut interrupted = 0;
    for attempt in 0..6 {
        let ts = amberdb_mvcc::format_micros(cutoff);
        let mut child = Command::new(bin())
            .args(["backup", "expire", "ex", "--before", &ts, "--backup-root"])
            .arg(&root)
            .env("AMBERDB_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        if root.join("ex/expire-pending.json").exists() {
            interrupted += 1;
        }
        // Every point after the cutoff still restores, interrupted or not.
        for k in 0..3 {
            let t = rng.random_range(cutoff..=t_end);
            let ts = amberdb_mvcc::format_micros(t);
            let name = format!("x{attempt}_{k}");
            q(&c, &format!("RESTORE TABLE e FROM 'ex' AS OF SYSTEM TIME '{ts}' AS {name}")).await;
            assert_eq!(
                q(&c, &format!("SELECT * FROM {name} ORDER BY id")).await,
                q(&c, &format!("SELECT * FROM e AS OF SYSTEM TIME '{ts}' ORDER BY id")).await,
                "after an interrupted expire, as of {ts}"
            );
            q(&c, &format!("DROP TABLE {name}")).await;
        }
        // A complete run (finishing any interrupted one).
        let (ok, out) = cli(&["backup", "expire", "ex", "--before", &ts, "--json"], &root);
        assert!(ok, "{out}");
        assert!(!root.join("ex/expire-pending.json").exists());
        let (ok, out) = cli(&["backup", "verify", "ex"], &root);
        assert!(ok, "verify after expire: {out}");
        cutoff += 400_000;
        if cutoff > t_end {
            break;
        }
    }
    eprintln!("expire runs interrupted with a pending list: {interrupted}");
    assert!(snapshots() < snaps_before && segments() < segs_before, "expire deleted old snapshots and segments");
    // Before the cutoff: no longer restorable, said clearly.
    let early = amberdb_mvcc::format_micros(t0 + 100_000);
    let err = try_q(&c, &format!("RESTORE TABLE e FROM 'ex' AS OF SYSTEM TIME '{early}' AS gone")).await.unwrap_err();
    assert!(err.contains("outside every restorable range"), "{err}");
    // Expiring past the newest point would leave nothing: refused without --force.
    let future = amberdb_mvcc::format_micros(now_micros() + 60_000_000);
    let (ok, out) = cli(&["backup", "expire", "ex", "--before", &future], &root);
    assert!(!ok && out.contains("no restorable point"), "{out}");
    let (ok, out) = cli(&["backup", "expire", "ex", "--before", &future, "--force"], &root);
    assert!(ok, "{out}");
    assert_eq!(snapshots(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_continuous_backup_round_trip_wrong_key_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let data = dir.path().join("data");
    let key = dir.path().join("backup.key");
    std::fs::write(&key, "correct horse battery staple\n").unwrap();
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "incorrect horse\n").unwrap();
    let start = |data: &Path| server_with(data, &root, &["--backup-key-file".as_ref(), key.as_os_str()]);
    let mut s = start(&data);
    let c = connect(&s).await;
    q(&c, "CREATE TABLE s (id INT PRIMARY KEY, secret TEXT); INSERT INTO s VALUES (1, 'TOPSECRET-1')").await;
    let err = try_q(&c, "BACKUP DATABASE TO 'p' WITH (continuous, encryption_passphrase = 'x')").await.unwrap_err();
    assert!(err.contains("server's key file"), "{err}");
    let started = q(&c, "BACKUP DATABASE TO 'enc' WITH (continuous, encrypted, flush_interval = '50ms')").await;
    let id: u64 = started.split('|').next().unwrap().parse().unwrap();
    for i in 2..40 {
        q(&c, &format!("INSERT INTO s VALUES ({i}, 'TOPSECRET-{i}')")).await;
    }
    let (v1, _) = wait_caught_up(&s, &c, id).await;
    // Across a crash the job gets its key back from the key file and carries on.
    sigkill(&mut s);
    s = start(&data);
    let c = connect(&s).await;
    for i in 40..60 {
        q(&c, &format!("INSERT INTO s VALUES ({i}, 'TOPSECRET-{i}')")).await;
    }
    let (v2, _) = wait_caught_up(&s, &c, id).await;
    assert_eq!(job(&c, id).await.3, "running");
    let bytes = all_bytes(&root.join("enc"));
    assert!(!bytes.windows(9).any(|w| w == b"TOPSECRET"), "plaintext rows in the encrypted backup");
    // Round trip (the server's key), at a point before the crash and at the newest.
    for (i, v) in [v1, v2].iter().enumerate() {
        q(&c, &format!("RESTORE TABLE s FROM 'enc' AS OF SYSTEM TIME {v} AS r{i}")).await;
        assert_eq!(
            q(&c, &format!("SELECT * FROM r{i} ORDER BY id")).await,
            q(&c, &format!("SELECT * FROM s AS OF SYSTEM TIME {v} ORDER BY id")).await
        );
    }
    // The CLI: no key, a wrong key, the right key.
    let keyed = |k: &Path| {
        vec![
            "backup".to_string(),
            "verify".into(),
            "--deep".into(),
            "enc".into(),
            "--key-file".into(),
            k.display().to_string(),
        ]
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&a, &root)
    };
    let (ok, out) = run(vec!["backup".into(), "verify".into(), "enc".into()]);
    assert!(!ok && out.contains("is encrypted"), "{out}");
    let (ok, out) = run(keyed(&wrong));
    assert!(!ok && out.contains("wrong encryption passphrase"), "{out}");
    let (ok, out) = run(keyed(&key));
    assert!(ok, "{out}");
    // A tampered log block: named by verify, refused by restore.
    let mut logs: Vec<_> =
        walk(&root.join("enc/logs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "aml")).collect();
    logs.sort();
    let victim = logs.last().unwrap().clone();
    let mut b = std::fs::read(&victim).unwrap();
    b[12] ^= 1;
    std::fs::write(&victim, b).unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let (ok, out) = run(keyed(&key));
    assert!(!ok && out.contains(&name), "{out}");
    let err = try_q(&c, "RESTORE TABLE s FROM 'enc' AS bad").await.unwrap_err();
    assert!(err.contains(&name), "{err}");
    assert!(try_q(&c, "SELECT 1 FROM bad").await.is_err());
    // Without the server key, WITH (encrypted) is refused.
    let plain = server(&dir.path().join("plain"), &root);
    let cp = connect(&plain).await;
    let err = try_q(&cp, "BACKUP DATABASE TO 'x' WITH (continuous, encrypted)").await.unwrap_err();
    assert!(err.contains("--backup-key-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_controlled_and_watched_from_sql_the_cli_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let s = server(&dir.path().join("data"), &root);
    let c = connect(&s).await;
    let srv = format!("http://127.0.0.1:{}", s.http_port);
    q(&c, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a')").await;
    // Started from the CLI.
    let (ok, out) =
        cli(&["backup", "start", "--continuous", "d1", "--flush-interval", "50ms", "--server", &srv], &root);
    assert!(ok && out.contains("running") && out.contains("d1"), "{out}");
    let id: u64 = q(&c, "SHOW BACKUP JOBS").await.split('|').next().unwrap().parse().unwrap();
    q(&c, "INSERT INTO t VALUES (2, 'b')").await;
    wait_caught_up(&s, &c, id).await;
    let (ok, out) = cli(&["backup", "status", "--server", &srv], &root);
    assert!(ok && out.contains("running") && out.contains("d1"), "{out}");
    // Moved to a new destination: a fresh chain there, shipping continues.
    q(&c, &format!("ALTER BACKUP JOB {id} SET DESTINATION 'd2'")).await;
    q(&c, "INSERT INTO t VALUES (3, 'c')").await;
    let (last, last_time) = wait_caught_up(&s, &c, id).await;
    assert!(root.join("d2/snapshots").exists() && root.join("d2/logs").exists());
    let expected = q(&c, &format!("SELECT * FROM t AS OF SYSTEM TIME {last} ORDER BY id")).await;
    q(&c, "RESTORE TABLE t FROM 'd2' AS t2").await;
    assert_eq!(q(&c, "SELECT * FROM t2 ORDER BY id").await, expected);
    // Pause, resume, stop from the CLI.
    for (action, state) in [("pause", "paused"), ("resume", "running"), ("stop", "stopped")] {
        let (ok, out) = cli(&["backup", action, &id.to_string(), "--server", &srv], &root);
        assert!(ok && out.contains(state), "{action}: {out}");
    }
    let err = try_q(&c, &format!("ALTER BACKUP JOB {id} RESUME")).await.unwrap_err();
    assert!(err.contains("stopped"), "{err}");
    assert!(try_q(&c, "ALTER BACKUP JOB 999 PAUSE").await.unwrap_err().contains("does not exist"));
    // The cold path restores a point in time into an empty data directory.
    let cold = dir.path().join("cold");
    let ts = amberdb_mvcc::format_micros(amberdb_sql_time(&last_time));
    let out = Command::new(bin())
        .args(["restore", "d2", "--to-time", &ts, "--data-dir"])
        .arg(&cold)
        .arg("--backup-root")
        .arg(&root)
        .env("AMBERDB_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = server(&cold, &root);
    let cr = connect(&restored).await;
    assert_eq!(q(&cr, "SELECT * FROM t ORDER BY id").await, expected);
    drop(restored);
    // A job throttled far below the write rate falls behind its bound: it says so.
    let started = q(
        &c,
        "BACKUP DATABASE TO 'slow' WITH (continuous, flush_interval = '50ms', max_lag = '1s', rate_limit = '200')",
    )
    .await;
    let slow: u64 = started.split('|').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        q(&c, &format!("INSERT INTO t SELECT g, 'x' FROM generate_series({}, {}) g", 1000 + rng_id(), 1000 + rng_id()))
            .await;
        if job(&c, slow).await.3 == "lagging" {
            break;
        }
        assert!(Instant::now() < deadline, "the throttled job never reported lagging");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = http_get(s.http_port, "/metrics");
    assert!(body.contains(&format!("amberdb_backup_job_lagging{{job=\"{slow}\",destination=\"slow\"}} 1")), "{body}");
}

/// A fresh id range for throwaway inserts.
fn rng_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(100, std::sync::atomic::Ordering::Relaxed)
}

/// A transaction far larger than the transaction buffer (staged through the commit
/// log) is seen whole by its own statements, by nobody before it commits, and by
/// continuous backups as one commit: point-in-time restores just before and after it
/// match time-travel reads, its segment keeps a part per stage, and a rolled-back one
/// leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_transactions_ship_and_restore_as_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let buffer = ["--transaction-buffer".as_ref(), "64kB".as_ref()];
    let a = server_with(&dir.path().join("a"), &root, &buffer);
    let c = connect(&a).await;
    q(
        &c,
        "CREATE TABLE big (id INT PRIMARY KEY, v TEXT, n INT);
         CREATE INDEX big_n ON big (n);
         INSERT INTO big SELECT g, 'small', g % 7 FROM generate_series(1, 100) g;
         CREATE TABLE side (k INT PRIMARY KEY);",
    )
    .await;
    let started =
        q(&c, "BACKUP DATABASE TO 'staged' WITH (continuous, flush_interval = '100ms', snapshot_interval = '1h')")
            .await;
    let id: u64 = started.split('|').next().unwrap().parse().unwrap();
    let (_, before) = wait_caught_up(&a, &c, id).await;

    let other = connect(&a).await;
    q(&c, "BEGIN").await;
    q(&c, "INSERT INTO big SELECT g, repeat('x', 100) || g, g % 7 FROM generate_series(101, 20100) g").await;
    // Commits go on around it (elsewhere: reading all of `big`, it would conflict
    // with a concurrent insert there) and see none of it.
    q(&other, "INSERT INTO side VALUES (1)").await;
    assert_eq!(q(&other, "SELECT count(*) FROM big").await, "100\n");
    // Its own statements see all of it, staged or not, through the index too.
    assert_eq!(q(&c, "SELECT count(*) FROM big").await, "20100\n");
    assert_eq!(q(&c, "SELECT count(*) FROM big WHERE n = 3").await, "2872\n");
    q(&c, "UPDATE big SET v = 'updated', n = 100 WHERE id BETWEEN 150 AND 160").await;
    q(&c, "DELETE FROM big WHERE id BETWEEN 200 AND 299").await;
    assert_eq!(q(&c, "SELECT count(*), sum(n) FROM big WHERE n = 100").await, "11|1100\n");
    q(&c, "COMMIT").await;
    let all = q(&c, "SELECT count(*), sum(id), count(DISTINCT v) FROM big").await;
    assert_eq!(all, "20000|201990100|19891\n");

    // Rolled back: nothing of it stays, and the staging area is emptied.
    q(&c, "BEGIN").await;
    q(&c, "INSERT INTO big SELECT g, repeat('y', 100), 0 FROM generate_series(40001, 50000) g").await;
    q(&c, "ROLLBACK").await;
    assert_eq!(q(&c, "SELECT count(*) FROM big WHERE id > 40000").await, "0\n");

    let (_, after) = wait_caught_up(&a, &c, id).await;
    let parts = walk(&root.join("staged/logs")).iter().filter(|p| p.to_string_lossy().contains(".part")).count();
    assert!(parts > 10, "the staged commit shipped as a segment with a part per stage ({parts} parts)");
    let (ok, out) = cli(&["backup", "verify", "--deep", "staged"], &root);
    assert!(ok && out.contains("OK"), "{out}");

    for (i, ts) in [&before, &after].into_iter().enumerate() {
        let ts = amberdb_mvcc::format_micros(amberdb_sql_time(ts));
        let expected = q(&c, &format!("SELECT * FROM big AS OF SYSTEM TIME '{ts}' ORDER BY id")).await;
        q(&c, &format!("RESTORE TABLE big FROM 'staged' AS OF SYSTEM TIME '{ts}' AS r{i}")).await;
        assert_eq!(q(&c, &format!("SELECT * FROM r{i} ORDER BY id")).await, expected, "restored as of {ts}");
        let by_index = q(&c, &format!("SELECT count(*) FROM r{i} WHERE n = 100")).await;
        assert_eq!(by_index, if i == 0 { "0\n" } else { "11\n" });
    }
    // A whole database restored on another server has it too.
    let b = server(&dir.path().join("b"), &root);
    let cb = connect(&b).await;
    let ts = amberdb_mvcc::format_micros(amberdb_sql_time(&after));
    q(&cb, &format!("RESTORE DATABASE FROM 'staged' AS OF SYSTEM TIME '{ts}'")).await;
    assert_eq!(q(&cb, "SELECT count(*), sum(id), count(DISTINCT v) FROM big").await, all);
    q(&c, &format!("ALTER BACKUP JOB {id} STOP")).await;
}
