//! Expressions: binding sqlparser's AST to column positions, and evaluation with SQL's
//! three-valued logic.

use crate::pipeline::RowIter;
use crate::types::{DataType, Value};
use crate::valueset::ValueSet;
use amberdb_error::{Error, Result};
use sqlparser::ast;
use std::cmp::Ordering;

/// A column visible to an expression.
#[derive(Debug, Clone)]
pub struct ScopeCol {
    /// The table (or alias) it comes from, if any.
    pub table: Option<String>,
    /// Its name.
    pub name: String,
    /// Its type, when known.
    pub ty: Option<DataType>,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `||`
    Concat,
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `~`, `~*`, `!~`, `!~*`: (negated, case-insensitive)
    Regex(bool, bool),
}

/// Lists shorter than this are scanned; longer ones are looked up by encoded value.
const IN_SET_MIN: usize = 16;

/// `lhs [NOT] IN (values)`: a hashed lookup when the list is long and every value and
/// `lhs` are of one type whose equal values encode equally; the list otherwise.
fn in_values(lhs: Expr, values: Vec<Value>, negated: bool, scope: &[ScopeCol]) -> Expr {
    let family = lhs.result_type(scope).and_then(DataType::hash_family);
    let uniform = family.is_some() && values.iter().all(|v| v.is_null() || v.hash_family() == family);
    if values.len() < IN_SET_MIN || !uniform {
        return Expr::InList(Box::new(lhs), values.into_iter().map(Expr::Const).collect(), negated);
    }
    let has_null = values.iter().any(Value::is_null);
    let set =
        values.iter().filter(|v| !v.is_null()).map(|v| crate::exec::row_identity(std::slice::from_ref(v))).collect();
    Expr::InSet { expr: Box::new(lhs), set: std::sync::Arc::new(ValueSet::Memory(set)), has_null, negated }
}

/// `lhs [NOT] IN (subquery)` for an uncorrelated subquery whose result `rows` (one
/// column) is being read: held as constants while it fits in `work_mem`, past that
/// sorted into a set on disk (see `valueset.rs`). A result whose values do not all
/// encode like `lhs`'s type (compared by casting, value by value) stays in memory.
fn in_subquery_rows(lhs: Expr, rows: RowIter, negated: bool, scope: &[ScopeCol]) -> Result<Expr> {
    let budget = crate::spill::work_mem();
    let family = lhs.result_type(scope).and_then(DataType::hash_family);
    let uniform = move |v: &Value| v.is_null() || (family.is_some() && v.hash_family() == family);
    let mut rows = rows;
    let mut values = Vec::new();
    let mut bytes = 0usize;
    let mut all_uniform = true;
    for r in rows.by_ref() {
        let v = r?.into_iter().next().unwrap_or(Value::Null);
        bytes += crate::spill::row_bytes(std::slice::from_ref(&v));
        all_uniform &= uniform(&v);
        values.push(v);
        if bytes > budget && all_uniform {
            break;
        }
    }
    if bytes <= budget || !all_uniform {
        // Read to the end (a mixed-type result is held whole: its values compare by
        // casting, one by one).
        for r in rows {
            values.push(r?.into_iter().next().unwrap_or(Value::Null));
        }
        return Ok(in_values(lhs, values, negated, scope));
    }
    // Past work_mem: every value, held and still to come, as a key to sort.
    let has_null = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_null = has_null.clone();
    let keys: RowIter = Box::new(
        values
            .into_iter()
            .map(Ok)
            .chain(rows.map(|r| r.map(|r| r.into_iter().next().unwrap_or(Value::Null))))
            .filter_map(move |v| match v {
                Ok(Value::Null) => {
                    seen_null.store(true, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                Ok(v) if !uniform(&v) => Some(Err(Error::Internal(format!(
                    "IN subquery: a {} value among {:?} values",
                    v.type_name(),
                    family
                )))),
                Ok(v) => Some(Ok(vec![Value::Bytes(crate::exec::row_identity(std::slice::from_ref(&v)))])),
                Err(e) => Some(Err(e)),
            }),
    );
    let set = ValueSet::spill(keys, budget)?;
    let has_null = has_null.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Expr::InSet { expr: Box::new(lhs), set: std::sync::Arc::new(set), has_null, negated })
}

/// An uncorrelated subquery's column type and rows (run while binding).
type SubqueryResult = (Option<DataType>, Vec<Vec<Value>>);

/// A bound expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A constant.
    Const(Value),
    /// The value of input column `i`.
    Column(usize),
    /// Bind parameter `$i+1`.
    Param(usize),
    /// `NOT e`
    Not(Box<Expr>),
    /// `-e`
    Neg(Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `e IS [NOT] NULL`
    IsNull(Box<Expr>, bool),
    /// `e [NOT] IN (list)`
    InList(Box<Expr>, Vec<Expr>, bool),
    /// `e [NOT] IN (…)` over many constants of one type whose equal values encode
    /// equally (a subquery's result): a lookup by encoded value instead of a scan of the
    /// list. `has_null`: the list holds a NULL (a miss is then NULL, not false).
    InSet { expr: Box<Expr>, set: std::sync::Arc<ValueSet>, has_null: bool, negated: bool },
    /// `e [NOT] [I]LIKE pattern`
    Like { expr: Box<Expr>, pattern: Box<Expr>, negated: bool, case_insensitive: bool },
    /// `CASE [operand] WHEN .. THEN .. ELSE .. END`
    Case { operand: Option<Box<Expr>>, whens: Vec<(Expr, Expr)>, otherwise: Option<Box<Expr>> },
    /// `CAST(e AS t)` / `e::t`
    Cast(Box<Expr>, DataType),
    /// A scalar function call.
    Func(Func, Vec<Expr>),
}

/// Scalar functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `coalesce(a, b, ...)`
    Coalesce,
    /// `nullif(a, b)`
    NullIf,
    /// `lower(s)`
    Lower,
    /// `upper(s)`
    Upper,
    /// `length(s)`
    Length,
    /// `abs(n)`
    Abs,
    /// `concat(...)`
    Concat,
    /// `repeat(s, n)`
    Repeat,
    /// `pg_table_is_visible(oid)`: every table is in `public`, which is on the path.
    TableIsVisible,
    /// `pg_get_userbyid(oid)`: the one role.
    UserById,
    /// `format_type(type oid, typmod)`
    FormatType,
    /// `array_to_string(array, separator)` over text arrays.
    ArrayToString,
    /// `x = ANY(array)` over text arrays.
    AnyEq,
    /// `extract(unit FROM v)`: numeric.
    Extract,
    /// `date_part(unit, v)`: double precision.
    DatePart,
    /// `date_trunc(unit, v)`
    DateTrunc,
    /// `to_char(value, template)`
    ToChar,
    /// `age(a [, b])`
    Age,
    /// `to_timestamp(seconds)`
    ToTimestamp,
    /// `v AT TIME ZONE zone`: an instant (or date, or untyped string) to the local time
    /// there, a local time to the instant it is there.
    AtTimeZone,
    /// A string or math function (`functions.rs`).
    Builtin(crate::functions::Builtin),
    /// The argument of an ordered `string_agg` (or one with a delimiter that varies):
    /// args `[value, delimiter, (sort key, flags)…]` packed into one value that
    /// [`AggFunc::StringAggOrdered`] sorts by (see [`pack_ordered`]).
    StringAggPack,
}

/// Packs one `string_agg` input into one value that passes through grouping (and its
/// spill files) like any other: the value, its delimiter, then each sort key with its
/// direction flags (bit 0 DESC, bit 1 NULLS FIRST). NULL when the value is NULL
/// (string_agg skips it).
fn pack_ordered(vals: Vec<Value>) -> Result<Value> {
    let mut vals = vals.into_iter();
    let text = match vals.next().unwrap_or(Value::Null) {
        Value::Null => return Ok(Value::Null),
        Value::Text(t) => t,
        other => {
            return Err(Error::sql("42883", format!("function string_agg({}, text) does not exist", other.type_name())))
        }
    };
    let mut w = amberdb_encoding::codec::Writer::new();
    w.bytes(text.as_bytes());
    match vals.next().unwrap_or(Value::Null) {
        Value::Null => w.u8(0).bytes(&[]),
        v => w.u8(1).bytes(v.to_pg_text(None).unwrap_or_default().as_bytes()),
    };
    let rest: Vec<Value> = vals.collect();
    w.u32(rest.len() as u32 / 2);
    for pair in rest.chunks(2) {
        let flags = match pair.get(1) {
            Some(Value::Int(f)) => *f as u8,
            _ => 0,
        };
        w.u8(flags);
        pair[0].encode(&mut w);
    }
    Ok(Value::Bytes(w.finish()))
}

/// One packed `string_agg` input (see [`pack_ordered`]).
pub(crate) struct OrderedPart {
    /// Sort keys with their flags.
    pub keys: Vec<(u8, Value)>,
    /// The value.
    pub text: String,
    /// The delimiter placed before it (none for NULL).
    pub delimiter: Option<String>,
}

/// Reads back what [`pack_ordered`] wrote.
pub(crate) fn unpack_ordered(raw: &[u8]) -> Result<OrderedPart> {
    let mut r = amberdb_encoding::codec::Reader::new(raw, "ordered string_agg input");
    let utf8 =
        |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| Error::Internal("string_agg input not UTF-8".into()));
    let text = utf8(r.bytes()?)?;
    let has_delimiter = r.u8()? == 1;
    let delimiter = utf8(r.bytes()?)?;
    let n = r.u32()?;
    let mut keys = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let flags = r.u8()?;
        keys.push((flags, Value::decode(&mut r)?));
    }
    Ok(OrderedPart { keys, text, delimiter: has_delimiter.then_some(delimiter) })
}

