//! `BACKUP`, `RESTORE` and `SHOW BACKUP(S)`: the SQL face of the backup crate.
//!
//! ```text
//!   BACKUP DATABASE TO 'dest' [WITH (…)]          BACKUP TABLE t [, …] TO 'dest' [WITH (…)]
//!   RESTORE DATABASE FROM 'dest' [WITH (…)]       RESTORE TABLE t [, …] FROM 'dest' [AS new] [WITH (…)]
//!   SHOW BACKUP 'dest'                            SHOW BACKUPS IN 'dest'
//!   RESTORE … FROM 'dest' AS OF SYSTEM TIME '<ts>' | <version> [AS new]   (point in time)
//!   SHOW BACKUP JOBS                             ALTER BACKUP JOB n PAUSE|RESUME|STOP|SET DESTINATION 'd'
//!   options: compression_level = 1..19, parallelism = n, replace and read_back (RESTORE),
//!            encryption_passphrase = '…' (BACKUP encrypts; RESTORE and SHOW BACKUP decrypt),
//!            continuous, incremental, encrypted (server key), flush_interval,
//!            snapshot_interval, max_lag, rate_limit, pacing = 'adaptive' (BACKUP DATABASE)
//! ```
//! sqlparser knows none of these, so they are parsed here from its tokens.
//!
//! A restore is atomic at the catalog: rows and index entries are bulk-loaded under a
//! fresh table id that no catalog entry names (with a *pending-restore marker* naming
//! that id), verified by reading them back, and only then published by one commit that
//! writes the catalog entries and removes the markers. A failed restore deletes what it
//! loaded; after a crash, [`cleanup_pending_restores`] (run at start-up) does.

use crate::asof::AsOf;
use crate::backup_job::{Control, JobManager, JobStatus};
use crate::catalog::{Catalog, TableDef};
use crate::exec::{OutColumn, Outcome};
use crate::types::{DataType, Value};
use amberdb_backup::{
    BackupKind, Chain, Destination, EntryCheck, Manifest, Options, Origin, Progress, Secret, TableSpec,
};
use amberdb_consensus::Node;
use amberdb_error::{Error, Result};
use amberdb_mvcc::ReadView;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the SQL layer needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct Env {
    /// How backup destinations resolve.
    pub backup: amberdb_backup::DestConfig,
    /// The server's continuous backup jobs (`None` where no server runs, e.g. the CLI's
    /// offline restore).
    pub jobs: Option<Arc<JobManager>>,
    /// The server's backup key (`--backup-key-file`): used to read encrypted backups
    /// when a statement gives no passphrase.
    pub backup_key: Option<Secret>,
}

impl Env {
    fn jobs(&self) -> Result<&Arc<JobManager>> {
        self.jobs.as_ref().ok_or_else(|| Error::sql("0A000", "backup jobs need a running server"))
    }
}

/// Options of BACKUP and RESTORE.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackupOptions {
    /// zstd level.
    pub compression_level: Option<i32>,
    /// Workers.
    pub parallelism: Option<usize>,
    /// RESTORE TABLE: replace an existing table of the same name.
    pub replace: bool,
    /// Passphrase the backup is (to be) encrypted with.
    pub encryption_passphrase: Option<String>,
    /// BACKUP DATABASE: start a continuous backup job.
    pub continuous: bool,
    /// BACKUP DATABASE: add a link to an incremental chain (or start one).
    pub incremental: bool,
    /// Continuous: ship the log at least this often.
    pub flush_interval: Option<std::time::Duration>,
    /// Continuous: take a new snapshot this often.
    pub snapshot_interval: Option<std::time::Duration>,
    /// Continuous: report the job as lagging beyond this.
    pub max_lag: Option<std::time::Duration>,
    /// Cap on bytes written per second.
    pub rate_limit: Option<u64>,
    /// Back off while foreground commit latency is high.
    pub adaptive_pacing: bool,
    /// Continuous / incremental: seal with the server's backup key.
    pub encrypted: bool,
    /// RESTORE: read every restored entry back and check the checksum again.
    pub read_back: bool,
}

impl BackupOptions {
    /// The passphrase as a secret.
    pub fn secret(&self) -> Result<Option<Secret>> {
        self.encryption_passphrase.as_deref().map(|p| Secret::new(p.as_bytes())).transpose()
    }

    /// The backup crate's options.
    pub fn to_options(&self) -> Result<Options> {
        let mut o = Options { encryption: self.secret()?, read_back: self.read_back, ..Options::default() };
        if let Some(l) = self.compression_level {
            o.compression_level = l;
        }
        if let Some(p) = self.parallelism {
            o.parallelism = p;
        }
        Ok(o)
    }
}

