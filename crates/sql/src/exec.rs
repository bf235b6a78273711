//! Statement execution over one mvcc transaction.
//!
//! Queries are evaluated as a pipeline of lazy stages ([`crate::pipeline`]): a query
//! returns its columns and a [`RowIter`] that produces rows as they are pulled.
//!
//! ```text
//!   FROM (scan / primary-key lookup, nested-loop joins) → WHERE → [GROUP BY + aggregates
//!   → HAVING] → projection (+ hidden ORDER BY keys) → DISTINCT → ORDER BY → OFFSET/LIMIT
//! ```
//! Aggregation and ORDER BY collect (ORDER BY … LIMIT keeps only the top rows; ORDER BY
//! the primary key over a table scan is the scan's order and collects nothing); the other
//! stages stream. Everything that needs the transaction (reads, correlated subqueries)
//! happens before `query` returns or inside storage scans that own their snapshot, so
//! the rows are the statement's result whenever they are pulled.
//! A single-table WHERE that fixes every primary-key column to a constant or parameter
//! becomes a point read: it reads (and so conflicts on) one key, not the whole table.

use crate::catalog::{Catalog, Column, IndexDef, TableDef};
use crate::expr::{ident, AggBinding, AggCall, AggFunc, BinOp, Binder, Expr, ScopeCol};
use crate::pipeline::{self, materialized, Params, Row, RowIter, SortKey};
use crate::spill;
use crate::types::{DataType, Value};
use amberdb_encoding::keycode::KeyEncoder;
use amberdb_error::{Error, Result};
use amberdb_mvcc::Transaction;
use sqlparser::ast;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A result column.
#[derive(Debug, Clone, PartialEq)]
pub struct OutColumn {
    /// Name shown to clients.
    pub name: String,
    /// Type (None: unknown, reported as text).
    pub ty: Option<DataType>,
}

/// Encoded COPY records (each with its newline), produced as they are pulled.
pub type RecordIter = Box<dyn Iterator<Item = Result<String>> + Send>;

/// What a statement produced.
pub enum Outcome {
    /// Rows, with the command tag verb (`SELECT`, or `INSERT 0 n` with RETURNING, ...).
    /// The rows may be produced lazily: an error can arrive after some rows.
    Rows { columns: Vec<OutColumn>, rows: RowIter, tag: String },
    /// A command tag such as `INSERT 0 1`, `CREATE TABLE`.
    Command(String),
    /// COPY FROM STDIN started: the client now sends data for this many columns.
    CopyIn { columns: usize },
    /// COPY TO STDOUT: the records, produced as they are pulled.
    CopyOut { columns: usize, records: RecordIter },
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Rows { columns, tag, .. } => {
                f.debug_struct("Rows").field("columns", columns).field("tag", tag).finish_non_exhaustive()
            }
            Outcome::Command(tag) => f.debug_tuple("Command").field(tag).finish(),
            Outcome::CopyIn { columns } => f.debug_struct("CopyIn").field("columns", columns).finish(),
            Outcome::CopyOut { columns, .. } => {
                f.debug_struct("CopyOut").field("columns", columns).finish_non_exhaustive()
            }
        }
    }
}

/// A row read from a table together with its storage key.
pub(crate) struct StoredRow {
    pub(crate) key: Vec<u8>,
    pub(crate) row: Row,
}

pub(crate) fn feature(what: impl std::fmt::Display) -> Error {
    Error::sql("0A000", format!("{what} is not supported"))
}

pub(crate) fn table_name(name: &ast::ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(i)] => Ok(ident(i)),
        [ast::ObjectNamePart::Identifier(schema), ast::ObjectNamePart::Identifier(i)] if ident(schema) == "public" => {
            Ok(ident(i))
        }
        _ => Err(Error::sql("42P01", format!("relation \"{name}\" does not exist"))),
    }
}

pub(crate) fn scope_of(def: &TableDef, alias: &str) -> Vec<ScopeCol> {
    def.columns
        .iter()
        .map(|c| ScopeCol { table: Some(alias.to_string()), name: c.name.clone(), ty: Some(c.ty) })
        .collect()
}

pub(crate) fn row_identity(row: &[Value]) -> Vec<u8> {
    row.iter().fold(KeyEncoder::new(), |e, v| v.encode_key(e)).finish()
}

/// How a single-table statement reads its rows.
enum Access {
    /// Every row.
    Scan,
    /// One row, by primary key.
    Key(Vec<Value>),
    /// The rows an index maps the given values to (index position in `def.indexes`).
    Index(usize, Vec<Value>),
    /// The rows whose keys lie in a range: row keys (None) or entries of an index.
    Range(amberdb_storage::KeyRange, Option<usize>),
}

/// Reads the row with primary-key values `pk` (a point read, recorded as such).
fn read_key(txn: &mut Transaction, def: &TableDef, pk: Vec<Value>) -> Result<Vec<StoredRow>> {
    let mut probe = vec![Value::Null; def.columns.len()];
    for (&i, v) in def.primary_key.iter().zip(pk) {
        probe[i] = v;
    }
    let key = def.row_key(&probe, None);
    Ok(match txn.get(&key)? {
        Some(raw) => vec![StoredRow { row: def.decode_row(&raw)?, key }],
        None => vec![],
    })
}

/// The rows an access path selects, produced lazily for scans, key ranges (the storage
/// scan owns its snapshot) and index ranges (see `stream_index_rows`); a point read is
/// done here.
fn stream_rows(txn: &mut Transaction, def: &TableDef, access: Access) -> Result<RowIter> {
    let range = match access {
        Access::Scan => def.rows_range(),
        Access::Range(range, None) => range,
        Access::Index(i, values) => {
            let prefix = def.index_prefix(&def.indexes[i], &values);
            return stream_index_rows(txn, def, i, amberdb_storage::KeyRange::prefix(&prefix));
        }
        Access::Range(range, Some(i)) => return stream_index_rows(txn, def, i, range),
        Access::Key(pk) => return Ok(materialized(read_key(txn, def, pk)?.into_iter().map(|r| r.row).collect())),
    };
    let def = def.clone();
    Ok(crate::interrupt::rows(Box::new(txn.scan(range).map(move |kv| def.decode_row(&kv?.1)))))
}

/// Index entries read at once, with a point read of each row recorded as read; an index
/// range with more entries streams the rest (see `stream_index_rows`).
const EAGER_INDEX_ROWS: usize = 1024;

/// The rows an index range points at, as a stream: the first entries' rows are read
/// now, each recorded as a point read (what a selective lookup needs to conflict only
/// with writers of those rows); past [`EAGER_INDEX_ROWS`] the rest are read as the
/// result is pulled, through a detached reader that counts the table's rows as read
/// (as a scan would), so a large index range never sits in memory.
fn stream_index_rows(
    txn: &mut Transaction,
    def: &TableDef,
    i: usize,
    range: amberdb_storage::KeyRange,
) -> Result<RowIter> {
    Ok(Box::new(index_stored(txn, def, i, range)?.map(|r| r.map(|r| r.row))))
}

/// The rows an index range points at, with their keys (see `stream_index_rows`).
fn index_stored(
    txn: &mut Transaction,
    def: &TableDef,
    i: usize,
    range: amberdb_storage::KeyRange,
) -> Result<StoredRows> {
    let mut entries = txn.scan(range);
    let mut first = Vec::new();
    for kv in entries.by_ref() {
        let (entry, _) = kv?;
        let key = def.row_key_of_entry(&def.indexes[i], &entry)?;
        let raw = txn.get(&key)?.ok_or_else(|| missing_indexed_row(def, i))?;
        first.push(StoredRow { row: def.decode_row(&raw)?, key });
        if first.len() == EAGER_INDEX_ROWS {
            break;
        }
    }
    if first.len() < EAGER_INDEX_ROWS {
        return Ok(Box::new(first.into_iter().map(Ok)));
    }
    let reader = txn.detached_reader(def.rows_range());
    let def = def.clone();
    let flag = crate::interrupt::current();
    let rest = entries.map(move |kv| {
        crate::interrupt::check(&flag)?;
        let (entry, _) = kv?;
        let key = def.row_key_of_entry(&def.indexes[i], &entry)?;
        let raw = reader.get(&key)?.ok_or_else(|| missing_indexed_row(&def, i))?;
        Ok(StoredRow { row: def.decode_row(&raw)?, key })
    });
    Ok(Box::new(first.into_iter().map(Ok).chain(rest)))
}

fn missing_indexed_row(def: &TableDef, i: usize) -> Error {
    Error::InvalidData(format!("index {} points at a missing row of table {}", def.indexes[i].name, def.name))
}

/// Splits a WHERE clause into its AND-ed parts.
fn ast_conjuncts(e: &ast::Expr, out: &mut Vec<ast::Expr>) {
    match e {
        ast::Expr::BinaryOp { left, op: ast::BinaryOperator::And, right } => {
            ast_conjuncts(left, out);
            ast_conjuncts(right, out);
        }
        ast::Expr::Nested(inner) => ast_conjuncts(inner, out),
        other => out.push(other.clone()),
    }
}

/// Splits a predicate into AND-ed conjuncts.
fn conjuncts(e: &Expr, out: &mut Vec<Expr>) {
    if let Expr::Binary(BinOp::And, a, b) = e {
        conjuncts(a, out);
        conjuncts(b, out);
    } else {
        out.push(e.clone());
    }
}

/// The value a conjunct `column = constant-or-parameter` pins `col` to, if any.
fn pinned(parts: &[Expr], col: usize) -> Option<Expr> {
    parts.iter().find_map(|p| match p {
        Expr::Binary(BinOp::Eq, a, b) => match (a.as_ref(), b.as_ref()) {
            (Expr::Column(c), v @ (Expr::Const(_) | Expr::Param(_)))
            | (v @ (Expr::Const(_) | Expr::Param(_)), Expr::Column(c))
                if *c == col =>
            {
                Some(v.clone())
            }
            _ => None,
        },
        _ => None,
    })
}

/// Evaluates the values `filter` pins `cols` to, cast to their column types; None if
/// some column is not pinned or its value cannot match (the scan then decides).
fn pinned_values(def: &TableDef, parts: &[Expr], cols: &[usize], params: &[Value]) -> Result<Option<Vec<Value>>> {
    let mut values = Vec::new();
    for &c in cols {
        let Some(v) = pinned(parts, c) else { return Ok(None) };
        match v.eval(&[], params)?.cast(def.columns[c].ty) {
            Ok(Value::Null) | Err(_) => return Ok(None),
            Ok(v) => values.push(v),
        }
    }
    Ok(Some(values))
}

/// Picks the cheapest access path for `filter`: the primary key, then an index whose
/// columns are all pinned by equality, else a scan.
fn choose_access(def: &TableDef, filter: Option<&Expr>, params: &[Value]) -> Result<Access> {
    let Some(filter) = filter else { return Ok(Access::Scan) };
    let mut parts = Vec::new();
    conjuncts(filter, &mut parts);
    if !def.primary_key.is_empty() {
        if let Some(v) = pinned_values(def, &parts, &def.primary_key, params)? {
            return Ok(Access::Key(v));
        }
    }
    for (i, index) in def.indexes.iter().enumerate() {
        if let Some(v) = pinned_values(def, &parts, &index.columns, params)? {
            return Ok(Access::Index(i, v));
        }
    }
    // Range predicates on the first primary-key column, then on an index's first column.
    if let Some(&c) = def.primary_key.first() {
        if let Some(r) = key_range(def, &parts, c, &def.row_prefix(), params)? {
            return Ok(Access::Range(r, None));
        }
    }
    for (i, index) in def.indexes.iter().enumerate() {
        let prefix = def.index_prefix(index, &[]);
        if let Some(r) = key_range(def, &parts, index.columns[0], &prefix, params)? {
            return Ok(Access::Range(r, Some(i)));
        }
    }
    Ok(Access::Scan)
}

/// The constant a conjunct compares `col` with, and how (`col <op> value`, with the
/// operator flipped when the column is on the right).
fn bound_of(p: &Expr, col: usize) -> Option<(BinOp, Expr)> {
    let Expr::Binary(op @ (BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq), a, b) = p else { return None };
    match (a.as_ref(), b.as_ref()) {
        (Expr::Column(c), v @ (Expr::Const(_) | Expr::Param(_))) if *c == col => Some((*op, v.clone())),
        (v @ (Expr::Const(_) | Expr::Param(_)), Expr::Column(c)) if *c == col => {
            let flipped = match op {
                BinOp::Lt => BinOp::Gt,
                BinOp::LtEq => BinOp::GtEq,
                BinOp::Gt => BinOp::Lt,
                _ => BinOp::LtEq,
            };
            Some((flipped, v.clone()))
        }
        _ => None,
    }
}

/// A key range (under `prefix`, whose next key component is column `col`) holding every
/// row the range conjuncts on `col` can match — a superset: the full predicate is still
/// applied to what is read. None if no usable bound exists. A bound is only used when
/// its value converts to the column's type exactly (`int_col > 2.5` scans instead).
fn key_range(
    def: &TableDef,
    parts: &[Expr],
    col: usize,
    prefix: &[u8],
    params: &[Value],
) -> Result<Option<amberdb_storage::KeyRange>> {
    use amberdb_encoding::keycode::prefix_end;
    use std::ops::Bound;
    let ty = def.columns[col].ty;
    let mut lower: Option<(BinOp, Value)> = None;
    let mut upper: Option<(BinOp, Value)> = None;
    for p in parts {
        let Some((op, e)) = bound_of(p, col) else { continue };
        let v = e.eval(&[], params)?;
        let Ok(cv) = v.clone().cast(ty) else { continue };
        // A string literal is read as the column's type (as PostgreSQL does with untyped
        // literals); any other value must survive the conversion unchanged.
        let natural = match &v {
            Value::Int(_) => Some(DataType::Int8),
            Value::Float(_) => Some(DataType::Float8),
            Value::Numeric(_) => Some(DataType::Numeric(None)),
            Value::Bool(_) => Some(DataType::Bool),
            Value::Date(_) => Some(DataType::Date),
            Value::Timestamp(_) => Some(DataType::Timestamp),
            Value::TimestampTz(_) => Some(DataType::TimestampTz),
            Value::Bytes(_) => Some(DataType::Bytea),
            Value::Interval(_) => Some(DataType::Interval),
            Value::Time(_) => Some(DataType::Time),
            Value::Uuid(_) => Some(DataType::Uuid),
            Value::Text(_) | Value::Null => None,
        };
        let exact = match natural {
            Some(vt) => cv.clone().cast(vt).is_ok_and(|back| back == v),
            None => matches!(v, Value::Text(_)),
        };
        if matches!(cv, Value::Null) || !exact {
            continue;
        }
        match op {
            BinOp::Gt | BinOp::GtEq if lower.is_none() => lower = Some((op, cv)),
            BinOp::Lt | BinOp::LtEq if upper.is_none() => upper = Some((op, cv)),
            _ => {}
        }
    }
    if lower.is_none() && upper.is_none() {
        return Ok(None);
    }
    let key = |v: &Value| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&v.encode_key(KeyEncoder::new()).finish());
        k
    };
    let start = match &lower {
        None => Bound::Included(prefix.to_vec()),
        Some((BinOp::GtEq, v)) => Bound::Included(key(v)),
        Some((_, v)) => match prefix_end(&key(v)) {
            Some(k) => Bound::Included(k),
            None => {
                return Ok(Some(amberdb_storage::KeyRange {
                    start: Bound::Excluded(Vec::new()),
                    end: Bound::Excluded(Vec::new()),
                }))
            }
        },
    };
    let end = match &upper {
        None => prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded),
        Some((BinOp::Lt, v)) => Bound::Excluded(key(v)),
        Some((_, v)) => prefix_end(&key(v)).map_or(Bound::Unbounded, Bound::Excluded),
    };
    Ok(Some(amberdb_storage::KeyRange { start, end }))
}

