//! Backup and restore end to end: the real server, real psql, the real CLI, a local
//! backup root and an S3-compatible server (moto) on loopback.

mod common;

use common::{all_bytes, bin, copy_dir, psql, Server};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a server whose backup root is `root`.
fn server(data: &Path, root: &Path, envs: &[(&str, &str)]) -> Server {
    Server::start_full(data, &["--backup-root".as_ref(), root.as_os_str()], envs)
}

/// Runs SQL through psql (unaligned, tuples only), which must succeed.
fn sql(s: &Server, text: &str) -> String {
    let (ok, out, err) = psql(s, &["-v", "ON_ERROR_STOP=1", "-At"], text);
    assert!(ok, "psql failed on {text:?}: {err}");
    out
}

/// Runs SQL that must fail; returns the error text.
fn sql_err(s: &Server, text: &str) -> String {
    let (ok, _, err) = psql(s, &["-v", "ON_ERROR_STOP=1", "-At"], text);
    assert!(!ok, "expected {text:?} to fail");
    err
}

/// Runs the CLI: (success, stdout + stderr).
fn cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin()).args(args).envs(envs.iter().copied()).env("AMBERDB_LOG", "warn").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// An S3-compatible server (moto) on an ephemeral loopback port, with a bucket.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// `None` (test skipped) if moto is not installed, unless AMBERDB_REQUIRE_MOTO is
    /// set (scripts/test sets it after installing moto).
    fn start(bucket: &str) -> Option<Moto> {
        Moto::start_with(bucket, &[])
    }

    /// Starts moto with extra environment variables.
    fn start_with(bucket: &str, envs: &[(&str, &str)]) -> Option<Moto> {
        let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
        if !exe.exists() {
            assert!(std::env::var_os("AMBERDB_REQUIRE_MOTO").is_none(), "moto_server missing at {}", exe.display());
            eprintln!("skipping: moto is not installed (run ./scripts/test)");
            return None;
        }
        let mut child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("http://127.0.0.1:") {
                        let _ = tx.send(line[i..].trim().to_string());
                    }
                }
            });
        }
        let endpoint = rx.recv_timeout(Duration::from_secs(60)).expect("moto did not start within 60 s");
        let m = Moto { child, endpoint };
        // Create the bucket with a bare HTTP PUT (moto does not check signatures).
        let port: u16 = m.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
        Some(m)
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AMBERDB_S3_ENDPOINT", self.endpoint.clone()),
            ("AMBERDB_S3_ACCESS_KEY_ID", "testing".into()),
            ("AMBERDB_S3_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }
}

#[test]
fn seed_script_through_psql() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("data"), &dir.path().join("backups"), &[]);
    let script = "CREATE TABLE mytable (id INT PRIMARY KEY, name VARCHAR(100));
INSERT INTO mytable VALUES (1, 'John');
BACKUP TABLE mytable TO 'mytable.backup';
DROP TABLE mytable;
RESTORE TABLE mytable FROM 'mytable.backup';
SELECT * FROM mytable;   -- 1 | John
";
    let (ok, out, err) = psql(&s, &["-v", "ON_ERROR_STOP=1"], script);
    assert!(ok, "{err}");
    assert!(out.contains("  1 | John"), "{out}");
    assert!(dir.path().join("backups/mytable.backup/amber-backup.json").exists());
    // A destination that already holds a backup is refused; a path escaping the root too.
    assert!(sql_err(&s, "BACKUP TABLE mytable TO 'mytable.backup'").contains("already holds a backup"));
    assert!(sql_err(&s, "BACKUP TABLE mytable TO '../elsewhere'").contains("escapes the backup root"));
    assert!(sql_err(&s, "BACKUP TABLE mytable TO '/tmp/x'").contains("outside the backup root"));
    // Restoring over an existing table needs `replace`; a table not in the backup is named.
    assert!(sql_err(&s, "RESTORE TABLE mytable FROM 'mytable.backup'").contains("already exists"));
    sql(&s, "UPDATE mytable SET name = 'changed'");
    sql(&s, "RESTORE TABLE mytable FROM 'mytable.backup' WITH (replace)");
    assert_eq!(sql(&s, "SELECT name FROM mytable"), "John\n");
    assert!(sql_err(&s, "RESTORE TABLE nope FROM 'mytable.backup'").contains("not in the backup"));
    assert!(sql_err(&s, "RESTORE TABLE mytable FROM 'missing.backup' AS m2").contains("holds no AmberDB backup"));
    assert!(sql_err(&s, "BEGIN; BACKUP DATABASE TO 'in_txn'").contains("transaction block"));
    assert!(sql_err(&s, "BACKUP TABLE mytable TO 'x' WITH (bogus = 1)").contains("unknown BACKUP option"));
    let shown = sql(&s, "SHOW BACKUP 'mytable.backup'");
    assert!(shown.starts_with("mytable|1|"), "{shown}");
    let listed = sql(&s, "SHOW BACKUPS IN '.'");
    assert!(listed.contains("mytable.backup|tables|") && listed.contains("|complete"), "{listed}");
}

