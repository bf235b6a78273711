//! Test helpers: start the real `amberdb server` on an ephemeral loopback port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; killed (and waited for) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_amberdb")
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut s = Server::start_on(&data);
        s._dir = Some(dir);
        s
    }

    /// Starts a server on `data_dir` and waits until it listens.
    pub fn start_on(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// Starts a server on `data_dir` with extra flags and waits until it listens.
    pub fn start_with(data_dir: &Path, extra: &[&std::ffi::OsStr]) -> Server {
        Server::start_full(data_dir, extra, &[])
    }

    /// Starts a server on `data_dir` with extra flags and environment variables.
    pub fn start_full(data_dir: &Path, extra: &[&std::ffi::OsStr], envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(bin())
            .args(["server", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(extra)
            .envs(envs.iter().copied())
            .arg("--data-dir")
            .arg(data_dir)
            .env("AMBERDB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn amberdb server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut pg = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("LISTENING ") {
                    pg = Some(addr.to_string());
                }
                if let (Some(http), Some(pg)) = (line.strip_prefix("HTTP "), pg.as_ref()) {
                    let _ = tx.send((pg.clone(), http.to_string()));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (addr, http) = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "server did not start listening within 60 s");
        };
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in LISTENING line");
        let http_port = http.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in HTTP line");
        Server { child, port, http_port, data_dir: data_dir.to_path_buf(), _dir: None }
    }

    pub fn conn_string(&self) -> String {
        format!("host=127.0.0.1 port={} user=amberdb dbname=amberdb", self.port)
    }
}

/// A bare HTTP/1.1 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to admin HTTP");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

/// Runs psql against `server` with extra arguments and standard input: (success, stdout,
/// stderr).
pub fn psql(server: &Server, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "amberdb", "-d", "amberdb"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed (scripts/test installs it)");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write to psql");
    let out = child.wait_with_output().expect("psql output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every file under a directory, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The concatenated bytes of every file under a directory.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    walk(dir).iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}