/// If `name` is a `pg_catalog` table (qualified, or unqualified and not shadowed by a
/// user table), its unqualified name.
fn catalog_name(txn: &mut Transaction, name: &ast::ObjectName) -> Result<Option<String>> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ast::ObjectNamePart::Identifier(i) => ident(i),
            other => other.to_string(),
        })
        .collect();
    Ok(match parts.as_slice() {
        [schema, t] if schema == "pg_catalog" && crate::pg_catalog::is_catalog_table(t) => Some(t.clone()),
        [schema, t] if schema == "information_schema" && crate::info_schema::is_view(t) => {
            Some(format!("information_schema.{t}"))
        }
        [t] if crate::pg_catalog::is_catalog_table(t) && Catalog::get(txn, t)?.is_none() => Some(t.clone()),
        _ => None,
    })
}

thread_local! {
    /// Set while a statement is only being described (extended-protocol Parse): table
    /// scans then produce no rows, so learning a query's columns never runs its
    /// aggregates or sorts over real data. Queries run synchronously on one thread.
    static SHAPE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with table scans producing rows (`false`) or none (`true`, for describing a
/// statement's shape); the previous mode is restored afterwards, even on panic.
pub(crate) fn with_shape_only<T>(on: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHAPE_ONLY.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SHAPE_ONLY.with(|s| s.replace(on)));
    f()
}

/// The FROM clause: its scope and its rows.
struct Source {
    scope: Vec<ScopeCol>,
    rows: RowIter,
    /// Scope columns the rows are known to ascend by (a table scan in key order);
    /// empty when the order is unknown.
    order: Vec<usize>,
}

/// Column types whose key encoding orders exactly as SQL comparison does, so a scan in
/// key order is already sorted by them.
fn key_order_is_sql_order(ty: DataType) -> bool {
    matches!(
        ty,
        DataType::Int2
            | DataType::Int4
            | DataType::Int8
            | DataType::Text
            | DataType::Varchar(_)
            | DataType::Date
            | DataType::Timestamp
            | DataType::TimestampTz
    )
}

fn table_factor(
    txn: &mut Transaction,
    tf: &ast::TableFactor,
    filter_hint: Option<&ast::Expr>,
    params: &Params,
) -> Result<Source> {
    match tf {
        // The working table of a recursive CTE being evaluated (a name SQL cannot spell).
        ast::TableFactor::Table { name, alias, args: None, .. } if matches!(name.0.as_slice(), [ast::ObjectNamePart::Identifier(i)] if i.value.starts_with('\u{0}')) =>
        {
            let key = name.0.first().and_then(|p| p.as_ident()).map(|i| i.value.as_str()).unwrap_or_default();
            let (columns, rows) = crate::cte::Working::take(key).ok_or_else(|| {
                Error::sql("0A000", "a recursive reference inside a subquery that runs per row is not supported")
            })?;
            let table = alias.as_ref().map(|a| ident(&a.name));
            let scope = columns.into_iter().map(|(name, ty)| ScopeCol { table: table.clone(), name, ty }).collect();
            Ok(Source { scope, rows, order: vec![] })
        }
        ast::TableFactor::Table { name, alias, args: None, .. } if catalog_name(txn, name)?.is_some() => {
            let cname = catalog_name(txn, name)?.unwrap_or_default();
            let view = cname.strip_prefix("information_schema.");
            let bare = view.unwrap_or(&cname);
            let alias = alias.as_ref().map(|a| ident(&a.name)).unwrap_or_else(|| bare.to_string());
            let (scope, rows) = match view {
                Some(v) => crate::info_schema::view(txn, v, &alias)?,
                None => crate::pg_catalog::catalog_table(txn, &cname, &alias)?,
            };
            Ok(Source { scope, rows: materialized(rows), order: vec![] })
        }
        ast::TableFactor::Table { name, alias, args: None, .. } => {
            let tname = table_name(name)?;
            if Catalog::get(txn, &tname)?.is_none() {
                if let Some(view) = Catalog::get_view(txn, &tname)? {
                    return view_source(txn, &view, alias.as_ref(), filter_hint, params);
                }
            }
            let def = Catalog::must_get(txn, &tname)?;
            let alias = alias.as_ref().map(|a| ident(&a.name)).unwrap_or(tname);
            let scope = scope_of(&def, &alias);
            if SHAPE_ONLY.with(|s| s.get()) {
                return Ok(Source { scope, rows: materialized(vec![]), order: vec![] });
            }
            let access = match filter_hint {
                Some(f) => match Binder::new(&scope).bind(f) {
                    Ok(bound) => choose_access(&def, Some(&bound), params)?,
                    Err(_) => Access::Scan,
                },
                None => Access::Scan,
            };
            let order = match access {
                Access::Scan | Access::Range(_, None) => {
                    def.primary_key.iter().copied().take_while(|&c| key_order_is_sql_order(def.columns[c].ty)).collect()
                }
                _ => vec![],
            };
            Ok(Source { scope, rows: stream_rows(txn, &def, access)?, order })
        }
        ast::TableFactor::Table { name, alias, args: Some(targs), .. } => {
            let fname = table_name(name)?;
            if fname != "generate_series" {
                return Err(Error::sql("42883", format!("function {fname}() does not exist")));
            }
            let mut b = Binder::with_txn(&[], txn, params);
            // As in PostgreSQL, integer arguments that are all smallint or integer make
            // an integer series; a bigint (or an untyped parameter) makes a bigint one.
            let mut narrow = true;
            let args = targs
                .args
                .iter()
                .map(|a| match a {
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => {
                        let bound = b.bind(e)?;
                        narrow &= matches!(bound.result_type(&[]), Some(DataType::Int2 | DataType::Int4));
                        bound.eval(&[], params)
                    }
                    other => Err(feature(format!("argument {other}"))),
                })
                .collect::<Result<Vec<_>>>()?;
            let table = alias.as_ref().map(|a| ident(&a.name)).unwrap_or_else(|| fname.clone());
            // As in PostgreSQL, a scalar function's column takes the alias's name when no
            // column alias is given (`FROM generate_series(1, 3) g` has a column g).
            let col = match alias {
                Some(a) => a.columns.first().map(|c| ident(&c.name)).unwrap_or_else(|| ident(&a.name)),
                None => fname.clone(),
            };
            if let [start, stop, Value::Interval(step)] = args.as_slice() {
                let (ty, rows) = time_series(start, stop, *step)?;
                let scope = vec![ScopeCol { table: Some(table), name: col, ty: Some(ty) }];
                return Ok(Source { scope, rows, order: vec![] });
            }
            let int = |v: &Value| match v.clone().cast(DataType::Int8) {
                Ok(Value::Int(i)) => Ok(Some(i)),
                Ok(_) => Ok(None),
                Err(e) => Err(crate::expr::to_sql_err(e)),
            };
            let (start, stop, step) = match args.as_slice() {
                [a, b] => (int(a)?, int(b)?, Some(1)),
                [a, b, c] => (int(a)?, int(b)?, int(c)?),
                _ => return Err(Error::sql("42883", "function generate_series needs 2 or 3 integer arguments")),
            };
            let rows: RowIter = match (start, stop, step) {
                (Some(_), Some(_), Some(0)) => return Err(Error::sql("22023", "step size cannot equal zero")),
                _ if SHAPE_ONLY.with(|s| s.get()) => materialized(vec![]),
                (Some(start), Some(stop), Some(step)) => {
                    // Produced as pulled: the series is never held in memory.
                    let mut next = Some(start);
                    crate::interrupt::rows(Box::new(std::iter::from_fn(move || {
                        let v = next?;
                        if (step > 0 && v > stop) || (step < 0 && v < stop) {
                            return None;
                        }
                        next = v.checked_add(step);
                        Some(Ok(vec![Value::Int(v)]))
                    })))
                }
                _ => materialized(vec![]),
            };
            let ty = if narrow { DataType::Int4 } else { DataType::Int8 };
            let scope = vec![ScopeCol { table: Some(table), name: col, ty: Some(ty) }];
            Ok(Source { scope, rows, order: vec![] })
        }
        ast::TableFactor::Derived { subquery, alias, .. } => {
            let (cols, rows) = run_query(txn, subquery, params)?;
            // `AS v(a, b)` renames the first columns (PostgreSQL: no more than there are).
            let renames: Vec<String> = alias.iter().flat_map(|a| a.columns.iter().map(|c| ident(&c.name))).collect();
            if renames.len() > cols.len() {
                let name = alias.as_ref().map(|a| ident(&a.name)).unwrap_or_default();
                return Err(Error::sql(
                    "42P10",
                    format!(
                        "table \"{name}\" has {} columns available but {} columns specified",
                        cols.len(),
                        renames.len()
                    ),
                ));
            }
            let alias = alias.as_ref().map(|a| ident(&a.name));
            let scope = cols
                .into_iter()
                .enumerate()
                .map(|(i, c)| ScopeCol {
                    table: alias.clone(),
                    name: renames.get(i).cloned().unwrap_or(c.name),
                    ty: c.ty,
                })
                .collect();
            Ok(Source { scope, rows, order: vec![] })
        }
        other => Err(feature(format!("FROM item {other}"))),
    }
}

thread_local! {
    /// Views being expanded on this thread: a view that (through others) reads itself
    /// is an error, not a stack overflow.
    static VIEW_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A view read in FROM: its query, as a derived table named by the alias or the view.
/// A view's result columns (names and types), from a run of its query that reads no
/// rows.
pub(crate) fn view_columns(txn: &mut Transaction, view: &crate::catalog::ViewDef) -> Result<Vec<OutColumn>> {
    let q = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql(&view.query)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| Error::InvalidData(format!("stored query of view {}: {e}", view.name)))?;
    let (mut columns, _) = with_shape_only(true, || query(txn, &q, &[]))?;
    for (c, n) in columns.iter_mut().zip(&view.columns) {
        c.name = n.clone();
    }
    Ok(columns)
}

fn view_source(
    txn: &mut Transaction,
    view: &crate::catalog::ViewDef,
    alias: Option<&ast::TableAlias>,
    filter_hint: Option<&ast::Expr>,
    params: &Params,
) -> Result<Source> {
    let depth = VIEW_DEPTH.with(|d| d.get());
    if depth >= 32 {
        return Err(Error::sql("42P17", format!("infinite recursion detected in view \"{}\"", view.name)));
    }
    let query = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql(&view.query)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| Error::InvalidData(format!("stored query of view {}: {e}", view.name)))?;
    let mut alias = alias.cloned().unwrap_or(ast::TableAlias {
        explicit: true,
        name: ast::Ident::new(view.name.clone()),
        columns: vec![],
        at: None,
    });
    if alias.columns.is_empty() {
        alias.columns = view.columns.iter().map(|c| ast::TableAliasColumnDef::from_name(c.clone())).collect();
    }
    let derived = ast::TableFactor::Derived { lateral: false, subquery: query, alias: Some(alias), sample: None };
    VIEW_DEPTH.with(|d| d.set(depth + 1));
    let out = table_factor(txn, &derived, filter_hint, params);
    VIEW_DEPTH.with(|d| d.set(depth));
    out
}

/// `CREATE [OR REPLACE] VIEW v [(columns)] AS query`: the query is checked (run for its
/// shape only) and stored as text.
pub fn create_view(txn: &mut Transaction, cv: &ast::CreateView) -> Result<Outcome> {
    if cv.materialized || cv.temporary {
        return Err(feature("materialized and temporary views"));
    }
    let name = table_name(&cv.name)?;
    if Catalog::get(txn, &name)?.is_some() {
        return Err(Error::sql("42P07", format!("relation \"{name}\" already exists")));
    }
    if Catalog::get_view(txn, &name)?.is_some() && !cv.or_replace {
        if cv.if_not_exists {
            return Ok(Outcome::Command("CREATE VIEW".into()));
        }
        return Err(Error::sql("42P07", format!("relation \"{name}\" already exists")));
    }
    let view = crate::catalog::ViewDef {
        name,
        query: cv.query.to_string(),
        columns: cv.columns.iter().map(|c| ident(&c.name)).collect(),
    };
    // Stored first, then read for its shape: a definition that reaches itself through
    // other views fails here (42P17) and the failed statement leaves nothing behind.
    Catalog::put_view(txn, &view)?;
    let (columns, _) = with_shape_only(true, || query(txn, &cv.query, &[]))?;
    if cv.columns.len() > columns.len() {
        return Err(Error::sql("42601", "CREATE VIEW specifies more column names than columns"));
    }
    Ok(Outcome::Command("CREATE VIEW".into()))
}

/// `DROP VIEW [IF EXISTS] v [, …]`.
pub fn drop_views(txn: &mut Transaction, names: &[ast::ObjectName], if_exists: bool) -> Result<Outcome> {
    for n in names {
        let name = table_name(n)?;
        match Catalog::get_view(txn, &name)? {
            Some(_) => Catalog::drop_view(txn, &name)?,
            None if if_exists => {}
            None if Catalog::get(txn, &name)?.is_some() => {
                return Err(Error::sql("42809", format!("\"{name}\" is not a view; use DROP TABLE")))
            }
            None => return Err(Error::sql("42P01", format!("view \"{name}\" does not exist"))),
        }
    }
    Ok(Outcome::Command("DROP VIEW".into()))
}