/// Backs up while a writer runs; restores (a table on the same server, the database on a
/// fresh server) must equal `AS OF SYSTEM TIME` reads at the backup's version.
async fn consistent_backup(dest: &str, envs: &[(&str, &str)]) {
    use tokio_postgres::NoTls;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let a = server(&dir.path().join("a"), &root, envs);
    sql(
        &a,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, note TEXT);
         CREATE INDEX accounts_note ON accounts (note);
         CREATE TABLE events (v TEXT, n INT);
         INSERT INTO accounts SELECT g, g * 10, 'seed' || (g % 100) FROM generate_series(1, 3000) g;
         INSERT INTO events SELECT 'e' || g, g FROM generate_series(1, 1000) g;",
    );
    let (client, conn) = tokio_postgres::connect(&a.conn_string(), NoTls).await.unwrap();
    tokio::spawn(conn);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let id = (i * 7919) % 3000 + 1;
            let stmts = format!(
                "UPDATE accounts SET balance = balance + 1, note = 'w{i}' WHERE id = {id};
                 INSERT INTO events VALUES ('w{i}', {i});
                 INSERT INTO accounts VALUES ({}, 0, 'new');
                 DELETE FROM accounts WHERE id = {}",
                100_000 + i,
                (i * 31) % 3000 + 1
            );
            if let Err(e) = client.batch_execute(&stmts).await {
                assert_eq!(e.code().map(|c| c.code()), Some("40001"), "writer: {e}");
            }
        }
        i
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = sql(&a, &format!("BACKUP DATABASE TO '{dest}'"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 5, "the writer made progress during the backup ({writes})");
    let fields: Vec<&str> = out.trim().split('|').collect();
    let version: u64 = fields[1].parse().unwrap();
    let expected_accounts = sql(&a, &format!("SELECT * FROM accounts AS OF SYSTEM TIME {version} ORDER BY id"));
    let expected_events = sql(&a, &format!("SELECT v, n FROM events AS OF SYSTEM TIME {version} ORDER BY v"));
    assert_ne!(expected_accounts, sql(&a, "SELECT * FROM accounts ORDER BY id"), "writes continued after the backup");
    let rows: usize = fields[4].parse().unwrap();
    assert_eq!(rows, expected_accounts.lines().count() + expected_events.lines().count());

    // Table restore into the running server, under a new name.
    // With the optional second proof: every restored entry read back and checksummed.
    sql(&a, &format!("RESTORE TABLE accounts FROM '{dest}' AS accounts_r WITH (read_back)"));
    assert_eq!(sql(&a, "SELECT * FROM accounts_r ORDER BY id"), expected_accounts);
    let by_index = sql(&a, "SELECT count(*) FROM accounts_r WHERE note = 'seed7'");
    let by_scan =
        sql(&a, &format!("SELECT count(*) FROM accounts AS OF SYSTEM TIME {version} WHERE note || '' = 'seed7'"));
    assert_eq!(by_index, by_scan);

    // Database restore into a fresh server.
    let b = server(&dir.path().join("b"), &root, envs);
    sql(&b, &format!("RESTORE DATABASE FROM '{dest}'"));
    assert_eq!(sql(&b, "SELECT * FROM accounts ORDER BY id"), expected_accounts);
    assert_eq!(sql(&b, "SELECT v, n FROM events ORDER BY v"), expected_events);
    // The restored tables keep working: hidden row ids continue, indexes are maintained.
    sql(&b, "INSERT INTO events VALUES ('after', 0); UPDATE accounts SET note = 'moved' WHERE id = 1");
    assert_eq!(sql(&b, "SELECT count(*) FROM events").trim(), (expected_events.lines().count() + 1).to_string());
    assert_eq!(sql(&b, "SELECT id FROM accounts WHERE note = 'moved'").trim(), "1");
    assert!(sql_err(&b, &format!("RESTORE DATABASE FROM '{dest}'")).contains("needs an empty database"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_backup_to_a_local_directory() {
    consistent_backup("nightly/db1", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_backup_to_s3() {
    let Some(moto) = Moto::start("amber") else { return };
    let envs = moto.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    consistent_backup("s3://amber/nightly/db1", &envs).await;
    // The CLI reads the same objects offline.
    let (ok, out) = cli(&["backup", "verify", "--deep", "s3://amber/nightly/db1"], &envs);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["backup", "list", "s3://amber/"], &envs);
    assert!(ok && out.contains("s3://amber/nightly/db1") && out.contains("complete"), "{out}");
}

#[test]
fn unreachable_s3_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("AMBERDB_S3_ENDPOINT", "http://127.0.0.1:9"),
        ("AMBERDB_S3_ACCESS_KEY_ID", "x"),
        ("AMBERDB_S3_SECRET_ACCESS_KEY", "y"),
    ];
    let s = server(&dir.path().join("data"), &dir.path().join("backups"), &envs);
    sql(&s, "CREATE TABLE t (id INT PRIMARY KEY)");
    let started = Instant::now();
    let err = sql_err(&s, "BACKUP DATABASE TO 's3://bucket/x'");
    assert!(err.contains("s3://bucket/x"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "gave up in {:?}", started.elapsed());
    assert!(sql_err(&s, "BACKUP DATABASE TO 'ftp://host/x'").contains("unsupported scheme"));
}

fn find_in(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let hit = if p.is_dir() { find_in(&p, suffix) } else { p.to_string_lossy().ends_with(suffix).then_some(p) };
        if hit.is_some() {
            return hit;
        }
    }
    None
}

fn find(dir: &Path, suffix: &str) -> PathBuf {
    find_in(dir, suffix).unwrap_or_else(|| panic!("no {suffix} under {}", dir.display()))
}

#[test]
fn damaged_backups_are_named_and_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let s = server(&dir.path().join("data"), &root, &[]);
    sql(&s, "CREATE TABLE t (id INT PRIMARY KEY, payload TEXT); CREATE INDEX t_payload ON t (payload)");
    sql(&s, "INSERT INTO t SELECT g, 'p' || g || repeat('x', g % 50) FROM generate_series(1, 20000) g");
    sql(&s, "BACKUP TABLE t TO 'pristine'");
    let root_s = root.to_str().unwrap();
    let (ok, out) = cli(&["backup", "verify", "--deep", "--backup-root", root_s, "pristine"], &[]);
    assert!(ok, "{out}");

    let kinds = [("amber-backup.json", "descriptor"), ("manifest.json", "manifest"), (".amr", "range file")];
    let mut case = 0;
    for (suffix, kind) in kinds {
        for damage in ["flip", "truncate", "delete"] {
            case += 1;
            let name = format!("case{case}");
            copy_dir(&root.join("pristine"), &root.join(&name));
            let victim = find(&root.join(&name), suffix);
            let len = std::fs::metadata(&victim).unwrap().len();
            match damage {
                "flip" => {
                    let mut bytes = std::fs::read(&victim).unwrap();
                    bytes[len as usize / 2] ^= 0x55;
                    std::fs::write(&victim, bytes).unwrap();
                }
                "truncate" => std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(len / 2).unwrap(),
                _ => std::fs::remove_file(&victim).unwrap(),
            }
            let file_name = victim.file_name().unwrap().to_string_lossy().into_owned();
            for deep in [false, true] {
                let mut args = vec!["backup", "verify", "--backup-root", root_s, &name];
                if deep {
                    args.push("--deep");
                }
                let (ok, out) = cli(&args, &[]);
                assert!(!ok, "{damage} of the {kind} went undetected by verify (deep={deep}): {out}");
                let named = out.contains(&file_name)
                    || (kind == "manifest" && damage == "delete" && out.contains("no complete backup"));
                assert!(named, "verify must name {file_name} after a {damage} of the {kind}: {out}");
            }
            let err = sql_err(&s, &format!("RESTORE TABLE t FROM '{name}' AS t_{name}"));
            assert!(!err.is_empty());
            assert!(sql_err(&s, &format!("SELECT 1 FROM t_{name}")).contains("does not exist"));
        }
    }

    // A manifest that lies (consistent hash, wrong row count): shallow verify cannot
    // know, deep verify and restore refuse.
    copy_dir(&root.join("pristine"), &root.join("liar"));
    let mpath = find(&root.join("liar"), "manifest.json");
    let raw = std::fs::read_to_string(&mpath).unwrap();
    let (header, body) = raw.split_once('\n').unwrap();
    let body = body.replacen("\"rows\": 20000", "\"rows\": 19999", 1);
    assert!(header.starts_with("AMBERDB-MANIFEST 1 blake3="));
    std::fs::write(&mpath, format!("AMBERDB-MANIFEST 1 blake3={}\n{body}", blake3::hash(body.as_bytes()).to_hex()))
        .unwrap();
    let (ok, out) = cli(&["backup", "verify", "--backup-root", root_s, "liar"], &[]);
    assert!(ok, "shallow verify checks files only: {out}");
    let (ok, out) = cli(&["backup", "verify", "--deep", "--backup-root", root_s, "liar"], &[]);
    assert!(!ok && out.contains("table t") && out.contains("19999"), "{out}");
    assert!(sql_err(&s, "RESTORE TABLE t FROM 'liar' AS t_liar").contains("19999"));
    assert!(sql_err(&s, "SELECT 1 FROM t_liar").contains("does not exist"));

    // The original is untouched and a good restore still works.
    sql(&s, "RESTORE TABLE t FROM 'pristine' AS t_ok");
    assert_eq!(sql(&s, "SELECT count(*) FROM t_ok"), "20000\n");
    assert_eq!(sql(&s, "SELECT count(*) FROM t WHERE payload = (SELECT payload FROM t_ok WHERE id = 77)"), "1\n");
}

/// Starts psql running `sql` in the background (to be interrupted).
fn spawn_psql(s: &Server, sql: &str) -> Child {
    Command::new("psql")
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &s.port.to_string(), "-U", "amberdb", "-d", "amberdb"])
        .args(["-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn sigkill(s: &mut Server) {
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGKILL);
    }
    let _ = s.child.wait();
}