/// Orders packed inputs by their keys as ORDER BY would (NULLs first or last per key).
pub(crate) fn cmp_ordered(a: &OrderedPart, b: &OrderedPart) -> Ordering {
    for ((flags, x), (_, y)) in a.keys.iter().zip(&b.keys) {
        let (desc, nulls_first) = (flags & 1 != 0, flags & 2 != 0);
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ if desc => x.sort_cmp(y).reverse(),
            _ => x.sort_cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    /// `count(*)`
    CountStar,
    /// `count(e)`
    Count,
    /// `sum(e)`
    Sum,
    /// `avg(e)`
    Avg,
    /// `min(e)`
    Min,
    /// `max(e)`
    Max,
    /// `bool_and(e)` / `every(e)`
    BoolAnd,
    /// `bool_or(e)`
    BoolOr,
    /// `string_agg(e, delimiter)` (a constant delimiter: [`AggCall::delimiter`])
    StringAgg,
    /// `string_agg(e, delimiter ORDER BY …)`, or with a delimiter that is not constant:
    /// its argument is [`Func::StringAggPack`].
    StringAggOrdered,
}

impl AggFunc {
    /// Recognizes an aggregate by function name.
    pub fn from_name(name: &str) -> Option<AggFunc> {
        Some(match name {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "bool_and" | "every" => AggFunc::BoolAnd,
            "bool_or" => AggFunc::BoolOr,
            "string_agg" => AggFunc::StringAgg,
            _ => return None,
        })
    }
}

/// An aggregate call found while binding a post-aggregation expression.
#[derive(Debug, Clone)]
pub struct AggCall {
    /// The function.
    pub func: AggFunc,
    /// Its argument, bound against the input rows (None for `count(*)`).
    pub arg: Option<Expr>,
    /// `DISTINCT` argument.
    pub distinct: bool,
    /// `string_agg`'s delimiter (NULL joins with nothing, as PostgreSQL).
    pub delimiter: Option<std::sync::Arc<str>>,
    /// Display text, for deduplication.
    pub text: String,
}

/// State for binding expressions evaluated after grouping.
#[derive(Debug, Default)]
pub struct AggBinding {
    /// Display text of each GROUP BY expression.
    pub group_texts: Vec<String>,
    /// Aggregates referenced so far.
    pub calls: Vec<AggCall>,
}

/// Binds expressions against a scope.
pub struct Binder<'a> {
    /// The input columns.
    pub scope: &'a [ScopeCol],
    /// Present when binding above an aggregation.
    pub aggs: Option<&'a mut AggBinding>,
    /// Number of bind parameters seen (highest `$n`).
    pub params: usize,
    /// The transaction and parameters, for evaluating uncorrelated subqueries while
    /// binding (their result is a constant of the outer query).
    pub txn: Option<(&'a mut amberdb_mvcc::Transaction, &'a [Value])>,
    /// Correlated subqueries found while binding. Each becomes a hidden column
    /// (`scope.len() + i`) that the executor computes per input row.
    pub correlated: Vec<Correlated>,
}

/// A subquery that refers to columns of the row being evaluated.
#[derive(Debug, Clone)]
pub struct Correlated {
    /// The subquery.
    pub query: Box<ast::Query>,
    /// What the hidden column holds.
    pub kind: CorrelatedKind,
}

/// How a correlated subquery's rows become one value.
#[derive(Debug, Clone)]
pub enum CorrelatedKind {
    /// `(SELECT …)`: its single value, or NULL.
    Scalar,
    /// `[NOT] EXISTS (SELECT …)`.
    Exists(bool),
    /// `lhs [NOT] IN (SELECT …)`, lhs bound against the outer row.
    In(Expr, bool),
    /// `ARRAY(SELECT …)`, as a text array literal.
    Array,
}

/// Formats values as a PostgreSQL text array literal (`{a,b}`); arrays are carried as
/// text until AmberDB has an array type.
pub fn text_array(values: impl IntoIterator<Item = Value>) -> Value {
    let items: Vec<String> = values
        .into_iter()
        .map(|v| match v.to_pg_text(None) {
            None => "NULL".to_string(),
            Some(s) if s.is_empty() || s.contains([',', '{', '}', '"', ' ', '\\']) => {
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            }
            Some(s) => s,
        })
        .collect();
    Value::Text(format!("{{{}}}", items.join(",")))
}

/// Parses a text array literal (`{a,"b c",NULL}`) into its elements.
pub fn parse_text_array(s: &str) -> Result<Vec<Value>> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| Error::sql("22P02", format!("malformed array literal: \"{s}\"")))?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut cur = String::new();
    let (mut quoted, mut was_quoted, mut escape) = (false, false, false);
    for c in inner.chars() {
        if escape {
            cur.push(c);
            escape = false;
        } else if c == '\\' {
            escape = true;
        } else if c == '"' {
            quoted = !quoted;
            was_quoted = true;
        } else if c == ',' && !quoted {
            out.push(if !was_quoted && cur == "NULL" { Value::Null } else { Value::Text(std::mem::take(&mut cur)) });
            cur.clear();
            was_quoted = false;
        } else {
            cur.push(c);
        }
    }
    out.push(if !was_quoted && cur == "NULL" { Value::Null } else { Value::Text(cur) });
    Ok(out)
}

thread_local! {
    /// The rows of enclosing queries while a correlated subquery runs (innermost last),
    /// with their scopes: names a subquery cannot resolve itself are looked up here and
    /// bound as constants. Query execution is synchronous (no await inside), so the
    /// stack always belongs to the query running on this thread.
    static OUTER: std::cell::RefCell<Vec<(Vec<ScopeCol>, Vec<Value>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `(scope, row)` pushed as the innermost enclosing row.
pub fn with_outer_row<T>(scope: &[ScopeCol], row: &[Value], f: impl FnOnce() -> T) -> T {
    OUTER.with(|o| o.borrow_mut().push((scope.to_vec(), row.to_vec())));
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            OUTER.with(|o| {
                o.borrow_mut().pop();
            });
        }
    }
    let _pop = Pop;
    f()
}

fn outer_value(table: Option<&str>, name: &str) -> Option<Value> {
    OUTER.with(|o| {
        o.borrow().iter().rev().find_map(|(scope, row)| {
            scope
                .iter()
                .position(|c| c.name == name && (table.is_none() || c.table.as_deref() == table))
                .and_then(|i| row.get(i).cloned())
        })
    })
}

fn is_missing_name(e: &Error) -> bool {
    matches!(e, Error::Sql { code: "42703" | "42P01", .. })
}

fn err_feature(what: impl std::fmt::Display) -> Error {
    Error::sql("0A000", format!("{what} is not supported"))
}

/// Normalizes an identifier: unquoted identifiers fold to lower case.
pub fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

impl<'a> Binder<'a> {
    /// A binder over `scope` with no aggregation.
    pub fn new(scope: &'a [ScopeCol]) -> Self {
        Self { scope, aggs: None, params: 0, txn: None, correlated: Vec::new() }
    }

    /// A binder for expressions evaluated after grouping: group keys and aggregate calls
    /// become columns of the grouped rows, registered in `aggs`.
    pub fn aggregating(scope: &'a [ScopeCol], aggs: &'a mut AggBinding) -> Self {
        Self { scope, aggs: Some(aggs), params: 0, txn: None, correlated: Vec::new() }
    }

    /// A binder that can evaluate subqueries in `txn`.
    pub fn with_txn(scope: &'a [ScopeCol], txn: &'a mut amberdb_mvcc::Transaction, params: &'a [Value]) -> Self {
        Self { scope, aggs: None, params: 0, txn: Some((txn, params)), correlated: Vec::new() }
    }