/// `generate_series(start, stop, interval)` over timestamps (a date or untyped start is
/// read as a timestamptz, as PostgreSQL resolves it): each value is the previous one plus the
/// step, so month steps follow the calendar as PostgreSQL's do (Jan 31, Feb 29, Mar 29).
/// Produced as pulled.
fn time_series(start: &Value, stop: &Value, step: crate::interval::Interval) -> Result<(DataType, RowIter)> {
    let ty = match start {
        Value::Timestamp(_) => DataType::Timestamp,
        // A date, or a literal of no stated type: PostgreSQL resolves to timestamptz.
        Value::TimestampTz(_) | Value::Date(_) | Value::Text(_) => DataType::TimestampTz,
        Value::Null => return Ok((DataType::Timestamp, materialized(vec![]))),
        other => {
            return Err(Error::sql(
                "42725",
                format!(
                "function generate_series({}, {}, interval) is not unique; cast the start to timestamp or timestamptz",
                other.type_name(),
                stop.type_name()
            ),
            ))
        }
    };
    let (start, stop) = (start.clone().cast(ty)?, stop.clone().cast(ty)?);
    if stop.is_null() {
        return Ok((ty, materialized(vec![])));
    }
    let direction = step.span().signum();
    if direction == 0 {
        return Err(Error::sql("22023", "step size cannot equal zero"));
    }
    if SHAPE_ONLY.with(|s| s.get()) {
        return Ok((ty, materialized(vec![])));
    }
    let step = Value::Interval(step);
    let mut next: Option<Result<Value>> = Some(Ok(start));
    let rows = std::iter::from_fn(move || {
        let v = match next.take()? {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let past = match v.sql_cmp(&stop) {
            Ok(Some(o)) => (direction > 0 && o == Ordering::Greater) || (direction < 0 && o == Ordering::Less),
            Ok(None) => true,
            Err(e) => return Some(Err(e)),
        };
        if past {
            return None;
        }
        // A step past the timestamp range is the next row's error, as in PostgreSQL.
        next = crate::interval::arith(BinOp::Add, &v, &step).transpose();
        Some(Ok(vec![v]))
    });
    Ok((ty, crate::interrupt::rows(Box::new(rows))))
}

/// Joins two sources: the left streams, the right is collected (nested loop).
/// Pairs of (left, right) expressions that ON/WHERE conditions `conds` (bound over the
/// joined scope, left columns first) require to be equal, for a hash join. Only types
/// whose equal values have equal encodings qualify (integers, text/varchar, booleans,
/// dates, timestamps, bytea — not floats, numerics, intervals or CHAR(n), whose
/// equality is looser than their bytes).
fn equi_keys(conds: &[Expr], lw: usize, scope: &[ScopeCol]) -> (Vec<Expr>, Vec<Expr>) {
    let family = |t: Option<DataType>| t.and_then(DataType::hash_family);
    let side = |e: &Expr| match e.column_span() {
        Some((_, hi)) if hi < lw => Some(false),
        Some((lo, _)) if lo >= lw => Some(true),
        _ => None,
    };
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for c in conds {
        let Expr::Binary(BinOp::Eq, a, b) = c else { continue };
        let (l, r) = match (side(a), side(b)) {
            (Some(false), Some(true)) => (a, b),
            (Some(true), Some(false)) => (b, a),
            _ => continue,
        };
        let fam = family(l.result_type(scope));
        if fam.is_some() && fam == family(r.result_type(scope)) {
            left.push((**l).clone());
            right.push((**r).clone());
        }
    }
    (left, right)
}

fn join(
    left: Source,
    right: Source,
    kind: &ast::JoinOperator,
    params: &Params,
    where_conjuncts: &[ast::Expr],
) -> Result<Source> {
    use ast::JoinOperator as J;
    let (constraint, keep_left, keep_right) = match kind {
        J::Join(c) | J::Inner(c) => (c, false, false),
        J::Left(c) | J::LeftOuter(c) => (c, true, false),
        J::Right(c) | J::RightOuter(c) => (c, false, true),
        J::FullOuter(c) => (c, true, true),
        J::CrossJoin(c) => (c, false, false),
        other => return Err(feature(format!("join {other:?}"))),
    };
    let mut scope = left.scope.clone();
    scope.extend(right.scope.iter().cloned());
    let on = match constraint {
        ast::JoinConstraint::On(e) => Some(Binder::new(&scope).bind(e)?),
        ast::JoinConstraint::None => None,
        other => return Err(feature(format!("join constraint {other:?}"))),
    };
    let (lw, rw) = (left.scope.len(), right.scope.len());
    // Equalities between a left and a right expression make it a hash join: the ON
    // conjuncts, and for inner joins also the WHERE conjuncts that bind here (they
    // filter these rows anyway; the WHERE still runs after).
    let mut conds = Vec::new();
    if let Some(on) = &on {
        conjuncts(on, &mut conds);
    }
    if !keep_left && !keep_right {
        for w in where_conjuncts {
            if let Ok(bound) = Binder::new(&scope).bind(w) {
                conds.push(bound);
            }
        }
    }
    let (left_keys, right_keys) = equi_keys(&conds, lw, &scope);
    // The right side is collected; with join keys, only up to work_mem.
    let budget = spill::work_mem();
    let mut right_rows = Vec::new();
    let mut bytes = 0usize;
    let mut rest = right.rows;
    for r in rest.by_ref() {
        let r = r?;
        bytes += spill::row_bytes(&r);
        right_rows.push(r);
        if bytes > budget && !left_keys.is_empty() {
            // Too large: a grace hash join over partition files (left order is lost).
            let spec = pipeline::JoinSpec {
                left_width: lw,
                right_width: rw,
                right_keys: right_keys.iter().map(|k| k.map_columns(&|i| i - lw)).collect(),
                left_keys,
                on,
                params: params.clone(),
                keep_left,
                keep_right,
                budget,
            };
            let right_all = Box::new(materialized(right_rows).chain(rest));
            let rows = pipeline::grace_join(left.rows, right_all, Arc::new(spec))?;
            return Ok(Source { scope, rows, order: vec![] });
        }
        if bytes > budget {
            // Too large and no keys: the right side goes to a file, read once per block
            // of left rows (left order is lost).
            let mut file = spill::SpillWriter::new()?;
            for r in right_rows.drain(..) {
                file.push(&r)?;
            }
            for r in rest.by_ref() {
                file.push(&r?)?;
            }
            let rows = pipeline::BlockNestedLoop::new(
                left.rows,
                lw,
                file.into_reader()?,
                rw,
                on,
                params.clone(),
                keep_left,
                keep_right,
                budget,
            );
            return Ok(Source { scope, rows: Box::new(rows), order: vec![] });
        }
    }
    let mut rows = pipeline::NestedLoop::new(left.rows, lw, right_rows, rw, on, params.clone(), keep_left, keep_right);
    if !left_keys.is_empty() {
        let shifted: Vec<Expr> = right_keys.iter().map(|k| k.map_columns(&|i| i - lw)).collect();
        rows = rows.hashed(left_keys, &shifted)?;
    }
    // Inner and left joins keep the left side's order (each left row's matches are
    // emitted together, in turn).
    let order = if keep_right { vec![] } else { left.order };
    Ok(Source { scope, rows: Box::new(rows), order })
}

fn from_clause(
    txn: &mut Transaction,
    from: &[ast::TableWithJoins],
    filter: Option<&ast::Expr>,
    params: &Params,
) -> Result<Source> {
    let mut acc: Option<Source> = None;
    let single = from.len() == 1 && from[0].joins.is_empty();
    // WHERE's AND-ed parts, offered to inner joins as hash keys.
    let mut where_conjuncts = Vec::new();
    if let (false, Some(f)) = (single, filter) {
        ast_conjuncts(f, &mut where_conjuncts);
    }
    for twj in from {
        let mut src = table_factor(txn, &twj.relation, if single { filter } else { None }, params)?;
        for j in &twj.joins {
            let right = table_factor(txn, &j.relation, None, params)?;
            src = join(src, right, &j.join_operator, params, &where_conjuncts)?;
        }
        acc = Some(match acc {
            None => src,
            Some(prev) => {
                join(prev, src, &ast::JoinOperator::CrossJoin(ast::JoinConstraint::None), params, &where_conjuncts)?
            }
        });
    }
    Ok(acc.unwrap_or(Source { scope: vec![], rows: materialized(vec![vec![]]), order: vec![] }))
}

/// Whether a select groups its rows: GROUP BY, HAVING, or an aggregate in its list.
fn is_aggregating(select: &ast::Select, group_exprs: &[ast::Expr]) -> bool {
    !group_exprs.is_empty()
        || select.having.is_some()
        || select.projection.iter().any(|p| match p {
            ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => contains_aggregate(e),
            _ => false,
        })
}

pub(crate) fn contains_aggregate(e: &ast::Expr) -> bool {
    match e {
        // `sum(x) OVER (…)` is a window function, not an aggregate of the query.
        ast::Expr::Function(f) if f.over.is_some() => false,
        ast::Expr::Function(f) => {
            AggFunc::from_name(f.name.to_string().to_lowercase().trim_start_matches("pg_catalog.")).is_some()
                || match &f.args {
                    ast::FunctionArguments::List(l) => l.args.iter().any(|a| match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(x)) => contains_aggregate(x),
                        _ => false,
                    }),
                    _ => false,
                }
        }
        ast::Expr::BinaryOp { left, right, .. } => contains_aggregate(left) || contains_aggregate(right),
        ast::Expr::UnaryOp { expr, .. }
        | ast::Expr::Nested(expr)
        | ast::Expr::Cast { expr, .. }
        | ast::Expr::IsNull(expr)
        | ast::Expr::IsNotNull(expr) => contains_aggregate(expr),
        ast::Expr::Case { operand, conditions, else_result, .. } => {
            operand.as_deref().is_some_and(contains_aggregate)
                || conditions.iter().any(|c| contains_aggregate(&c.condition) || contains_aggregate(&c.result))
                || else_result.as_deref().is_some_and(contains_aggregate)
        }
        _ => false,
    }
}

/// Per group: the key values and one accumulator per aggregate. (DISTINCT aggregates
/// get their values de-duplicated before the grouping, see `select`.)
type Group = (Row, Vec<Acc>);

#[derive(Debug, Clone)]
pub(crate) enum Acc {
    CountStar(i64),
    Count(i64),
    Sum(Option<Value>),
    Avg(f64, i64),
    /// avg over integers and numerics is exact, as in PostgreSQL.
    AvgExact(crate::numeric::Numeric, i64, bool),
    Min(Option<Value>),
    Max(Option<Value>),
    /// avg over intervals: their sum and count.
    AvgInterval(crate::interval::Interval, i64),
    /// bool_and (`true`) / bool_or (`false`): the answer so far.
    Bool(Option<bool>, bool),
    /// string_agg: the text so far, and the delimiter.
    StringAgg(Option<String>, Option<Arc<str>>),
    /// Ordered string_agg: the packed inputs (`expr::unpack_ordered`), sorted at the end.
    StringAggOrdered(Vec<Vec<u8>>),
}

impl Acc {
    pub(crate) fn new((f, delimiter): &(AggFunc, Option<Arc<str>>)) -> Acc {
        match *f {
            AggFunc::StringAgg => Acc::StringAgg(None, delimiter.clone()),
            AggFunc::StringAggOrdered => Acc::StringAggOrdered(Vec::new()),
            AggFunc::CountStar => Acc::CountStar(0),
            AggFunc::Count => Acc::Count(0),
            AggFunc::Sum => Acc::Sum(None),
            AggFunc::Avg => Acc::AvgExact(crate::numeric::Numeric::zero(), 0, false),
            AggFunc::Min => Acc::Min(None),
            AggFunc::Max => Acc::Max(None),
            AggFunc::BoolAnd => Acc::Bool(None, true),
            AggFunc::BoolOr => Acc::Bool(None, false),
        }
    }

    pub(crate) fn add(&mut self, v: Value) -> Result<()> {
        if v.is_null() && !matches!(self, Acc::CountStar(_)) {
            return Ok(());
        }
        match self {
            Acc::CountStar(n) | Acc::Count(n) => *n += 1,
            // A running numeric sum grows in place.
            Acc::Sum(Some(Value::Numeric(a))) if matches!(v, Value::Numeric(_) | Value::Int(_)) => match v {
                Value::Numeric(b) => a.add_assign(&b)?,
                Value::Int(b) => a.add_assign(&crate::numeric::Numeric::from(b))?,
                _ => {}
            },
            Acc::Sum(s) => {
                *s = Some(match (s.take(), v) {
                    (None, v @ (Value::Int(_) | Value::Float(_))) => v,
                    (Some(Value::Int(a)), Value::Int(b)) => {
                        Value::Int(a.checked_add(b).ok_or_else(|| Error::sql("22003", "bigint out of range"))?)
                    }
                    (Some(Value::Int(a)), Value::Float(b)) => Value::Float(a as f64 + b),
                    (Some(Value::Float(a)), Value::Int(b)) => Value::Float(a + b as f64),
                    (Some(Value::Float(a)), Value::Float(b)) => Value::Float(a + b),
                    (None, Value::Numeric(d)) => Value::Numeric(d),
                    (Some(Value::Int(a)), Value::Numeric(b)) => {
                        Value::Numeric(b.add(&crate::numeric::Numeric::from(a))?)
                    }
                    (None, Value::Interval(iv)) => Value::Interval(iv),
                    (Some(Value::Interval(a)), Value::Interval(b)) => Value::Interval(a.add(&b)?),
                    (_, v) => {
                        return Err(Error::sql("42883", format!("function sum({}) does not exist", v.type_name())))
                    }
                })
            }
            Acc::AvgExact(_, 0, _) if matches!(v, Value::Interval(_)) => {
                *self = Acc::AvgInterval(crate::interval::Interval::default(), 0);
                return self.add(v);
            }
            Acc::AvgInterval(sum, n) => match v {
                Value::Interval(iv) => {
                    *sum = sum.add(&iv)?;
                    *n += 1;
                }
                other => {
                    return Err(Error::sql("42883", format!("function avg({}) does not exist", other.type_name())))
                }
            },
            Acc::AvgExact(sum, n, inexact) if !*inexact => match v {
                Value::Int(i) => {
                    sum.add_assign(&crate::numeric::Numeric::from(i))?;
                    *n += 1;
                }
                Value::Numeric(d) => {
                    sum.add_assign(&d)?;
                    *n += 1;
                }
                other => {
                    // A float input makes the average a float.
                    let f = sum.to_f64();
                    let count = *n;
                    *self = Acc::Avg(f, count);
                    return self.add(other);
                }
            },
            Acc::AvgExact(..) => {}
            Acc::Avg(s, n) => {
                *s += match v {
                    Value::Int(i) => i as f64,
                    Value::Float(f) => f,
                    v => return Err(Error::sql("42883", format!("function avg({}) does not exist", v.type_name()))),
                };
                *n += 1;
            }
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|cur| v.sort_cmp(cur) == Ordering::Less) {
                    *m = Some(v);
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|cur| v.sort_cmp(cur) == Ordering::Greater) {
                    *m = Some(v);
                }
            }
            Acc::StringAggOrdered(parts) => match v {
                Value::Bytes(b) => parts.push(b),
                other => return Err(Error::Internal(format!("ordered string_agg got {}", other.type_name()))),
            },
            Acc::StringAgg(acc, delimiter) => {
                let text = match v {
                    Value::Text(t) => t,
                    other => {
                        return Err(Error::sql(
                            "42883",
                            format!("function string_agg({}, text) does not exist", other.type_name()),
                        ))
                    }
                };
                match acc {
                    Some(s) => {
                        s.push_str(delimiter.as_deref().unwrap_or(""));
                        s.push_str(&text);
                    }
                    None => *acc = Some(text),
                }
            }
            Acc::Bool(acc, and) => {
                let b = match v {
                    Value::Bool(b) => b,
                    Value::Text(t) => crate::types::parse_bool(&t)?,
                    _ => {
                        let what = if *and { "bool_and" } else { "bool_or" };
                        return Err(Error::sql("42883", format!("function {what}({}) does not exist", v.type_name())));
                    }
                };
                *acc = Some(if *and { acc.unwrap_or(true) && b } else { acc.unwrap_or(false) || b });
            }
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Value {
        match self {
            Acc::CountStar(n) | Acc::Count(n) => Value::Int(n),
            Acc::Sum(s) | Acc::Min(s) | Acc::Max(s) => s.unwrap_or(Value::Null),
            Acc::Bool(b, _) => b.map_or(Value::Null, Value::Bool),
            Acc::StringAgg(s, _) => s.map_or(Value::Null, Value::Text),
            Acc::StringAggOrdered(parts) => ordered_string_agg(parts),
            Acc::Avg(_, 0) | Acc::AvgExact(_, 0, _) | Acc::AvgInterval(_, 0) => Value::Null,
            Acc::AvgInterval(sum, n) => Value::Interval(
                sum.div(n as f64).expect("a sum of valid intervals divided by their count stays in range"),
            ),
            Acc::Avg(s, n) => Value::Float(s / n as f64),
            Acc::AvgExact(sum, n, _) => {
                // PostgreSQL divides the sum by the count at the quotient's usual scale.
                Value::Numeric(
                    sum.div(&crate::numeric::Numeric::from(n))
                        .expect("a sum divided by its non-zero count is no larger and has at most 1000 places"),
                )
            }
        }
    }
}