/// A parsed backup statement.
#[derive(Debug, Clone, PartialEq)]
pub enum BackupStatement {
    /// BACKUP.
    Backup { tables: Option<Vec<String>>, dest: String, options: BackupOptions },
    /// RESTORE (to the newest restorable point, or `as_of`).
    Restore {
        tables: Option<Vec<String>>,
        dest: String,
        as_of: Option<AsOf>,
        rename: Option<String>,
        options: BackupOptions,
    },
    /// SHOW BACKUP JOBS.
    Jobs,
    /// ALTER BACKUP JOB n PAUSE | RESUME | STOP | SET DESTINATION 'dest'.
    AlterJob { id: u64, control: Control },
    /// SHOW BACKUP 'dest'.
    Show { dest: String, options: BackupOptions },
    /// SHOW BACKUPS IN 'dest'.
    List { dest: String },
}

fn syntax(msg: impl Into<String>) -> Error {
    Error::sql("42601", format!("syntax error: {}", msg.into()))
}

/// Whether `sql` starts with a statement parsed here.
pub fn is_backup_statement(sql: &str) -> bool {
    let mut words = sql.split_whitespace().map(|w| w.trim_end_matches(';').to_ascii_uppercase());
    match words.next().as_deref() {
        Some("BACKUP") | Some("RESTORE") => true,
        Some("ALTER") => words.next().as_deref() == Some("BACKUP"),
        Some("SHOW") => matches!(words.next().as_deref(), Some("BACKUP") | Some("BACKUPS")),
        _ => false,
    }
}

struct Tokens {
    toks: Vec<Token>,
    pos: usize,
}

impl Tokens {
    fn peek(&self) -> &Token {
        self.toks.get(self.pos).unwrap_or(&Token::EOF)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<()> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(syntax(format!("expected {kw}, found {}", self.peek())))
        }
    }

    fn ident(&mut self) -> Result<String> {
        match self.next() {
            Token::Word(w) if w.quote_style.is_some() => Ok(w.value),
            Token::Word(w) => Ok(w.value.to_lowercase()),
            t => Err(syntax(format!("expected a name, found {t}"))),
        }
    }

    fn string(&mut self) -> Result<String> {
        match self.next() {
            Token::SingleQuotedString(s) => Ok(s),
            t => Err(syntax(format!("expected a quoted destination, found {t}"))),
        }
    }

    fn names(&mut self) -> Result<Vec<String>> {
        let mut out = vec![self.ident()?];
        while self.peek() == &Token::Comma {
            self.pos += 1;
            out.push(self.ident()?);
        }
        Ok(out)
    }

    /// `DATABASE [amberdb]` (None) or `TABLE t [, …]`, before the keyword `next`.
    fn target(&mut self, next: &str) -> Result<Option<Vec<String>>> {
        if self.keyword("DATABASE") {
            // An optional database name: there is one database.
            if let Token::Word(w) = self.peek() {
                if !w.value.eq_ignore_ascii_case(next) {
                    let name = self.ident()?;
                    if name != "amberdb" {
                        return Err(Error::sql("3D000", format!("database \"{name}\" does not exist")));
                    }
                }
            }
            return Ok(None);
        }
        self.expect_keyword("TABLE")?;
        Ok(Some(self.names()?))
    }

    /// `WITH (…)`; `stmt` is BACKUP, RESTORE or SHOW BACKUP.
    fn options(&mut self, stmt: &str) -> Result<BackupOptions> {
        let restore = stmt == "RESTORE";
        let show = stmt == "SHOW BACKUP";
        let mut o = BackupOptions::default();
        if !self.keyword("WITH") {
            return Ok(o);
        }
        let parens = self.peek() == &Token::LParen;
        if parens {
            self.pos += 1;
        }
        loop {
            let name = self.ident()?;
            let value = if self.peek() == &Token::Eq {
                self.pos += 1;
                Some(match self.next() {
                    Token::Number(n, _) => n,
                    Token::SingleQuotedString(s) => s,
                    Token::Word(w) => w.value.to_lowercase(),
                    t => return Err(syntax(format!("expected an option value, found {t}"))),
                })
            } else {
                None
            };
            let int = |v: &Option<String>| -> Result<i64> {
                v.as_deref()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::sql("22023", format!("option {name} needs an integer value")))
            };
            match name.as_str() {
                "encryption_passphrase" => match value {
                    Some(v) if !v.is_empty() => o.encryption_passphrase = Some(v),
                    _ => return Err(Error::sql("22023", "encryption_passphrase needs a non-empty string")),
                },
                "compression_level" | "compression" if !show => {
                    let l = int(&value)?;
                    if !(1..=19).contains(&l) {
                        return Err(Error::sql("22023", "compression_level must be between 1 and 19"));
                    }
                    o.compression_level = Some(l as i32);
                }
                "parallelism" if !show => {
                    let p = int(&value)?;
                    if !(1..=64).contains(&p) {
                        return Err(Error::sql("22023", "parallelism must be between 1 and 64"));
                    }
                    o.parallelism = Some(p as usize);
                }
                "continuous" if stmt == "BACKUP" => o.continuous = flag(&name, &value)?,
                "incremental" if stmt == "BACKUP" => o.incremental = flag(&name, &value)?,
                "encrypted" if stmt == "BACKUP" => o.encrypted = flag(&name, &value)?,
                "flush_interval" | "snapshot_interval" | "max_lag" if stmt == "BACKUP" => {
                    let v = value.as_deref().ok_or_else(|| {
                        Error::sql("22023", format!("option {name} needs a duration such as '1s' or '24h'"))
                    })?;
                    let d = crate::backup_job::parse_duration(v)?;
                    match name.as_str() {
                        "flush_interval" => o.flush_interval = Some(d),
                        "snapshot_interval" => o.snapshot_interval = Some(d),
                        _ => o.max_lag = Some(d),
                    }
                }
                "pacing" if stmt == "BACKUP" => {
                    o.adaptive_pacing = match value.as_deref() {
                        Some("adaptive") => true,
                        Some("none") | Some("off") => false,
                        _ => return Err(Error::sql("22023", "pacing must be 'adaptive' or 'none'")),
                    }
                }
                "rate_limit" if stmt == "BACKUP" => {
                    let v = value.as_deref().unwrap_or_default();
                    o.rate_limit = Some(parse_bytes(v)?);
                }
                "replace" if restore => o.replace = flag(&name, &value)?,
                "read_back" if restore => o.read_back = flag(&name, &value)?,
                _ => return Err(Error::sql("22023", format!("unknown {stmt} option \"{name}\""))),
            }
            if self.peek() == &Token::Comma {
                self.pos += 1;
                continue;
            }
            break;
        }
        if parens && self.next() != Token::RParen {
            return Err(syntax("expected ) after options"));
        }
        Ok(o)
    }
}

