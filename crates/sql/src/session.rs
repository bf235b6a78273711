//! A SQL session: transaction state and statement dispatch.
//!
//! ```text
//!   idle ──BEGIN──▶ in transaction ──error──▶ failed (everything but ROLLBACK/COMMIT → 25P02)
//!    ▲                  │ COMMIT/ROLLBACK          │ ROLLBACK / COMMIT (= rollback)
//!    └──────────────────┴──────────────────────────┘
//! ```
//! Outside a transaction block every statement runs in its own transaction and commits
//! at once; a serialization conflict there is retried transparently, because nothing of
//! it has reached the client yet.

use crate::asof::{self, AsOf};
use crate::backup_sql::{self, BackupStatement, Env};
use crate::copy::{fields_to_row, CopyFormat};
use crate::exec::{self, OutColumn, Outcome};
use crate::types::{DataType, Value};
use amberdb_consensus::Node;
use amberdb_error::{Error, Result};
use amberdb_mvcc::Transaction;
use sqlparser::ast;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use std::sync::Arc;

/// How often an autocommit statement is retried on a serialization conflict.
const AUTOCOMMIT_RETRIES: usize = 16;

/// A parsed statement, reusable across executions (prepared statements).
// Statements are parsed once per query or prepared statement; boxing the common
// variant to save bytes would cost an allocation on every query.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// A statement sqlparser understands.
    Sql {
        /// The statement.
        ast: ast::Statement,
        /// `AS OF SYSTEM TIME`, lifted out of the text before parsing.
        as_of: Option<AsOf>,
    },
    /// BACKUP, RESTORE, SHOW BACKUP(S).
    Backup(BackupStatement),
    /// `VACUUM` or `ANALYZE` (`verb`) of some tables (none: all). Old versions are
    /// collected in the background and there are no planner statistics, so they only
    /// check that the tables exist, as tools that send them (`pgbench -i`) expect.
    Maintenance {
        /// `VACUUM` or `ANALYZE`: the command tag.
        verb: &'static str,
        /// The tables named, as the catalog names them.
        tables: Vec<String>,
    },
}

/// Recognises `VACUUM [(options)] [FULL] [FREEZE] [VERBOSE] [ANALYZE] [table [(cols)], …]`
/// and `ANALYZE [(options)] [VERBOSE] [table [(cols)], …]`, which the SQL parser does
/// not know in PostgreSQL's form. `None`: not one of them.
fn parse_maintenance(sql: &str) -> Option<Result<Statement>> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    let word_end = text.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(text.len());
    let verb = match text[..word_end].to_ascii_lowercase().as_str() {
        "vacuum" => "VACUUM",
        "analyze" | "analyse" => "ANALYZE",
        _ => return None,
    };
    if text.contains(';') {
        return None;
    }
    let mut rest = text[word_end..].trim_start();
    if rest.starts_with('(') {
        let Some(end) = rest.find(')') else {
            return Some(Err(Error::sql("42601", format!("syntax error: unclosed option list in {verb}"))));
        };
        rest = rest[end + 1..].trim_start();
    }
    loop {
        let end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        match rest[..end].to_ascii_lowercase().as_str() {
            "full" | "freeze" | "verbose" | "analyze" | "analyse" => rest = rest[end..].trim_start(),
            _ => break,
        }
    }
    let mut tables = Vec::new();
    let mut depth = 0usize;
    let mut name = String::new();
    for c in rest.chars().chain(std::iter::once(',')) {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                let n = name.trim();
                if n.is_empty() {
                    if !tables.is_empty() || !rest.trim().is_empty() {
                        return Some(Err(Error::sql(
                            "42601",
                            format!("syntax error: a table name is missing in {verb}"),
                        )));
                    }
                } else {
                    let n = n.strip_prefix("public.").unwrap_or(n);
                    tables.push(match n.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                        Some(quoted) => quoted.replace("\"\"", "\""),
                        None => n.to_lowercase(),
                    });
                }
                name.clear();
            }
            c if depth == 0 => name.push(c),
            _ => {}
        }
    }
    Some(Ok(Statement::Maintenance { verb, tables }))
}