/// Joins ordered string_agg inputs: a stable sort by their keys (equal keys keep input
/// order), each value after its own delimiter but the first.
fn ordered_string_agg(parts: Vec<Vec<u8>>) -> Value {
    if parts.is_empty() {
        return Value::Null;
    }
    let mut parts: Vec<crate::expr::OrderedPart> = parts
        .iter()
        .map(|p| crate::expr::unpack_ordered(p).expect("ordered string_agg inputs are packed by this statement"))
        .collect();
    parts.sort_by(crate::expr::cmp_ordered);
    let mut out = String::new();
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push_str(p.delimiter.as_deref().unwrap_or(""));
        }
        out.push_str(&p.text);
    }
    Value::Text(out)
}

/// GROUP BY over rows already evaluated to `group keys ++ aggregate arguments`, with
/// memory bounded by `work_mem`: groups met while there is room are folded in memory;
/// rows of other groups go to partition files, each grouped the same way (one level
/// down) after the groups in memory are out. See `spill` for why this terminates.
struct Grouping {
    keys: usize,
    calls: Arc<[(AggFunc, Option<Arc<str>>)]>,
    budget: usize,
    out: std::vec::IntoIter<Row>,
    pending: std::collections::VecDeque<(spill::SpillReader, u32)>,
    failed: bool,
}

impl Grouping {
    fn new(
        input: RowIter,
        keys: usize,
        calls: Arc<[(AggFunc, Option<Arc<str>>)]>,
        budget: usize,
        global: bool,
    ) -> Result<Self> {
        let mut g =
            Self { keys, calls, budget, out: Vec::new().into_iter(), pending: Default::default(), failed: false };
        let mut rows = g.fold_level(input, 0)?;
        if rows.is_empty() && global {
            // An aggregate without GROUP BY has one row even over no input.
            rows.push(g.calls.iter().map(|c| Acc::new(c).finish()).collect());
        }
        g.out = rows.into_iter();
        Ok(g)
    }

    /// Folds `input` into the groups that fit; queues the partitions of the rest.
    fn fold_level(&mut self, input: RowIter, level: u32) -> Result<Vec<Row>> {
        let mut groups: BTreeMap<Vec<u8>, Group> = BTreeMap::new();
        let mut bytes = 0usize;
        let mut spilled = spill::Partitions::new(level);
        for r in input {
            let r = r?;
            let id = row_identity(&r[..self.keys]);
            let room = bytes < self.budget || groups.is_empty();
            let entry = match groups.entry(id) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) if room => {
                    bytes += v.key().len() + spill::row_bytes(&r[..self.keys]) + 64 * self.calls.len() + 64;
                    v.insert((r[..self.keys].to_vec(), self.calls.iter().map(Acc::new).collect()))
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    spilled.push(v.key(), &r)?;
                    continue;
                }
            };
            for (acc, v) in entry.1.iter_mut().zip(r.into_iter().skip(self.keys)) {
                acc.add(v)?;
            }
        }
        let next = spilled.next_level();
        // Depth first (before the partitions still waiting), so open partition files
        // stay ~16 per level rather than 16 per partition split.
        for part in spilled.finish()?.into_iter().rev() {
            self.pending.push_front((part, next));
        }
        Ok(groups
            .into_values()
            .map(|(mut keys, accs)| {
                keys.extend(accs.into_iter().map(Acc::finish));
                keys
            })
            .collect())
    }
}

impl Iterator for Grouping {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(r) = self.out.next() {
                return Some(Ok(r));
            }
            let (part, level) = self.pending.pop_front()?;
            match self.fold_level(Box::new(part), level) {
                Ok(rows) => self.out = rows.into_iter(),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

pub(crate) fn agg_type(call: &AggCall, scope: &[ScopeCol]) -> Option<DataType> {
    match call.func {
        AggFunc::CountStar | AggFunc::Count => Some(DataType::Int8),
        AggFunc::Avg => match call.arg.as_ref().and_then(|a| a.result_type(scope)) {
            Some(DataType::Float4 | DataType::Float8) => Some(DataType::Float8),
            Some(DataType::Interval) => Some(DataType::Interval),
            _ => Some(DataType::Numeric(None)),
        },
        AggFunc::Sum => match call.arg.as_ref().and_then(|a| a.result_type(scope)) {
            Some(DataType::Float4 | DataType::Float8) => Some(DataType::Float8),
            Some(DataType::Interval) => Some(DataType::Interval),
            Some(DataType::Numeric(_)) => Some(DataType::Numeric(None)),
            _ => Some(DataType::Int8),
        },
        // PostgreSQL has no min/max for varchar: the text ones apply.
        AggFunc::Min | AggFunc::Max => match call.arg.as_ref().and_then(|a| a.result_type(scope)) {
            Some(DataType::Varchar(_)) => Some(DataType::Text),
            other => other,
        },
        AggFunc::BoolAnd | AggFunc::BoolOr => Some(DataType::Bool),
        AggFunc::StringAgg | AggFunc::StringAggOrdered => Some(DataType::Text),
    }
}

fn output_name(item: &ast::Expr) -> String {
    match item {
        ast::Expr::Identifier(i) => ident(i),
        ast::Expr::CompoundIdentifier(parts) => parts.last().map(ident).unwrap_or_default(),
        ast::Expr::Function(f) => f.name.to_string().to_lowercase(),
        ast::Expr::Cast { expr, data_type, .. } => match expr.as_ref() {
            ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) => output_name(expr),
            _ => DataType::parse(&data_type.to_string()).map(|t| t.pg_name()).unwrap_or_else(|_| "?column?".into()),
        },
        ast::Expr::Nested(e) => output_name(e),
        ast::Expr::Case { .. } => "case".into(),
        _ => "?column?".into(),
    }
}

/// Runs a query: its columns and its rows, produced as they are pulled (see the module
/// documentation for what is collected on the way).
pub fn query(txn: &mut Transaction, q: &ast::Query, params: &[Value]) -> Result<(Vec<OutColumn>, RowIter)> {
    run_query(txn, q, &Params::from(params))
}

/// Runs a query and collects its rows.
pub fn query_all(txn: &mut Transaction, q: &ast::Query, params: &[Value]) -> Result<(Vec<OutColumn>, Vec<Row>)> {
    let (columns, rows) = query(txn, q, params)?;
    Ok((columns, rows.collect::<Result<_>>()?))
}

fn run_query(txn: &mut Transaction, q: &ast::Query, params: &Params) -> Result<(Vec<OutColumn>, RowIter)> {
    if let Some(r) = crate::cte::recursive_parts(q)? {
        return recursive_rows(txn, r, params);
    }
    if q.with.is_some() {
        return run_query(txn, &crate::cte::inline(q)?, params);
    }
    let (offset, limit) = limits(q, params)?;
    let top = limit.map(|l| l.saturating_add(offset));
    let (columns, rows) = match q.body.as_ref() {
        // A plain SELECT sorts inside its own pipeline (ORDER BY may use input columns).
        ast::SetExpr::Select(s) => select_rows(txn, s, q.order_by.as_ref(), top, params)?,
        other => {
            let (columns, rows) = set_expr_rows(txn, other, params)?;
            let rows = order_output(q.order_by.as_ref(), &columns, rows, top)?;
            (columns, rows)
        }
    };
    if offset == 0 && limit.is_none() {
        return Ok((columns, rows));
    }
    Ok((columns, pipeline::limit(rows, offset, limit)))
}

/// `SELECT * FROM <name>`, to be filled in (CTE rewrites build queries around it).
pub(crate) fn star_from(name: ast::Ident) -> ast::Query {
    let mut q = *sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql("SELECT * FROM x")
        .and_then(|mut p| p.parse_query())
        .expect("a fixed, valid query");
    if let ast::SetExpr::Select(s) = q.body.as_mut() {
        if let Some(ast::TableFactor::Table { name: n, .. }) = s.from.first_mut().map(|f| &mut f.relation) {
            *n = ast::ObjectName(vec![ast::ObjectNamePart::Identifier(name)]);
        }
    }
    q
}

/// Evaluates a recursive CTE (see [`crate::cte`]): the anchor's rows, then the
/// recursive term's over the rows of the previous iteration, until one adds none.
fn recursive_rows(
    txn: &mut Transaction,
    r: crate::cte::Recursive<'_>,
    params: &Params,
) -> Result<(Vec<OutColumn>, RowIter)> {
    let (mut columns, anchor) = set_expr_rows(txn, r.anchor, params)?;
    if !r.columns.is_empty() {
        if r.columns.len() > columns.len() {
            return Err(Error::sql(
                "42P10",
                format!(
                    "WITH query \"{}\" has {} columns available but {} columns specified",
                    r.name,
                    columns.len(),
                    r.columns.len()
                ),
            ));
        }
        for (c, n) in columns.iter_mut().zip(&r.columns) {
            c.name = n.clone();
        }
    }
    let flag = crate::interrupt::current();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut result = crate::spill::RowStore::new();
    let mut working = crate::spill::RowStore::new();
    let mut add = |row: Row, result: &mut crate::spill::RowStore, working: &mut crate::spill::RowStore| -> Result<()> {
        crate::interrupt::check(&flag)?;
        if !r.all && !seen.insert(row_identity(&row)) {
            return Ok(());
        }
        result.push(row.clone())?;
        working.push(row)
    };
    for row in anchor {
        add(row?, &mut result, &mut working)?;
    }
    let shape: Vec<(String, Option<DataType>)> = columns.iter().map(|c| (c.name.clone(), c.ty)).collect();
    while !working.is_empty() {
        let rows = std::mem::replace(&mut working, crate::spill::RowStore::new()).into_rows()?;
        let _published = crate::cte::Working::publish(&r.working, shape.clone(), rows);
        let (step_columns, rows) = set_expr_rows(txn, &r.step, params)?;
        if step_columns.len() != columns.len() {
            return Err(Error::sql("42601", "each UNION query must have the same number of columns"));
        }
        for row in rows {
            // Values take the anchor's column types, as the CTE's columns have them.
            let row = row?
                .into_iter()
                .zip(&columns)
                .map(|(v, c)| match c.ty {
                    Some(ty) => v.cast(ty).map_err(crate::expr::to_sql_err),
                    None => Ok(v),
                })
                .collect::<Result<Row>>()?;
            add(row, &mut result, &mut working)?;
        }
    }
    Ok((columns, result.into_rows()?))
}

fn values_rows(txn: &mut Transaction, v: &ast::Values, params: &Params) -> Result<(Vec<OutColumn>, RowIter)> {
    let mut rows = Vec::new();
    for r in &v.rows {
        let mut b = Binder::with_txn(&[], txn, params);
        rows.push(r.content.iter().map(|e| b.bind(e)?.eval(&[], params)).collect::<Result<Row>>()?);
    }
    let width = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != width) {
        return Err(Error::sql("42601", "VALUES lists must all be the same length"));
    }
    let columns = (0..width)
        .map(|i| OutColumn { name: format!("column{}", i + 1), ty: rows.iter().find_map(|r| r[i].natural_type()) })
        .collect();
    Ok((columns, materialized(rows)))
}

