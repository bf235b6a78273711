//! End-to-end tests with real PostgreSQL clients (psql, pgbench) against the real server.

mod common;

use common::{psql, Server};
use std::process::Command;

#[test]
fn psql_script() {
    let server = Server::start();
    let script = "\
CREATE TABLE mytable (id INT PRIMARY KEY, name VARCHAR(100));
INSERT INTO mytable VALUES (1, 'John');
SELECT * FROM mytable;
BEGIN;
INSERT INTO mytable VALUES (2, 'Jane');
SELECT count(*) FROM mytable;
ROLLBACK;
SELECT count(*) FROM mytable;
SELECT version();
";
    let (ok, out, err) = psql(&server, &["-At", "-v", "ON_ERROR_STOP=1"], script);
    assert!(ok, "psql failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["1|John", "2", "1", "PostgreSQL 15.0 (AmberDB 0.1.0)"], "stderr: {err}");
    // psql's \dt lists tables from pg_catalog.
    let (ok, out, err) = psql(&server, &["-At"], "\\dt\n");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "public|mytable|table|amberdb", "{err}");
    // psql's \d describes a table from pg_catalog, indexes and constraints included.
    let (ok, out, err) = psql(
        &server,
        &["-v", "ON_ERROR_STOP=1"],
        "CREATE TABLE described (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL DEFAULT 'x', email TEXT UNIQUE);\nCREATE INDEX described_name ON described (name);\n\\d described\n",
    );
    assert!(ok, "{err}");
    for expected in [
        "Table \"public.described\"",
        "id     | integer                |           | not null |",
        "name   | character varying(100) |           | not null | 'x'",
        "\"described_pkey\" PRIMARY KEY, btree (id)",
        "\"described_email_key\" UNIQUE CONSTRAINT, btree (email)",
        "\"described_name\" btree (name)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}\n{err}");
    }
    // … and a view, with its query's column names and types.
    let (ok, out, err) = psql(
        &server,
        &["-v", "ON_ERROR_STOP=1"],
        "CREATE VIEW named AS SELECT id, upper(name) AS shout FROM described;\n\\d named\n",
    );
    assert!(ok, "{err}");
    for expected in ["View \"public.named\"", "id     | integer |", "shout  | text    |"] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}\n{err}");
    }
    // A database that does not exist gets PostgreSQL's error; psql reports the server
    // as version 15 (no major-version warning).
    let out = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-U",
            "amberdb",
            "-d",
            "nosuchdb",
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("database \"nosuchdb\" does not exist"), "{stderr}");
    let (_, _, err) = psql(&server, &["-At"], "SELECT 1;");
    assert!(!err.contains("WARNING"), "{err}");
    // An error is reported with its position and the connection stays usable.
    let (ok, out, err) = psql(&server, &["-At"], "SELEC 1;\nSELECT 41 + 1;\n");
    assert!(ok);
    assert!(err.contains("syntax error") && err.contains("LINE 1: SELEC 1;"), "{err}");
    assert_eq!(out.trim(), "42");
}

#[test]
fn pgbench_tpcb_like_has_no_errors_and_keeps_balances() {
    let server = Server::start();
    let mut setup = String::from(
        "CREATE TABLE pgbench_branches (bid INT PRIMARY KEY, bbalance INT, filler CHAR(88));
CREATE TABLE pgbench_tellers (tid INT PRIMARY KEY, bid INT, tbalance INT, filler CHAR(84));
CREATE TABLE pgbench_accounts (aid INT PRIMARY KEY, bid INT, abalance INT, filler CHAR(84));
CREATE TABLE pgbench_history (tid INT, bid INT, aid INT, delta INT, filler CHAR(22));
INSERT INTO pgbench_branches VALUES (1, 0, '');
",
    );
    setup.push_str("INSERT INTO pgbench_tellers VALUES ");
    setup.push_str(&(1..=10).map(|t| format!("({t}, 1, 0, '')")).collect::<Vec<_>>().join(", "));
    setup.push_str(";\nINSERT INTO pgbench_accounts VALUES ");
    setup.push_str(&(1..=1000).map(|a| format!("({a}, 1, 0, '')")).collect::<Vec<_>>().join(", "));
    setup.push_str(";\n");
    let (ok, _, err) = psql(&server, &["-v", "ON_ERROR_STOP=1"], &setup);
    assert!(ok, "setup failed: {err}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tpcb.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 1000)
\\set tid random(1, 10)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = 1;
INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (:tid, 1, :aid, :delta);
END;
",
    )
    .unwrap();
    run_pgbench_and_check_balances(&server, &["-n", "-f", script.to_str().unwrap()]);
}