    /// Runs an uncorrelated subquery now; `Ok(None)` if it refers to outer columns (it
    /// is then correlated and must run per row).
    fn subquery(&mut self, q: &ast::Query) -> Result<Option<SubqueryResult>> {
        let Some((txn, params)) = self.txn.as_mut() else {
            return Err(err_feature("a subquery in this position"));
        };
        // A subquery's value becomes a constant of the outer query, typed by its result,
        // so it runs for real even while the outer statement is only being described.
        match crate::exec::with_shape_only(false, || crate::exec::query_all(txn, q, params)) {
            Ok((cols, rows)) => {
                if cols.len() != 1 {
                    return Err(Error::sql("42601", "subquery must return only one column"));
                }
                Ok(Some((cols[0].ty, rows)))
            }
            Err(e) if is_missing_name(&e) && !self.scope.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn correlate(&mut self, query: &ast::Query, kind: CorrelatedKind) -> Expr {
        self.correlated.push(Correlated { query: Box::new(query.clone()), kind });
        Expr::Column(self.scope.len() + self.correlated.len() - 1)
    }

    /// Binds a column reference; a name this scope lacks may belong to an enclosing
    /// query's row (correlation), in which case it is that row's value.
    fn column(&self, table: Option<&str>, name: &str) -> Result<Expr> {
        match self.resolve(table, name) {
            Ok(i) => Ok(Expr::Column(i)),
            Err(e) if is_missing_name(&e) => outer_value(table, name).map(Expr::Const).ok_or(e),
            Err(e) => Err(e),
        }
    }

    fn resolve(&self, table: Option<&str>, name: &str) -> Result<usize> {
        let mut found = None;
        for (i, c) in self.scope.iter().enumerate() {
            if c.name == name && (table.is_none() || c.table.as_deref() == table) {
                if found.is_some() {
                    return Err(Error::sql("42702", format!("column reference \"{name}\" is ambiguous")));
                }
                found = Some(i);
            }
        }
        found.ok_or_else(|| match table {
            Some(t) if !self.scope.iter().any(|c| c.table.as_deref() == Some(t)) => {
                Error::sql("42P01", format!("missing FROM-clause entry for table \"{t}\""))
            }
            Some(t) => Error::sql("42703", format!("column {t}.{name} does not exist")),
            None => Error::sql("42703", format!("column \"{name}\" does not exist")),
        })
    }

    /// Binds an expression.
    pub fn bind(&mut self, e: &ast::Expr) -> Result<Expr> {
        // A window call is a column the window stage appended, named by its text.
        if let ast::Expr::Function(f) = e {
            if f.over.is_some() {
                let text = f.to_string();
                return match self.scope.iter().rposition(|c| c.table.is_none() && c.name == text) {
                    Some(i) => Ok(Expr::Column(i)),
                    None => Err(Error::sql("42P20", format!("window functions are not allowed here: {text}"))),
                };
            }
        }
        if let Some(aggs) = self.aggs.as_deref_mut() {
            let text = e.to_string();
            if let Some(i) = aggs.group_texts.iter().position(|g| *g == text) {
                return Ok(Expr::Column(i));
            }
            if let ast::Expr::Function(f) = e {
                let name = f.name.to_string().to_lowercase();
                if let Some(func) = AggFunc::from_name(&name) {
                    return self.bind_aggregate(f, func, text);
                }
            }
            if matches!(e, ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_)) {
                return Err(Error::sql(
                    "42803",
                    format!("column \"{e}\" must appear in the GROUP BY clause or be used in an aggregate function"),
                ));
            }
        }
        Ok(match e {
            ast::Expr::Identifier(i) => self.column(None, &ident(i))?,
            ast::Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [t, c] => self.column(Some(&ident(t)), &ident(c))?,
                _ => return Err(err_feature(format!("identifier {e}"))),
            },
            ast::Expr::Value(v) => self.bind_value(&v.value)?,
            ast::Expr::Nested(inner) => self.bind(inner)?,
            // Collations: UTF-8 byte order is the only one; the clause is accepted.
            ast::Expr::Collate { expr, .. } => self.bind(expr)?,
            ast::Expr::UnaryOp { op, expr } => {
                let inner = self.bind(expr)?;
                match op {
                    ast::UnaryOperator::Not => Expr::Not(Box::new(inner)),
                    ast::UnaryOperator::Minus => match inner {
                        Expr::Const(Value::Int(i)) => Expr::Const(Value::Int(-i)),
                        Expr::Const(Value::Float(f)) => Expr::Const(Value::Float(-f)),
                        Expr::Const(Value::Numeric(d)) => Expr::Const(Value::Numeric(-d)),
                        other => Expr::Neg(Box::new(other)),
                    },
                    ast::UnaryOperator::Plus => inner,
                    other => return Err(err_feature(format!("operator {other}"))),
                }
            }
            // `^` is power(): exact for numeric, double precision otherwise.
            ast::Expr::BinaryOp { left, op: ast::BinaryOperator::PGExp, right } => {
                Expr::Func(Func::Builtin(crate::functions::Builtin::Power), vec![self.bind(left)?, self.bind(right)?])
            }
            ast::Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    ast::BinaryOperator::Plus => BinOp::Add,
                    ast::BinaryOperator::Minus => BinOp::Sub,
                    ast::BinaryOperator::Multiply => BinOp::Mul,
                    ast::BinaryOperator::Divide => BinOp::Div,
                    ast::BinaryOperator::Modulo => BinOp::Mod,
                    ast::BinaryOperator::StringConcat => BinOp::Concat,
                    ast::BinaryOperator::Eq => BinOp::Eq,
                    ast::BinaryOperator::NotEq => BinOp::NotEq,
                    ast::BinaryOperator::Lt => BinOp::Lt,
                    ast::BinaryOperator::LtEq => BinOp::LtEq,
                    ast::BinaryOperator::Gt => BinOp::Gt,
                    ast::BinaryOperator::GtEq => BinOp::GtEq,
                    ast::BinaryOperator::And => BinOp::And,
                    ast::BinaryOperator::Or => BinOp::Or,
                    ast::BinaryOperator::PGRegexMatch => BinOp::Regex(false, false),
                    ast::BinaryOperator::PGRegexIMatch => BinOp::Regex(false, true),
                    ast::BinaryOperator::PGRegexNotMatch => BinOp::Regex(true, false),
                    ast::BinaryOperator::PGRegexNotIMatch => BinOp::Regex(true, true),
                    ast::BinaryOperator::PGCustomBinaryOperator(parts)
                        if parts.len() == 2 && parts[0] == "pg_catalog" =>
                    {
                        match parts[1].as_str() {
                            "~" => BinOp::Regex(false, false),
                            "~*" => BinOp::Regex(false, true),
                            "!~" => BinOp::Regex(true, false),
                            "!~*" => BinOp::Regex(true, true),
                            "=" => BinOp::Eq,
                            "<>" => BinOp::NotEq,
                            "<" => BinOp::Lt,
                            ">" => BinOp::Gt,
                            other => return Err(Error::sql("42883", format!("operator does not exist: {other}"))),
                        }
                    }
                    other => return Err(Error::sql("42883", format!("operator does not exist: {other}"))),
                };
                Expr::Binary(op, Box::new(self.bind(left)?), Box::new(self.bind(right)?))
            }
            ast::Expr::IsNull(inner) => Expr::IsNull(Box::new(self.bind(inner)?), false),
            ast::Expr::IsNotNull(inner) => Expr::IsNull(Box::new(self.bind(inner)?), true),
            ast::Expr::IsTrue(inner) => {
                Expr::Binary(BinOp::Eq, Box::new(self.bind(inner)?), Box::new(Expr::Const(Value::Bool(true))))
            }
            ast::Expr::IsFalse(inner) => {
                Expr::Binary(BinOp::Eq, Box::new(self.bind(inner)?), Box::new(Expr::Const(Value::Bool(false))))
            }
            ast::Expr::InList { expr, list, negated } => Expr::InList(
                Box::new(self.bind(expr)?),
                list.iter().map(|x| self.bind(x)).collect::<Result<_>>()?,
                *negated,
            ),
            ast::Expr::Between { expr, negated, low, high } => {
                let x = self.bind(expr)?;
                let range = Expr::Binary(
                    BinOp::And,
                    Box::new(Expr::Binary(BinOp::GtEq, Box::new(x.clone()), Box::new(self.bind(low)?))),
                    Box::new(Expr::Binary(BinOp::LtEq, Box::new(x), Box::new(self.bind(high)?))),
                );
                if *negated {
                    Expr::Not(Box::new(range))
                } else {
                    range
                }
            }
            ast::Expr::Like { negated, expr, pattern, escape_char: None, any: false } => Expr::Like {
                expr: Box::new(self.bind(expr)?),
                pattern: Box::new(self.bind(pattern)?),
                negated: *negated,
                case_insensitive: false,
            },
            ast::Expr::ILike { negated, expr, pattern, escape_char: None, any: false } => Expr::Like {
                expr: Box::new(self.bind(expr)?),
                pattern: Box::new(self.bind(pattern)?),
                negated: *negated,
                case_insensitive: true,
            },
            ast::Expr::Case { operand, conditions, else_result, .. } => Expr::Case {
                operand: operand.as_ref().map(|o| self.bind(o).map(Box::new)).transpose()?,
                whens: conditions
                    .iter()
                    .map(|w| Ok((self.bind(&w.condition)?, self.bind(&w.result)?)))
                    .collect::<Result<_>>()?,
                otherwise: else_result.as_ref().map(|o| self.bind(o).map(Box::new)).transpose()?,
            },
            ast::Expr::Cast { expr, data_type, .. } => {
                Expr::Cast(Box::new(self.bind(expr)?), DataType::parse(&data_type.to_string())?)
            }
            // `INTERVAL '1 day'`, `INTERVAL '3' HOUR`: a cast of the string literal.
            ast::Expr::Interval(iv) => {
                let text = match self.bind(&iv.value)? {
                    Expr::Const(Value::Text(t)) => t,
                    Expr::Const(Value::Int(i)) => i.to_string(),
                    Expr::Const(Value::Numeric(d)) => d.to_string(),
                    other => return Ok(Expr::Cast(Box::new(other), DataType::Interval)),
                };
                let text = match &iv.leading_field {
                    Some(field) if text.trim().parse::<f64>().is_ok() => format!("{text} {field}"),
                    _ => text,
                };
                Expr::Cast(Box::new(Expr::Const(Value::Text(text))), DataType::Interval)
            }
            ast::Expr::AtTimeZone { timestamp, time_zone } => {
                Expr::Func(Func::AtTimeZone, vec![self.bind(timestamp)?, self.bind(time_zone)?])
            }
            ast::Expr::Extract { field, expr, .. } => Expr::Func(
                Func::Extract,
                vec![Expr::Const(Value::Text(field.to_string().to_lowercase())), self.bind(expr)?],
            ),
            // `TIMESTAMP '2026-01-01'`, `DATE '…'`: a cast of the string literal.
            ast::Expr::TypedString(ts) => {
                let Some(text) = ts.value.value.clone().into_string() else {
                    return Err(err_feature(format!("typed literal {e}")));
                };
                Expr::Cast(Box::new(Expr::Const(Value::Text(text))), DataType::parse(&ts.data_type.to_string())?)
            }
            ast::Expr::Function(f)
                if f.name.to_string().eq_ignore_ascii_case("array")
                    && matches!(f.args, ast::FunctionArguments::Subquery(_)) =>
            {
                let ast::FunctionArguments::Subquery(q) = &f.args else {
                    return Err(Error::Internal("ARRAY subquery vanished".into()));
                };
                match self.subquery(q)? {
                    Some((_, rows)) => Expr::Const(text_array(rows.into_iter().filter_map(|r| r.into_iter().next()))),
                    None => self.correlate(q, CorrelatedKind::Array),
                }
            }
            ast::Expr::Array(a) => {
                let mut items = Vec::new();
                for e in &a.elem {
                    items.push(self.bind(e)?.eval(&[], &[])?);
                }
                Expr::Const(text_array(items))
            }
            ast::Expr::AnyOp { left, compare_op: ast::BinaryOperator::Eq, right, .. } => {
                Expr::Func(Func::AnyEq, vec![self.bind(left)?, self.bind(right)?])
            }
            ast::Expr::Function(f) => self.bind_function(f)?,
            ast::Expr::Subquery(q) => match self.subquery(q)? {
                Some((ty, rows)) => {
                    if rows.len() > 1 {
                        return Err(Error::sql(
                            "21000",
                            "more than one row returned by a subquery used as an expression",
                        ));
                    }
                    let value =
                        Expr::Const(rows.into_iter().next().and_then(|r| r.into_iter().next()).unwrap_or(Value::Null));
                    // Typed as the subquery's column (count(*) is bigint even when small,
                    // a NULL result keeps its type), not by the value it happened to have.
                    match ty {
                        Some(t) => Expr::Cast(Box::new(value), t),
                        None => value,
                    }
                }
                None => self.correlate(q, CorrelatedKind::Scalar),
            },
            ast::Expr::InSubquery { expr, subquery, negated } => {
                let lhs = self.bind(expr)?;
                let scope = self.scope;
                let Some((txn, params)) = self.txn.as_mut() else {
                    return Err(err_feature("a subquery in this position"));
                };
                // Run for real even while the outer statement is only described (see
                // `subquery`), and read while still inside.
                let bound = crate::exec::with_shape_only(false, || match crate::exec::query(txn, subquery, params) {
                    Ok((cols, _)) if cols.len() != 1 => Err(Error::sql("42601", "subquery has too many columns")),
                    Ok((_, rows)) => in_subquery_rows(lhs.clone(), rows, *negated, scope).map(Some),
                    Err(e) if is_missing_name(&e) && !scope.is_empty() => Ok(None),
                    Err(e) => Err(e),
                })?;
                match bound {
                    Some(e) => e,
                    None => self.correlate(subquery, CorrelatedKind::In(lhs, *negated)),
                }
            }
            ast::Expr::Exists { subquery, negated } => {
                let Some((txn, params)) = self.txn.as_mut() else {
                    return Err(err_feature("EXISTS in this position"));
                };
                match crate::exec::query(txn, subquery, params) {
                    // Only whether a first row exists is read.
                    Ok((_, mut rows)) => Expr::Const(Value::Bool(rows.next().transpose()?.is_none() == *negated)),
                    Err(e) if is_missing_name(&e) && !self.scope.is_empty() => {
                        self.correlate(subquery, CorrelatedKind::Exists(*negated))
                    }
                    Err(e) => return Err(e),
                }
            }
            // The SQL-standard spellings of string and math functions.
            ast::Expr::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.bind(expr)?];
                args.push(match substring_from {
                    Some(f) => self.bind(f)?,
                    None => Expr::Const(Value::Int(1)),
                });
                if let Some(f) = substring_for {
                    args.push(self.bind(f)?);
                }
                Expr::Func(Func::Builtin(crate::functions::Builtin::Substring), args)
            }
            ast::Expr::Trim { expr, trim_where, trim_what, trim_characters } => {
                use crate::functions::Builtin;
                let f = match trim_where {
                    Some(ast::TrimWhereField::Leading) => Builtin::Ltrim,
                    Some(ast::TrimWhereField::Trailing) => Builtin::Rtrim,
                    _ => Builtin::Btrim,
                };
                let mut args = vec![self.bind(expr)?];
                if let Some(w) = trim_what {
                    args.push(self.bind(w)?);
                } else if let Some([c]) = trim_characters.as_deref() {
                    args.push(self.bind(c)?);
                }
                Expr::Func(Func::Builtin(f), args)
            }
            ast::Expr::Position { expr, r#in } => {
                let args = vec![self.bind(r#in)?, self.bind(expr)?];
                Expr::Func(Func::Builtin(crate::functions::Builtin::Strpos), args)
            }
            ast::Expr::Ceil { expr, field: ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime) } => {
                Expr::Func(Func::Builtin(crate::functions::Builtin::Ceil), vec![self.bind(expr)?])
            }
            ast::Expr::Floor { expr, field: ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime) } => {
                Expr::Func(Func::Builtin(crate::functions::Builtin::Floor), vec![self.bind(expr)?])
            }
            other => return Err(err_feature(format!("expression {other}"))),
        })
    }

    fn bind_value(&mut self, v: &ast::Value) -> Result<Expr> {
        Ok(Expr::Const(match v {
            ast::Value::Number(n, _) => {
                if let Ok(i) = n.parse::<i64>() {
                    Value::Int(i)
                } else {
                    // Like PostgreSQL, a literal with a point or exponent is numeric.
                    Value::Numeric(crate::types::parse_decimal(n)?)
                }
            }
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => Value::Text(s.clone()),
            ast::Value::Boolean(b) => Value::Bool(*b),
            ast::Value::Null => Value::Null,
            ast::Value::Placeholder(p) => {
                let n: usize = p
                    .strip_prefix('$')
                    .and_then(|d| d.parse().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| Error::sql("42601", format!("invalid parameter reference {p}")))?;
                self.params = self.params.max(n);
                return Ok(Expr::Param(n - 1));
            }
            other => return Err(err_feature(format!("literal {other}"))),
        }))
    }

    fn function_args<'f>(&self, f: &'f ast::Function) -> Result<(Vec<&'f ast::FunctionArgExpr>, bool)> {
        match &f.args {
            ast::FunctionArguments::None => Ok((vec![], false)),
            ast::FunctionArguments::List(list) => {
                let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
                let args = list
                    .args
                    .iter()
                    .map(|a| match a {
                        ast::FunctionArg::Unnamed(x) => Ok(x),
                        other => Err(err_feature(format!("argument {other}"))),
                    })
                    .collect::<Result<_>>()?;
                Ok((args, distinct))
            }
            ast::FunctionArguments::Subquery(_) => Err(err_feature("subquery as function argument")),
        }
    }

    fn bind_aggregate(&mut self, f: &ast::Function, func: AggFunc, text: String) -> Result<Expr> {
        let (args, distinct) = self.function_args(f)?;
        let mut inner =
            Binder { scope: self.scope, aggs: None, params: self.params, txn: None, correlated: Vec::new() };
        // ORDER BY inside count/sum/avg/min/max/bool_* changes nothing; string_agg's
        // result depends on it.
        let mut order = Vec::new();
        if let ast::FunctionArguments::List(list) = &f.args {
            for clause in &list.clauses {
                match clause {
                    ast::FunctionArgumentClause::OrderBy(keys) => order.extend(keys.iter()),
                    other => return Err(err_feature(format!("{other} inside an aggregate: {text}"))),
                }
            }
        }
        let mut delimiter = None;
        let (func, arg) = match (func, args.as_slice()) {
            (AggFunc::Count, [ast::FunctionArgExpr::Wildcard]) => (AggFunc::CountStar, None),
            (AggFunc::StringAgg, [ast::FunctionArgExpr::Expr(e), ast::FunctionArgExpr::Expr(d)]) => {
                let value = inner.bind(e)?;
                let delim = inner.bind(d)?;
                match (&delim, order.is_empty()) {
                    (Expr::Const(v), true) => {
                        delimiter = v.to_pg_text(None).map(Into::into);
                        (func, Some(value))
                    }
                    // Sorted at the end of the group, each value with its delimiter.
                    _ => {
                        let mut packed = vec![value, delim];
                        for o in &order {
                            if matches!(o.options.sort, Some(ast::OrderBySort::Using(_))) {
                                return Err(err_feature(format!("ORDER BY … USING inside an aggregate: {text}")));
                            }
                            let desc = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
                            let nulls_first = o.options.nulls_first.unwrap_or(desc);
                            packed.push(inner.bind(&o.expr)?);
                            packed.push(Expr::Const(Value::Int(i64::from(desc) | (i64::from(nulls_first) << 1))));
                        }
                        (AggFunc::StringAggOrdered, Some(Expr::Func(Func::StringAggPack, packed)))
                    }
                }
            }
            (AggFunc::StringAgg, _) => return Err(Error::sql("42883", format!("function {text} does not exist"))),
            (_, [ast::FunctionArgExpr::Expr(e)]) => (func, Some(inner.bind(e)?)),
            _ => return Err(Error::sql("42883", format!("function {text} does not exist"))),
        };
        self.params = inner.params;
        let aggs = self.aggs.as_deref_mut().ok_or_else(|| Error::Internal("aggregate outside aggregation".into()))?;
        let n_groups = aggs.group_texts.len();
        let idx = match aggs.calls.iter().position(|c| c.text == text) {
            Some(i) => i,
            None => {
                aggs.calls.push(AggCall { func, arg, distinct, delimiter, text });
                aggs.calls.len() - 1
            }
        };
        Ok(Expr::Column(n_groups + idx))
    }

    fn bind_function(&mut self, f: &ast::Function) -> Result<Expr> {
        let full = f.name.to_string().to_lowercase();
        let name = full.strip_prefix("pg_catalog.").unwrap_or(&full).to_string();
        if AggFunc::from_name(&name).is_some() {
            return Err(Error::sql("42803", format!("aggregate functions are not allowed here: {f}")));
        }
        let (args, _) = self.function_args(f)?;
        if name == "pg_typeof" {
            // The argument's type as PostgreSQL names it (without a length or precision),
            // found while binding: the argument is not evaluated.
            let [ast::FunctionArgExpr::Expr(e)] = args.as_slice() else {
                return Err(Error::sql("42883", format!("function {f} does not exist")));
            };
            let bound = self.bind(e)?;
            let ty = match self.aggs {
                None => bound.result_type(self.scope),
                // Above an aggregation the bound expression reads the aggregation's
                // output, whose columns the binder does not type: type the argument over
                // the input (a grouped expression) or over its own aggregates.
                Some(_) => match Binder::new(self.scope).bind(e) {
                    Ok(plain) => plain.result_type(self.scope),
                    Err(_) => {
                        let mut own = AggBinding { group_texts: Vec::new(), calls: Vec::new() };
                        let mut b = Binder::new(self.scope);
                        b.aggs = Some(&mut own);
                        let typed = b.bind(e);
                        let scope: Vec<ScopeCol> = own
                            .calls
                            .iter()
                            .map(|c| ScopeCol {
                                table: None,
                                name: String::new(),
                                ty: crate::exec::agg_type(c, self.scope),
                            })
                            .collect();
                        typed.ok().and_then(|t| t.result_type(&scope))
                    }
                },
            };
            let name = match ty {
                Some(t) => t.pg_name().split('(').next().unwrap_or_default().to_string(),
                None => "unknown".to_string(),
            };
            return Ok(Expr::Const(Value::Text(name)));
        }
        match (name.as_str(), args.is_empty()) {
            ("version", true) => return Ok(Expr::Const(Value::Text(crate::VERSION_TEXT.into()))),
            ("current_database", true) => return Ok(Expr::Const(Value::Text("amberdb".into()))),
            ("current_user" | "session_user" | "user", true) => return Ok(Expr::Const(Value::Text("amberdb".into()))),
            ("current_schema", true) => return Ok(Expr::Const(Value::Text("public".into()))),
            (
                "now" | "current_timestamp" | "transaction_timestamp" | "statement_timestamp" | "localtimestamp",
                true,
            ) => {
                let us = if name == "statement_timestamp" {
                    crate::interval::statement_now()
                } else {
                    crate::interval::transaction_now()
                };
                return Ok(Expr::Const(if name == "localtimestamp" {
                    Value::Timestamp(crate::zone::current().to_local(us))
                } else {
                    Value::TimestampTz(us)
                }));
            }
            ("current_date", true) => return Ok(Expr::Const(Value::Date(crate::interval::today()))),
            ("localtime", true) => {
                let local = crate::zone::current().to_local(crate::interval::transaction_now());
                return Ok(Expr::Const(Value::Time(local.rem_euclid(86_400_000_000))));
            }
            ("current_time", true) => return Err(Error::sql(
                "0A000",
                "CURRENT_TIME returns time with time zone, which is not supported; use LOCALTIME or CURRENT_TIMESTAMP",
            )),
            _ => {}
        }
        let args: Vec<Expr> = args
            .iter()
            .map(|a| match a {
                ast::FunctionArgExpr::Expr(e) => self.bind(e),
                _ => Err(err_feature(format!("argument to {name}"))),
            })
            .collect::<Result<_>>()?;
        let (func, arity) = match name.as_str() {
            "coalesce" => (Func::Coalesce, None),
            "nullif" => (Func::NullIf, Some(2)),
            "lower" => (Func::Lower, Some(1)),
            "upper" => (Func::Upper, Some(1)),
            "length" | "char_length" | "character_length" => (Func::Length, Some(1)),
            "abs" => (Func::Abs, Some(1)),
            "concat" => (Func::Concat, None),
            "repeat" => (Func::Repeat, Some(2)),
            "pg_table_is_visible" => (Func::TableIsVisible, Some(1)),
            "pg_get_userbyid" => (Func::UserById, Some(1)),
            "format_type" => (Func::FormatType, Some(2)),
            "array_to_string" => (Func::ArrayToString, Some(2)),
            "date_part" => (Func::DatePart, Some(2)),
            "date_trunc" => (Func::DateTrunc, Some(2)),
            "to_char" => (Func::ToChar, Some(2)),
            "age" if matches!(args.len(), 1 | 2) => (Func::Age, None),
            "to_timestamp" if args.len() == 2 => {
                return Ok(Expr::Func(Func::Builtin(crate::functions::Builtin::ToTimestampFmt), args))
            }
            "to_timestamp" => (Func::ToTimestamp, Some(1)),
            "pg_get_indexdef" | "pg_get_constraintdef" => {
                // A lookup in the definitions of this statement's snapshot (a CASE over
                // OIDs): pure, so it can be evaluated lazily or on any thread.
                let Some((txn, _)) = self.txn.as_mut() else {
                    return Err(err_feature(format!("{name}() in this position")));
                };
                let Some(oid) = args.into_iter().next() else {
                    return Err(Error::sql("42883", format!("function {name}() does not exist")));
                };
                let whens = crate::pg_catalog::definitions(txn)?
                    .into_iter()
                    .map(|(o, d)| (Expr::Const(Value::Int(o)), Expr::Const(Value::Text(d))))
                    .collect();
                let case = Expr::Case {
                    operand: Some(Box::new(oid)),
                    whens,
                    otherwise: Some(Box::new(Expr::Const(Value::Null))),
                };
                return Ok(Expr::Cast(Box::new(case), DataType::Text));
            }
            // Objects AmberDB does not have: statistics objects, publications.
            "pg_get_statisticsobjdef_columns" => return Ok(Expr::Const(Value::Null)),
            "pg_relation_is_publishable" => return Ok(Expr::Const(Value::Bool(false))),
            // Defaults are stored as their SQL text, which is what pg_get_expr returns.
            "pg_get_expr" if args.len() >= 2 => return Ok(args.into_iter().next().unwrap_or(Expr::Const(Value::Null))),
            other => match crate::functions::Builtin::from_name(other, args.len()) {
                Some(b) => return Ok(Expr::Func(Func::Builtin(b), args)),
                None if crate::functions::Builtin::from_name(other, 1).is_some()
                    || crate::functions::Builtin::from_name(other, 2).is_some()
                    || crate::functions::Builtin::from_name(other, 0).is_some() =>
                {
                    return Err(Error::sql(
                        "42883",
                        format!("function {name} with {} arguments does not exist", args.len()),
                    ))
                }
                None => return Err(Error::sql("42883", format!("function {name}() does not exist"))),
            },
        };
        if arity.is_some_and(|n| n != args.len()) || args.is_empty() {
            return Err(Error::sql("42883", format!("function {name} with {} arguments does not exist", args.len())));
        }
        Ok(Expr::Func(func, args))
    }
}