/// Evaluates a query body without the query-level ORDER BY / LIMIT.
fn set_expr_rows(txn: &mut Transaction, e: &ast::SetExpr, params: &Params) -> Result<(Vec<OutColumn>, RowIter)> {
    match e {
        ast::SetExpr::Select(s) => select_rows(txn, s, None, None, params),
        ast::SetExpr::Query(q) => run_query(txn, q, params),
        ast::SetExpr::Values(v) => values_rows(txn, v, params),
        ast::SetExpr::SetOperation { left, op, set_quantifier, right } => {
            let (mut columns, left) = set_expr_rows(txn, left, params)?;
            let (rcols, right) = set_expr_rows(txn, right, params)?;
            let name = match op {
                ast::SetOperator::Union => "UNION",
                ast::SetOperator::Intersect => "INTERSECT",
                ast::SetOperator::Except | ast::SetOperator::Minus => "EXCEPT",
            };
            if columns.len() != rcols.len() {
                return Err(Error::sql("42601", format!("each {name} query must have the same number of columns")));
            }
            for (c, r) in columns.iter_mut().zip(&rcols) {
                if c.ty.is_none() {
                    c.ty = r.ty;
                }
            }
            let all = match set_quantifier {
                ast::SetQuantifier::All => true,
                ast::SetQuantifier::Distinct | ast::SetQuantifier::None => false,
                other => return Err(feature(format!("{name} {other}"))),
            };
            let rows: RowIter = match op {
                ast::SetOperator::Union => Box::new(left.chain(right)),
                ast::SetOperator::Intersect | ast::SetOperator::Except | ast::SetOperator::Minus => {
                    // The right side is counted (to work_mem, then partitioned); the left
                    // streams past the counts.
                    let intersect = matches!(op, ast::SetOperator::Intersect);
                    spill::intersect_except(left, right, intersect, all, spill::work_mem())?
                }
            };
            let rows = if all { rows } else { spill::distinct(rows, usize::MAX, spill::work_mem()) };
            Ok((columns, rows))
        }
        other => Err(feature(format!("query {other}"))),
    }
}

/// ORDER BY over output columns only (set operations, VALUES).
fn order_output(
    order_by: Option<&ast::OrderBy>,
    columns: &[OutColumn],
    rows: RowIter,
    top: Option<usize>,
) -> Result<RowIter> {
    let Some(ob) = order_by else { return Ok(rows) };
    let ast::OrderByKind::Expressions(list) = &ob.kind else { return Err(feature("ORDER BY ALL")) };
    let mut keys = Vec::new();
    for o in list {
        let pos = match &o.expr {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => {
                    n.parse::<usize>().ok().filter(|k| *k >= 1 && *k <= columns.len()).map(|k| k - 1)
                }
                _ => None,
            },
            ast::Expr::Identifier(i) => columns.iter().position(|c| c.name == ident(i)),
            _ => None,
        }
        .ok_or_else(|| {
            Error::sql("0A000", format!("ORDER BY \"{}\" must name an output column of this query", o.expr))
        })?;
        let desc = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
        keys.push((pos, desc, o.options.nulls_first.unwrap_or(desc)));
    }
    spill::sort(rows, &keys, top, spill::work_mem())
}

fn select_rows(
    txn: &mut Transaction,
    select: &ast::Select,
    order_by: Option<&ast::OrderBy>,
    top: Option<usize>,
    params: &Params,
) -> Result<(Vec<OutColumn>, RowIter)> {
    if let Some(rewritten) = crate::srf::rewrite(select)? {
        return select_rows(txn, &rewritten, order_by, top, params);
    }
    // Windows over a grouped query: the grouping goes into a derived table first.
    if let ast::GroupByExpr::Expressions(groups, mods) = &select.group_by {
        let aggregate = is_aggregating(select, groups);
        if mods.is_empty() && aggregate {
            let groups: Vec<ast::Expr> =
                groups.iter().map(|g| group_item(g.clone(), &select.projection, &[])).collect::<Result<_>>()?;
            if let Some((outer, outer_order)) = crate::window::split_grouped(select, order_by, &groups, aggregate)? {
                return select_rows(txn, &outer, outer_order.as_ref(), top, params);
            }
        }
    }
    let mut source = from_clause(txn, &select.from, select.selection.as_ref(), params)?;
    let mut rows = std::mem::replace(&mut source.rows, materialized(vec![]));
    if let Some(w) = &select.selection {
        let mut b = Binder::with_txn(&source.scope, txn, params);
        let pred = b.bind(w)?;
        let correlated = std::mem::take(&mut b.correlated);
        if correlated.is_empty() {
            let p = params.clone();
            rows = pipeline::filter(rows, move |r| pred.matches(r, &p));
        } else {
            // Correlated subqueries run in this transaction, so they run now.
            let mut kept = Vec::new();
            for r in rows {
                let r = r?;
                let mut extended = r.clone();
                extended.extend(crate::expr::eval_correlated(txn, &correlated, &source.scope, &r, params)?);
                if pred.matches(&extended, params)? {
                    kept.push(r);
                }
            }
            rows = materialized(kept);
        }
    }
    let group_exprs = match &select.group_by {
        ast::GroupByExpr::Expressions(e, mods) if mods.is_empty() => e.clone(),
        other => return Err(feature(format!("GROUP BY {other}"))),
    };
    let aggregate = is_aggregating(select, &group_exprs);
    // Window calls become columns appended to the rows, named by their text (`window`).
    let source_width = source.scope.len();
    let windows = crate::window::calls_in(select, order_by);
    if !windows.is_empty() {
        if aggregate {
            return Err(feature(
                "window functions in a query with GROUP BY or aggregates (compute the aggregates in a subquery)",
            ));
        }
        let calls = crate::window::bind(&windows, &source.scope)?;
        source.scope.extend(calls.iter().map(|c| ScopeCol { table: None, name: c.text.clone(), ty: c.ty }));
        rows = crate::window::apply(rows, calls, source_width, params.clone())?;
        source.order.clear();
    }

    // Select items (expanded wildcards) as (sqlparser expr or direct column, name).
    enum Item<'a> {
        Ast(&'a ast::Expr, String),
        Col(usize),
    }
    let mut items = Vec::new();
    for p in &select.projection {
        match p {
            ast::SelectItem::UnnamedExpr(e) => items.push(Item::Ast(e, output_name(e))),
            ast::SelectItem::ExprWithAlias { expr, alias } => items.push(Item::Ast(expr, ident(alias))),
            ast::SelectItem::Wildcard(_) if !aggregate => items.extend((0..source_width).map(Item::Col)),
            ast::SelectItem::QualifiedWildcard(kind, _) if !aggregate => {
                let t = kind.to_string().to_lowercase();
                let before = items.len();
                items.extend(
                    source
                        .scope
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.table.as_deref() == Some(t.as_str()))
                        .map(|(i, _)| Item::Col(i)),
                );
                if items.len() == before {
                    return Err(Error::sql("42P01", format!("missing FROM-clause entry for table \"{t}\"")));
                }
            }
            other => return Err(feature(format!("select item {other}"))),
        }
    }
    if items.is_empty() && !select.from.is_empty() && select.projection.is_empty() {
        return Err(Error::sql("42601", "SELECT list is empty"));
    }

    let mut projection_correlated: Vec<crate::expr::Correlated> = Vec::new();
    // GROUP BY 2 and GROUP BY <output alias> name select items, as in PostgreSQL.
    let group_exprs: Vec<ast::Expr> =
        group_exprs.into_iter().map(|g| group_item(g, &select.projection, &source.scope)).collect::<Result<_>>()?;
    let mut agg_binding =
        AggBinding { group_texts: group_exprs.iter().map(|e| e.to_string()).collect(), calls: vec![] };
    let (in_scope, mut exprs, mut columns, having) = if aggregate {
        let mut exprs = Vec::new();
        let mut names = Vec::new();
        for it in &items {
            if let Item::Ast(e, name) = it {
                let mut b = Binder::aggregating(&source.scope, &mut agg_binding);
                exprs.push(b.bind(e)?);
                names.push(name.clone());
            }
        }
        let having = match &select.having {
            Some(h) => Some(Binder::aggregating(&source.scope, &mut agg_binding).bind(h)?),
            None => None,
        };
        // The scope after aggregation: group keys then aggregates.
        let mut gb = Binder::new(&source.scope);
        let group_bound: Vec<Expr> = group_exprs.iter().map(|g| gb.bind(g)).collect::<Result<_>>()?;
        let mut agg_scope: Vec<ScopeCol> = group_bound
            .iter()
            .zip(&agg_binding.group_texts)
            .map(|(g, t)| ScopeCol { table: None, name: t.clone(), ty: g.result_type(&source.scope) })
            .collect();
        agg_scope.extend(agg_binding.calls.iter().map(|c| ScopeCol {
            table: None,
            name: c.text.clone(),
            ty: agg_type(c, &source.scope),
        }));
        // Group: input rows stream through; memory holds one entry per group, up to
        // work_mem (then rows of further groups are partitioned to disk, see `spill`).
        let p = params.clone();
        // DISTINCT aggregates see their values de-duplicated per group by the spilling
        // DISTINCT stage before the grouping, so no group holds a set of values: memory
        // stays within work_mem however many values there are. When every aggregate is
        // DISTINCT over one and the same argument (count(DISTINCT x), or with
        // sum/avg(DISTINCT x) beside it), the (group, value) rows themselves are made
        // distinct. Otherwise each input row becomes a plain row (the other aggregates'
        // arguments; count(*) counts a marker) that passes the stage untouched, plus one
        // row per DISTINCT argument (its value in its aggregates' columns, NULL in the
        // rest) that the stage de-duplicates; every aggregate skips the NULLs.
        let distinct_first = agg_binding.calls.first().is_some_and(|first| {
            let arg = format!("{:?}", first.arg);
            agg_binding.calls.iter().all(|c| c.distinct && c.arg.is_some() && format!("{:?}", c.arg) == arg)
        });
        let mixed = !distinct_first && agg_binding.calls.iter().any(|c| c.distinct && c.arg.is_some());
        // Per aggregate: the DISTINCT argument class it belongs to (1, 2, …; 0: none).
        let mut class_of: Vec<usize> = Vec::new();
        let mut class_args: Vec<String> = Vec::new();
        for c in &agg_binding.calls {
            class_of.push(match (c.distinct && c.arg.is_some(), mixed) {
                (true, true) => {
                    let arg = format!("{:?}", c.arg);
                    match class_args.iter().position(|a| *a == arg) {
                        Some(i) => i + 1,
                        None => {
                            class_args.push(arg);
                            class_args.len()
                        }
                    }
                }
                _ => 0,
            });
        }
        let calls: Arc<[(AggFunc, Option<Arc<str>>)]> = agg_binding
            .calls
            .iter()
            .map(|c| match c.func {
                AggFunc::CountStar if mixed => (AggFunc::Count, None),
                f => (f, c.delimiter.clone()),
            })
            .collect();
        let width = group_exprs.len() + agg_binding.calls.len();
        let count_star: Vec<bool> = agg_binding.calls.iter().map(|c| c.func == AggFunc::CountStar).collect();
        let args: Vec<Option<Expr>> = agg_binding.calls.iter().map(|c| c.arg.clone()).collect();
        let evaluated = pipeline::map(rows, move |r| {
            let mut out: Row = group_bound.iter().map(|g| g.eval(&r, &p)).collect::<Result<_>>()?;
            for a in &args {
                out.push(match a {
                    Some(a) => a.eval(&r, &p)?,
                    None => Value::Null,
                });
            }
            Ok(out)
        });
        let evaluated = if distinct_first {
            spill::distinct(evaluated, width, spill::work_mem())
        } else if mixed {
            let keys = group_exprs.len();
            let classes = class_args.len();
            // (group, argument, value) triples already sent to the DISTINCT stage, up to
            // a quarter of work_mem: most repeats are dropped here, before a row is
            // built for them (the stage would drop them anyway; this only saves work).
            let mut sent: HashSet<Vec<u8>> = HashSet::new();
            let mut sent_bytes = 0usize;
            let sent_cap = spill::work_mem() / 4;
            let split: RowIter = Box::new(evaluated.flat_map(move |r| -> Vec<Result<Row>> {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => return vec![Err(e)],
                };
                let mut out = Vec::with_capacity(1 + classes);
                for class in 1..=classes {
                    let Some(i) = class_of.iter().position(|&c| c == class) else { continue };
                    if r[keys + i].is_null() {
                        continue;
                    }
                    let id = r[..keys]
                        .iter()
                        .chain([&Value::Int(class as i64), &r[keys + i]])
                        .fold(KeyEncoder::new(), |e, v| v.encode_key(e))
                        .finish();
                    if sent.contains(&id) {
                        continue;
                    }
                    if sent_bytes < sent_cap {
                        sent_bytes += id.len() + 48;
                        sent.insert(id);
                    }
                    let mut row = r[..keys].to_vec();
                    row.extend(class_of.iter().enumerate().map(|(j, &c)| {
                        if c == class {
                            r[keys + j].clone()
                        } else {
                            Value::Null
                        }
                    }));
                    row.push(Value::Int(class as i64));
                    out.push(Ok(row));
                }
                let mut plain = r;
                for (j, &c) in class_of.iter().enumerate() {
                    if c != 0 {
                        plain[keys + j] = Value::Null;
                    } else if plain[keys + j].is_null() && count_star[j] {
                        plain[keys + j] = Value::Int(1);
                    }
                }
                plain.push(Value::Int(0));
                out.push(Ok(plain));
                out
            }));
            let passes: spill::Passes = Box::new(|r: &[Value]| matches!(r.last(), Some(Value::Int(0))));
            spill::distinct_some(split, width + 1, spill::work_mem(), Some(passes))
        } else {
            evaluated
        };
        rows = Box::new(Grouping::new(evaluated, group_exprs.len(), calls, spill::work_mem(), group_exprs.is_empty())?);
        let columns: Vec<OutColumn> =
            names.into_iter().zip(&exprs).map(|(name, e)| OutColumn { name, ty: e.result_type(&agg_scope) }).collect();
        (agg_scope, exprs, columns, having)
    } else {
        let mut exprs = Vec::new();
        let mut columns = Vec::new();
        let mut b = Binder::with_txn(&source.scope, txn, params);
        b.correlated = std::mem::take(&mut projection_correlated);
        for it in &items {
            match it {
                Item::Ast(e, name) => {
                    let bound = b.bind(e)?;
                    columns.push(OutColumn { name: name.clone(), ty: bound.result_type(&source.scope) });
                    exprs.push(bound);
                }
                Item::Col(i) => {
                    columns.push(OutColumn { name: source.scope[*i].name.clone(), ty: source.scope[*i].ty });
                    exprs.push(Expr::Column(*i));
                }
            }
        }
        projection_correlated = std::mem::take(&mut b.correlated);
        (source.scope.clone(), exprs, columns, None)
    };
    if let Some(h) = having {
        let p = params.clone();
        rows = pipeline::filter(rows, move |r| h.matches(r, &p));
    }
    // ORDER BY keys that are not output columns are computed as hidden columns.
    let visible = exprs.len();
    let mut order_keys: Vec<SortKey> = Vec::new();
    if let Some(ob) = order_by {
        let ast::OrderByKind::Expressions(list) = &ob.kind else { return Err(feature("ORDER BY ALL")) };
        for o in list {
            let desc = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
            let nulls_first = o.options.nulls_first.unwrap_or(desc);
            let pos = match &o.expr {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::Number(n, _) => {
                        let k: usize =
                            n.parse().map_err(|_| Error::sql("42601", format!("invalid ORDER BY position {n}")))?;
                        if k == 0 || k > visible {
                            return Err(Error::sql("42P10", format!("ORDER BY position {k} is not in select list")));
                        }
                        Some(k - 1)
                    }
                    _ => None,
                },
                ast::Expr::Identifier(i) => columns.iter().position(|c| c.name == ident(i)),
                _ => None,
            };
            let pos = match pos {
                Some(p) => p,
                None => {
                    let bound = if aggregate {
                        Binder::aggregating(&source.scope, &mut agg_binding).bind(&o.expr)?
                    } else {
                        Binder::new(&in_scope).bind(&o.expr)?
                    };
                    exprs.push(bound);
                    exprs.len() - 1
                }
            };
            order_keys.push((pos, desc, nulls_first));
        }
    }
    if aggregate && agg_binding.calls.len() + agg_binding.group_texts.len() > in_scope.len() {
        return Err(feature("an aggregate that appears only in ORDER BY"));
    }
    // The rows already come in this order when every key is the next key column of a
    // table scan, ascending (key columns are never NULL).
    let presorted = !aggregate
        && order_keys.len() <= source.order.len()
        && order_keys.iter().zip(&source.order).all(|(&(pos, desc, nulls_first), &col)| {
            !desc && !nulls_first && matches!(exprs[pos], Expr::Column(c) if c == col)
        });
    let hidden = exprs.len() > visible;
    rows = if projection_correlated.is_empty() {
        let p = params.clone();
        pipeline::map(rows, move |r| exprs.iter().map(|e| e.eval(&r, &p)).collect())
    } else {
        // Correlated subqueries run in this transaction, so they run now.
        let mut out = Vec::new();
        for r in rows {
            let r = r?;
            let mut extended = r.clone();
            extended.extend(crate::expr::eval_correlated(txn, &projection_correlated, &in_scope, &r, params)?);
            out.push(exprs.iter().map(|e| e.eval(&extended, params)).collect::<Result<_>>()?);
        }
        materialized(out)
    };
    match &select.distinct {
        None | Some(ast::Distinct::All) => {}
        Some(ast::Distinct::Distinct) => {
            rows = spill::distinct(rows, visible, spill::work_mem());
        }
        Some(ast::Distinct::On(_)) => return Err(feature("DISTINCT ON")),
    }
    if !order_keys.is_empty() && !presorted {
        rows = spill::sort(rows, &order_keys, top, spill::work_mem())?;
    }
    if hidden {
        rows = pipeline::map(rows, move |mut r| {
            r.truncate(visible);
            Ok(r)
        });
    }
    columns.truncate(visible);
    Ok((columns, rows))
}