/// Runs pgbench (4 clients, prepared statements, 3 s, retrying serialization failures)
/// with `args` (a script or the built-in one), asserts zero failed transactions, and
/// checks the TPC-B balance-sum invariant: every delta was applied to exactly one
/// account, one teller and one branch, and recorded once in the history.
fn run_pgbench_and_check_balances(server: &Server, args: &[&str]) {
    let out = Command::new("pgbench")
        .args(["-M", "prepared", "-c", "4", "-j", "2", "-T", "3", "--max-tries=1000", "-h", "127.0.0.1"])
        .args(["-p", &server.port.to_string(), "-U", "amberdb"])
        .args(args)
        .arg("amberdb")
        .output()
        .expect("pgbench is installed (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{stdout}"));
    assert!(processed > 0, "{stdout}");
    assert!(stdout.contains("number of failed transactions: 0 "), "failed transactions:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    let (ok, out, err) = psql(
        server,
        &["-At"],
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), \
         (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history), \
         (SELECT count(*) FROM pgbench_history);",
    );
    assert!(ok, "{err}");
    let v: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(v.len(), 5, "{out} {err}");
    assert!(v[0] == v[1] && v[1] == v[2] && v[2] == v[3], "balances disagree: {out}");
    assert_eq!(v[4].parse::<u64>().unwrap(), processed, "history rows != transactions processed");
}

/// `pgbench -i` as users run it first: create the tables, load them with COPY FREEZE,
/// VACUUM, add the primary keys (ALTER TABLE … ADD PRIMARY KEY rebuilds each table);
/// then the built-in TPC-B-like script, which VACUUMs and TRUNCATEs before it runs.
#[test]
fn pgbench_initialises_and_runs_its_builtin_script() {
    let server = Server::start();
    let out = Command::new("pgbench")
        .args(["-i", "-s", "1", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "amberdb", "amberdb"])
        .output()
        .expect("pgbench is installed (scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench -i failed:\n{stderr}");
    assert!(stderr.contains("creating primary keys...") && stderr.contains("done in"), "{stderr}");
    let (ok, out, err) = psql(
        &server,
        &["-At"],
        "SELECT count(*), count(DISTINCT aid), min(aid), max(aid), sum(bid) FROM pgbench_accounts;",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "100000|100000|1|100000|100000", "{err}");
    let (ok, out, err) = psql(&server, &[], "\\d pgbench_accounts");
    assert!(ok, "{err}");
    assert!(out.contains("\"pgbench_accounts_pkey\" PRIMARY KEY, btree (aid)"), "\\d shows the new key:\n{out}");
    run_pgbench_and_check_balances(&server, &[]);
}