fn truth(v: &Value) -> Result<Option<bool>> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Text(s) => Value::Text(s.clone()).cast(DataType::Bool).map(|v| matches!(v, Value::Bool(true))).map(Some),
        other => Err(Error::sql("42804", format!("argument must be type boolean, not type {}", other.type_name()))),
    }
}

fn numeric(v: Value) -> Result<Value> {
    match v {
        Value::Text(s) => {
            if let Ok(i) = s.trim().parse::<i64>() {
                Ok(Value::Int(i))
            } else if let Ok(d) = crate::types::parse_decimal(&s) {
                Ok(Value::Numeric(d))
            } else {
                s.trim()
                    .parse::<f64>()
                    .map(Value::Float)
                    .map_err(|_| Error::sql("22P02", format!("invalid input syntax for type numeric: \"{s}\"")))
            }
        }
        other => Ok(other),
    }
}

fn arith(op: BinOp, a: Value, b: Value) -> Result<Value> {
    let overflow = || Error::sql("22003", "integer out of range");
    if let Some(v) = crate::interval::arith(op, &a, &b)? {
        return Ok(v);
    }
    match (op, &a, &b) {
        (BinOp::Add, Value::Date(d), Value::Int(n)) | (BinOp::Add, Value::Int(n), Value::Date(d)) => {
            return Ok(Value::Date(d.checked_add(*n).ok_or_else(|| Error::sql("22008", "date out of range"))?))
        }
        (BinOp::Sub, Value::Date(d), Value::Int(n)) => {
            return Ok(Value::Date(d.checked_sub(*n).ok_or_else(|| Error::sql("22008", "date out of range"))?))
        }
        (BinOp::Sub, Value::Date(x), Value::Date(y)) => return Ok(Value::Int(x - y)),
        _ => {}
    }
    let (a, b) = (numeric(a)?, numeric(b)?);
    let as_dec = |v: &Value| match v {
        Value::Int(i) => Some(crate::numeric::Numeric::from(*i)),
        Value::Numeric(d) => Some(d.clone()),
        _ => None,
    };
    if matches!((&a, &b), (Value::Numeric(_), Value::Int(_) | Value::Numeric(_)) | (Value::Int(_), Value::Numeric(_))) {
        let (Some(x), Some(y)) = (as_dec(&a), as_dec(&b)) else {
            return Err(Error::Internal("numeric operands".into()));
        };
        // The scale of each result is PostgreSQL's (see `numeric.rs`).
        return Ok(Value::Numeric(match op {
            BinOp::Add => x.add(&y)?,
            BinOp::Sub => x.sub(&y)?,
            BinOp::Mul => x.mul(&y)?,
            BinOp::Div => x.div(&y)?,
            BinOp::Mod => x.rem(&y)?,
            _ => return Err(Error::Internal(format!("{op:?} is not arithmetic"))),
        }));
    }
    let to_f = |v: Value| match v {
        Value::Numeric(d) => Value::Float(d.to_f64()),
        other => other,
    };
    let (a, b) = (to_f(a), to_f(b));
    Ok(match (a, b) {
        (Value::Null, _) | (_, Value::Null) => Value::Null,
        (Value::Int(x), Value::Int(y)) => Value::Int(match op {
            BinOp::Add => x.checked_add(y).ok_or_else(overflow)?,
            BinOp::Sub => x.checked_sub(y).ok_or_else(overflow)?,
            BinOp::Mul => x.checked_mul(y).ok_or_else(overflow)?,
            BinOp::Div if y == 0 => return Err(Error::sql("22012", "division by zero")),
            BinOp::Div => x.checked_div(y).ok_or_else(overflow)?,
            BinOp::Mod if y == 0 => return Err(Error::sql("22012", "division by zero")),
            BinOp::Mod => x.checked_rem(y).ok_or_else(overflow)?,
            _ => return Err(Error::Internal(format!("{op:?} is not arithmetic"))),
        }),
        (x @ (Value::Int(_) | Value::Float(_)), y @ (Value::Int(_) | Value::Float(_))) => {
            let f = |v: Value| match v {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
                _ => 0.0,
            };
            let (x, y) = (f(x), f(y));
            Value::Float(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div if y == 0.0 => return Err(Error::sql("22012", "division by zero")),
                BinOp::Div => x / y,
                BinOp::Mod if y == 0.0 => return Err(Error::sql("22012", "division by zero")),
                BinOp::Mod => x % y,
                _ => return Err(Error::Internal(format!("{op:?} is not arithmetic"))),
            })
        }
        (x, y) => {
            return Err(Error::sql(
                "42883",
                format!("operator does not exist: {} {} {}", x.type_name(), op_symbol(op), y.type_name()),
            ))
        }
    })
}