fn flag(name: &str, value: &Option<String>) -> Result<bool> {
    match value.as_deref() {
        None | Some("true") | Some("on") | Some("1") => Ok(true),
        Some("false") | Some("off") | Some("0") => Ok(false),
        Some(v) => Err(Error::sql("22023", format!("{name}: invalid value {v}"))),
    }
}

/// Parses a byte size such as `10485760`, `512kB`, `10MB`, `1GB` (binary multiples).
fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| Error::sql("22023", format!("invalid byte size \"{s}\"")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        u => return Err(Error::sql("22023", format!("invalid byte size unit \"{u}\" (use kB, MB or GB)"))),
    };
    Ok(n.saturating_mul(mult))
}

/// Parses one backup statement (an optional trailing semicolon is allowed).
pub fn parse(sql: &str) -> Result<BackupStatement> {
    let toks = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| syntax(e.to_string()))?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut t = Tokens { toks, pos: 0 };
    let stmt = if t.keyword("BACKUP") {
        let tables = t.target("TO")?;
        t.expect_keyword("TO")?;
        let dest = t.string()?;
        let options = t.options("BACKUP")?;
        if (options.continuous || options.incremental) && tables.is_some() {
            return Err(Error::sql(
                "0A000",
                "continuous and incremental backups cover the whole database: use BACKUP DATABASE",
            ));
        }
        if options.continuous && options.incremental {
            return Err(Error::sql("22023", "choose continuous or incremental, not both"));
        }
        BackupStatement::Backup { tables, dest, options }
    } else if t.keyword("RESTORE") {
        let tables = t.target("FROM")?;
        t.expect_keyword("FROM")?;
        let dest = t.string()?;
        let mut as_of = None;
        let mut rename = None;
        if t.keyword("AS") {
            if t.keyword("OF") {
                t.expect_keyword("SYSTEM")?;
                t.expect_keyword("TIME")?;
                let lit = match t.next() {
                    Token::SingleQuotedString(s) => s,
                    Token::Number(n, _) => n,
                    other => {
                        return Err(syntax(format!(
                            "expected a timestamp or version after AS OF SYSTEM TIME, found {other}"
                        )))
                    }
                };
                as_of = Some(crate::asof::parse_point(&lit)?);
                if t.keyword("AS") {
                    rename = Some(t.ident()?);
                }
            } else {
                rename = Some(t.ident()?);
            }
        }
        if rename.is_some() && tables.as_ref().is_none_or(|v| v.len() != 1) {
            return Err(Error::sql("42601", "AS new_name needs exactly one table"));
        }
        let options = t.options("RESTORE")?;
        if options.replace && tables.is_none() {
            return Err(Error::sql("22023", "replace applies to RESTORE TABLE only"));
        }
        BackupStatement::Restore { tables, dest, as_of, rename, options }
    } else if t.keyword("ALTER") {
        t.expect_keyword("BACKUP")?;
        t.expect_keyword("JOB")?;
        let id = match t.next() {
            Token::Number(n, _) => n.parse().map_err(|_| syntax(format!("bad job id {n}")))?,
            other => return Err(syntax(format!("expected a job id, found {other}"))),
        };
        let control = if t.keyword("PAUSE") {
            Control::Pause
        } else if t.keyword("RESUME") {
            Control::Resume
        } else if t.keyword("STOP") || t.keyword("CANCEL") {
            Control::Stop
        } else if t.keyword("SET") {
            t.expect_keyword("DESTINATION")?;
            if t.peek() == &Token::Eq {
                t.pos += 1;
            }
            Control::Destination(t.string()?)
        } else {
            return Err(syntax(format!("expected PAUSE, RESUME, STOP or SET DESTINATION, found {}", t.peek())));
        };
        BackupStatement::AlterJob { id, control }
    } else {
        t.expect_keyword("SHOW")?;
        if t.keyword("BACKUPS") {
            t.expect_keyword("IN")?;
            BackupStatement::List { dest: t.string()? }
        } else {
            t.expect_keyword("BACKUP")?;
            if t.keyword("JOBS") {
                BackupStatement::Jobs
            } else {
                let dest = t.string()?;
                BackupStatement::Show { dest, options: t.options("SHOW BACKUP")? }
            }
        }
    };
    if t.peek() == &Token::SemiColon {
        t.pos += 1;
    }
    match t.peek() {
        Token::EOF => Ok(stmt),
        other => Err(syntax(format!("unexpected {other} after the statement"))),
    }
}

