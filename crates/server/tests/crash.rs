//! Crash test: the real binary, many concurrent clients, SIGKILL at random moments.
//!
//! Each round starts `amberdb debug workload` on the same data directory (every other
//! round with a bulk client whose transactions are staged through the commit log), lets
//! it commit
//! for a random time (sometimes killing it while it is still recovering), SIGKILLs it,
//! and records every `ACK` line it printed. After every kill `amberdb debug check`
//! recovers the directory and verifies that no partial commit is visible (balances agree
//! with the ledger) and lists the ledger; every acknowledged commit must be in it.

use rand::Rng;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KILLS: u32 = 24;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_amberdb")
}

/// Runs `amberdb <args> --data-dir <data>` to completion.
fn amberdb(args: &[&str], data: &std::path::Path) -> std::process::Output {
    Command::new(bin()).args(args).arg("--data-dir").arg(data).env("AMBERDB_LOG", "warn").output().unwrap()
}

#[test]
fn kill_9_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = rand::rng();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut total_ledger = 0;
    let mut staged_acks = 0;
    for run in 0..KILLS {
        let child = Command::new(bin())
            // Every other round adds a bulk client whose transactions are staged.
            .args(["debug", "workload", "--clients", "32", "--bulk-rows", if run % 2 == 0 { "2000" } else { "0" }])
            .args(["--run", &run.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .env("AMBERDB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn amberdb");
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(l) => lines.lock().unwrap().push(l),
                        Err(_) => break,
                    }
                }
            })
        };
        // Every fourth round is killed early, often during recovery or start-up.
        let wait_ms = if run % 4 == 3 { rng.random_range(0..150) } else { rng.random_range(150..900) };
        std::thread::sleep(Duration::from_millis(wait_ms));
        unsafe {
            libc::kill(child.0.id() as i32, libc::SIGKILL);
        }
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "workload exited on its own: {status}");
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        let mut round_acks = 0;
        for l in lines.iter() {
            if l.starts_with("ACK ") && l.ends_with("staged=true") {
                staged_acks += 1;
            }
            if let Some(rest) = l.strip_prefix("ACK ") {
                let key = rest.split_whitespace().next().unwrap().to_string();
                acked.insert(key);
                round_acks += 1;
            }
        }
        // Recover and check after every kill.
        let out = amberdb(&["debug", "check"], &data);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "check failed after kill {run}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            stdout.lines().last().unwrap_or("")
        );
        let present: BTreeSet<&str> = stdout.lines().filter_map(|l| l.strip_prefix("LEDGER ")).collect();
        let missing: Vec<&String> = acked.iter().filter(|k| !present.contains(k.as_str())).take(5).collect();
        assert!(missing.is_empty(), "after kill {run}: acknowledged commits lost: {missing:?}");
        total_ledger = present.len();
        eprintln!(
            "kill {run}: after {wait_ms} ms, {round_acks} acks this round, {} acked in all, {total_ledger} in ledger",
            acked.len()
        );
    }
    assert!(acked.len() > 100, "the workload barely committed anything ({} acks)", acked.len());
    assert!(total_ledger >= acked.len());
    // However the kills fell, staged transactions did commit on this directory: a last
    // run that ends by itself, then the same check.
    let args = ["debug", "workload", "--clients", "8", "--bulk-rows", "2000", "--seconds", "2", "--run", "999"];
    let out = amberdb(&args, &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    staged_acks += stdout.lines().filter(|l| l.starts_with("ACK ") && l.ends_with("staged=true")).count();
    acked.extend(stdout.lines().filter_map(|l| l.strip_prefix("ACK ")?.split_whitespace().next().map(String::from)));
    assert!(staged_acks > 0, "no staged (larger than the transaction buffer) transaction committed");
    let out = amberdb(&["debug", "check"], &data);
    assert!(out.status.success(), "final check: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let present: BTreeSet<&str> = stdout.lines().filter_map(|l| l.strip_prefix("LEDGER ")).collect();
    assert!(acked.iter().all(|k| present.contains(k.as_str())), "acknowledged commits lost in the final run");
    eprintln!("staged transactions acknowledged: {staged_acks}");
}