#[test]
fn as_of_system_time_reads_the_past() {
    let server = Server::start();
    let (ok, _, err) = psql(
        &server,
        &["-v", "ON_ERROR_STOP=1"],
        "CREATE TABLE t (k INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'old');",
    );
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    // The server's own clock names the instant between the two writes.
    let (ok, ts, err) = psql(&server, &["-At"], "SELECT now();");
    assert!(ok, "{err}");
    let ts = ts.trim().to_string();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (ok, _, err) = psql(
        &server,
        &["-v", "ON_ERROR_STOP=1"],
        "UPDATE t SET v = 'new' WHERE k = 1; INSERT INTO t VALUES (2, 'later');",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = psql(
        &server,
        &["-At"],
        &format!("SELECT k, v FROM t AS OF SYSTEM TIME '{ts}' ORDER BY k;\nSELECT k, v FROM t ORDER BY k;\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["1|old", "1|new", "2|later"], "{err}");
    // Outside the retention window, in the future, or inside a block: clear errors.
    let (_, _, err) = psql(&server, &["-At"], "SELECT * FROM t AS OF SYSTEM TIME '2001-01-01 00:00:00';");
    assert!(err.contains("older than the retention window"), "{err}");
    let (_, _, err) = psql(&server, &["-At"], "SELECT * FROM t AS OF SYSTEM TIME 999999999;");
    assert!(err.contains("newer than the newest committed version"), "{err}");
    let (_, _, err) = psql(&server, &["-At"], "BEGIN; SELECT * FROM t AS OF SYSTEM TIME '-1s';");
    assert!(err.contains("inside a transaction block"), "{err}");
}

#[test]
fn psql_copy_in_and_out() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "1,alice,\"x, y\"\n2,bob,\n3,\"quote \"\"q\"\"\",z\n").unwrap();
    let txt = dir.path().join("in.txt");
    std::fs::write(&txt, "10\tten\t\\N\n11\tel\\teven\tq\n").unwrap();
    let out = dir.path().join("out.csv");
    let script = format!(
        "CREATE TABLE c (id INT PRIMARY KEY, name TEXT, note TEXT);\n\\copy c FROM '{}' CSV\n\\copy c FROM '{}'\nSELECT id, name, coalesce(note, '<null>') FROM c ORDER BY id;\n\\copy c TO '{}' CSV HEADER\n",
        csv.display(),
        txt.display(),
        out.display()
    );
    let (ok, stdout, err) = psql(&server, &["-At", "-v", "ON_ERROR_STOP=1"], &script);
    assert!(ok, "{err}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["1|alice|x, y", "2|bob|<null>", "3|quote \"q\"|z", "10|ten|<null>", "11|el\teven|q"],
        "{err}"
    );
    let exported = std::fs::read_to_string(&out).unwrap();
    assert_eq!(exported.lines().next(), Some("id,name,note"));
    assert_eq!(exported.lines().count(), 6);
    // A bad row fails the whole COPY and names the line; nothing of it is visible.
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "20\ttwenty\tx\nnot-a-number\ty\tz\n").unwrap();
    let (ok, _, err) = psql(&server, &["-At"], &format!("\\copy c FROM '{}'\n", bad.display()));
    assert!(!ok || err.contains("ERROR"), "{err}");
    assert!(err.contains("invalid input syntax for type integer") && err.contains("line 2"), "{err}");
    let (_, stdout, _) = psql(&server, &["-At"], "SELECT count(*) FROM c;");
    assert_eq!(stdout.trim(), "5");
    // A short record names its line once.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "30\tthirty\n").unwrap();
    let (_, _, err) = psql(&server, &["-At"], &format!("\\copy c FROM '{}'\n", short.display()));
    assert_eq!(err.matches("(COPY c, line 1)").count(), 1, "{err}");
    // Identity columns: filled when not copied; a GENERATED ALWAYS one takes copied
    // values, as PostgreSQL's COPY lets it.
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "a\nb\n").unwrap();
    let given = dir.path().join("given.txt");
    std::fs::write(&given, "100\tc\n").unwrap();
    let script = format!(
        "CREATE TABLE ids (id INT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT);\n\\copy ids (name) FROM '{}'\n\\copy ids FROM '{}'\nSELECT id, name FROM ids ORDER BY id;\n",
        names.display(),
        given.display()
    );
    let (ok, stdout, err) = psql(&server, &["-At", "-v", "ON_ERROR_STOP=1"], &script);
    assert!(ok, "{err}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["1|a", "2|b", "100|c"], "{err}");
}