fn op_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Mod => "%",
        BinOp::Concat => "||",
        BinOp::Eq => "=",
        BinOp::NotEq => "<>",
        BinOp::Lt => "<",
        BinOp::LtEq => "<=",
        BinOp::Gt => ">",
        BinOp::GtEq => ">=",
        BinOp::And => "AND",
        BinOp::Or => "OR",
        BinOp::Regex(..) => "~",
    }
}

/// SQL LIKE matching with `%` and `_` (backslash escapes the next character).
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    fn rec(t: &[char], p: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('%') => (0..=t.len()).any(|i| rec(&t[i..], &p[1..])),
            Some('_') => !t.is_empty() && rec(&t[1..], &p[1..]),
            Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && rec(&t[1..], &p[2..]),
            Some(c) => t.first() == Some(c) && rec(&t[1..], &p[1..]),
        }
    }
    rec(&t, &p)
}

impl Expr {
    /// Evaluates against a row and bind parameters.
    pub fn eval(&self, row: &[Value], params: &[Value]) -> Result<Value> {
        Ok(match self {
            Expr::Const(v) => v.clone(),
            Expr::Column(i) => {
                row.get(*i).cloned().ok_or_else(|| Error::Internal(format!("column {i} out of range")))?
            }
            Expr::Param(i) => params.get(*i).cloned().ok_or_else(|| {
                Error::sql(
                    "08P01",
                    format!("bind message supplies {} parameters, but the statement needs more", params.len()),
                )
            })?,
            Expr::Not(e) => match truth(&e.eval(row, params)?)? {
                None => Value::Null,
                Some(b) => Value::Bool(!b),
            },
            Expr::Neg(e) => match numeric(e.eval(row, params)?)? {
                Value::Null => Value::Null,
                Value::Int(i) => {
                    Value::Int(i.checked_neg().ok_or_else(|| Error::sql("22003", "integer out of range"))?)
                }
                Value::Float(f) => Value::Float(-f),
                Value::Numeric(d) => Value::Numeric(-d),
                Value::Interval(iv) => Value::Interval(iv.neg()?),
                other => return Err(Error::sql("42883", format!("operator does not exist: - {}", other.type_name()))),
            },
            Expr::Binary(BinOp::And, a, b) => {
                let l = truth(&a.eval(row, params)?)?;
                if l == Some(false) {
                    return Ok(Value::Bool(false));
                }
                match (l, truth(&b.eval(row, params)?)?) {
                    (_, Some(false)) => Value::Bool(false),
                    (Some(true), Some(true)) => Value::Bool(true),
                    _ => Value::Null,
                }
            }
            Expr::Binary(BinOp::Or, a, b) => {
                let l = truth(&a.eval(row, params)?)?;
                if l == Some(true) {
                    return Ok(Value::Bool(true));
                }
                match (l, truth(&b.eval(row, params)?)?) {
                    (_, Some(true)) => Value::Bool(true),
                    (Some(false), Some(false)) => Value::Bool(false),
                    _ => Value::Null,
                }
            }
            Expr::Binary(BinOp::Concat, a, b) => match (a.eval(row, params)?, b.eval(row, params)?) {
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (x, y) => Value::Text(format!(
                    "{}{}",
                    x.to_pg_text(None).unwrap_or_default(),
                    y.to_pg_text(None).unwrap_or_default()
                )),
            },
            Expr::Binary(op @ (BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq), a, b) => {
                match a.eval(row, params)?.sql_cmp(&b.eval(row, params)?)? {
                    None => Value::Null,
                    Some(ord) => Value::Bool(match op {
                        BinOp::Eq => ord == Ordering::Equal,
                        BinOp::NotEq => ord != Ordering::Equal,
                        BinOp::Lt => ord == Ordering::Less,
                        BinOp::LtEq => ord != Ordering::Greater,
                        BinOp::Gt => ord == Ordering::Greater,
                        _ => ord != Ordering::Less,
                    }),
                }
            }
            Expr::Binary(BinOp::Regex(negated, ci), a, b) => match (a.eval(row, params)?, b.eval(row, params)?) {
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (t, p) => {
                    let pattern = p.to_pg_text(None).unwrap_or_default();
                    let pattern = if *ci { format!("(?i){pattern}") } else { pattern };
                    let re = regex_lite::Regex::new(&pattern)
                        .map_err(|e| Error::sql("2201B", format!("invalid regular expression: {e}")))?;
                    Value::Bool(re.is_match(&t.to_pg_text(None).unwrap_or_default()) != *negated)
                }
            },
            Expr::Binary(op, a, b) => arith(*op, a.eval(row, params)?, b.eval(row, params)?)?,
            Expr::IsNull(e, negated) => Value::Bool(e.eval(row, params)?.is_null() != *negated),
            Expr::InList(e, list, negated) => {
                let v = e.eval(row, params)?;
                if v.is_null() {
                    return Ok(Value::Null);
                }
                let mut saw_null = false;
                for item in list {
                    match v.sql_cmp(&item.eval(row, params)?)? {
                        Some(Ordering::Equal) => return Ok(Value::Bool(!negated)),
                        None => saw_null = true,
                        _ => {}
                    }
                }
                if saw_null {
                    Value::Null
                } else {
                    Value::Bool(*negated)
                }
            }
            Expr::InSet { expr, set, has_null, negated } => {
                let v = expr.eval(row, params)?;
                if v.is_null() {
                    Value::Null
                } else if set.contains(&crate::exec::row_identity(std::slice::from_ref(&v)))? {
                    Value::Bool(!negated)
                } else if *has_null {
                    Value::Null
                } else {
                    Value::Bool(*negated)
                }
            }
            Expr::Like { expr, pattern, negated, case_insensitive } => {
                match (expr.eval(row, params)?, pattern.eval(row, params)?) {
                    (Value::Null, _) | (_, Value::Null) => Value::Null,
                    (t, p) => {
                        let (mut t, mut p) =
                            (t.to_pg_text(None).unwrap_or_default(), p.to_pg_text(None).unwrap_or_default());
                        if *case_insensitive {
                            t = t.to_lowercase();
                            p = p.to_lowercase();
                        }
                        Value::Bool(like(&t, &p) != *negated)
                    }
                }
            }
            Expr::Case { operand, whens, otherwise } => {
                let subject = operand.as_ref().map(|o| o.eval(row, params)).transpose()?;
                for (cond, result) in whens {
                    let hit = match &subject {
                        Some(s) => s.sql_cmp(&cond.eval(row, params)?)? == Some(Ordering::Equal),
                        None => truth(&cond.eval(row, params)?)? == Some(true),
                    };
                    if hit {
                        return result.eval(row, params);
                    }
                }
                match otherwise {
                    Some(o) => o.eval(row, params)?,
                    None => Value::Null,
                }
            }
            Expr::Cast(e, ty) => e.eval(row, params)?.cast(*ty).map_err(to_sql_err)?,
            Expr::Func(f, args) => {
                let mut vals = args.iter().map(|a| a.eval(row, params));
                match f {
                    Func::StringAggPack => pack_ordered(vals.collect::<Result<_>>()?)?,
                    Func::Coalesce => {
                        for v in vals {
                            let v = v?;
                            if !v.is_null() {
                                return Ok(v);
                            }
                        }
                        Value::Null
                    }
                    Func::NullIf => {
                        let a = vals.next().transpose()?.unwrap_or(Value::Null);
                        let b = vals.next().transpose()?.unwrap_or(Value::Null);
                        if a.sql_cmp(&b)? == Some(Ordering::Equal) {
                            Value::Null
                        } else {
                            a
                        }
                    }
                    Func::Concat => {
                        let mut s = String::new();
                        for v in vals {
                            s.push_str(&v?.to_pg_text(None).unwrap_or_default());
                        }
                        Value::Text(s)
                    }
                    Func::Repeat => {
                        let s = vals.next().transpose()?.unwrap_or(Value::Null);
                        let n = numeric(vals.next().transpose()?.unwrap_or(Value::Null))?;
                        match (s, n) {
                            (Value::Null, _) | (_, Value::Null) => Value::Null,
                            (s, Value::Int(n)) => {
                                let s = s.to_pg_text(None).unwrap_or_default();
                                let n = usize::try_from(n.max(0)).unwrap_or(0);
                                if s.len().saturating_mul(n) > (1 << 30) {
                                    return Err(Error::sql("54000", "requested length too large"));
                                }
                                Value::Text(s.repeat(n))
                            }
                            (_, other) => {
                                return Err(Error::sql(
                                    "42883",
                                    format!("function repeat(text, {}) does not exist", other.type_name()),
                                ))
                            }
                        }
                    }
                    Func::ArrayToString => {
                        let arr = vals.next().transpose()?.unwrap_or(Value::Null);
                        let sep = vals.next().transpose()?.unwrap_or(Value::Null);
                        match (arr, sep) {
                            (Value::Null, _) | (_, Value::Null) => Value::Null,
                            (a, sep) => {
                                let items = parse_text_array(&a.to_pg_text(None).unwrap_or_default())?;
                                let parts: Vec<String> = items.into_iter().filter_map(|v| v.to_pg_text(None)).collect();
                                Value::Text(parts.join(&sep.to_pg_text(None).unwrap_or_default()))
                            }
                        }
                    }
                    Func::AnyEq => {
                        let x = vals.next().transpose()?.unwrap_or(Value::Null);
                        match vals.next().transpose()?.unwrap_or(Value::Null) {
                            Value::Null => Value::Null,
                            arr => {
                                let items = parse_text_array(&arr.to_pg_text(None).unwrap_or_default())?;
                                let mut saw_null = false;
                                let mut hit = false;
                                for it in items {
                                    match x.sql_cmp(&it)? {
                                        Some(std::cmp::Ordering::Equal) => hit = true,
                                        None => saw_null = true,
                                        _ => {}
                                    }
                                }
                                if hit {
                                    Value::Bool(true)
                                } else if saw_null || x.is_null() {
                                    Value::Null
                                } else {
                                    Value::Bool(false)
                                }
                            }
                        }
                    }
                    Func::TableIsVisible => match vals.next().transpose()? {
                        Some(Value::Null) | None => Value::Null,
                        Some(_) => Value::Bool(true),
                    },
                    Func::UserById => match vals.next().transpose()? {
                        Some(Value::Int(crate::pg_catalog::OWNER_OID)) => Value::Text("amberdb".into()),
                        Some(Value::Null) | None => Value::Null,
                        Some(_) => Value::Text("unknown".into()),
                    },
                    Func::Extract | Func::DatePart => {
                        let unit = vals.next().transpose()?.unwrap_or(Value::Null);
                        let v = vals.next().transpose()?.unwrap_or(Value::Null);
                        crate::interval::extract(unit, v, *f == Func::DatePart)?
                    }
                    Func::AtTimeZone => {
                        let v = vals.next().transpose()?.unwrap_or(Value::Null);
                        crate::zone::at_time_zone(v, vals.next().transpose()?.unwrap_or(Value::Null))?
                    }
                    Func::ToChar => {
                        let v = vals.next().transpose()?.unwrap_or(Value::Null);
                        crate::to_char::to_char(v, vals.next().transpose()?.unwrap_or(Value::Null))?
                    }
                    Func::DateTrunc => {
                        let unit = vals.next().transpose()?.unwrap_or(Value::Null);
                        crate::interval::date_trunc(unit, vals.next().transpose()?.unwrap_or(Value::Null))?
                    }
                    Func::Age => {
                        let a = vals.next().transpose()?.unwrap_or(Value::Null);
                        crate::interval::age_of(a, vals.next().transpose()?, crate::interval::today())?
                    }
                    Func::ToTimestamp => {
                        crate::interval::to_timestamp(vals.next().transpose()?.unwrap_or(Value::Null))?
                    }
                    Func::Builtin(b) => b.eval(vals.collect::<Result<Vec<_>>>()?)?,
                    Func::FormatType => {
                        let oid = vals.next().transpose()?.unwrap_or(Value::Null);
                        let typmod = vals.next().transpose()?.unwrap_or(Value::Null);
                        match oid {
                            Value::Int(o) => {
                                let n = match typmod {
                                    Value::Int(m) if m > 4 => Some((m - 4) as u32),
                                    _ => None,
                                };
                                let ty = match o {
                                    16 => Some(DataType::Bool),
                                    17 => Some(DataType::Bytea),
                                    20 => Some(DataType::Int8),
                                    21 => Some(DataType::Int2),
                                    23 => Some(DataType::Int4),
                                    25 => Some(DataType::Text),
                                    700 => Some(DataType::Float4),
                                    701 => Some(DataType::Float8),
                                    1042 => Some(DataType::Char(n.unwrap_or(1))),
                                    1043 => Some(DataType::Varchar(n)),
                                    1082 => Some(DataType::Date),
                                    1114 => Some(DataType::Timestamp),
                                    1186 => Some(DataType::Interval),
                                    1083 => Some(DataType::Time),
                                    1184 => Some(DataType::TimestampTz),
                                    1700 => Some(DataType::Numeric(match typmod {
                                        Value::Int(m) if m >= 4 => {
                                            Some((((m - 4) >> 16) as u32, ((m - 4) & 0xffff) as u32))
                                        }
                                        _ => None,
                                    })),
                                    _ => None,
                                };
                                Value::Text(ty.map_or_else(|| "???".to_string(), |t| t.pg_name()))
                            }
                            _ => Value::Null,
                        }
                    }
                    Func::Lower | Func::Upper | Func::Length => match vals.next().transpose()?.unwrap_or(Value::Null) {
                        Value::Null => Value::Null,
                        Value::Bytes(b) if *f == Func::Length => Value::Int(b.len() as i64),
                        v => {
                            let s = v.to_pg_text(None).unwrap_or_default();
                            match f {
                                Func::Lower => Value::Text(s.to_lowercase()),
                                Func::Upper => Value::Text(s.to_uppercase()),
                                _ => Value::Int(s.chars().count() as i64),
                            }
                        }
                    },
                    Func::Abs => match numeric(vals.next().transpose()?.unwrap_or(Value::Null))? {
                        Value::Null => Value::Null,
                        Value::Int(i) => {
                            Value::Int(i.checked_abs().ok_or_else(|| Error::sql("22003", "integer out of range"))?)
                        }
                        Value::Float(x) => Value::Float(x.abs()),
                        other => {
                            return Err(Error::sql(
                                "42883",
                                format!("function abs({}) does not exist", other.type_name()),
                            ))
                        }
                    },
                }
            }
        })
    }

