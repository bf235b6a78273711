//! `BACKUP`, `RESTORE` and `SHOW BACKUP(S)`: the SQL face of the backup crate.
//!
//! ```text
//!   BACKUP DATABASE TO 'dest' [WITH (…)]          BACKUP TABLE t [, …] TO 'dest' [WITH (…)]
//!   RESTORE DATABASE FROM 'dest' [WITH (…)]       RESTORE TABLE t [, …] FROM 'dest' [AS new] [WITH (…)]
//!   SHOW BACKUP 'dest'                            SHOW BACKUPS IN 'dest'
//!   options: compression_level = 1..19, parallelism = n, replace (RESTORE TABLE only),
//!            encryption_passphrase = '…' (BACKUP encrypts; RESTORE and SHOW BACKUP decrypt)
//! ```
//! sqlparser knows none of these, so they are parsed here from its tokens.
//!
//! A restore is atomic at the catalog: rows and index entries are bulk-loaded under a
//! fresh table id that no catalog entry names (with a *pending-restore marker* naming
//! that id), verified by reading them back, and only then published by one commit that
//! writes the catalog entries and removes the markers. A failed restore deletes what it
//! loaded; after a crash, [`cleanup_pending_restores`] (run at start-up) does.

use crate::catalog::{Catalog, TableDef};
use crate::exec::{OutColumn, Outcome};
use crate::types::{DataType, Value};
use amberdb_backup::{BackupKind, Destination, EntryCheck, Manifest, Options, Origin, Progress, Secret, TableSpec};
use amberdb_consensus::Node;
use amberdb_error::{Error, Result};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::sync::Arc;

/// What the SQL layer needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct Env {
    /// How backup destinations resolve.
    pub backup: amberdb_backup::DestConfig,
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
}

impl BackupOptions {
    /// The passphrase as a secret.
    pub fn secret(&self) -> Result<Option<Secret>> {
        self.encryption_passphrase.as_deref().map(|p| Secret::new(p.as_bytes())).transpose()
    }