impl Statement {
    /// The syntax tree, unless it is a backup statement.
    pub fn ast(&self) -> Option<&ast::Statement> {
        match self {
            Statement::Sql { ast, .. } => Some(ast),
            Statement::Backup(_) | Statement::Maintenance { .. } => None,
        }
    }
}

/// A session's transaction state, as reported in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InBlock,
    /// In a failed transaction block.
    Failed,
}

/// One client's session.
pub struct Session {
    node: Arc<Node>,
    env: Arc<Env>,
    txn: Option<Transaction>,
    failed: bool,
    copy: Option<CopyIn>,
    /// Set by a result stream that ended in an error after its statement returned
    /// (rows are produced lazily); the open transaction block is then failed, as it
    /// would have been had the error come before the first row.
    stream_failed: Arc<std::sync::atomic::AtomicBool>,
    /// `SET work_mem` of this session (None: the server's default).
    work_mem: Option<usize>,
    /// Set by a cancel request; checked by the loops of the running statement.
    interrupt: Arc<crate::Interrupt>,
    /// `SET statement_timeout` (None: no limit).
    statement_timeout: Option<std::time::Duration>,
    /// Fires the timeout of the statement running now; aborted when the next starts.
    timer: Option<AbortOnDrop>,
    /// `SET TIME ZONE` (None: UTC, the default).
    time_zone: Option<crate::Zone>,
    /// When the open transaction block began (its `now()`).
    txn_started: Option<i64>,
}

/// The settings a statement runs with (see `Session::in_statement`).
#[derive(Clone)]
struct Settings {
    work_mem: Option<usize>,
    zone: Option<crate::Zone>,
    /// `now()` (the transaction's start) and `statement_timestamp()`.
    now: (i64, i64),
}

/// A result stream producing each row under its session's time zone (text forms of
/// `timestamptz` values are made as rows are produced).
struct InZone<I> {
    inner: I,
    zone: crate::Zone,
}

impl<I: Iterator> Iterator for InZone<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        crate::zone::with_zone(Some(&self.zone), || self.inner.next())
    }
}

/// A task that is aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A COPY FROM STDIN in progress.
struct CopyIn {
    def: crate::catalog::TableDef,
    targets: Vec<usize>,
    format: CopyFormat,
    buf: Vec<u8>,
    line: u64,
    rows: u64,
    error: Option<Error>,
    done: bool,
    /// The statement's own transaction when not in a block.
    own: Option<Transaction>,
}

/// Converts a parser error to a syntax error with a 1-based character position.
pub fn syntax_error(sql: &str, e: ParserError) -> Error {
    let msg = e.to_string();
    let msg = msg.strip_prefix("sql parser error: ").unwrap_or(&msg).to_string();
    // sqlparser reports "... at Line: L, Column: C"; PostgreSQL reports a character offset.
    let position = msg.rfind("Line: ").and_then(|i| {
        let rest = &msg[i + 6..];
        let (line, rest) = rest.split_once(", Column: ")?;
        let line: usize = line.trim().parse().ok()?;
        let col: usize = rest.trim().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()?;
        let before: usize = sql.split('\n').take(line.saturating_sub(1)).map(|l| l.chars().count() + 1).sum();
        u32::try_from(before + col).ok()
    });
    let text = match msg.find(" at Line: ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    Error::Sql { code: "42601", message: format!("syntax error: {text}"), position }
}

/// Parses SQL text into statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    if backup_sql::is_backup_statement(sql) {
        return Ok(vec![Statement::Backup(backup_sql::parse(sql)?)]);
    }
    if let Some(m) = parse_maintenance(sql) {
        return Ok(vec![m?]);
    }
    let Some((rest, point)) = asof::extract(sql)? else {
        let stmts = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(stmts) => stmts,
            // PostgreSQL spells COPY's boolean options `on`/`off` too (`pgbench -i`
            // sends `WITH (freeze on)`), which the parser does not take.
            Err(e) => match crate::copy::with_true_false(sql) {
                Some(respelled) => {
                    Parser::parse_sql(&PostgreSqlDialect {}, &respelled).map_err(|_| syntax_error(sql, e))?
                }
                None => return Err(syntax_error(sql, e)),
            },
        };
        return Ok(stmts.into_iter().map(|ast| Statement::Sql { ast, as_of: None }).collect());
    };
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, &rest).map_err(|e| syntax_error(&rest, e))?;
    match (stmts.pop(), stmts.is_empty()) {
        (Some(ast @ ast::Statement::Query(_)), true) => Ok(vec![Statement::Sql { ast, as_of: Some(point) }]),
        _ => Err(Error::sql("0A000", "AS OF SYSTEM TIME is supported on a single SELECT statement")),
    }
}