#[test]
fn kill_during_backup_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let data = dir.path().join("data");
    let root_s = root.to_str().unwrap().to_string();
    let mut s = server(&data, &root, &[]);
    sql(&s, "CREATE TABLE big (id INT PRIMARY KEY, v TEXT)");
    for chunk in 0..4 {
        sql(
            &s,
            &format!(
                "INSERT INTO big SELECT g, 'value-' || g || '-' || (g * 3) || repeat('y', 20) FROM generate_series({}, {}) g",
                chunk * 50_000 + 1,
                (chunk + 1) * 50_000
            ),
        );
    }
    let expected = sql(&s, "SELECT count(*), sum(id) FROM big");
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..3 {
        let dest = format!("killed{round}");
        let mut p = spawn_psql(&s, &format!("BACKUP TABLE big TO '{dest}'"));
        std::thread::sleep(Duration::from_millis(50 + next() % 600));
        sigkill(&mut s);
        let _ = p.wait();
        // Either no manifest (not a backup) or a complete, sound one.
        let (ok, out) = cli(&["backup", "verify", "--deep", "--backup-root", &root_s, &dest], &[]);
        assert!(ok || out.contains("no complete backup") || out.contains("holds no AmberDB backup"), "{out}");
        s = server(&data, &root, &[]);
        assert_eq!(sql(&s, "SELECT count(*), sum(id) FROM big"), expected, "the database is unharmed");
        if !ok {
            // Retry into the same destination: the new snapshot is written beside the
            // interrupted attempt's files, which nothing reads.
            sql(&s, &format!("BACKUP TABLE big TO '{dest}'"));
            let (ok, out) = cli(&["backup", "verify", "--deep", "--backup-root", &root_s, &dest], &[]);
            assert!(ok, "{out}");
        }
    }
    let mut interrupted = 0;
    for round in 0..4 {
        let target = format!("big_r{round}");
        let mut p = spawn_psql(&s, &format!("RESTORE TABLE big FROM 'killed0' AS {target}"));
        // A bulk-loaded restore of these rows takes ~0.1-0.3 s: kill inside that window.
        std::thread::sleep(Duration::from_millis(5 + next() % 250));
        sigkill(&mut s);
        let _ = p.wait();
        s = server(&data, &root, &[]);
        // The table is complete or absent — never partial — and a retry succeeds.
        match psql(&s, &["-v", "ON_ERROR_STOP=1", "-At"], &format!("SELECT count(*), sum(id) FROM {target}")) {
            (true, out, _) => assert_eq!(out, expected, "a restored table is complete"),
            (false, _, err) => {
                assert!(err.contains("does not exist"), "{err}");
                interrupted += 1;
                sql(&s, &format!("RESTORE TABLE big FROM 'killed0' AS {target}"));
                assert_eq!(sql(&s, &format!("SELECT count(*), sum(id) FROM {target}")), expected);
            }
        }
    }
    eprintln!("restores interrupted by kill -9: {interrupted} of 4");
    assert_eq!(sql(&s, "SELECT count(*), sum(id) FROM big"), expected);
}