/// Columns of SHOW BACKUP JOBS (and of the statements that start or change a job).
const JOB_COLUMNS: &[(&str, DataType)] = &[
    ("job_id", DataType::Int8),
    ("destination", DataType::Text),
    ("state", DataType::Text),
    ("first_version", DataType::Int8),
    ("first_time", DataType::TimestampTz),
    ("last_version", DataType::Int8),
    ("last_time", DataType::TimestampTz),
    ("lag_seconds", DataType::Float8),
    ("bytes_written", DataType::Int8),
    ("files_written", DataType::Int8),
    ("snapshots", DataType::Int8),
    ("throughput_bytes_per_sec", DataType::Float8),
    ("last_error", DataType::Text),
];

fn job_row(s: &JobStatus) -> Vec<Value> {
    let opt = |v: Option<u64>| v.map_or(Value::Null, |v| Value::Int(v as i64));
    let time = |v: Option<u64>| v.map_or(Value::Null, |v| Value::TimestampTz(v as i64));
    vec![
        Value::Int(s.id as i64),
        Value::Text(s.destination.clone()),
        Value::Text(s.state.clone()),
        opt(s.first_version),
        time(s.first_time_micros),
        opt(s.last_version),
        time(s.last_time_micros),
        Value::Float(s.lag_micros as f64 / 1e6),
        Value::Int(s.bytes_written as i64),
        Value::Int(s.files_written as i64),
        Value::Int(s.snapshots as i64),
        Value::Float(s.throughput_bytes_per_sec),
        s.last_error.clone().map_or(Value::Null, Value::Text),
    ]
}

impl BackupStatement {
    /// The result columns (for Describe).
    pub fn columns(&self) -> Vec<OutColumn> {
        use DataType::{Int8, Text, TimestampTz};
        let cols: &[(&str, DataType)] = match self {
            BackupStatement::Backup { options, .. } if options.continuous => JOB_COLUMNS,
            BackupStatement::Backup { options, .. } if options.incremental => &[
                ("job_id", Int8),
                ("destination", Text),
                ("kind", Text),
                ("version", Int8),
                ("commit_time", TimestampTz),
                ("bytes", Int8),
                ("log_segments", Int8),
            ],
            BackupStatement::Jobs | BackupStatement::AlterJob { .. } => JOB_COLUMNS,
            BackupStatement::Backup { .. } => &[
                ("destination", Text),
                ("version", Int8),
                ("commit_time", TimestampTz),
                ("tables", Int8),
                ("rows", Int8),
                ("bytes", Int8),
            ],
            BackupStatement::Restore { .. } => &[("table_name", Text), ("rows", Int8), ("version", Int8)],
            BackupStatement::Show { .. } => &[
                ("table_name", Text),
                ("rows", Int8),
                ("logical_bytes", Int8),
                ("files", Int8),
                ("file_bytes", Int8),
                ("version", Int8),
                ("commit_time", TimestampTz),
            ],
            BackupStatement::List { .. } => &[
                ("path", Text),
                ("kind", Text),
                ("version", Int8),
                ("commit_time", TimestampTz),
                ("tables", Int8),
                ("rows", Int8),
                ("bytes", Int8),
                ("status", Text),
            ],
        };
        cols.iter().map(|&(name, ty)| OutColumn { name: name.into(), ty: Some(ty) }).collect()
    }