/// A COPY far larger than the transaction buffer (64 kB here, so it is staged many
/// times) commits whole, with its index; one that fails on its last line leaves
/// nothing, and the table takes the next COPY as if it had never run (with `FREEZE on`,
/// spelled as `pgbench -i` spells it).
#[test]
fn psql_copy_larger_than_the_transaction_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--transaction-buffer".as_ref(), "64kB".as_ref()]);
    let rows: String = (1..=30_000).map(|i| format!("{i}\t{}\tname-{i}\n", i % 10)).collect();
    let good = dir.path().join("rows.txt");
    std::fs::write(&good, &rows).unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, format!("{rows}oops\t1\tx\n")).unwrap();
    let script = format!(
        "CREATE TABLE big (id INT PRIMARY KEY, k INT, name TEXT);\nCREATE INDEX big_k ON big (k);\n\\copy big FROM '{}'\n",
        bad.display()
    );
    let (_, _, err) = psql(&server, &["-At"], &script);
    assert!(err.contains("invalid input syntax for type integer") && err.contains("line 30001"), "{err}");
    let (_, stdout, _) = psql(&server, &["-At"], "SELECT count(*) FROM big;");
    assert_eq!(stdout.trim(), "0", "the failed COPY left nothing");
    let script = format!(
        "\\copy big FROM '{}' WITH (FREEZE on)\nSELECT count(*), sum(id), sum(k) FROM big;\nSELECT count(*) FROM big WHERE k = 7;\n",
        good.display()
    );
    let (ok, stdout, err) = psql(&server, &["-At", "-v", "ON_ERROR_STOP=1"], &script);
    assert!(ok, "{err}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["30000|450015000|135000", "3000"], "{err}");
}

/// psycopg 3 (parameters, transactions, a serialization-failure retry loop, COPY).
/// `scripts/test` installs psycopg into `.venv` and sets `AMBERDB_REQUIRE_PSYCOPG=1`;
/// a bare `cargo test` without the venv skips this test with a message.
#[test]
fn psycopg_script() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let required = std::env::var("AMBERDB_REQUIRE_PSYCOPG").is_ok_and(|v| v == "1");
    if !python.exists() {
        assert!(!required, "{} is missing: run ./scripts/test to install psycopg", python.display());
        eprintln!("SKIPPED psycopg_script: no {} (./scripts/test installs it)", python.display());
        return;
    }
    let server = Server::start();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/psycopg_e2e.py");
    let out = Command::new(&python).arg(&script).arg(server.port.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg script failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
}

#[test]
fn admin_http_health_and_status() {
    let server = Server::start();
    let (code, body) = common::http_get(server.http_port, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    let (code, body) = common::http_get(server.http_port, "/status");
    assert_eq!(code, 200);
    assert!(body.contains("applied_version") && body.contains("\"leader\":1"), "{body}");
    let (code, _) = common::http_get(server.http_port, "/nope");
    assert_eq!(code, 404);
}

#[test]
fn config_file_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("amberdb.toml");
    std::fs::write(&cfg, "retention_secs = 0\n").unwrap();
    let out = Command::new(common::bin())
        .args(["server", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("retention_secs") && stderr.contains("amberdb.toml"), "{stderr}");
}

#[test]
fn scram_sha_256_when_users_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("amberdb.toml");
    std::fs::write(&cfg, "[users]\namberdb = \"s3cret\"\nalice = \"wonder land\"\n").unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--config".as_ref(), cfg.as_os_str()]);
    let run = |user: &str, password: Option<&str>| {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-At", "-w", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", user, "-d", "amberdb"]);
        cmd.args(["-c", "SELECT 1"]);
        match password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_lowercase())
    };
    let (ok, err) = run("amberdb", Some("s3cret"));
    assert!(ok, "{err}");
    let (ok, err) = run("alice", Some("wonder land"));
    assert!(ok, "{err}");
    let (ok, err) = run("amberdb", Some("wrong"));
    assert!(!ok && err.contains("password authentication failed"), "{err}");
    let (ok, err) = run("mallory", Some("s3cret"));
    assert!(!ok && err.contains("password authentication failed"), "{err}");
    let (ok, _) = run("amberdb", None);
    assert!(!ok, "connected without a password");
}