#[test]
fn cli_cold_restore_into_an_empty_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let root_s = root.to_str().unwrap();
    let s = server(&dir.path().join("data"), &root, &[]);
    sql(
        &s,
        "CREATE TABLE a (id INT PRIMARY KEY, v TEXT); INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 500) g",
    );
    sql(&s, "CREATE TABLE b (x INT); INSERT INTO b SELECT g FROM generate_series(1, 10) g");
    // Through the running server's admin API.
    let server_url = format!("http://127.0.0.1:{}", s.http_port);
    let (ok, out) = cli(&["backup", "create", "--server", &server_url, "full"], &[]);
    assert!(ok && out.contains("version"), "{out}");
    let (ok, out) = cli(&["backup", "show", "--json", "--backup-root", root_s, "full"], &[]);
    assert!(ok && out.contains("\"rows\": 500"), "{out}");
    let (ok, out) = cli(&["restore", "--server", &server_url, "--table", "a", "--as", "a2", "full"], &[]);
    assert!(ok, "{out}");
    assert_eq!(sql(&s, "SELECT count(*) FROM a2"), "500\n");
    drop(s);
    // Cold path: no server, an empty data directory.
    let cold = dir.path().join("cold");
    let cold_s = cold.to_str().unwrap();
    let (ok, out) = cli(&["restore", "--data-dir", cold_s, "--backup-root", root_s, "full"], &[]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["restore", "--data-dir", cold_s, "--backup-root", root_s, "full"], &[]);
    assert!(!ok && out.contains("empty database"), "{out}");
    let s = server(&cold, &root, &[]);
    assert_eq!(sql(&s, "SELECT count(*), sum(x) FROM b"), "10|55\n");
    assert_eq!(sql(&s, "SELECT v FROM a WHERE id = 42"), "v42\n");
    // delete, then it is gone.
    let (ok, out) = cli(&["backup", "delete", "--backup-root", root_s, "full"], &[]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["backup", "show", "--backup-root", root_s, "full"], &[]);
    assert!(!ok && out.contains("holds no AmberDB backup"), "{out}");
}