    /// Runs the statement.
    pub async fn execute(&self, node: &Arc<Node>, env: &Env) -> Result<Outcome> {
        let progress = Arc::new(Progress::default());
        let columns = self.columns();
        let (rows, tag) = match self {
            BackupStatement::Backup { dest, options, .. } if options.continuous => {
                let s = env.jobs()?.create(dest, options).await?;
                (vec![job_row(&s)], "BACKUP".to_string())
            }
            BackupStatement::Backup { dest, options, .. } if options.incremental => {
                let i = env.jobs()?.incremental(dest, options).await?;
                let row = vec![
                    Value::Int(i.job_id as i64),
                    Value::Text(dest.clone()),
                    Value::Text(if i.full { "full" } else { "incremental" }.into()),
                    Value::Int(i.version as i64),
                    Value::TimestampTz(i.commit_time_micros as i64),
                    Value::Int(i.bytes as i64),
                    Value::Int(i.segments as i64),
                ];
                (vec![row], "BACKUP".to_string())
            }
            BackupStatement::Jobs => (env.jobs()?.statuses().iter().map(job_row).collect(), "SHOW".to_string()),
            BackupStatement::AlterJob { id, control } => {
                let s = env.jobs()?.control(*id, control.clone()).await?;
                (vec![job_row(&s)], "ALTER BACKUP JOB".to_string())
            }
            BackupStatement::Backup { tables, dest, options } => {
                let m = backup(node, env, tables.as_deref(), dest, Origin::Sql, options, progress).await?;
                (
                    vec![vec![
                        Value::Text(dest.clone()),
                        Value::Int(m.version as i64),
                        Value::TimestampTz(m.commit_time_micros as i64),
                        Value::Int(m.tables.len() as i64),
                        Value::Int(m.rows() as i64),
                        Value::Int(m.bytes() as i64),
                    ]],
                    "BACKUP".to_string(),
                )
            }
            BackupStatement::Restore { tables, dest, as_of, rename, options } => {
                let target = as_of.map(|a| RestoreTarget::from_as_of(a, node));
                let req = RestoreRequest { tables: tables.as_deref(), dest, target, rename: rename.as_deref() };
                let done = restore(node, env, &req, Origin::Sql, options, &progress).await?;
                let rows = done
                    .tables
                    .iter()
                    .map(|(n, r)| vec![Value::Text(n.clone()), Value::Int(*r as i64), Value::Int(done.version as i64)])
                    .collect();
                (rows, "RESTORE".to_string())
            }
            BackupStatement::Show { dest, options } => {
                let d = Destination::open(dest, &env.backup, Origin::Sql)?;
                let secret = options.secret()?.or_else(|| env.backup_key.clone());
                let m = amberdb_backup::open_latest(&d, secret.as_ref()).await?.manifest;
                let rows = m
                    .tables
                    .iter()
                    .map(|t| {
                        vec![
                            Value::Text(t.name.clone()),
                            Value::Int(t.rows as i64),
                            Value::Int(t.logical_bytes as i64),
                            Value::Int(t.files.len() as i64),
                            Value::Int(t.files.iter().map(|&i| m.files[i].size).sum::<u64>() as i64),
                            Value::Int(m.version as i64),
                            Value::TimestampTz(m.commit_time_micros as i64),
                        ]
                    })
                    .collect();
                (rows, "SHOW".to_string())
            }
            BackupStatement::List { dest } => {
                let d = Destination::open_listing(dest, &env.backup, Origin::Sql)?;
                let rows = amberdb_backup::list(&d)
                    .await?
                    .into_iter()
                    .map(|b| match (&b.manifest, &b.error) {
                        (Some(m), _) => vec![
                            Value::Text(b.destination.clone()),
                            Value::Text(format!("{:?}", m.kind).to_lowercase()),
                            Value::Int(m.version as i64),
                            Value::TimestampTz(m.commit_time_micros as i64),
                            Value::Int(m.tables.len() as i64),
                            Value::Int(m.rows() as i64),
                            Value::Int(m.bytes() as i64),
                            Value::Text("complete".into()),
                        ],
                        (None, e) => {
                            let mut row = vec![Value::Text(b.destination.clone())];
                            row.extend(std::iter::repeat_n(Value::Null, 6));
                            row.push(Value::Text(format!("unusable: {}", e.as_deref().unwrap_or("unknown"))));
                            row
                        }
                    })
                    .collect();
                (rows, "SHOW".to_string())
            }
        };
        let tag = if tag == "SHOW" { format!("SELECT {}", rows.len()) } else { tag };
        Ok(Outcome::Rows { columns, rows: crate::pipeline::materialized(rows), tag })
    }
}

/// The key prefixes of a table's entries (ascending) and which one holds rows.
fn table_spec(def: &TableDef) -> Result<TableSpec> {
    Ok(TableSpec {
        name: def.name.clone(),
        schema: serde_json::to_value(def).map_err(|e| Error::Internal(format!("encode table definition: {e}")))?,
        prefixes: def.key_prefixes(),
        row_prefix: TableDef::ROW_PREFIX,
    })
}