fn show_value(name: &str) -> Option<String> {
    Some(
        match name {
            "transaction_isolation" | "transaction isolation level" | "default_transaction_isolation" => "serializable",
            "server_version" => crate::SERVER_VERSION,
            "server_encoding" | "client_encoding" => "UTF8",
            "datestyle" => "ISO, MDY",
            "integer_datetimes" => "on",
            "standard_conforming_strings" => "on",
            "search_path" => "\"$user\", public",
            "max_identifier_length" => "63",
            "work_mem" => return Some(crate::spill::format_work_mem(crate::spill::work_mem())),
            _ => return None,
        }
        .to_string(),
    )
}

impl Session {
    /// A new idle session.
    pub fn new(node: Arc<Node>, env: Arc<Env>) -> Self {
        Self {
            node,
            env,
            txn: None,
            failed: false,
            copy: None,
            stream_failed: Arc::default(),
            work_mem: None,
            interrupt: Arc::default(),
            statement_timeout: None,
            time_zone: None,
            txn_started: None,
            timer: None,
        }
    }

    /// The transaction state.
    pub fn state(&self) -> TxnState {
        let streamed_error = self.txn.is_some() && self.stream_failed.load(std::sync::atomic::Ordering::SeqCst);
        match (&self.txn, self.failed || streamed_error) {
            (_, true) => TxnState::Failed,
            (Some(_), false) => TxnState::InBlock,
            (None, false) => TxnState::Idle,
        }
    }