/// Runs a boto3 snippet against moto (`s3` is a client) with the venv's Python.
fn boto3(moto: &Moto, code: &str) -> String {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let script = format!(
        "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='testing', \
         aws_secret_access_key='testing', region_name='us-east-1')\n{code}",
        moto.endpoint
    );
    let out = Command::new(py).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn damaged_s3_objects_are_named_and_never_restored() {
    let Some(moto) = Moto::start("dmg") else { return };
    let envs = moto.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("data"), &dir.path().join("backups"), &envs);
    sql(
        &s,
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5000) g",
    );
    for (i, suffix) in [".amr", "manifest.json", "amber-backup.json"].iter().enumerate() {
        let dest = format!("b{i}");
        sql(&s, &format!("BACKUP TABLE t TO 's3://dmg/{dest}'"));
        let keys = boto3(
            &moto,
            &format!("for o in s3.list_objects_v2(Bucket='dmg', Prefix='{dest}/')['Contents']: print(o['Key'])"),
        );
        let key = keys.lines().find(|k| k.ends_with(suffix)).expect("object").to_string();
        // Flip one byte in the middle of the object.
        boto3(
            &moto,
            &format!(
                "b = bytearray(s3.get_object(Bucket='dmg', Key='{key}')['Body'].read())\n\
             b[len(b) // 2] ^= 0x20\ns3.put_object(Bucket='dmg', Key='{key}', Body=bytes(b))"
            ),
        );
        let name = key.rsplit('/').next().unwrap();
        let (ok, out) = cli(&["backup", "verify", "--deep", &format!("s3://dmg/{dest}")], &envs);
        assert!(!ok && out.contains(name), "flipped {key}: {out}");
        assert!(sql_err(&s, &format!("RESTORE TABLE t FROM 's3://dmg/{dest}' AS t{i}")).contains(name));
        assert!(sql_err(&s, &format!("SELECT 1 FROM t{i}")).contains("does not exist"));
        // A deleted object is named too.
        boto3(&moto, &format!("s3.delete_object(Bucket='dmg', Key='{key}')"));
        let (ok, out) = cli(&["backup", "verify", &format!("s3://dmg/{dest}")], &envs);
        assert!(!ok && (out.contains(name) || out.contains("no complete backup")), "deleted {key}: {out}");
    }
}