    /// Evaluates a predicate: only TRUE passes (NULL and FALSE do not).
    pub fn matches(&self, row: &[Value], params: &[Value]) -> Result<bool> {
        Ok(truth(&self.eval(row, params)?)? == Some(true))
    }

    /// The expression with every column reference mapped through `f`.
    pub fn map_columns(&self, f: &impl Fn(usize) -> usize) -> Expr {
        let m = |e: &Expr| Box::new(e.map_columns(f));
        match self {
            Expr::Const(_) | Expr::Param(_) => self.clone(),
            Expr::Column(i) => Expr::Column(f(*i)),
            Expr::Not(e) => Expr::Not(m(e)),
            Expr::Neg(e) => Expr::Neg(m(e)),
            Expr::Binary(op, a, b) => Expr::Binary(*op, m(a), m(b)),
            Expr::IsNull(e, not) => Expr::IsNull(m(e), *not),
            Expr::InList(e, list, not) => Expr::InList(m(e), list.iter().map(|x| x.map_columns(f)).collect(), *not),
            Expr::InSet { expr, set, has_null, negated } => {
                Expr::InSet { expr: m(expr), set: set.clone(), has_null: *has_null, negated: *negated }
            }
            Expr::Like { expr, pattern, negated, case_insensitive } => Expr::Like {
                expr: m(expr),
                pattern: m(pattern),
                negated: *negated,
                case_insensitive: *case_insensitive,
            },
            Expr::Case { operand, whens, otherwise } => Expr::Case {
                operand: operand.as_deref().map(m),
                whens: whens.iter().map(|(w, t)| (w.map_columns(f), t.map_columns(f))).collect(),
                otherwise: otherwise.as_deref().map(m),
            },
            Expr::Cast(e, t) => Expr::Cast(m(e), *t),
            Expr::Func(func, args) => Expr::Func(*func, args.iter().map(|a| a.map_columns(f)).collect()),
        }
    }

