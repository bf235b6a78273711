//! sqllogictest files (`tests/slt/*.slt`) run against the real server over the wire.
//! Each file gets its own server and data directory. Errors are reported to the
//! runner as `SQLSTATE: message`, so files can match on either.

mod common;

use common::Server;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

fn db_err(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(d) => DbError(format!("{}: {}", d.code().code(), d.message())),
        None => DbError(e.to_string()),
    }
}

struct Client(tokio_postgres::Client);

#[async_trait::async_trait]
impl AsyncDB for Client {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let msgs = self.0.simple_query(sql).await.map_err(db_err)?;
        let mut rows = Vec::new();
        let mut cols = None;
        let mut count = None;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(desc) => cols = Some(desc.len()),
                SimpleQueryMessage::Row(r) => {
                    cols = Some(r.len());
                    rows.push(
                        (0..r.len())
                            .map(|i| match r.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(s) => s.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => count = Some(n),
                _ => {}
            }
        }
        match cols {
            Some(n) => Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; n], rows }),
            None => Ok(DBOutput::StatementComplete(count.unwrap_or(0))),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "amberdb"
    }
}

async fn run_file(path: std::path::PathBuf) {
    let server = Server::start();
    let conn = server.conn_string();
    let mut runner = sqllogictest::Runner::new(move || {
        let conn = conn.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.map_err(db_err)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Client(client))
        }
    });
    runner.with_column_validator(|_, _| true);
    if let Err(e) = runner.run_file_async(&path).await {
        panic!("{}: {}", path.display(), e.display(true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    // SLT_ONLY=types runs types.slt alone (while working on one file).
    if let Ok(only) = std::env::var("SLT_ONLY") {
        files.retain(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == only));
    }
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for f in files {
        eprintln!("running {}", f.display());
        run_file(f).await;
    }
}