#[test]
fn a_full_disk_fails_the_backup_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    // A 1 MiB file system as the backup root. Mounting needs privileges the machine may
    // not grant; then there is nothing to test here.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    let s = server(&dir.path().join("data"), &small, &[]);
    sql(&s, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)");
    sql(&s, "INSERT INTO t SELECT g, 'r' || (g * 7919 % 1000003) || '-' || (g::bigint * 104729 % 999983) || '-' || (g * 13 % 97) FROM generate_series(1, 150000) g");
    let err = sql_err(&s, "BACKUP TABLE t TO 'full'");
    assert!(err.contains("No space left") || err.contains("full/"), "{err}");
    // No manifest claims the failed backup, and its partial files were removed.
    let (ok, out) = cli(&["backup", "verify", "--backup-root", small.to_str().unwrap(), "full"], &[]);
    assert!(!ok && out.contains("no complete backup"), "{out}");
    let used: u64 = walk_sizes(&small.join("full"));
    assert!(used < 4096, "the failed backup left {used} bytes behind");
    // The database is unharmed and a backup elsewhere succeeds.
    assert_eq!(sql(&s, "SELECT count(*) FROM t"), "150000\n");
    drop(s);
    let s = server(&dir.path().join("data"), &dir.path().join("big"), &[]);
    sql(&s, "BACKUP TABLE t TO 'ok'");
}

fn walk_sizes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk_sizes(&p) } else { std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) })
        .sum()
}