    /// The lowest and highest column this expression reads (None: it reads none).
    pub fn column_span(&self) -> Option<(usize, usize)> {
        let lo = std::cell::Cell::new(usize::MAX);
        let hi = std::cell::Cell::new(0);
        self.map_columns(&|i| {
            lo.set(lo.get().min(i));
            hi.set(hi.get().max(i));
            i
        });
        (lo.get() != usize::MAX).then(|| (lo.get(), hi.get()))
    }

    /// The result type, when it can be told without evaluating.
    pub fn result_type(&self, scope: &[ScopeCol]) -> Option<DataType> {
        match self {
            Expr::Const(v) => v.natural_type(),
            Expr::Column(i) => scope.get(*i).and_then(|c| c.ty),
            Expr::Cast(_, t) => Some(*t),
            Expr::Func(Func::StringAggPack, _) => Some(DataType::Bytea),
            Expr::Not(_) | Expr::IsNull(..) | Expr::InList(..) | Expr::InSet { .. } | Expr::Like { .. } => {
                Some(DataType::Bool)
            }
            Expr::Binary(op, a, b) => match op {
                BinOp::And
                | BinOp::Or
                | BinOp::Eq
                | BinOp::NotEq
                | BinOp::Lt
                | BinOp::LtEq
                | BinOp::Gt
                | BinOp::GtEq => Some(DataType::Bool),
                BinOp::Concat => Some(DataType::Text),
                _ => match (a.result_type(scope), b.result_type(scope)) {
                    (
                        Some(DataType::Timestamp | DataType::TimestampTz),
                        Some(DataType::Timestamp | DataType::TimestampTz),
                    ) if *op == BinOp::Sub => Some(DataType::Interval),
                    (Some(DataType::Date), Some(DataType::Timestamp | DataType::TimestampTz))
                    | (Some(DataType::Timestamp | DataType::TimestampTz), Some(DataType::Date))
                        if *op == BinOp::Sub =>
                    {
                        Some(DataType::Interval)
                    }
                    (Some(DataType::Time), Some(DataType::Interval))
                    | (Some(DataType::Interval), Some(DataType::Time)) => Some(DataType::Time),
                    (Some(DataType::Time), Some(DataType::Time)) if *op == BinOp::Sub => Some(DataType::Interval),
                    (Some(DataType::Date), Some(DataType::Time)) | (Some(DataType::Time), Some(DataType::Date)) => {
                        Some(DataType::Timestamp)
                    }
                    (Some(t @ (DataType::Timestamp | DataType::TimestampTz)), Some(DataType::Interval))
                    | (Some(DataType::Interval), Some(t @ (DataType::Timestamp | DataType::TimestampTz))) => Some(t),
                    (Some(DataType::Date), Some(DataType::Interval))
                    | (Some(DataType::Interval), Some(DataType::Date)) => Some(DataType::Timestamp),
                    (Some(DataType::Interval), _) | (_, Some(DataType::Interval)) => Some(DataType::Interval),
                    (Some(DataType::Date), Some(DataType::Date)) if *op == BinOp::Sub => Some(DataType::Int4),
                    (Some(DataType::Date), Some(DataType::Int2 | DataType::Int4 | DataType::Int8))
                    | (Some(DataType::Int2 | DataType::Int4 | DataType::Int8), Some(DataType::Date)) => {
                        Some(DataType::Date)
                    }
                    (Some(DataType::Float4 | DataType::Float8), _) | (_, Some(DataType::Float4 | DataType::Float8)) => {
                        Some(DataType::Float8)
                    }
                    (Some(DataType::Numeric(_)), _) | (_, Some(DataType::Numeric(_))) => Some(DataType::Numeric(None)),
                    (Some(DataType::Int8), _) | (_, Some(DataType::Int8)) => Some(DataType::Int8),
                    (Some(x), Some(y)) if x == y => Some(x),
                    (Some(DataType::Int4 | DataType::Int2), Some(DataType::Int4 | DataType::Int2)) => {
                        Some(DataType::Int4)
                    }
                    _ => None,
                },
            },
            Expr::Neg(e) => e.result_type(scope),
            Expr::Func(Func::Length, _) => Some(DataType::Int4),
            Expr::Func(
                Func::Lower
                | Func::Upper
                | Func::Concat
                | Func::Repeat
                | Func::UserById
                | Func::FormatType
                | Func::ArrayToString
                | Func::ToChar,
                _,
            ) => Some(DataType::Text),
            Expr::Func(Func::TableIsVisible | Func::AnyEq, _) => Some(DataType::Bool),
            Expr::Func(Func::Extract, _) => Some(DataType::Numeric(None)),
            Expr::Func(Func::DatePart, _) => Some(DataType::Float8),
            Expr::Func(Func::Age, _) => Some(DataType::Interval),
            Expr::Func(Func::ToTimestamp, _) => Some(DataType::TimestampTz),
            Expr::Func(Func::Builtin(b), args) => {
                b.result_type(&args.iter().map(|a| a.result_type(scope)).collect::<Vec<_>>())
            }
            Expr::Func(Func::AtTimeZone, args) => match args.first().and_then(|a| a.result_type(scope)) {
                Some(DataType::Timestamp) => Some(DataType::TimestampTz),
                _ => Some(DataType::Timestamp),
            },
            Expr::Func(Func::DateTrunc, args) => match args.get(1).and_then(|a| a.result_type(scope)) {
                Some(DataType::Timestamp) => Some(DataType::Timestamp),
                _ => Some(DataType::TimestampTz),
            },
            Expr::Func(Func::Coalesce | Func::NullIf | Func::Abs, args) => {
                args.iter().find_map(|a| a.result_type(scope))
            }
            Expr::Case { whens, otherwise, .. } => {
                whens.iter().map(|(_, r)| r).chain(otherwise.as_deref()).find_map(|r| r.result_type(scope))
            }
            Expr::Param(_) => None,
        }
    }
}