    /// Abandons any open transaction (connection closed).
    pub fn reset(&mut self) {
        self.txn = None;
        self.failed = false;
        self.copy = None;
        self.stream_failed.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes a lazily produced result report an error it meets to this session.
    fn watch(&self, outcome: Outcome) -> Outcome {
        let flag = |failed: Arc<std::sync::atomic::AtomicBool>| {
            move |e: Error| {
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                e
            }
        };
        match outcome {
            Outcome::Rows { columns, rows, tag } => {
                let on_err = flag(self.stream_failed.clone());
                let rows: crate::RowIter = Box::new(rows.map(move |r| r.map_err(&on_err)));
                let rows = match &self.time_zone {
                    Some(zone) => Box::new(InZone { inner: rows, zone: zone.clone() }),
                    None => rows,
                };
                Outcome::Rows { columns, rows, tag }
            }
            Outcome::CopyOut { columns, records } => {
                let on_err = flag(self.stream_failed.clone());
                let records: crate::RecordIter = Box::new(records.map(move |r| r.map_err(&on_err)));
                let records = match &self.time_zone {
                    Some(zone) => Box::new(InZone { inner: records, zone: zone.clone() }),
                    None => records,
                };
                Outcome::CopyOut { columns, records }
            }
            other => other,
        }
    }

    fn start_copy(&mut self, stmt: &ast::Statement) -> Result<Outcome> {
        let ast::Statement::Copy { source, to, target, options, legacy_options, .. } = stmt else {
            return Err(Error::Internal("start_copy on a non-COPY statement".into()));
        };
        let format = CopyFormat::from_options(options, legacy_options)?;
        let mut own = None;
        let txn = match self.txn.as_mut() {
            Some(t) => t,
            None => own.insert(self.node.begin()?),
        };
        match (to, target, source) {
            (false, ast::CopyTarget::Stdin, ast::CopySource::Table { table_name, columns }) => {
                let (def, targets) = exec::copy_target(txn, table_name, columns)?;
                let columns = targets.len();
                self.copy = Some(CopyIn {
                    def,
                    targets,
                    format,
                    buf: Vec::new(),
                    line: 0,
                    rows: 0,
                    error: None,
                    done: false,
                    own,
                });
                Ok(Outcome::CopyIn { columns })
            }
            (true, ast::CopyTarget::Stdout, source) => {
                let (cols, mut rows) = match source {
                    ast::CopySource::Query(q) => exec::query(txn, q, &[])?,
                    ast::CopySource::Table { table_name, columns } => {
                        let (def, targets) = exec::copy_target(txn, table_name, columns)?;
                        let cols = targets
                            .iter()
                            .map(|&i| OutColumn { name: def.columns[i].name.clone(), ty: Some(def.columns[i].ty) })
                            .collect();
                        let rows: crate::RowIter = Box::new(txn.scan(def.rows_range()).map(move |kv| {
                            let row = def.decode_row(&kv?.1)?;
                            Ok(targets.iter().map(|&i| row[i].clone()).collect::<Vec<_>>())
                        }));
                        (cols, rows)
                    }
                };
                let types: Vec<_> = cols.iter().map(|c| c.ty).collect();
                // The header goes in the same message as the first row: clients count
                // messages as rows, and PostgreSQL does not count the header.
                let mut header = format.header.then(|| {
                    let names: Vec<Value> = cols.iter().map(|c| Value::Text(c.name.clone())).collect();
                    format.encode_row(&names, &[])
                });
                let records: crate::RecordIter = Box::new(std::iter::from_fn(move || match rows.next() {
                    Some(Ok(r)) => {
                        let mut record = format.encode_row(&r, &types);
                        if let Some(h) = header.take() {
                            record.insert_str(0, &h);
                        }
                        Some(Ok(record))
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => header.take().map(Ok),
                }));
                Ok(Outcome::CopyOut { columns: cols.len(), records })
            }
            _ => Err(Error::sql("0A000", "COPY supports only FROM STDIN and TO STDOUT (use psql's \\copy for files)")),
        }
    }

    /// Feeds COPY FROM STDIN data. Errors are kept and reported at the end of the copy.
    pub fn copy_data(&mut self, data: &[u8]) {
        // Values are parsed as they arrive: `timestamptz` text in the session's zone.
        let zone = self.time_zone.clone();
        crate::zone::with_zone(zone.as_ref(), || self.copy_records(data))
    }

    fn copy_records(&mut self, data: &[u8]) {
        let Some(copy) = self.copy.as_mut() else { return };
        if copy.error.is_some() || copy.done {
            return;
        }
        copy.buf.extend_from_slice(data);
        let txn = match (self.txn.as_mut(), copy.own.as_mut()) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => return,
        };
        while let Some(rec) = copy.format.next_record(&mut copy.buf) {
            copy.line += 1;
            if copy.line == 1 && copy.format.header {
                continue;
            }
            if rec == b"\\." {
                copy.done = true;
                break;
            }
            let result = std::str::from_utf8(&rec)
                .map_err(|_| Error::sql("22021", format!("invalid UTF-8 in COPY data, line {}", copy.line)))
                .and_then(|text| copy.format.parse_record(text))
                .and_then(|fields| fields_to_row(&copy.def, &copy.targets, fields))
                .and_then(|row| exec::store_new_row(txn, &copy.def, &copy.targets, row));
            match result {
                Ok(()) => copy.rows += 1,
                Err(e) => {
                    copy.error = Some(match e {
                        Error::Sql { code, message, position } => Error::Sql {
                            code,
                            message: format!("{message} (COPY {}, line {})", copy.def.name, copy.line),
                            position,
                        },
                        other => other,
                    });
                    copy.buf.clear();
                    return;
                }
            }
        }
    }

    /// Ends COPY FROM STDIN: commits (outside a block) and returns the number of rows.
    pub async fn copy_done(&mut self) -> Result<u64> {
        let Some(mut copy) = self.copy.take() else {
            return Err(Error::sql("08P01", "no COPY in progress"));
        };
        if copy.error.is_none() && !copy.buf.is_empty() && !copy.done {
            // A final record without a newline.
            copy.buf.push(b'\n');
            let rest = std::mem::take(&mut copy.buf);
            self.copy = Some(copy);
            self.copy_data(&rest);
            copy = self.copy.take().ok_or_else(|| Error::Internal("copy state vanished".into()))?;
        }
        if let Some(e) = copy.error {
            if self.txn.is_some() {
                self.failed = true;
            }
            return Err(e);
        }
        if let Some(txn) = copy.own {
            self.node.commit(txn).await.map_err(map_commit_error)?;
        }
        Ok(copy.rows)
    }

    /// The client aborted COPY FROM STDIN.
    pub fn copy_fail(&mut self) {
        if self.copy.take().is_some() && self.txn.is_some() {
            self.failed = true;
        }
    }

    /// The settings of a statement starting now.
    fn settings(&self) -> Settings {
        let now = crate::interval::now_micros();
        // A block's start stays its `now()`; outside a block each statement is its own
        // transaction.
        let started = self.txn.as_ref().and(self.txn_started).unwrap_or(now);
        Settings { work_mem: self.work_mem, zone: self.time_zone.clone(), now: (started, now) }
    }

    /// Sets the session's time zone (None: UTC), as a `TimeZone` startup parameter does.
    pub fn set_time_zone(&mut self, zone: Option<crate::Zone>) {
        self.time_zone = zone;
    }

    /// The session's time zone (None: UTC), for the protocol layer's text forms of
    /// `timestamptz` values.
    pub fn time_zone(&self) -> Option<crate::Zone> {
        self.time_zone.clone()
    }

    /// The flag a cancel request for this session sets (see `interrupt`).
    pub fn interrupt_flag(&self) -> Arc<crate::Interrupt> {
        self.interrupt.clone()
    }

    /// Runs `f` (a statement's execution) with this session's settings, off the async
    /// worker when there is a multi-threaded runtime: a long sort or grouping must not
    /// hold a worker other connections (and cancel requests) need.
    fn in_statement<T>(settings: Settings, interrupt: &Arc<crate::Interrupt>, brief: bool, f: impl FnOnce() -> T) -> T {
        let flag = Some(interrupt.clone());
        let run = || {
            crate::interrupt::with_flag(flag, || {
                crate::spill::with_work_mem(settings.work_mem, || {
                    crate::interval::with_now(settings.now.0, settings.now.1, || {
                        crate::zone::with_zone(settings.zone.as_ref(), f)
                    })
                })
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if !brief && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }

    /// Executes one statement with bind parameters.
    pub async fn execute(&mut self, stmt: &Statement, params: &[Value]) -> Result<Outcome> {
        self.timer = None;
        self.interrupt.clear();
        if let (Some(limit), Ok(rt)) = (self.statement_timeout, tokio::runtime::Handle::try_current()) {
            let flag = self.interrupt.clone();
            self.timer = Some(AbortOnDrop(rt.spawn(async move {
                tokio::time::sleep(limit).await;
                flag.time_out();
            })));
        }
        if self.stream_failed.swap(false, std::sync::atomic::Ordering::SeqCst) && self.txn.is_some() {
            self.failed = true;
        }
        if let Statement::Sql { ast, .. } = stmt {
            if let Some(outcome) = self.session_setting(ast)? {
                return Ok(outcome);
            }
            if let ast::Statement::ShowVariable { variable } = ast {
                let name = variable.iter().map(|i| i.value.to_ascii_lowercase()).collect::<Vec<_>>().join(" ");
                let value = match name.as_str() {
                    "statement_timeout" => Some(crate::interrupt::format_timeout(self.statement_timeout)),
                    "timezone" | "time zone" => Some(self.time_zone.as_ref().map_or("UTC", |z| z.name()).to_string()),
                    _ => None,
                };
                if let Some(value) = value {
                    let column = if name == "time zone" { "TimeZone".to_string() } else { name };
                    return Ok(Outcome::Rows {
                        columns: vec![OutColumn { name: column, ty: Some(DataType::Text) }],
                        rows: crate::pipeline::materialized(vec![vec![Value::Text(value)]]),
                        tag: "SHOW".into(),
                    });
                }
            }
        }
        let outcome = self.execute_inner(stmt, params).await?;
        Ok(self.watch(outcome))
    }

    /// The settings this session keeps: `work_mem` (see `spill`), `statement_timeout`
    /// (statements running longer are canceled, 57014, as a cancel request would) and
    /// `TimeZone` (see `zone`; also `SET TIME ZONE …`) — `SET x = v`, `SET x TO DEFAULT`,
    /// `RESET x`, `RESET ALL`. Other
    /// settings are accepted and ignored by `run`. A setting takes effect at once and is
    /// not undone by ROLLBACK.
    fn session_setting(&mut self, stmt: &ast::Statement) -> Result<Option<Outcome>> {
        let kept = |name: &ast::ObjectName| {
            let n = name.to_string().to_ascii_lowercase();
            matches!(n.as_str(), "work_mem" | "statement_timeout" | "timezone").then_some(n)
        };
        let time_zone_value;
        let (name, values, tag) = match stmt {
            ast::Statement::Set(ast::Set::SingleAssignment { variable, values, .. }) => match kept(variable) {
                Some(n) => (Some(n), Some(values.as_slice()), "SET"),
                None => return Ok(None),
            },
            ast::Statement::Set(ast::Set::SetTimeZone { local: true, .. }) => {
                return Err(Error::sql("0A000", "SET LOCAL TIME ZONE is not supported; use SET TIME ZONE"));
            }
            ast::Statement::Set(ast::Set::SetTimeZone { value, .. }) => {
                time_zone_value = [value.clone()];
                (Some("timezone".to_string()), Some(time_zone_value.as_slice()), "SET")
            }
            ast::Statement::Reset(r) => match &r.reset {
                ast::Reset::ALL => (None, None, "RESET"),
                ast::Reset::ConfigurationParameter(n) => match kept(n) {
                    Some(n) => (Some(n), None, "RESET"),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        let (mut work_mem, mut timeout, mut zone) = (self.work_mem, self.statement_timeout, self.time_zone.clone());
        match name.as_deref() {
            Some("work_mem") => {
                work_mem =
                    values.map(|v| setting_value("work_mem", v, crate::spill::parse_work_mem)).transpose()?.flatten();
            }
            Some("timezone") => zone = values.map(zone_setting).transpose()?.flatten(),
            Some(_) => {
                timeout = values
                    .map(|v| setting_value("statement_timeout", v, crate::interrupt::parse_timeout))
                    .transpose()?
                    .flatten()
                    .flatten();
            }
            None => (work_mem, timeout, zone) = (None, None, None),
        }
        if self.failed {
            return Err(Error::sql(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        self.work_mem = work_mem;
        self.statement_timeout = timeout;
        self.time_zone = zone;
        Ok(Some(Outcome::Command(tag.into())))
    }

    async fn execute_inner(&mut self, stmt: &Statement, params: &[Value]) -> Result<Outcome> {
        let (stmt, as_of) = match stmt {
            Statement::Sql { ast, as_of } => (ast, as_of),
            Statement::Backup(b) => {
                if self.failed {
                    return Err(Error::sql(
                        "25P02",
                        "current transaction is aborted, commands ignored until end of transaction block",
                    ));
                }
                if self.txn.is_some() {
                    self.failed = true;
                    return Err(Error::sql("25001", "BACKUP and RESTORE cannot run inside a transaction block"));
                }
                return b.execute(&self.node, &self.env).await;
            }
            Statement::Maintenance { verb, tables } => {
                if self.failed {
                    return Err(Error::sql(
                        "25P02",
                        "current transaction is aborted, commands ignored until end of transaction block",
                    ));
                }
                if *verb == "VACUUM" && self.txn.is_some() {
                    self.failed = true;
                    return Err(Error::sql("25001", "VACUUM cannot run inside a transaction block"));
                }
                let mut txn = self.node.begin_read_only()?;
                for t in tables {
                    if let Err(e) = crate::catalog::Catalog::must_get(&mut txn, t) {
                        self.failed = self.txn.is_some();
                        return Err(e);
                    }
                }
                return Ok(Outcome::Command((*verb).to_string()));
            }
        };
        if let Some(point) = *as_of {
            if self.txn.is_some() || self.failed {
                return Err(Error::sql("25001", "AS OF SYSTEM TIME cannot be used inside a transaction block"));
            }
            let mut txn = match point {
                AsOf::Version(v) => self.node.begin_as_of_version(v),
                AsOf::Time(t) => self.node.begin_as_of_time(t),
                AsOf::Ago(us) => self.node.begin_as_of_time(self.node.mvcc().clock().now().saturating_sub(us)),
            }
            .map_err(|e| match e {
                Error::InvalidInput(m) => Error::sql("22023", m),
                other => other,
            })?;
            let brief = exec::runs_briefly(&mut txn, stmt, params);
            return Self::in_statement(self.settings(), &self.interrupt, brief, || run(&mut txn, stmt, params));
        }
        if matches!(stmt, ast::Statement::Copy { .. }) {
            if self.failed {
                return Err(Error::sql(
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            let (settings, interrupt) = (self.settings(), self.interrupt.clone());
            let r = Self::in_statement(settings, &interrupt, false, || self.start_copy(stmt));
            if r.is_err() && self.txn.is_some() {
                self.failed = true;
            }
            return r;
        }
        match stmt {
            ast::Statement::StartTransaction { .. } => {
                if self.txn.is_none() && !self.failed {
                    self.txn = Some(self.node.begin()?);
                    self.txn_started = Some(crate::interval::now_micros());
                }
                // PostgreSQL warns and carries on if a block is already open.
                return Ok(Outcome::Command("BEGIN".into()));
            }
            ast::Statement::Commit { .. } => {
                let txn = self.txn.take();
                if std::mem::take(&mut self.failed) {
                    return Ok(Outcome::Command("ROLLBACK".into()));
                }
                if let Some(txn) = txn {
                    self.node.commit(txn).await.map_err(map_commit_error)?;
                }
                return Ok(Outcome::Command("COMMIT".into()));
            }
            ast::Statement::Rollback { savepoint: None, .. } => {
                self.txn = None;
                self.failed = false;
                return Ok(Outcome::Command("ROLLBACK".into()));
            }
            _ => {}
        }
        if self.failed {
            return Err(Error::sql(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let (settings, interrupt) = (self.settings(), self.interrupt.clone());
        if let Some(txn) = self.txn.as_mut() {
            let brief = exec::runs_briefly(txn, stmt, params);
            let r = Self::in_statement(settings, &interrupt, brief, || run(txn, stmt, params));
            if r.is_err() {
                self.failed = true;
            }
            return r;
        }
        // Autocommit.
        let mut attempt = 0;
        loop {
            let mut txn = self.node.begin()?;
            let brief = exec::runs_briefly(&mut txn, stmt, params);
            let outcome = Self::in_statement(settings.clone(), &interrupt, brief, || run(&mut txn, stmt, params))?;
            match self.node.commit(txn).await {
                Ok(_) => return Ok(outcome),
                Err(e) if e.is_retryable() && attempt < AUTOCOMMIT_RETRIES => attempt += 1,
                Err(e) => return Err(map_commit_error(e)),
            }
        }
    }

    /// The parameter types and result columns of a statement, without running it (for
    /// the extended protocol's Describe). Parameter types are inferred where a parameter
    /// is compared with or assigned to a column; otherwise unknown (text).
    pub fn describe(&mut self, stmt: &Statement) -> Result<crate::describe::Description> {
        crate::describe_statement(&self.node, stmt)
    }
}

/// The value a `SET name = …` assigns, parsed by `parse` (None: `DEFAULT`).
fn setting_value<T>(name: &str, values: &[ast::Expr], parse: impl Fn(&str) -> Result<T>) -> Result<Option<T>> {
    match values {
        [ast::Expr::Identifier(i)] if i.value.eq_ignore_ascii_case("default") => Ok(None),
        [ast::Expr::Value(v)] => match &v.value {
            ast::Value::Number(n, _) => parse(n).map(Some),
            ast::Value::SingleQuotedString(t) => parse(t).map(Some),
            other => parse(&other.to_string()).map(Some),
        },
        other => {
            let text = other.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            Err(Error::sql("22023", format!("invalid value for parameter \"{name}\": \"{text}\"")))
        }
    }
}

/// The zone a `SET TIME ZONE` / `SET timezone` value names (None: the default, UTC):
/// a name or POSIX string, a number of hours east of UTC, an interval, `LOCAL` or
/// `DEFAULT`.
fn zone_setting(values: &[ast::Expr]) -> Result<Option<crate::Zone>> {
    let invalid = |text: &str| Error::sql("22023", format!("invalid value for parameter \"TimeZone\": \"{text}\""));
    match values {
        [ast::Expr::Identifier(i)]
            if i.value.eq_ignore_ascii_case("default") || i.value.eq_ignore_ascii_case("local") =>
        {
            Ok(None)
        }
        [ast::Expr::Value(v)] => match &v.value {
            ast::Value::SingleQuotedString(t) => crate::Zone::parse(t).map(Some),
            other => crate::Zone::parse(&other.to_string()).map(Some),
        },
        [ast::Expr::Interval(iv)] => {
            let text = match &*iv.value {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::SingleQuotedString(t) => t.clone(),
                    other => other.to_string(),
                },
                other => other.to_string(),
            };
            let parsed = crate::interval::Interval::parse(&text).map_err(|_| invalid(&text))?;
            if parsed.months != 0 || parsed.days != 0 {
                return Err(invalid(&text));
            }
            crate::Zone::fixed(parsed.micros / 1_000_000).map(Some)
        }
        [e] => crate::Zone::parse(&e.to_string()).map(Some),
        other => Err(invalid(&other.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))),
    }
}

fn map_commit_error(e: Error) -> Error {
    match e {
        Error::InvalidInput(m) if m.starts_with("transaction too large") => Error::sql("54000", m),
        Error::Serialization(m) => {
            Error::sql("40001", format!("could not serialize access due to concurrent update: {m}"))
        }
        other => other,
    }
}

/// Runs a statement inside `txn`.
pub fn run(txn: &mut Transaction, stmt: &ast::Statement, params: &[Value]) -> Result<Outcome> {
    match stmt {
        // `WITH … INSERT/UPDATE/DELETE`: the statement with the CTEs inlined.
        ast::Statement::Query(q)
            if matches!(
                q.body.as_ref(),
                ast::SetExpr::Insert(_) | ast::SetExpr::Update(_) | ast::SetExpr::Delete(_)
            ) =>
        {
            let inlined = crate::cte::inline(q)?;
            match *inlined.body {
                ast::SetExpr::Insert(s) | ast::SetExpr::Update(s) | ast::SetExpr::Delete(s) => run(txn, &s, params),
                other => Err(Error::Internal(format!("inlining WITH changed the statement into {other}"))),
            }
        }
        ast::Statement::Query(q) => {
            let (columns, rows) = exec::query(txn, q, params)?;
            Ok(Outcome::Rows { columns, rows, tag: "SELECT".into() })
        }
        ast::Statement::Insert(i) => exec::insert(txn, i, params),
        ast::Statement::Update(u) => exec::update(txn, u, params),
        ast::Statement::Delete(d) => exec::delete(txn, d, params),
        ast::Statement::CreateTable(ct) => exec::create_table(txn, ct, params),
        ast::Statement::Truncate(t) => exec::truncate_tables(txn, t),
        ast::Statement::CreateView(cv) => exec::create_view(txn, cv),
        ast::Statement::Drop { object_type: ast::ObjectType::View, if_exists, names, .. } => {
            exec::drop_views(txn, names, *if_exists)
        }
        ast::Statement::Drop { object_type: ast::ObjectType::Table, if_exists, names, .. } => {
            exec::drop_tables(txn, names, *if_exists)
        }
        ast::Statement::CreateIndex(ci) => exec::create_index(txn, ci),
        ast::Statement::AlterTable(at) => crate::alter::alter_table(txn, at),
        ast::Statement::Drop { object_type: ast::ObjectType::Index, if_exists, names, .. } => {
            exec::drop_indexes(txn, names, *if_exists)
        }
        ast::Statement::Set(_) => Ok(Outcome::Command("SET".into())),
        ast::Statement::ShowVariable { variable } => {
            let name = variable.iter().map(|i| i.value.to_lowercase()).collect::<Vec<_>>().join(" ");
            let value = show_value(&name)
                .ok_or_else(|| Error::sql("42704", format!("unrecognized configuration parameter \"{name}\"")))?;
            let col = variable.last().map(|i| i.value.to_lowercase()).unwrap_or_default();
            let col = if name == "transaction isolation level" { "transaction_isolation".to_string() } else { col };
            Ok(Outcome::Rows {
                columns: vec![OutColumn { name: col, ty: Some(DataType::Text) }],
                rows: crate::pipeline::materialized(vec![vec![Value::Text(value)]]),
                tag: "SHOW".into(),
            })
        }
        other => Err(Error::sql("0A000", format!("statement is not supported: {}", first_words(&other.to_string())))),
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