/// A GROUP BY item: a select-list position or an output column's alias stands for that
/// select item's expression; anything else is itself (an input column name wins over
/// an alias, as in PostgreSQL).
fn group_item(g: ast::Expr, projection: &[ast::SelectItem], scope: &[ScopeCol]) -> Result<ast::Expr> {
    let item_expr = |p: &ast::SelectItem| match p {
        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => Some(e.clone()),
        _ => None,
    };
    match &g {
        ast::Expr::Value(v) => {
            let ast::Value::Number(n, _) = &v.value else { return Ok(g) };
            let k: usize = n.parse().map_err(|_| Error::sql("42601", format!("invalid GROUP BY position {n}")))?;
            k.checked_sub(1)
                .and_then(|i| projection.get(i))
                .and_then(item_expr)
                .ok_or_else(|| Error::sql("42P10", format!("GROUP BY position {k} is not in select list")))
        }
        ast::Expr::Identifier(i) if !scope.iter().any(|c| c.name == ident(i)) => Ok(projection
            .iter()
            .find_map(|p| match p {
                ast::SelectItem::ExprWithAlias { expr, alias } if ident(alias) == ident(i) => Some(expr.clone()),
                _ => None,
            })
            .unwrap_or(g)),
        _ => Ok(g),
    }
}

/// The query's OFFSET and LIMIT (evaluated before any row is read).
fn limits(q: &ast::Query, params: &Params) -> Result<(usize, Option<usize>)> {
    let eval_count = |e: &ast::Expr| -> Result<Option<usize>> {
        let v = Binder::new(&[]).bind(e)?.eval(&[], params)?;
        match v {
            Value::Null => Ok(None),
            Value::Int(i) if i >= 0 => Ok(Some(i as usize)),
            _ => Err(Error::sql("2201W", "LIMIT/OFFSET must not be negative")),
        }
    };
    let Some(lc) = &q.limit_clause else { return Ok((0, None)) };
    let (limit, offset) = match lc {
        ast::LimitClause::LimitOffset { limit, offset, limit_by } if limit_by.is_empty() => (
            limit.as_ref().map(eval_count).transpose()?.flatten(),
            offset.as_ref().map(|o| eval_count(&o.value)).transpose()?.flatten(),
        ),
        ast::LimitClause::OffsetCommaLimit { offset, limit } => (eval_count(limit)?, eval_count(offset)?),
        other => return Err(feature(format!("{other}"))),
    };
    Ok((offset.unwrap_or(0), limit))
}

/// Stores a new row (COPY): fills NULL-valued non-target columns with their defaults,
/// checks types, NOT NULL and the primary key, and buffers the write.
pub(crate) fn store_new_row(txn: &mut Transaction, def: &TableDef, targets: &[usize], mut row: Row) -> Result<()> {
    // COPY writes GENERATED ALWAYS identity columns it is given, as PostgreSQL's does.
    fill_defaults(txn, def, targets, &mut row, true)?;
    let row = conform(def, row)?;
    let rowid = if def.primary_key.is_empty() { Some(Catalog::next_rowid(txn, def)?) } else { None };
    let key = def.row_key(&row, rowid);
    if rowid.is_none() && txn.get(&key)?.is_some() {
        return Err(duplicate_key(def, &row));
    }
    write_row(txn, def, None, Some((&key, &row)))
}

/// Resolves COPY's table and column list.
pub(crate) fn copy_target(
    txn: &mut Transaction,
    name: &ast::ObjectName,
    columns: &[ast::Ident],
) -> Result<(TableDef, Vec<usize>)> {
    let def = Catalog::must_get(txn, &table_name(name)?)?;
    let targets = if columns.is_empty() {
        (0..def.columns.len()).collect()
    } else {
        columns
            .iter()
            .map(|c| {
                let n = ident(c);
                def.column_index(&n).ok_or_else(|| {
                    Error::sql("42703", format!("column \"{n}\" of relation \"{}\" does not exist", def.name))
                })
            })
            .collect::<Result<_>>()?
    };
    Ok((def, targets))
}

/// Writes a row change and keeps every index in step: `old` is the row currently
/// stored under `old_key` (None for an insert), `new` the row to store under `new_key`
/// (None for a delete). Unique indexes are checked before anything is buffered.
fn write_row(
    txn: &mut Transaction,
    def: &TableDef,
    old: Option<(&[u8], &[Value])>,
    new: Option<(&[u8], &[Value])>,
) -> Result<()> {
    for index in &def.indexes {
        let old_entry = old.map(|(k, r)| def.index_key(index, r, k));
        let new_entry = new.map(|(k, r)| def.index_key(index, r, k));
        if old_entry == new_entry {
            continue;
        }
        if let (Some((_, row)), true) = (new, index.unique) {
            let values: Vec<Value> = index.columns.iter().map(|&c| row[c].clone()).collect();
            // NULLs are distinct from each other, as in PostgreSQL.
            if !values.iter().any(Value::is_null) {
                let prefix = def.index_prefix(index, &values);
                let clash = txn
                    .scan(amberdb_storage::KeyRange::prefix(&prefix))
                    .map(|kv| kv.map(|(k, _)| k))
                    .find(|k| !matches!(k, Ok(k) if Some(k) == old_entry.as_ref()));
                if let Some(k) = clash {
                    k?;
                    let cols: Vec<&str> = index.columns.iter().map(|&c| def.columns[c].name.as_str()).collect();
                    let vals: Vec<String> = values.iter().map(|v| v.to_pg_text(None).unwrap_or_default()).collect();
                    return Err(Error::sql(
                        "23505",
                        format!(
                            "duplicate key value violates unique constraint \"{}\": Key ({})=({}) already exists.",
                            index.name,
                            cols.join(", "),
                            vals.join(", ")
                        ),
                    ));
                }
            }
        }
        if let Some(e) = old_entry {
            txn.delete(e)?;
        }
        if let Some(e) = new_entry {
            txn.put(e, Vec::new())?;
        }
    }
    match (old, new) {
        (Some((ok, _)), Some((nk, _))) if ok != nk => txn.delete(ok.to_vec())?,
        (Some((ok, _)), None) => txn.delete(ok.to_vec())?,
        _ => {}
    }
    if let Some((nk, row)) = new {
        txn.put(nk.to_vec(), def.encode_row(row))?;
    }
    Ok(())
}

/// Gives the columns a new row does not name their defaults (an identity column its
/// next value), and refuses explicit values for `GENERATED ALWAYS` identity columns.
fn fill_defaults(
    txn: &mut Transaction,
    def: &TableDef,
    targets: &[usize],
    row: &mut Row,
    overriding: bool,
) -> Result<()> {
    for (i, c) in def.columns.iter().enumerate() {
        let named = targets.contains(&i);
        match c.identity {
            Some(identity) if !named => row[i] = Value::Int(Catalog::next_identity(txn, def, identity)?),
            Some(identity) if identity.always && !overriding => {
                return Err(Error::sql(
                    "428C9",
                    format!(
                        "cannot insert a non-DEFAULT value into column \"{}\": it is an identity column defined as GENERATED ALWAYS",
                        c.name
                    ),
                ))
            }
            _ if !named => row[i] = default_value(c)?,
            _ => {}
        }
    }
    Ok(())
}

/// Evaluates a column's DEFAULT expression.
pub(crate) fn default_value(col: &Column) -> Result<Value> {
    match &col.default {
        None => Ok(Value::Null),
        Some(sql) => {
            let e = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                .try_with_sql(sql)
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| Error::InvalidData(format!("stored default for column {}: {e}", col.name)))?;
            Binder::new(&[]).bind(&e)?.eval(&[], &[])
        }
    }
}

/// Casts and checks a full row for storage into `def`.
fn conform(def: &TableDef, row: Row) -> Result<Row> {
    row.into_iter()
        .zip(&def.columns)
        .map(|(v, c)| {
            let v = v.cast(c.ty).map_err(crate::expr::to_sql_err)?;
            if v.is_null() && !c.nullable {
                return Err(Error::sql(
                    "23502",
                    format!(
                        "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                        c.name, def.name
                    ),
                ));
            }
            Ok(v)
        })
        .collect()
}

fn returning(
    def: &TableDef,
    items: &Option<Vec<ast::SelectItem>>,
    rows: &[Row],
    params: &[Value],
    tag: String,
) -> Result<Outcome> {
    let Some(items) = items else { return Ok(Outcome::Command(tag)) };
    let scope = scope_of(def, &def.name);
    let mut exprs = Vec::new();
    let mut columns = Vec::new();
    let mut b = Binder::new(&scope);
    for it in items {
        match it {
            ast::SelectItem::Wildcard(_) => {
                for (i, c) in def.columns.iter().enumerate() {
                    exprs.push(Expr::Column(i));
                    columns.push(OutColumn { name: c.name.clone(), ty: Some(c.ty) });
                }
            }
            ast::SelectItem::UnnamedExpr(e) => {
                let x = b.bind(e)?;
                columns.push(OutColumn { name: output_name(e), ty: x.result_type(&scope) });
                exprs.push(x);
            }
            ast::SelectItem::ExprWithAlias { expr, alias } => {
                let x = b.bind(expr)?;
                columns.push(OutColumn { name: ident(alias), ty: x.result_type(&scope) });
                exprs.push(x);
            }
            other => return Err(feature(format!("RETURNING {other}"))),
        }
    }
    let out =
        rows.iter().map(|r| exprs.iter().map(|e| e.eval(r, params)).collect::<Result<Row>>()).collect::<Result<_>>()?;
    Ok(Outcome::Rows { columns, rows: materialized(out), tag })
}

fn duplicate_key(def: &TableDef, row: &[Value]) -> Error {
    let cols: Vec<&str> = def.primary_key.iter().map(|&i| def.columns[i].name.as_str()).collect();
    let values: Vec<Value> = def.primary_key.iter().map(|&i| row[i].clone()).collect();
    Error::sql(
        "23505",
        format!(
            "duplicate key value violates unique constraint \"{}\": Key ({})=({}) already exists.",
            def.pkey_name(),
            cols.join(", "),
            display_values(&values)
        ),
    )
}