/// A read view of the current state and the specs of the named tables (or all) in it:
/// what a snapshot exports. The view keeps its version from GC until dropped.
pub(crate) fn database_view(node: &Node, tables: Option<&[String]>) -> Result<(ReadView, Vec<TableSpec>)> {
    let mut txn = node.begin_read_only()?;
    let defs = match tables {
        None => Catalog::list(&mut txn)?,
        Some(names) => {
            let mut defs = Vec::new();
            for n in names {
                let def = Catalog::must_get(&mut txn, n)?;
                if !defs.iter().any(|d: &TableDef| d.name == def.name) {
                    defs.push(def);
                }
            }
            defs.sort_by(|a, b| a.name.cmp(&b.name));
            defs
        }
    };
    let specs = defs.iter().map(table_spec).collect::<Result<Vec<_>>>()?;
    let view = node.mvcc().read_at(txn.read_version())?;
    Ok((view, specs))
}

/// BACKUP: snapshots the named tables (or all) at the current version.
pub async fn backup(
    node: &Arc<Node>,
    env: &Env,
    tables: Option<&[String]>,
    dest: &str,
    origin: Origin,
    options: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<Manifest> {
    let dest = Destination::open(dest, &env.backup, origin)?;
    let kind = if tables.is_some() { BackupKind::Tables } else { BackupKind::Database };
    let (view, specs) = database_view(node, tables)?;
    let mut opts = options.to_options()?;
    if options.encrypted && opts.encryption.is_none() {
        opts.encryption = Some(env.backup_key.clone().ok_or_else(|| {
            Error::sql("0A000", "WITH (encrypted) needs the server's backup key: start it with --backup-key-file")
        })?);
    }
    if options.rate_limit.is_some() || options.adaptive_pacing {
        let pace = crate::backup_job::Pace::new(node.clone(), options.rate_limit.unwrap_or(0), options.adaptive_pacing);
        opts.pacer = Some(pace.pacer());
    }
    let m = amberdb_backup::create(node.mvcc(), view, &dest, kind, specs, &opts, progress).await?;
    tracing::info!(
        destination = dest.url(),
        version = m.version,
        tables = m.tables.len(),
        rows = m.rows(),
        bytes = m.bytes(),
        "backup complete"
    );
    Ok(m)
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    /// The version restored.
    pub version: u64,
    /// Its commit time (µs since the epoch).
    pub commit_time_micros: u64,
    /// (table name as restored, rows).
    pub tables: Vec<(String, u64)>,
}

/// The point a restore goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreTarget {
    /// A commit version.
    Version(u64),
    /// A wall-clock time (µs since the epoch): the newest commit at or before it.
    Time(u64),
}

impl RestoreTarget {
    /// Parses a point given as text: a timestamp (`2026-11-22 10:00:00+00`), or an
    /// interval before now (`-10m`); `now` is the current time in µs.
    pub fn parse_time(s: &str, now: u64) -> Result<Self> {
        Ok(match crate::asof::parse_point(s)? {
            AsOf::Version(v) => RestoreTarget::Version(v),
            AsOf::Time(t) => RestoreTarget::Time(t),
            AsOf::Ago(us) => RestoreTarget::Time(now.saturating_sub(us)),
        })
    }

    fn from_as_of(a: AsOf, node: &Node) -> Self {
        match a {
            AsOf::Version(v) => RestoreTarget::Version(v),
            AsOf::Time(t) => RestoreTarget::Time(t),
            AsOf::Ago(us) => RestoreTarget::Time(node.mvcc().clock().now().saturating_sub(us)),
        }
    }
}

/// What to restore.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    /// Tables (None: the database, into an empty one).
    pub tables: Option<&'a [String]>,
    /// Destination.
    pub dest: &'a str,
    /// Point to restore (None: the newest restorable one).
    pub target: Option<RestoreTarget>,
    /// New name (one table only).
    pub rename: Option<&'a str>,
}

/// One table a restore brings back.
struct Planned {
    /// Its definition as it will be published (new id, maybe new name).
    def: TableDef,
    /// Its id in the backup.
    old_id: u64,
    /// Its entry in the snapshot's manifest, if the snapshot holds it (same id).
    snap: Option<usize>,
}