    /// The backup crate's options.
    pub fn to_options(&self) -> Result<Options> {
        let mut o = Options { encryption: self.secret()?, ..Options::default() };
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
    /// RESTORE.
    Restore { tables: Option<Vec<String>>, dest: String, rename: Option<String>, options: BackupOptions },
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
                "replace" if restore => {
                    o.replace = match value.as_deref() {
                        None | Some("true") | Some("on") | Some("1") => true,
                        Some("false") | Some("off") | Some("0") => false,
                        Some(v) => return Err(Error::sql("22023", format!("replace: invalid value {v}"))),
                    }
                }
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
        BackupStatement::Backup { tables, dest, options: t.options("BACKUP")? }
    } else if t.keyword("RESTORE") {
        let tables = t.target("FROM")?;
        t.expect_keyword("FROM")?;
        let dest = t.string()?;
        let rename = if t.keyword("AS") { Some(t.ident()?) } else { None };
        if rename.is_some() && tables.as_ref().is_none_or(|v| v.len() != 1) {
            return Err(Error::sql("42601", "AS new_name needs exactly one table"));
        }
        let options = t.options("RESTORE")?;
        if options.replace && tables.is_none() {
            return Err(Error::sql("22023", "replace applies to RESTORE TABLE only"));
        }
        BackupStatement::Restore { tables, dest, rename, options }
    } else {
        t.expect_keyword("SHOW")?;
        if t.keyword("BACKUPS") {
            t.expect_keyword("IN")?;
            BackupStatement::List { dest: t.string()? }
        } else {
            t.expect_keyword("BACKUP")?;
            let dest = t.string()?;
            BackupStatement::Show { dest, options: t.options("SHOW BACKUP")? }
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

impl BackupStatement {
    /// The result columns (for Describe).
    pub fn columns(&self) -> Vec<OutColumn> {
        use DataType::{Int8, Text, TimestampTz};
        let cols: &[(&str, DataType)] = match self {
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
            BackupStatement::Restore { tables, dest, rename, options } => {
                let done =
                    restore(node, env, tables.as_deref(), dest, rename.as_deref(), Origin::Sql, options, &progress)
                        .await?;
                let rows = done
                    .tables
                    .iter()
                    .map(|(n, r)| vec![Value::Text(n.clone()), Value::Int(*r as i64), Value::Int(done.version as i64)])
                    .collect();
                (rows, "RESTORE".to_string())
            }
            BackupStatement::Show { dest, options } => {
                let d = Destination::open(dest, &env.backup, Origin::Sql)?;
                let m = amberdb_backup::open_latest(&d, options.secret()?.as_ref()).await?.manifest;
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
        Ok(Outcome::Rows { columns, rows, tag })
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
    // The read-only transaction fixes the version; the view handed to the export keeps
    // it from GC until the export is done.
    let mut txn = node.begin_read_only()?;
    let (kind, defs) = match tables {
        None => (BackupKind::Database, Catalog::list(&mut txn)?),
        Some(names) => {
            let mut defs = Vec::new();
            for n in names {
                let def = Catalog::must_get(&mut txn, n)?;
                if !defs.iter().any(|d: &TableDef| d.name == def.name) {
                    defs.push(def);
                }
            }
            defs.sort_by(|a, b| a.name.cmp(&b.name));
            (BackupKind::Tables, defs)
        }
    };
    let specs = defs.iter().map(table_spec).collect::<Result<Vec<_>>>()?;
    let view = node.mvcc().read_at(txn.read_version())?;
    drop(txn);
    let m = amberdb_backup::create(node.mvcc(), view, &dest, kind, specs, &options.to_options()?, progress).await?;
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
    /// The snapshot version restored.
    pub version: u64,
    /// (table name as restored, rows).
    pub tables: Vec<(String, u64)>,
}

/// RESTORE: loads tables (or the whole database) from the backup at `dest` and publishes
/// them in one commit, or leaves nothing behind.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    node: &Arc<Node>,
    env: &Env,
    tables: Option<&[String]>,
    dest: &str,
    rename: Option<&str>,
    origin: Origin,
    options: &BackupOptions,
    progress: &Progress,
) -> Result<RestoreSummary> {
    let dest = Destination::open(dest, &env.backup, origin)?;
    let snap = amberdb_backup::open_latest(&dest, options.secret()?.as_ref()).await?;
    let m = &snap.manifest;
    // (manifest table, definition as it will be published)
    let mut plan: Vec<(usize, TableDef)> = Vec::new();
    match tables {
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
            for (i, t) in m.tables.iter().enumerate() {
                plan.push((i, schema_of(t)?));
            }
        }
        Some(names) => {
            for n in names {
                let Some((i, t)) = m.table(n) else {
                    let held: Vec<&str> = m.tables.iter().map(|t| t.name.as_str()).collect();
                    return Err(Error::sql(
                        "42P01",
                        format!("table \"{n}\" is not in the backup at {} (it holds: {})", dest.url(), held.join(", ")),
                    ));
                };
                let mut def = schema_of(t)?;
                def.name = rename.unwrap_or(n).to_string();
                plan.push((i, def));
            }
        }
    }
    let total: u64 = plan.iter().map(|(i, _)| m.tables[*i].logical_bytes).sum();
    progress.total_bytes.store(total, std::sync::atomic::Ordering::Relaxed);
    // Fail fast on a name clash before loading anything (checked again at publish).
    {
        let mut txn = node.begin_read_only()?;
        for (_, def) in &plan {
            if !options.replace && Catalog::get(&mut txn, &def.name)?.is_some() {
                return Err(Error::sql(
                    "42P07",
                    format!("relation \"{}\" already exists (use WITH (replace) to overwrite it)", def.name),
                ));
            }
        }
    }
    // Allocate fresh ids and record the pending markers in one commit.
    let ids = {
        let mut txn = node.begin()?;
        let mut ids = Vec::new();
        for (_, def) in &plan {
            let id = Catalog::allocate_id(&mut txn)?;
            Catalog::put_pending_restore(&mut txn, id, &def.name)?;
            ids.push(id);
        }
        node.commit(txn).await?;
        ids
    };
    for ((_, def), id) in plan.iter_mut().zip(&ids) {
        def.id = *id;
    }
    let opts = options.to_options()?;
    let loaded = async {
        for (i, def) in &plan {
            amberdb_backup::load_table(node, &dest, &snap, &m.tables[*i], &def.key_prefixes(), &opts, progress).await?;
        }
        publish(node, &plan, options.replace).await
    }
    .await;
    if let Err(e) = loaded {
        for (_, def) in &plan {
            if let Err(ce) = discard(node, def.id).await {
                tracing::warn!(error = %ce, table = def.name, "could not remove a failed restore's data; it is removed at the next start");
            }
        }
        return Err(e);
    }
    let tables = plan.iter().map(|(i, d)| (d.name.clone(), m.tables[*i].rows)).collect();
    tracing::info!(destination = dest.url(), version = m.version, "restore complete");
    Ok(RestoreSummary { version: m.version, tables })
}

fn schema_of(t: &amberdb_backup::TableManifest) -> Result<TableDef> {
    serde_json::from_value(t.schema.clone())
        .map_err(|e| Error::InvalidData(format!("backup manifest: definition of table {}: {e}", t.name)))
}

/// Publishes restored tables: one commit writes their catalog entries (replacing
/// same-named tables if asked) and removes the pending markers.
async fn publish(node: &Arc<Node>, plan: &[(usize, TableDef)], replace: bool) -> Result<()> {
    let mut attempt = 0;
    loop {
        let mut txn = node.begin()?;
        for (_, def) in plan {
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
    let def = TableDef { id, name: String::new(), columns: Vec::new(), primary_key: Vec::new(), indexes: Vec::new() };
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
        let def =
            TableDef { id: *id, name: name.clone(), columns: Vec::new(), primary_key: Vec::new(), indexes: Vec::new() };
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