/// INSERT.
pub fn insert(txn: &mut Transaction, ins: &ast::Insert, params: &[Value]) -> Result<Outcome> {
    let ast::TableObject::TableName(name) = &ins.table else { return Err(feature("INSERT into a table function")) };
    let def = Catalog::must_get(txn, &table_name(name)?)?;
    let targets: Vec<usize> = if ins.columns.is_empty() {
        (0..def.columns.len()).collect()
    } else {
        ins.columns
            .iter()
            .map(|c| {
                let n = c.to_string().trim_matches('"').to_string();
                let n = if c.to_string().starts_with('"') { n } else { n.to_lowercase() };
                def.column_index(&n).ok_or_else(|| {
                    Error::sql("42703", format!("column \"{n}\" of relation \"{}\" does not exist", def.name))
                })
            })
            .collect::<Result<_>>()?
    };
    // `DEFAULT` in a VALUES list: that cell takes the column's default (NULL stands in
    // for it while the rows are evaluated). `DEFAULT VALUES`: one row of defaults.
    let mut defaulted: Vec<Vec<usize>> = Vec::new();
    let (_, input) = match ins.source.as_deref() {
        None => (Vec::new(), materialized(vec![Vec::new()])),
        Some(source) => {
            let mut source = source.clone();
            if let (ast::SetExpr::Values(values), None, None) =
                (source.body.as_mut(), &source.order_by, &source.limit_clause)
            {
                for row in values.rows.iter_mut() {
                    let mut at = Vec::new();
                    for (i, cell) in row.iter_mut().enumerate() {
                        if matches!(cell, ast::Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
                        {
                            *cell = ast::Expr::Value(ast::Value::Null.into());
                            at.push(i);
                        }
                    }
                    defaulted.push(at);
                }
            }
            // The input streams: its scans read the statement's snapshot, so rows written
            // here are not read back (INSERT INTO t SELECT … FROM t inserts each row once).
            query(txn, &source, params)?
        }
    };
    let (do_nothing, do_update) = match &ins.on {
        None => (false, None),
        Some(ast::OnInsert::OnConflict(oc)) => match &oc.action {
            ast::OnConflictAction::DoNothing => (true, None),
            ast::OnConflictAction::DoUpdate(u) => (false, Some(u)),
        },
        Some(other) => return Err(feature(format!("{other}"))),
    };
    // Inserted rows are kept only for RETURNING; otherwise counted (a large INSERT …
    // SELECT held every row it wrote a second time, for nothing).
    let (mut written, mut count) = (Vec::new(), 0u64);
    let keep = ins.returning.is_some();
    for (n, vals) in input.enumerate() {
        let vals = vals?;
        if vals.len() > targets.len() {
            return Err(Error::sql("42601", "INSERT has more expressions than target columns"));
        }
        if vals.len() < targets.len() && !ins.columns.is_empty() && ins.source.is_some() {
            return Err(Error::sql("42601", "INSERT has more target columns than expressions"));
        }
        let mut row: Row = vec![Value::Null; def.columns.len()];
        // The columns given a value: as many targets as values, less DEFAULT cells.
        let skip = defaulted.get(n).map(Vec::as_slice).unwrap_or(&[]);
        let named: Vec<usize> =
            targets.iter().take(vals.len()).enumerate().filter(|(i, _)| !skip.contains(i)).map(|(_, &t)| t).collect();
        for (v, &t) in vals.into_iter().zip(&targets) {
            row[t] = v;
        }
        fill_defaults(txn, &def, &named, &mut row, false)?;
        let row = conform(&def, row)?;
        let rowid = if def.primary_key.is_empty() { Some(Catalog::next_rowid(txn, &def)?) } else { None };
        let key = def.row_key(&row, rowid);
        if rowid.is_none() {
            if let Some(existing) = txn.get(&key)? {
                if do_nothing {
                    continue;
                }
                let Some(u) = do_update else { return Err(duplicate_key(&def, &row)) };
                // ON CONFLICT DO UPDATE: `excluded` refers to the proposed row.
                let old = def.decode_row(&existing)?;
                let mut scope = scope_of(&def, &def.name);
                scope.extend(def.columns.iter().map(|c| ScopeCol {
                    table: Some("excluded".into()),
                    name: c.name.clone(),
                    ty: Some(c.ty),
                }));
                let mut both = old.clone();
                both.extend(row.iter().cloned());
                if let Some(sel) = &u.selection {
                    if !Binder::new(&scope).bind(sel)?.matches(&both, params)? {
                        continue;
                    }
                }
                let mut new = old.clone();
                apply_assignments(&def, &scope, &u.assignments, &both, &mut new, params)?;
                let new = conform(&def, new)?;
                if def.row_key(&new, None) != key {
                    return Err(feature("ON CONFLICT DO UPDATE that changes the primary key"));
                }
                write_row(txn, &def, Some((&key, &old)), Some((&key, &new)))?;
                count += 1;
                if keep {
                    written.push(new);
                }
                continue;
            }
        }
        write_row(txn, &def, None, Some((&key, &row)))?;
        count += 1;
        if keep {
            written.push(row);
        }
    }
    let tag = format!("INSERT 0 {count}");
    returning(&def, &ins.returning, &written, params, tag)
}

fn apply_assignments(
    def: &TableDef,
    scope: &[ScopeCol],
    assignments: &[ast::Assignment],
    input: &[Value],
    out: &mut Row,
    params: &[Value],
) -> Result<()> {
    let mut b = Binder::new(scope);
    for a in assignments {
        let ast::AssignmentTarget::ColumnName(col) = &a.target else { return Err(feature("tuple assignment")) };
        let name = match col.0.last() {
            Some(ast::ObjectNamePart::Identifier(i)) => ident(i),
            _ => return Err(Error::sql("42703", format!("column \"{col}\" does not exist"))),
        };
        let idx = def.column_index(&name).ok_or_else(|| {
            Error::sql("42703", format!("column \"{name}\" of relation \"{}\" does not exist", def.name))
        })?;
        out[idx] = b.bind(&a.value)?.eval(input, params)?;
    }
    Ok(())
}

fn target_table(txn: &mut Transaction, twj: &ast::TableWithJoins) -> Result<(TableDef, String)> {
    if !twj.joins.is_empty() {
        return Err(feature("UPDATE/DELETE with joins"));
    }
    match &twj.relation {
        ast::TableFactor::Table { name, alias, .. } => {
            let tname = table_name(name)?;
            let def = Catalog::must_get(txn, &tname)?;
            let alias = alias.as_ref().map(|a| ident(&a.name)).unwrap_or(tname);
            Ok((def, alias))
        }
        other => Err(feature(format!("UPDATE/DELETE target {other}"))),
    }
}

/// Whether a statement certainly finishes quickly: it reads or writes rows by their
/// whole primary key, or inserts a short VALUES list, and has no subquery. The session
/// runs such statements on the async worker; every other one moves off it first
/// (`block_in_place`), which costs a thread hand-off that a point statement should not
/// pay. Conservative: anything unsure is "not brief"; a statement that would fail
/// (unknown table, bad expression) is brief, as it fails at once.
pub fn runs_briefly(txn: &mut Transaction, stmt: &ast::Statement, params: &[Value]) -> bool {
    let subqueries = stmt.to_string().matches("SELECT").count();
    match stmt {
        ast::Statement::Query(q) => {
            let ast::SetExpr::Select(sel) = q.body.as_ref() else { return false };
            let plain = subqueries == 1
                && q.with.is_none()
                && sel.from.len() == 1
                && sel.from[0].joins.is_empty()
                && sel.distinct.is_none()
                && sel.having.is_none()
                && matches!(&sel.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
                && !sel.projection.iter().any(|p| match p {
                    ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => {
                        contains_aggregate(e)
                    }
                    _ => false,
                });
            plain && by_key(txn, &sel.from[0], sel.selection.as_ref(), params)
        }
        ast::Statement::Update(u) => {
            subqueries == 0 && u.from.is_none() && by_key(txn, &u.table, u.selection.as_ref(), params)
        }
        ast::Statement::Delete(d) => {
            let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &d.from;
            match from.as_slice() {
                [twj] if subqueries == 0 && d.using.is_none() => by_key(txn, twj, d.selection.as_ref(), params),
                _ => false,
            }
        }
        ast::Statement::Insert(i) => {
            subqueries == 0
                && matches!(i.source.as_deref().map(|q| q.body.as_ref()),
                    Some(ast::SetExpr::Values(v)) if v.rows.len() <= 1000)
        }
        _ => false,
    }
}

/// Whether `selection` over the table of `twj` fixes its whole primary key.
fn by_key(txn: &mut Transaction, twj: &ast::TableWithJoins, selection: Option<&ast::Expr>, params: &[Value]) -> bool {
    let ast::TableFactor::Table { args: None, .. } = &twj.relation else { return false };
    let Ok((def, alias)) = target_table(txn, twj) else { return true };
    let scope = scope_of(&def, &alias);
    let Some(selection) = selection else { return false };
    let Ok(pred) = Binder::new(&scope).bind(selection) else { return true };
    matches!(choose_access(&def, Some(&pred), params), Ok(Access::Key(_)) | Err(_))
}

/// The rows of `def` an UPDATE or DELETE's WHERE selects, produced as they are used, so
/// a statement over a large table stops at the write-set limit instead of first
/// reading everything (the scans own a snapshot of the transaction's writes taken now:
/// rows this statement writes are not met again).
fn matching_rows(
    txn: &mut Transaction,
    def: &TableDef,
    scope: &[ScopeCol],
    selection: &Option<ast::Expr>,
    params: &[Value],
) -> Result<StoredRows> {
    let pred = selection.as_ref().map(|s| Binder::with_txn(scope, txn, params).bind(s)).transpose()?;
    let access = choose_access(def, pred.as_ref(), params)?;
    let rows: StoredRows = match access {
        Access::Scan => scan_stored(txn, def, def.rows_range()),
        Access::Range(range, None) => scan_stored(txn, def, range),
        Access::Index(i, values) => {
            let prefix = def.index_prefix(&def.indexes[i], &values);
            index_stored(txn, def, i, amberdb_storage::KeyRange::prefix(&prefix))?
        }
        Access::Range(range, Some(i)) => index_stored(txn, def, i, range)?,
        Access::Key(pk) => Box::new(read_key(txn, def, pk)?.into_iter().map(Ok)),
    };
    let params: Params = params.into();
    Ok(Box::new(rows.filter_map(move |r| match r {
        Ok(r) => match pred.as_ref().map_or(Ok(true), |p| p.matches(&r.row, &params)) {
            Ok(true) => Some(Ok(r)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        },
        Err(e) => Some(Err(e)),
    })))
}

/// Stored rows, produced on demand.
type StoredRows = Box<dyn Iterator<Item = Result<StoredRow>> + Send>;

/// The rows of a key range, with their keys, as a lazy scan.
pub(crate) fn scan_stored(txn: &mut Transaction, def: &TableDef, range: amberdb_storage::KeyRange) -> StoredRows {
    let def = def.clone();
    let flag = crate::interrupt::current();
    Box::new(txn.scan(range).map(move |kv| {
        crate::interrupt::check(&flag)?;
        let (key, raw) = kv?;
        Ok(StoredRow { row: def.decode_row(&raw)?, key })
    }))
}

/// UPDATE.
pub fn update(txn: &mut Transaction, up: &ast::Update, params: &[Value]) -> Result<Outcome> {
    if up.from.is_some() {
        return Err(feature("UPDATE ... FROM"));
    }
    let (def, alias) = target_table(txn, &up.table)?;
    let scope = scope_of(&def, &alias);
    let rows = matching_rows(txn, &def, &scope, &up.selection, params)?;
    // New rows are kept only for RETURNING; otherwise counted.
    let (mut written, mut count) = (Vec::new(), 0u64);
    for r in rows {
        let r = r?;
        let mut new = r.row.clone();
        apply_assignments(&def, &scope, &up.assignments, &r.row, &mut new, params)?;
        let new = conform(&def, new)?;
        let key = if def.primary_key.is_empty() { r.key.clone() } else { def.row_key(&new, None) };
        if key != r.key && txn.get(&key)?.is_some() {
            return Err(duplicate_key(&def, &new));
        }
        write_row(txn, &def, Some((&r.key, &r.row)), Some((&key, &new)))?;
        count += 1;
        if up.returning.is_some() {
            written.push(new);
        }
    }
    let tag = format!("UPDATE {count}");
    returning(&def, &up.returning, &written, params, tag)
}

/// DELETE.
pub fn delete(txn: &mut Transaction, del: &ast::Delete, params: &[Value]) -> Result<Outcome> {
    let from = match &del.from {
        ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
    };
    let [twj] = from.as_slice() else { return Err(feature("DELETE from several tables")) };
    if del.using.is_some() {
        return Err(feature("DELETE ... USING"));
    }
    let (def, alias) = target_table(txn, twj)?;
    let scope = scope_of(&def, &alias);
    let rows = matching_rows(txn, &def, &scope, &del.selection, params)?;
    let (mut deleted, mut count) = (Vec::new(), 0u64);
    for r in rows {
        let r = r?;
        write_row(txn, &def, Some((&r.key, &r.row)), None)?;
        count += 1;
        if del.returning.is_some() {
            deleted.push(r.row);
        }
    }
    let tag = format!("DELETE {count}");
    returning(&def, &del.returning, &deleted, params, tag)
}

/// CREATE TABLE.
pub fn create_table(txn: &mut Transaction, ct: &ast::CreateTable, params: &[Value]) -> Result<Outcome> {
    let name = table_name(&ct.name)?;
    if Catalog::get(txn, &name)?.is_some() || Catalog::get_view(txn, &name)?.is_some() {
        if ct.if_not_exists {
            let tag = if ct.query.is_some() { "CREATE TABLE AS" } else { "CREATE TABLE" };
            return Ok(Outcome::Command(tag.into()));
        }
        return Err(Error::sql("42P07", format!("relation \"{name}\" already exists")));
    }
    if ct.like.is_some() || ct.clone.is_some() {
        return Err(feature("CREATE TABLE … LIKE / CLONE"));
    }
    if let Some(q) = &ct.query {
        return create_table_as(txn, name, &ct.columns, q, params);
    }
    let mut columns: Vec<Column> = Vec::new();
    let mut pk: Vec<usize> = Vec::new();
    let mut pk_name: Option<String> = None;
    let mut unique_sets: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    for c in &ct.columns {
        let counter = columns.len() as u64 + 1;
        let (col, keys) = column_def(c, counter, &name)?;
        if columns.iter().any(|x| x.name == col.name) {
            return Err(Error::sql("42701", format!("column \"{}\" specified more than once", col.name)));
        }
        if keys.unique {
            unique_sets.push((None, vec![columns.len()]));
        }
        if keys.primary_key {
            if !pk.is_empty() {
                return Err(Error::sql("42P16", format!("multiple primary keys for table \"{name}\" are not allowed")));
            }
            pk.push(columns.len());
        }
        columns.push(col);
    }
    for tc in &ct.constraints {
        match tc {
            ast::TableConstraint::PrimaryKey(p) => {
                if !pk.is_empty() {
                    return Err(Error::sql(
                        "42P16",
                        format!("multiple primary keys for table \"{name}\" are not allowed"),
                    ));
                }
                pk = key_columns(&columns, &p.columns, "PRIMARY KEY", None)?;
                pk.iter().for_each(|&i| columns[i].nullable = false);
                pk_name = p.name.as_ref().map(ident);
            }
            ast::TableConstraint::Unique(u) => {
                unique_sets.push((u.name.as_ref().map(ident), key_columns(&columns, &u.columns, "UNIQUE", None)?));
            }
            other => return Err(feature(format!("table constraint {other}"))),
        }
    }
    if columns.is_empty() {
        return Err(feature("a table without columns"));
    }
    let mut def = TableDef { primary_key: pk, primary_key_name: pk_name, ..TableDef::new(name, columns) };
    if !def.primary_key.is_empty() {
        ensure_relation_name_free(txn, &def.pkey_name(), None)?;
    }
    for (given, cols) in unique_sets {
        let iname = given.unwrap_or_else(|| unique_name(&def, &cols));
        ensure_relation_name_free(txn, &iname, Some(&def))?;
        let id = def.indexes.len() as u64 + 1;
        def.indexes.push(IndexDef { id, name: iname, columns: cols, unique: true });
    }
    Catalog::create(txn, def)?;
    Ok(Outcome::Command("CREATE TABLE".into()))
}

/// Inline key constraints of a column definition.
#[derive(Default)]
pub(crate) struct InlineKeys {
    pub(crate) primary_key: bool,
    pub(crate) unique: bool,
}

/// A column from its definition in CREATE TABLE or ALTER TABLE ADD COLUMN: the type
/// (serial types become integer identity columns), NULL/NOT NULL, DEFAULT, identity
/// (counter number `counter`), and its inline PRIMARY KEY / UNIQUE.
pub(crate) fn column_def(c: &ast::ColumnDef, counter: u64, table: &str) -> Result<(Column, InlineKeys)> {
    // serial types: an integer identity column, NOT NULL (PostgreSQL's serial is a
    // sequence default; here it is an identity counter, see `Catalog::next_identity`).
    let spelled = c.data_type.to_string().to_ascii_lowercase();
    let serial = match spelled.as_str() {
        "serial" | "serial4" => Some(DataType::Int4),
        "bigserial" | "serial8" => Some(DataType::Int8),
        "smallserial" | "serial2" => Some(DataType::Int2),
        _ => None,
    };
    let ty = match serial {
        Some(t) => t,
        None => DataType::parse(&spelled).map_err(crate::expr::to_sql_err)?,
    };
    let identity = serial.map(|_| crate::catalog::Identity { always: false, counter });
    let mut col = Column { name: ident(&c.name), ty, nullable: identity.is_none(), default: None, identity };
    let mut keys = InlineKeys::default();
    for o in &c.options {
        if apply_column_option(&mut col, &o.option)? {
            continue;
        }
        match &o.option {
            ast::ColumnOption::Generated {
                generated_as: generated @ (ast::GeneratedAs::Always | ast::GeneratedAs::ByDefault),
                generation_expr: None,
                ..
            } => {
                if !col.ty.is_integer() {
                    return Err(Error::sql(
                        "22023",
                        format!("identity column type must be smallint, integer, or bigint (column \"{}\")", col.name),
                    ));
                }
                if col.identity.is_some() {
                    return Err(Error::sql(
                        "42601",
                        format!("multiple identity specifications for column \"{}\"", col.name),
                    ));
                }
                col.identity =
                    Some(crate::catalog::Identity { always: matches!(generated, ast::GeneratedAs::Always), counter });
                col.nullable = false;
            }
            ast::ColumnOption::Unique(_) => keys.unique = true,
            ast::ColumnOption::PrimaryKey(_) => {
                if keys.primary_key {
                    return Err(Error::sql(
                        "42P16",
                        format!("multiple primary keys for table \"{table}\" are not allowed"),
                    ));
                }
                keys.primary_key = true;
                col.nullable = false;
            }
            other => return Err(feature(format!("column option {other}"))),
        }
    }
    if col.identity.is_some() && col.default.is_some() {
        return Err(Error::sql(
            "42601",
            format!("both default and identity specified for column \"{}\" of table \"{table}\"", col.name),
        ));
    }
    Ok((col, keys))
}

/// `CREATE TABLE t [(names)] AS query`: a table (hidden row ids, no constraints) with
/// the query's column names and types (unknown ones as text), filled with its rows as
/// they are produced, in the statement's transaction (staged past the buffer).
fn create_table_as(
    txn: &mut Transaction,
    name: String,
    named: &[ast::ColumnDef],
    q: &ast::Query,
    params: &[Value],
) -> Result<Outcome> {
    let (out, rows) = query(txn, q, params)?;
    if named.len() > out.len() {
        return Err(Error::sql("42601", "too many column names were specified"));
    }
    let mut columns: Vec<Column> = Vec::with_capacity(out.len());
    for (i, c) in out.iter().enumerate() {
        let cname = named.get(i).map(|d| ident(&d.name)).unwrap_or_else(|| c.name.clone());
        if columns.iter().any(|x| x.name == cname) {
            return Err(Error::sql("42701", format!("column \"{cname}\" specified more than once")));
        }
        let ty = c.ty.unwrap_or(DataType::Text);
        columns.push(Column { name: cname, ty, nullable: true, default: None, identity: None });
    }
    let def = Catalog::create(txn, TableDef::new(name, columns))?;
    let mut n = 0u64;
    for row in rows {
        let row = conform(&def, row?)?;
        n += 1;
        txn.put(def.row_key(&row, Some(n)), def.encode_row(&row))?;
    }
    if n > 0 {
        Catalog::set_rowid(txn, &def, n)?;
    }
    Ok(Outcome::Command(format!("SELECT {n}")))
}

/// PostgreSQL's name for a UNIQUE constraint's index: `<table>_<columns>_key`.
pub(crate) fn unique_name(def: &TableDef, cols: &[usize]) -> String {
    let cols: Vec<&str> = cols.iter().map(|&c| def.columns[c].name.as_str()).collect();
    format!("{}_{}_key", def.name, cols.join("_"))
}

/// The column positions a PRIMARY KEY or UNIQUE constraint names (`table`: the table
/// an ALTER TABLE adds it to, named in PostgreSQL's error for a missing column).
pub(crate) fn key_columns(
    columns: &[Column],
    named: &[ast::IndexColumn],
    what: &str,
    table: Option<&str>,
) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for ic in named {
        let ast::Expr::Identifier(i) = &ic.column.expr else {
            return Err(feature(format!("expression in {what}")));
        };
        let n = ident(i);
        let pos = columns.iter().position(|c| c.name == n).ok_or_else(|| match table {
            Some(t) => Error::sql("42703", format!("column \"{n}\" of relation \"{t}\" does not exist")),
            None => Error::sql("42703", format!("column \"{n}\" named in key does not exist")),
        })?;
        if out.contains(&pos) {
            return Err(Error::sql("42701", format!("column \"{n}\" appears twice in {what} constraint")));
        }
        out.push(pos);
    }
    Ok(out)
}

/// Fails if a table or index named `name` exists (they share one namespace).
pub(crate) fn ensure_relation_name_free(txn: &mut Transaction, name: &str, pending: Option<&TableDef>) -> Result<()> {
    let taken = Catalog::get(txn, name)?.is_some()
        || Catalog::get_view(txn, name)?.is_some()
        || Catalog::list(txn)?
            .iter()
            .chain(pending)
            .any(|t| t.indexes.iter().any(|i| i.name == name) || (!t.primary_key.is_empty() && t.pkey_name() == name));
    if taken {
        return Err(Error::sql("42P07", format!("relation \"{name}\" already exists")));
    }
    Ok(())
}

/// CREATE [UNIQUE] INDEX: adds the index and fills it from the existing rows.
pub fn create_index(txn: &mut Transaction, ci: &ast::CreateIndex) -> Result<Outcome> {
    let mut def = Catalog::must_get(txn, &table_name(&ci.table_name)?)?;
    if ci.predicate.is_some() || !ci.include.is_empty() {
        return Err(feature("partial or covering indexes"));
    }
    let columns = ci
        .columns
        .iter()
        .map(|ic| match &ic.column.expr {
            ast::Expr::Identifier(i) => {
                let n = ident(i);
                def.column_index(&n).ok_or_else(|| Error::sql("42703", format!("column \"{n}\" does not exist")))
            }
            other => Err(feature(format!("index on expression {other}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let name = match &ci.name {
        Some(n) => table_name(n)?,
        None => format!(
            "{}_{}_idx",
            def.name,
            columns.iter().map(|&c| def.columns[c].name.as_str()).collect::<Vec<_>>().join("_")
        ),
    };
    if let Err(e) = ensure_relation_name_free(txn, &name, None) {
        if ci.if_not_exists {
            return Ok(Outcome::Command("CREATE INDEX".into()));
        }
        return Err(e);
    }
    add_index(txn, &mut def, name, columns, ci.unique)?;
    Catalog::put(txn, &def)?;
    Ok(Outcome::Command("CREATE INDEX".into()))
}

/// Adds an index (its name already checked free) to `def`, filled from the rows.
pub(crate) fn add_index(
    txn: &mut Transaction,
    def: &mut TableDef,
    name: String,
    columns: Vec<usize>,
    unique: bool,
) -> Result<()> {
    let id = def.indexes.iter().map(|i| i.id).max().unwrap_or(0) + 1;
    let index = IndexDef { id, name, columns, unique };
    fill_index(txn, def, &index)?;
    def.indexes.push(index);
    Ok(())
}

/// Writes `index`'s entry for every row of the table, then, for a unique index, checks
/// that no two entries share non-NULL values. The check reads the new entries back in
/// order (equal values are adjacent), so memory stays bounded whatever the table's size.
pub(crate) fn fill_index(txn: &mut Transaction, def: &TableDef, index: &IndexDef) -> Result<()> {
    for r in scan_stored(txn, def, def.rows_range()) {
        let r = r?;
        txn.put(def.index_key(index, &r.row, &r.key), Vec::new())?;
    }
    if index.unique {
        check_unique(txn, def, index, &index.name)?;
    }
    Ok(())
}

/// Fails with PostgreSQL's error if two entries of `index` share non-NULL values
/// (`constraint` names the unique index being created).
pub(crate) fn check_unique(txn: &mut Transaction, def: &TableDef, index: &IndexDef, constraint: &str) -> Result<()> {
    let flag = crate::interrupt::current();
    let mut previous: Option<Vec<u8>> = None;
    for kv in txn.scan(def.index_range(index)) {
        crate::interrupt::check(&flag)?;
        let (entry, _) = kv?;
        let mut d = amberdb_encoding::keycode::KeyDecoder::new(&entry);
        d.tag()?;
        d.u64()?;
        d.u64()?;
        let mut values = Vec::with_capacity(index.columns.len());
        for &c in &index.columns {
            values.push(Value::decode_key(&mut d, def.columns[c].ty)?);
        }
        let encoded = entry[..entry.len() - d.remaining().len()].to_vec();
        // NULLs are distinct from each other, as in PostgreSQL.
        if values.iter().any(Value::is_null) {
            continue;
        }
        if previous.as_ref() == Some(&encoded) {
            return Err(duplicated(constraint, def, &index.columns, &values));
        }
        previous = Some(encoded);
    }
    Ok(())
}

/// PostgreSQL's error for a unique index (or primary key) that cannot be built because
/// two rows share `values` in columns `columns`.
pub(crate) fn duplicated(constraint: &str, def: &TableDef, columns: &[usize], values: &[Value]) -> Error {
    let cols: Vec<&str> = columns.iter().map(|&c| def.columns[c].name.as_str()).collect();
    Error::sql(
        "23505",
        format!(
            "could not create unique index \"{constraint}\": Key ({})=({}) is duplicated.",
            cols.join(", "),
            display_values(values)
        ),
    )
}

/// Values as PostgreSQL lists them in a key's error detail.
pub(crate) fn display_values(values: &[Value]) -> String {
    values.iter().map(|v| v.to_pg_text(None).unwrap_or_else(|| "null".into())).collect::<Vec<_>>().join(", ")
}

/// Deletes every key in `range` (the entries of a dropped index).
pub(crate) fn delete_range(txn: &mut Transaction, range: amberdb_storage::KeyRange) -> Result<()> {
    let keys: Vec<Vec<u8>> = txn.scan(range).map(|kv| kv.map(|(k, _)| k)).collect::<Result<_>>()?;
    for k in keys {
        txn.delete(k)?;
    }
    Ok(())
}

/// DROP INDEX.
pub fn drop_indexes(txn: &mut Transaction, names: &[ast::ObjectName], if_exists: bool) -> Result<Outcome> {
    for n in names {
        let name = table_name(n)?;
        let owner = Catalog::list(txn)?.into_iter().find(|t| t.indexes.iter().any(|i| i.name == name));
        let Some(mut def) = owner else {
            if if_exists {
                continue;
            }
            return Err(Error::sql("42704", format!("index \"{name}\" does not exist")));
        };
        let pos =
            def.indexes.iter().position(|i| i.name == name).ok_or_else(|| Error::Internal("index vanished".into()))?;
        let index = def.indexes.remove(pos);
        delete_range(txn, def.index_range(&index))?;
        Catalog::put(txn, &def)?;
    }
    Ok(Outcome::Command("DROP INDEX".into()))
}

/// Applies NULL / NOT NULL / DEFAULT to `col`; false for any other option (the caller
/// decides). A default must be a constant expression of the column's type, checked now.
pub(crate) fn apply_column_option(col: &mut Column, option: &ast::ColumnOption) -> Result<bool> {
    match option {
        ast::ColumnOption::NotNull => col.nullable = false,
        ast::ColumnOption::Null => col.nullable = true,
        ast::ColumnOption::Default(e) => {
            Binder::new(&[]).bind(e)?.eval(&[], &[])?.cast(col.ty).map_err(crate::expr::to_sql_err)?;
            col.default = Some(e.to_string());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `TRUNCATE [TABLE] t [, …]`: each table keeps its definition (columns, indexes) under
/// a new table id, and its old id is dropped — one small commit whatever the size, the
/// old rows collected later like a dropped table's. Unlike PostgreSQL's, it is MVCC-safe:
/// transactions reading an older snapshot (and `AS OF SYSTEM TIME`) still see the rows,
/// and a concurrent writer of the table conflicts (40001) on its catalog entry.
pub fn truncate_tables(txn: &mut Transaction, t: &ast::Truncate) -> Result<Outcome> {
    if t.cascade == Some(ast::CascadeOption::Cascade) {
        return Err(Error::sql("0A000", "TRUNCATE … CASCADE is not supported (there are no foreign keys)"));
    }
    let mut seen = std::collections::HashSet::new();
    for target in &t.table_names {
        let name = table_name(&target.name)?;
        if !seen.insert(name.clone()) {
            continue;
        }
        match Catalog::get(txn, &name)? {
            Some(def) => {
                Catalog::drop_table(txn, &def)?;
                let new = Catalog::create(txn, def.clone())?;
                if t.identity != Some(ast::TruncateIdentityOption::Restart) {
                    Catalog::copy_identities(txn, &def, &new)?;
                }
            }
            None if t.if_exists => {}
            None => return Err(Error::sql("42P01", format!("relation \"{name}\" does not exist"))),
        }
    }
    Ok(Outcome::Command("TRUNCATE TABLE".into()))
}

/// DROP TABLE.
pub fn drop_tables(txn: &mut Transaction, names: &[ast::ObjectName], if_exists: bool) -> Result<Outcome> {
    for n in names {
        let name = table_name(n)?;
        match Catalog::get(txn, &name)? {
            Some(def) => Catalog::drop_table(txn, &def)?,
            None if Catalog::get_view(txn, &name)?.is_some() => {
                return Err(Error::sql("42809", format!("\"{name}\" is not a table; use DROP VIEW")))
            }
            None if if_exists => {}
            None => return Err(Error::sql("42P01", format!("table \"{name}\" does not exist"))),
        }
    }
    Ok(Outcome::Command("DROP TABLE".into()))
}