/// RESTORE: loads tables (or the whole database) as of a restorable point of the backup
/// at `dest` — a snapshot, plus the mutation log up to the target for point-in-time
/// restores — and publishes them in one commit, or leaves nothing behind.
pub async fn restore(
    node: &Arc<Node>,
    env: &Env,
    req: &RestoreRequest<'_>,
    origin: Origin,
    options: &BackupOptions,
    progress: &Progress,
) -> Result<RestoreSummary> {
    let dest = Destination::open(req.dest, &env.backup, origin)?;
    let secret = options.secret()?.or_else(|| env.backup_key.clone());
    let chain = Chain::open(&dest, secret.as_ref()).await?;
    let target = match req.target {
        Some(RestoreTarget::Version(v)) => v,
        Some(RestoreTarget::Time(t)) => chain.resolve_time(t)?,
        None => chain.latest(&dest)?,
    };
    let lp = chain.plan(&dest, target).await?;
    let m = &lp.snapshot.manifest;
    let opts = options.to_options()?;
    // The tables as of the target: the snapshot's, changed by the catalog writes in the log.
    let mut at_target: BTreeMap<String, TableDef> = BTreeMap::new();
    for t in &m.tables {
        let def = schema_of(t)?;
        at_target.insert(def.name.clone(), def);
    }
    if !lp.segments.is_empty() {
        let cat = Catalog::tables_prefix();
        let changes = amberdb_backup::replay_changes(&dest, &lp, std::slice::from_ref(&cat), &opts).await?;
        for (key, value) in changes {
            let name = Catalog::table_name_of_key(&key)?;
            match value {
                Some(raw) => {
                    let def: TableDef = serde_json::from_slice(&raw).map_err(|e| {
                        Error::InvalidData(format!("backup log at {}: definition of table {name}: {e}", dest.url()))
                    })?;
                    at_target.insert(name, def);
                }
                None => {
                    at_target.remove(&name);
                }
            }
        }
    }
    let when = amberdb_mvcc::format_micros(lp.target_time);
    let snap_of = |id: u64| m.tables.iter().position(|t| t.schema.get("id").and_then(|v| v.as_u64()) == Some(id));
    let mut plan: Vec<Planned> = Vec::new();
    match req.tables {
        None => {
            let mut txn = node.begin_read_only()?;
            let existing = Catalog::list(&mut txn)?;
            if !existing.is_empty() {
                let names: Vec<&str> = existing.iter().map(|t| t.name.as_str()).collect();
                return Err(Error::sql(
                    "55000",
                    format!(
                        "RESTORE DATABASE needs an empty database, but it holds tables {}; drop them, or use RESTORE \
                         TABLE … AS new_name",
                        names.join(", ")
                    ),
                ));
            }
            for def in at_target.values() {
                plan.push(Planned { def: def.clone(), old_id: def.id, snap: snap_of(def.id) });
            }
        }
        Some(names) => {
            for n in names {
                let Some(def) = at_target.get(n) else {
                    let held: Vec<&str> = at_target.keys().map(String::as_str).collect();
                    return Err(Error::sql(
                        "42P01",
                        format!(
                            "table \"{n}\" is not in the backup at {} as of {when} (version {target}; it holds: {})",
                            dest.url(),
                            held.join(", ")
                        ),
                    ));
                };
                let mut def = def.clone();
                def.name = req.rename.unwrap_or(n).to_string();
                plan.push(Planned { old_id: def.id, snap: snap_of(def.id), def });
            }
        }
    }
    let total: u64 = plan.iter().filter_map(|p| p.snap).map(|i| m.tables[i].logical_bytes).sum();
    progress.total_bytes.store(total, std::sync::atomic::Ordering::Relaxed);
    // Fail fast on a name clash before loading anything (checked again at publish).
    {
        let mut txn = node.begin_read_only()?;
        for p in &plan {
            if !options.replace && Catalog::get(&mut txn, &p.def.name)?.is_some() {
                return Err(Error::sql(
                    "42P07",
                    format!("relation \"{}\" already exists (use WITH (replace) to overwrite it)", p.def.name),
                ));
            }
        }
    }
    // Allocate fresh ids and record the pending markers in one commit.
    {
        let mut txn = node.begin()?;
        for p in plan.iter_mut() {
            p.def.id = Catalog::allocate_id(&mut txn)?;
            Catalog::put_pending_restore(&mut txn, p.def.id, &p.def.name)?;
        }
        node.commit(txn).await?;
    }
    let loaded = async {
        for p in &plan {
            if let Some(i) = p.snap {
                amberdb_backup::load_table(
                    node,
                    &dest,
                    &lp.snapshot,
                    &m.tables[i],
                    &p.def.key_prefixes(),
                    &opts,
                    progress,
                )
                .await?;
            }
        }
        let mut rows: Vec<u64> = plan.iter().map(|p| p.snap.map_or(0, |i| m.tables[i].rows)).collect();
        if !lp.segments.is_empty() {
            let (mut old, mut new) = (Vec::new(), Vec::new());
            for p in &plan {
                old.extend(TableDef { id: p.old_id, ..p.def.clone() }.key_prefixes());
                new.extend(p.def.key_prefixes());
            }
            let ranged = req.tables.is_some();
            amberdb_backup::replay_log(node, &dest, &lp, &old, &new, ranged, &opts, progress).await?;
            // The log has no per-table checksum to prove against: instead every row is
            // decoded with its schema (and counted) before anything is published.
            for (p, r) in plan.iter().zip(rows.iter_mut()) {
                *r = check_rows(node, &p.def)?;
            }
        }
        publish(node, &plan, options.replace).await?;
        Ok::<_, Error>(rows)
    }
    .await;
    let rows = match loaded {
        Ok(rows) => rows,
        Err(e) => {
            for p in &plan {
                if let Err(ce) = discard(node, p.def.id).await {
                    tracing::warn!(error = %ce, table = p.def.name, "could not remove a failed restore's data; it is removed at the next start");
                }
            }
            return Err(e);
        }
    };
    let tables = plan.iter().zip(rows).map(|(p, r)| (p.def.name.clone(), r)).collect();
    tracing::info!(destination = dest.url(), version = target, commit_time = %when, "restore complete");
    Ok(RestoreSummary { version: target, commit_time_micros: lp.target_time, tables })
}