/// Maps cast/check failures (InvalidInput) to the SQLSTATEs PostgreSQL uses.
pub fn to_sql_err(e: Error) -> Error {
    match e {
        Error::InvalidInput(m) if m.contains("out of range") || m.contains("overflow") => Error::sql("22003", m),
        Error::InvalidInput(m) if m.contains("too long") => Error::sql("22001", m),
        Error::InvalidInput(m) if m.starts_with("invalid input syntax") => Error::sql("22P02", m),
        Error::InvalidInput(m) if m.starts_with("cannot cast") => Error::sql("42846", m),
        Error::InvalidInput(m) if m.starts_with("operator does not exist") => Error::sql("42883", m),
        Error::InvalidInput(m) if m.contains("is not supported") => Error::sql("0A000", m),
        other => other,
    }
}

/// Computes the hidden columns of `correlated` for one input row.
pub fn eval_correlated(
    txn: &mut amberdb_mvcc::Transaction,
    correlated: &[Correlated],
    scope: &[ScopeCol],
    row: &[Value],
    params: &[Value],
) -> Result<Vec<Value>> {
    correlated
        .iter()
        .map(|c| {
            let (cols, mut rows) = with_outer_row(scope, row, || crate::exec::query(txn, &c.query, params))?;
            if let CorrelatedKind::Exists(negated) = c.kind {
                // Only whether a first row exists is read.
                return Ok(Value::Bool(rows.next().transpose()?.is_none() == negated));
            }
            // A scalar subquery needs at most two rows to be judged.
            let limit = if matches!(c.kind, CorrelatedKind::Scalar) { 2 } else { usize::MAX };
            let rows = rows.by_ref().take(limit).collect::<Result<Vec<_>>>()?;
            Ok(match &c.kind {
                CorrelatedKind::Exists(negated) => Value::Bool(rows.is_empty() == *negated),
                CorrelatedKind::Scalar | CorrelatedKind::In(..) | CorrelatedKind::Array if cols.len() != 1 => {
                    return Err(Error::sql("42601", "subquery must return only one column"))
                }
                CorrelatedKind::Scalar => {
                    if rows.len() > 1 {
                        return Err(Error::sql(
                            "21000",
                            "more than one row returned by a subquery used as an expression",
                        ));
                    }
                    rows.into_iter().next().and_then(|r| r.into_iter().next()).unwrap_or(Value::Null)
                }
                CorrelatedKind::Array => text_array(rows.into_iter().filter_map(|r| r.into_iter().next())),
                CorrelatedKind::In(lhs, negated) => {
                    let list = rows.into_iter().filter_map(|r| r.into_iter().next()).map(Expr::Const).collect();
                    Expr::InList(Box::new(lhs.clone()), list, *negated).eval(row, params)?
                }
            })
        })
        .collect()
}