/// A `TimeZone` startup parameter (libpq sends `PGTZ` as one, JDBC its JVM's zone) sets
/// the session's time zone and is reported back; an unknown zone refuses the
/// connection as PostgreSQL does.
#[test]
fn time_zone_startup_parameter_sets_the_session_zone() {
    let server = Server::start();
    let run = |tz: &str| {
        Command::new("psql")
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "amberdb", "-d", "amberdb"])
            .args(["-c", "SHOW timezone", "-c", "SELECT '2024-07-01 02:00:00+00'::timestamptz"])
            .env("PGTZ", tz)
            .output()
            .expect("psql is installed (scripts/test installs it)")
    };
    let out = run("America/New_York");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().collect::<Vec<_>>(), vec!["America/New_York", "2024-06-30 22:00:00-04"]);
    let out = run("Nowhere/Special");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("invalid value for parameter \"TimeZone\": \"Nowhere/Special\""), "{stderr}");
}

/// tokio-postgres (like sqlx) sends timestamps as binary parameters and reads binary
/// results: a timestamptz is an instant (µs since 2000-01-01 UTC) both ways, whatever
/// the session's zone, and a timestamp is the wall-clock time as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_timestamps_are_instants_in_any_session_zone() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let server = Server::start();
    let (client, conn) = tokio_postgres::connect(&server.conn_string(), tokio_postgres::NoTls).await.expect("connect");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let instant = UNIX_EPOCH + Duration::from_micros(1_704_067_200_000_001); // 2024-01-01 00:00:00.000001Z
    for zone in ["UTC", "Asia/Tokyo", "America/New_York"] {
        client.batch_execute(&format!("SET TIME ZONE '{zone}'")).await.unwrap();
        let row = client
            .query_one(
                "SELECT $1::timestamptz, $1::timestamptz::text, '2024-01-01 09:00:00+09'::timestamptz",
                &[&instant],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, SystemTime>(0), instant, "{zone}");
        assert_eq!(row.get::<_, SystemTime>(2), UNIX_EPOCH + Duration::from_secs(1_704_067_200), "{zone}");
        let text: String = row.get(1);
        let want = match zone {
            "UTC" => "2024-01-01 00:00:00.000001+00",
            "Asia/Tokyo" => "2024-01-01 09:00:00.000001+09",
            _ => "2023-12-31 19:00:00.000001-05",
        };
        assert_eq!(text, want);
    }
    // A timestamp parameter is the wall-clock time as sent, in and out.
    let row = client.query_one("SELECT $1::timestamp, $1::timestamp::text", &[&instant]).await.unwrap();
    assert_eq!(row.get::<_, SystemTime>(0), instant);
    assert_eq!(row.get::<_, String>(1), "2024-01-01 00:00:00.000001");
    drop(client);
    let _ = task.await;
}

/// A binary numeric or uuid, as bytes (drivers such as sqlx and JDBC's binary transfer
/// send and read them this way).
#[derive(Debug)]
struct RawBinary(Vec<u8>);

impl tokio_postgres::types::ToSql for RawBinary {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        [tokio_postgres::types::Type::NUMERIC, tokio_postgres::types::Type::UUID].contains(ty)
    }
    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for RawBinary {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawBinary(raw.to_vec()))
    }
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        [tokio_postgres::types::Type::NUMERIC, tokio_postgres::types::Type::UUID].contains(ty)
    }
}