/// Decodes every row of a (loaded, unpublished) table and returns how many there are.
fn check_rows(node: &Node, def: &TableDef) -> Result<u64> {
    let view = node.mvcc().read_latest()?;
    let mut n = 0u64;
    for kv in view.scan(&def.rows_range()) {
        let (k, v) = kv?;
        def.decode_row(&v)
            .map_err(|e| Error::InvalidData(format!("restored table {}: a row does not decode: {e}", def.name)))?;
        if !def.primary_key.is_empty() {
            def.decode_key(&k)
                .map_err(|e| Error::InvalidData(format!("restored table {}: a key does not decode: {e}", def.name)))?;
        }
        n += 1;
    }
    Ok(n)
}

fn schema_of(t: &amberdb_backup::TableManifest) -> Result<TableDef> {
    serde_json::from_value(t.schema.clone())
        .map_err(|e| Error::InvalidData(format!("backup manifest: definition of table {}: {e}", t.name)))
}

/// Publishes restored tables: one commit writes their catalog entries (replacing
/// same-named tables if asked) and removes the pending markers.
async fn publish(node: &Arc<Node>, plan: &[Planned], replace: bool) -> Result<()> {
    let mut attempt = 0;
    loop {
        let mut txn = node.begin()?;
        for Planned { def, .. } in plan {
            if let Some(old) = Catalog::get(&mut txn, &def.name)? {
                if !replace {
                    return Err(Error::sql("42P07", format!("relation \"{}\" already exists", def.name)));
                }
                Catalog::drop_table(&mut txn, &old)?;
            }
            let mut def = def.clone();
            // Index names share the table namespace: rename clashing restored indexes.
            let others = Catalog::list(&mut txn)?;
            for idx in &mut def.indexes {
                if others.iter().any(|t| t.name == idx.name || t.indexes.iter().any(|i| i.name == idx.name)) {
                    idx.name = format!("{}_{}", def.name, idx.name);
                }
            }
            Catalog::put(&mut txn, &def)?;
            Catalog::remove_pending_restore(&mut txn, def.id)?;
        }
        match node.commit(txn).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Removes a restore's loaded data and its marker.
async fn discard(node: &Node, id: u64) -> Result<()> {
    let def = TableDef { id, ..TableDef::new(String::new(), Vec::new()) };
    amberdb_backup::delete_prefixes(node, &def.key_prefixes()).await?;
    let mut txn = node.begin()?;
    Catalog::remove_pending_restore(&mut txn, id)?;
    node.commit(txn).await?;
    Ok(())
}

/// Removes the data of restores that were interrupted by a crash (run at start-up,
/// before clients connect).
pub async fn cleanup_pending_restores(node: &Node) -> Result<usize> {
    let pending = {
        let mut txn = node.begin_read_only()?;
        Catalog::pending_restores(&mut txn)?
    };
    for (id, name) in &pending {
        tracing::warn!(table = name, id, "removing the data of an interrupted restore");
        discard(node, *id).await?;
    }
    Ok(pending.len())
}

/// Deletes the rows and index entries of dropped tables in bounded transactions, then
/// their markers. Safe at any time (dropped ids are never reused); the server runs it
/// at start-up and every few seconds.
pub async fn collect_dropped_tables(node: &Node) -> Result<usize> {
    let dropped = {
        let mut txn = node.begin_read_only()?;
        Catalog::dropped_tables(&mut txn)?
    };
    for (id, name) in &dropped {
        let def = TableDef { id: *id, ..TableDef::new(name.clone(), Vec::new()) };
        let n = amberdb_backup::delete_prefixes(node, &def.key_prefixes()).await?;
        let mut txn = node.begin()?;
        Catalog::remove_dropped(&mut txn, *id)?;
        node.commit(txn).await?;
        tracing::debug!(table = name, id, entries = n, "collected a dropped table");
    }
    Ok(dropped.len())
}

/// A check for `backup verify --deep`: decodes every row against its table's schema.
pub fn row_check() -> EntryCheck {
    Arc::new(|schema: &serde_json::Value| -> Result<amberdb_backup::RowCheck> {
        let def: TableDef = serde_json::from_value(schema.clone())
            .map_err(|e| Error::InvalidData(format!("table definition in the manifest: {e}")))?;
        Ok(Box::new(move |prefix: usize, key: &[u8], value: &[u8]| {
            if prefix != TableDef::ROW_PREFIX {
                return Ok(());
            }
            def.decode_row(value)?;
            if !def.primary_key.is_empty() {
                def.decode_key(key)?;
            }
            Ok(())
        }))
    })
}