#[test]
fn bad_s3_credentials_are_a_clear_error() {
    // moto enforces signatures once INITIAL_NO_AUTH_ACTION_COUNT requests have passed;
    // the first (unauthenticated) request creates the bucket.
    let Some(moto) = Moto::start_with("locked", &[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]) else { return };
    let envs = [
        ("AMBERDB_S3_ENDPOINT", moto.endpoint.as_str()),
        ("AMBERDB_S3_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1"),
        ("AMBERDB_S3_SECRET_ACCESS_KEY", "wrong"),
    ];
    let (ok, out) = cli(&["backup", "list", "s3://locked/x"], &envs);
    assert!(!ok, "{out}");
    assert!(out.contains("s3://locked/x") && (out.contains("403") || out.to_lowercase().contains("access")), "{out}");
}

#[test]
fn encrypted_backups_round_trip_and_refuse_wrong_keys_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let root_s = root.to_str().unwrap();
    let s = server(&dir.path().join("data"), &root, &[]);
    sql(&s, "CREATE TABLE secrets (id INT PRIMARY KEY, v TEXT); CREATE INDEX secrets_v ON secrets (v)");
    sql(&s, "INSERT INTO secrets SELECT g, 'classified-' || g FROM generate_series(1, 3000) g");
    sql(&s, "BACKUP TABLE secrets TO 'enc' WITH (encryption_passphrase = 'open sesame')");
    // Neither rows, index keys, the table name nor column names appear in any file.
    let bytes = all_bytes(&root.join("enc"));
    for needle in [&b"classified"[..], b"secrets", b"\"columns\""] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} leaked", String::from_utf8_lossy(needle));
    }
    // Without the key, with a wrong key, with the right key.
    assert!(sql_err(&s, "RESTORE TABLE secrets FROM 'enc' AS r1").contains("is encrypted"));
    assert!(sql_err(&s, "RESTORE TABLE secrets FROM 'enc' AS r1 WITH (encryption_passphrase = 'nope')")
        .contains("wrong encryption passphrase"));
    sql(&s, "RESTORE TABLE secrets FROM 'enc' AS r1 WITH (encryption_passphrase = 'open sesame')");
    assert_eq!(sql(&s, "SELECT * FROM r1 ORDER BY id"), sql(&s, "SELECT * FROM secrets ORDER BY id"));
    assert_eq!(sql(&s, "SELECT id FROM r1 WHERE v = 'classified-77'"), "77\n");
    assert!(sql(&s, "SHOW BACKUP 'enc' WITH (encryption_passphrase = 'open sesame')").starts_with("secrets|3000|"));
    // The CLI with a key file; a wrong key file is refused by name.
    let key = dir.path().join("key");
    std::fs::write(&key, "open sesame\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "nope\n").unwrap();
    let (ok, out) =
        cli(&["backup", "verify", "--deep", "--backup-root", root_s, "--key-file", key.to_str().unwrap(), "enc"], &[]);
    assert!(ok, "{out}");
    let (ok, out) =
        cli(&["backup", "verify", "--backup-root", root_s, "--key-file", bad.to_str().unwrap(), "enc"], &[]);
    assert!(!ok && out.contains("wrong encryption passphrase"), "{out}");
    let (ok, out) = cli(&["backup", "verify", "--backup-root", root_s, "enc"], &[]);
    assert!(!ok && out.contains("is encrypted"), "{out}");
    // A tampered block: detected and named by verify, refused by restore.
    let amr = find(&root.join("enc"), ".amr");
    let mut raw = std::fs::read(&amr).unwrap();
    raw[100] ^= 0x01;
    std::fs::write(&amr, raw).unwrap();
    let name = amr.file_name().unwrap().to_string_lossy().into_owned();
    let (ok, out) =
        cli(&["backup", "verify", "--deep", "--backup-root", root_s, "--key-file", key.to_str().unwrap(), "enc"], &[]);
    assert!(!ok && out.contains(&name), "{out}");
    assert!(sql_err(&s, "RESTORE TABLE secrets FROM 'enc' AS r2 WITH (encryption_passphrase = 'open sesame')")
        .contains(&name));
    assert!(sql_err(&s, "SELECT 1 FROM r2").contains("does not exist"));
}