/// Binary numerics past 28 digits, both ways, byte for byte as PostgreSQL's
/// `numeric_send` writes them: ndigits, weight, sign, dscale, then base-10000 digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_numerics_are_exact_at_any_size() {
    let server = Server::start();
    let (client, conn) = tokio_postgres::connect(&server.conn_string(), tokio_postgres::NoTls).await.expect("connect");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let be = |words: &[i16]| words.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>();
    // 12345678901234567890.0123: 6 digits, weight 4, positive, dscale 4.
    let wide = be(&[6, 4, 0, 4, 1234, 5678, 9012, 3456, 7890, 123]);
    // -0.00012: 2 digits, weight -1, negative, dscale 5.
    let small = be(&[2, -1, 0x4000, 5, 1, 2000]);
    let row = client
        .query_one(
            "SELECT $1::numeric::text, $2::numeric::text, 12345678901234567890.0123::numeric, -0.00012::numeric, \
             $1::numeric * 10000000000",
            &[&RawBinary(wide.clone()), &RawBinary(small.clone())],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "12345678901234567890.0123");
    assert_eq!(row.get::<_, String>(1), "-0.00012");
    assert_eq!(row.get::<_, RawBinary>(2).0, wide);
    assert_eq!(row.get::<_, RawBinary>(3).0, small);
    // 123456789012345678900123000000.0000: 8 digits, weight 7, dscale 4.
    assert_eq!(row.get::<_, RawBinary>(4).0, be(&[7, 7, 0, 4, 12, 3456, 7890, 1234, 5678, 9001, 2300]));
    // A malformed binary numeric is refused with PostgreSQL's code, and the session lives.
    let err = client.query_one("SELECT $1::numeric", &[&RawBinary(be(&[1, 0, 0, 0, 10000]))]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P03"), "{err}");
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    drop(client);
    let _ = task.await;
}

/// Row-returning DML completes with PostgreSQL's tags: `INSERT 0 n` (libpq reads the
/// count after the oid; "INSERT n" made psql say "could not interpret result from
/// server" and drivers report no row count), `UPDATE n`, `DELETE n`. psql runs
/// without -q here so that it prints the tags.
#[test]
fn returning_statements_complete_with_postgresql_tags() {
    let server = Server::start();
    let out = Command::new("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "amberdb", "-d", "amberdb"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", "CREATE TABLE r (id SERIAL PRIMARY KEY, v TEXT)"])
        .args(["-c", "INSERT INTO r (v) VALUES ('a'), ('b') RETURNING id"])
        .args(["-c", "UPDATE r SET v = 'c' WHERE id = 2 RETURNING v"])
        .args(["-c", "DELETE FROM r WHERE id = 1 RETURNING id"])
        .output()
        .expect("psql is installed (scripts/test installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("could not interpret"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["CREATE TABLE", "1", "2", "INSERT 0 2", "c", "UPDATE 1", "1", "DELETE 1"], "{stderr}");
}

/// Binary uuids, both ways: the 16 bytes, most significant first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_uuids_round_trip() {
    let server = Server::start();
    let (client, conn) = tokio_postgres::connect(&server.conn_string(), tokio_postgres::NoTls).await.expect("connect");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    client.batch_execute("CREATE TABLE u (id UUID PRIMARY KEY, v INT)").await.unwrap();
    let id: Vec<u8> = (0u8..16).collect();
    client.execute("INSERT INTO u VALUES ($1, 1)", &[&RawBinary(id.clone())]).await.unwrap();
    let row = client.query_one("SELECT id, id::text FROM u WHERE id = $1", &[&RawBinary(id.clone())]).await.unwrap();
    assert_eq!(row.get::<_, RawBinary>(0).0, id);
    assert_eq!(row.get::<_, String>(1), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    let err = client.query_one("SELECT $1::uuid", &[&RawBinary(vec![1, 2, 3])]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P03"), "{err}");
    drop(client);
    let _ = task.await;
}
