//! Window functions: `f(…) OVER ([PARTITION BY …] [ORDER BY …])` in a select list or
//! ORDER BY (a grouped query is first split so that its grouping is a derived table,
//! see [`split_grouped`]).
//!
//! ```text
//!   rows after WHERE ──▶ per window call: + partition, order, argument values
//!                        ──▶ spill::sort by (partition, order)   (bounded by work_mem)
//!                        ──▶ walk partitions peer group by peer group ──▶ + one column
//!   the call's text names the new column; the select list binds the call to it
//! ```
//!
//! Each call appends one column, named by its text, which the binder resolves the call
//! to (so the select list, ORDER BY and expressions around the call need nothing else).
//! Semantics are PostgreSQL's default frame: with ORDER BY, `RANGE BETWEEN UNBOUNDED
//! PRECEDING AND CURRENT ROW` — a running aggregate over the partition so far, peers
//! (rows equal in the ORDER BY) included; without it, the whole partition. The sort
//! spills past work_mem; after it, memory holds one row for `row_number`, one peer
//! group for the others (without ORDER BY every row of a partition is a peer, so an
//! aggregate over a whole partition holds that partition), and one partition for
//! `lag`/`lead` and for `percent_rank`/`cume_dist`/`ntile` (which need its size).
//! `first_value`/`last_value`/`nth_value` follow the default frame: the partition's
//! first row through the current row's last peer. Explicit frames, named windows and DISTINCT inside a window aggregate
//! are refused with 0A000.

use crate::exec::Acc;
use crate::expr::{AggCall, AggFunc, Binder, Expr, ScopeCol};
use crate::pipeline::{compare, Params, Row, RowIter, SortKey};
use crate::types::{DataType, Value};
use amberdb_error::{Error, Result};
use sqlparser::ast::{self, VisitMut};
use std::cmp::Ordering;
use std::iter::Peekable;
use std::ops::ControlFlow;

/// What a window call computes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WinFunc {
    RowNumber,
    Rank,
    DenseRank,
    Lag,
    Lead,
    FirstValue,
    LastValue,
    NthValue,
    PercentRank,
    CumeDist,
    Ntile,
    Agg(AggFunc),
}

/// A bound window call.
pub(crate) struct WindowCall {
    /// Its SQL text: the name of the column it becomes.
    pub text: String,
    /// Its result type.
    pub ty: Option<DataType>,
    func: WinFunc,
    args: Vec<Expr>,
    partition: Vec<Expr>,
    order: Vec<(Expr, bool, bool)>,
}

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::sql("0A000", format!("{what} is not supported"))
}

/// The window calls in a select list and ORDER BY, each once, in order of appearance.
pub(crate) fn calls_in(select: &ast::Select, order_by: Option<&ast::OrderBy>) -> Vec<ast::Function> {
    let mut found: Vec<ast::Function> = Vec::new();
    let mut note = |e: &ast::Expr| {
        if let ast::Expr::Function(f) = e {
            if f.over.is_some() && !found.iter().any(|g| g.to_string() == f.to_string()) {
                found.push(f.clone());
            }
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = ast::visit_expressions(&select.projection, &mut note);
    if let Some(o) = order_by {
        let _ = ast::visit_expressions(o, &mut note);
    }
    found
}

/// Binds window calls against the rows' scope.
pub(crate) fn bind(calls: &[ast::Function], scope: &[ScopeCol]) -> Result<Vec<WindowCall>> {
    calls.iter().map(|f| bind_one(f, scope)).collect()
}

fn bind_one(f: &ast::Function, scope: &[ScopeCol]) -> Result<WindowCall> {
    let text = f.to_string();
    let spec = match &f.over {
        Some(ast::WindowType::WindowSpec(s)) => s,
        Some(ast::WindowType::NamedWindow(w)) => return Err(unsupported(format!("named window {w}"))),
        None => return Err(Error::Internal(format!("{text} has no OVER"))),
    };
    if spec.window_name.is_some() {
        return Err(unsupported("a window based on a named window"));
    }
    if spec.window_frame.is_some() {
        return Err(Error::sql(
            "0A000",
            format!("explicit window frames are not supported, only the default one: {text}"),
        ));
    }
    if f.filter.is_some() {
        return Err(unsupported(format!("FILTER in a window function ({text})")));
    }
    let name = f.name.to_string().to_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let mut b = Binder::new(scope);
    let (args, distinct, star) = match &f.args {
        ast::FunctionArguments::None => (vec![], false, false),
        ast::FunctionArguments::List(l) => {
            let distinct = matches!(l.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
            if !l.clauses.is_empty() {
                return Err(unsupported(format!("clauses inside a window function's arguments ({text})")));
            }
            let mut star = false;
            let mut args = Vec::new();
            for a in &l.args {
                match a {
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => args.push(b.bind(e)?),
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard) => star = true,
                    other => return Err(unsupported(format!("window function argument {other}"))),
                }
            }
            (args, distinct, star)
        }
        ast::FunctionArguments::Subquery(_) => return Err(unsupported("a subquery as a window function argument")),
    };
    if distinct {
        return Err(Error::sql("0A000", "DISTINCT is not implemented for window functions"));
    }
    let wrong_args = || Error::sql("42883", format!("function {text} does not exist"));
    let (func, ty) = match name {
        "row_number" | "rank" | "dense_rank" => {
            if !args.is_empty() || star {
                return Err(wrong_args());
            }
            let func = match name {
                "row_number" => WinFunc::RowNumber,
                "rank" => WinFunc::Rank,
                _ => WinFunc::DenseRank,
            };
            (func, Some(DataType::Int8))
        }
        "first_value" | "last_value" if args.len() == 1 && !star => {
            let func = if name == "first_value" { WinFunc::FirstValue } else { WinFunc::LastValue };
            (func, args[0].result_type(scope))
        }
        "nth_value" if args.len() == 2 && !star => (WinFunc::NthValue, args[0].result_type(scope)),
        "percent_rank" | "cume_dist" if args.is_empty() && !star => {
            let func = if name == "percent_rank" { WinFunc::PercentRank } else { WinFunc::CumeDist };
            (func, Some(DataType::Float8))
        }
        "ntile" if args.len() == 1 && !star => (WinFunc::Ntile, Some(DataType::Int4)),
        "first_value" | "last_value" | "nth_value" | "percent_rank" | "cume_dist" | "ntile" => return Err(wrong_args()),
        "lag" | "lead" => {
            if args.is_empty() || args.len() > 3 {
                return Err(wrong_args());
            }
            let func = if name == "lag" { WinFunc::Lag } else { WinFunc::Lead };
            (func, args[0].result_type(scope))
        }
        other => match AggFunc::from_name(other) {
            Some(AggFunc::StringAgg) | None => {
                return Err(Error::sql("42883", format!("window function {other} does not exist or is not supported")))
            }
            Some(agg) => {
                let agg = match (agg, star, args.len()) {
                    (AggFunc::Count, true, 0) => AggFunc::CountStar,
                    (_, false, 1) => agg,
                    _ => return Err(wrong_args()),
                };
                let call = AggCall {
                    func: agg,
                    arg: args.first().cloned(),
                    distinct: false,
                    delimiter: None,
                    text: text.clone(),
                };
                (WinFunc::Agg(agg), crate::exec::agg_type(&call, scope))
            }
        },
    };
    let partition = spec.partition_by.iter().map(|e| b.bind(e)).collect::<Result<Vec<_>>>()?;
    let mut order = Vec::new();
    for o in &spec.order_by {
        if matches!(o.options.sort, Some(ast::OrderBySort::Using(_))) {
            return Err(unsupported("ORDER BY … USING in a window"));
        }
        let desc = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
        order.push((b.bind(&o.expr)?, desc, o.options.nulls_first.unwrap_or(desc)));
    }
    Ok(WindowCall { text, ty, func, args, partition, order })
}

/// Appends one column per call to every row (rows come out grouped by the last call's
/// partitions; the query's ORDER BY, if any, orders them afterwards).
pub(crate) fn apply(mut rows: RowIter, calls: Vec<WindowCall>, width: usize, params: Params) -> Result<RowIter> {
    for (i, call) in calls.into_iter().enumerate() {
        rows = apply_one(rows, call, width + i, params.clone())?;
    }
    Ok(rows)
}

fn apply_one(rows: RowIter, call: WindowCall, width: usize, params: Params) -> Result<RowIter> {
    let (np, no, na) = (call.partition.len(), call.order.len(), call.args.len());
    let exprs: Vec<Expr> = call
        .partition
        .iter()
        .cloned()
        .chain(call.order.iter().map(|(e, _, _)| e.clone()))
        .chain(call.args.iter().cloned())
        .collect();
    let p = params.clone();
    let extended = crate::pipeline::map(rows, move |mut r| {
        let vals = exprs.iter().map(|e| e.eval(&r, &p)).collect::<Result<Vec<_>>>()?;
        r.extend(vals);
        Ok(r)
    });
    let part_keys: Vec<SortKey> = (0..np).map(|i| (width + i, false, false)).collect();
    let order_keys: Vec<SortKey> =
        call.order.iter().enumerate().map(|(i, (_, desc, nf))| (width + np + i, *desc, *nf)).collect();
    let keys: Vec<SortKey> = part_keys.iter().chain(&order_keys).copied().collect();
    let sorted = crate::spill::sort(extended, &keys, None, crate::spill::work_mem())?;
    let walker = Walker {
        input: sorted.peekable(),
        func: call.func,
        width,
        arg_at: width + np + no,
        args: na,
        part_keys,
        order_keys,
        out: Vec::new().into_iter(),
        state: None,
        failed: false,
    };
    Ok(Box::new(walker))
}

/// Walks sorted rows a block at a time (a peer group, or a partition for lag/lead),
/// carrying the partition's running state between blocks.
struct Walker {
    input: Peekable<RowIter>,
    func: WinFunc,
    /// Columns of the rows before this call's extra values.
    width: usize,
    /// Where the call's argument values start, and how many there are.
    arg_at: usize,
    args: usize,
    part_keys: Vec<SortKey>,
    order_keys: Vec<SortKey>,
    out: std::vec::IntoIter<Result<Row>>,
    /// The current partition's first row and running state.
    state: Option<(Row, PartState)>,
    failed: bool,
}

/// Running state within one partition.
struct PartState {
    rows_before: i64,
    groups_before: i64,
    acc: Option<Acc>,
    /// first_value's and nth_value's answer, once its row has been seen.
    found: Option<Value>,
}

/// A positive integer argument (ntile's bucket count, nth_value's position).
fn positive_arg(v: &Value, what: &str) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Int(n) if *n > 0 => Ok(Some(*n)),
        Value::Int(_) => Err(Error::sql(
            if what == "ntile" { "22014" } else { "22016" },
            format!("argument of {what} must be greater than zero"),
        )),
        other => Err(Error::sql("42883", format!("{what} takes an integer, not {}", other.type_name()))),
    }
}

impl Walker {
    /// The next block: rows equal to the first in partition (and order keys unless
    /// `whole_partition`).
    fn block(&mut self, whole_partition: bool) -> Result<Option<Vec<Row>>> {
        let first = match self.input.next() {
            None => return Ok(None),
            Some(r) => r?,
        };
        let mut block = vec![first];
        // row_number needs no peers: one row at a time, whatever the partition's size.
        if self.func == WinFunc::RowNumber {
            return Ok(Some(block));
        }
        loop {
            let same = match self.input.peek() {
                Some(Ok(next)) => {
                    let last = &block[block.len() - 1];
                    compare(last, next, &self.part_keys) == Ordering::Equal
                        && (whole_partition || compare(last, next, &self.order_keys) == Ordering::Equal)
                }
                Some(Err(_)) => true,
                None => false,
            };
            if !same {
                return Ok(Some(block));
            }
            match self.input.next() {
                Some(Ok(r)) => block.push(r),
                Some(Err(e)) => return Err(e),
                None => return Ok(Some(block)),
            }
        }
    }

    fn finish_row(&self, mut r: Row, v: Value) -> Result<Row> {
        r.truncate(self.width);
        r.push(v);
        Ok(r)
    }

    /// Computes the next block's output rows.
    fn fill(&mut self, state: &mut Option<(Row, PartState)>) -> Result<bool> {
        let partition_wide = matches!(
            self.func,
            WinFunc::Lag | WinFunc::Lead | WinFunc::PercentRank | WinFunc::CumeDist | WinFunc::Ntile
        );
        let Some(block) = self.block(partition_wide)? else { return Ok(false) };
        // A new partition resets the running state.
        let new_partition = match state {
            Some((first, _)) => compare(first, &block[0], &self.part_keys) != Ordering::Equal,
            None => true,
        };
        if new_partition {
            let acc = match self.func {
                WinFunc::Agg(f) => Some(Acc::new(&(f, None))),
                _ => None,
            };
            *state = Some((block[0].clone(), PartState { rows_before: 0, groups_before: 0, acc, found: None }));
        }
        let Some((_, st)) = state.as_mut() else { return Err(Error::Internal("window state".into())) };
        let mut out = Vec::with_capacity(block.len());
        match self.func {
            WinFunc::RowNumber => {
                for r in block {
                    st.rows_before += 1;
                    out.push(self.finish_row(r, Value::Int(st.rows_before)));
                }
            }
            WinFunc::Rank | WinFunc::DenseRank => {
                let value = if self.func == WinFunc::Rank { st.rows_before + 1 } else { st.groups_before + 1 };
                st.rows_before += block.len() as i64;
                st.groups_before += 1;
                for r in block {
                    out.push(self.finish_row(r, Value::Int(value)));
                }
            }
            WinFunc::Agg(_) => {
                let acc = st.acc.as_mut().ok_or_else(|| Error::Internal("window aggregate state".into()))?;
                for r in &block {
                    let v = if self.args == 0 { Value::Null } else { r[self.arg_at].clone() };
                    acc.add(v)?;
                }
                // Every peer sees the aggregate over the partition up to its last peer.
                let value = acc.clone().finish();
                for r in block {
                    out.push(self.finish_row(r, value.clone()));
                }
            }
            // The default frame runs from the partition's first row to the current
            // row's last peer.
            WinFunc::FirstValue => {
                let v = st.found.get_or_insert_with(|| block[0][self.arg_at].clone()).clone();
                for r in block {
                    out.push(self.finish_row(r, v.clone()));
                }
            }
            WinFunc::LastValue => {
                let v = block[block.len() - 1][self.arg_at].clone();
                for r in block {
                    out.push(self.finish_row(r, v.clone()));
                }
            }
            WinFunc::NthValue => {
                let n = positive_arg(&block[0][self.arg_at + 1], "nth_value")?;
                if let (None, Some(n)) = (&st.found, n) {
                    let at = n - 1 - st.rows_before;
                    if (0..block.len() as i64).contains(&at) {
                        st.found = Some(block[at as usize][self.arg_at].clone());
                    }
                }
                st.rows_before += block.len() as i64;
                let v = if n.is_some() { st.found.clone().unwrap_or(Value::Null) } else { Value::Null };
                for r in block {
                    out.push(self.finish_row(r, v.clone()));
                }
            }
            // These see the whole partition: its size, and its peer groups in order.
            WinFunc::PercentRank | WinFunc::CumeDist => {
                let n = block.len();
                let mut start = 0;
                while start < n {
                    let mut end = start + 1;
                    while end < n && compare(&block[start], &block[end], &self.order_keys) == Ordering::Equal {
                        end += 1;
                    }
                    let v = if self.func == WinFunc::PercentRank {
                        if n == 1 {
                            0.0
                        } else {
                            start as f64 / (n - 1) as f64
                        }
                    } else {
                        end as f64 / n as f64
                    };
                    for r in &block[start..end] {
                        out.push(self.finish_row(r.clone(), Value::Float(v)));
                    }
                    start = end;
                }
            }
            WinFunc::Ntile => {
                let rows = block.len() as i64;
                for (i, r) in block.into_iter().enumerate() {
                    let Some(buckets) = positive_arg(&r[self.arg_at], "ntile")? else {
                        out.push(self.finish_row(r, Value::Null));
                        continue;
                    };
                    // The first `rows % buckets` buckets hold one row more.
                    let (size, extra) = (rows / buckets, rows % buckets);
                    let i = i as i64;
                    let bucket = if i < extra * (size + 1) {
                        i / (size + 1)
                    } else {
                        extra + (i - extra * (size + 1)) / size.max(1)
                    };
                    out.push(self.finish_row(r, Value::Int(bucket + 1)));
                }
            }
            WinFunc::Lag | WinFunc::Lead => {
                let n = block.len() as i64;
                let values: Vec<Value> = block.iter().map(|r| r[self.arg_at].clone()).collect();
                for (i, r) in block.into_iter().enumerate() {
                    let offset = match self.args {
                        1 => 1,
                        _ => match &r[self.arg_at + 1] {
                            Value::Int(k) => *k,
                            Value::Null => {
                                out.push(self.finish_row(r, Value::Null));
                                continue;
                            }
                            other => {
                                return Err(Error::sql(
                                    "42883",
                                    format!("lag/lead offset must be an integer, not {}", other.type_name()),
                                ))
                            }
                        },
                    };
                    let at = if self.func == WinFunc::Lag { i as i64 - offset } else { i as i64 + offset };
                    let v = if (0..n).contains(&at) {
                        values[at as usize].clone()
                    } else if self.args == 3 {
                        r[self.arg_at + 2].clone()
                    } else {
                        Value::Null
                    };
                    out.push(self.finish_row(r, v));
                }
            }
        }
        self.out = out.into_iter();
        Ok(true)
    }
}

impl Iterator for Walker {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(r) = self.out.next() {
                return Some(r);
            }
            if self.failed {
                return None;
            }
            let mut state = self.state.take();
            match self.fill(&mut state) {
                Ok(true) => self.state = state,
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A grouped query with window calls, split in two: the grouping in a derived table
/// (its group keys and aggregates as columns `__g1…`, `__a1…`), and the windows over
/// it — `SELECT dept, sum(pay), rank() OVER (ORDER BY sum(pay)) FROM emp GROUP BY dept`
/// becomes `SELECT __g1, __a1, rank() OVER (ORDER BY __a1) FROM (SELECT dept AS __g1,
/// sum(pay) AS __a1 FROM emp GROUP BY dept) AS __grouped`, which PostgreSQL's order of
/// evaluation (windows after grouping and HAVING) makes the same query. `None` when the
/// query has no window call or no grouping.
pub(crate) fn split_grouped(
    select: &ast::Select,
    order_by: Option<&ast::OrderBy>,
    group_exprs: &[ast::Expr],
    aggregate: bool,
) -> Result<Option<(ast::Select, Option<ast::OrderBy>)>> {
    if !aggregate || calls_in(select, order_by).is_empty() {
        return Ok(None);
    }
    let has_subquery = ast::visit_expressions(&select.projection, |e| match e {
        ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if has_subquery.is_break() {
        return Err(unsupported("a subquery beside window functions in a grouped query"));
    }
    let mut outer = select.clone();
    let mut outer_order = order_by.cloned();
    let mut lift = Lift { groups: group_exprs.iter().map(ToString::to_string).collect(), aggs: Vec::new() };
    let _ = outer.projection.visit(&mut lift);
    if let Some(o) = outer_order.as_mut() {
        let _ = o.visit(&mut lift);
    }
    if outer
        .projection
        .iter()
        .any(|p| !matches!(p, ast::SelectItem::UnnamedExpr(_) | ast::SelectItem::ExprWithAlias { .. }))
    {
        return Err(unsupported("* beside window functions in a grouped query"));
    }
    // What is left of the input's columns was neither grouped nor aggregated.
    let stray = ast::visit_expressions(&outer.projection, |e| match e {
        ast::Expr::Identifier(i) if !i.value.starts_with("__g") && !i.value.starts_with("__a") => {
            ControlFlow::Break(e.to_string())
        }
        ast::Expr::CompoundIdentifier(_) => ControlFlow::Break(e.to_string()),
        _ => ControlFlow::Continue(()),
    });
    if let ControlFlow::Break(column) = stray {
        return Err(Error::sql(
            "42803",
            format!("column \"{column}\" must appear in the GROUP BY clause or be used in an aggregate function"),
        ));
    }
    // The grouping, alone: group keys and aggregates, named.
    let mut inner = select.clone();
    inner.distinct = None;
    inner.projection = group_exprs
        .iter()
        .enumerate()
        .map(|(i, g)| (g.clone(), format!("__g{}", i + 1)))
        .chain(lift.aggs.iter().enumerate().map(|(i, (_, a))| (a.clone(), format!("__a{}", i + 1))))
        .map(|(expr, name)| ast::SelectItem::ExprWithAlias { expr, alias: ast::Ident::new(name) })
        .collect();
    let inner_query = ast::Query {
        with: None,
        body: Box::new(ast::SetExpr::Select(Box::new(inner))),
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks: vec![],
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: vec![],
    };
    outer.from = vec![ast::TableWithJoins {
        relation: ast::TableFactor::Derived {
            lateral: false,
            subquery: Box::new(inner_query),
            alias: Some(ast::TableAlias {
                explicit: true,
                name: ast::Ident::new("__grouped"),
                columns: vec![],
                at: None,
            }),
            sample: None,
        },
        joins: vec![],
    }];
    outer.selection = None;
    outer.group_by = ast::GroupByExpr::Expressions(vec![], vec![]);
    outer.having = None;
    Ok(Some((outer, outer_order)))
}

/// Replaces group keys and aggregate calls (not window calls) by the grouping's columns.
struct Lift {
    groups: Vec<String>,
    /// (text, call) of each aggregate met, in order.
    aggs: Vec<(String, ast::Expr)>,
}

impl ast::VisitorMut for Lift {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut ast::Expr) -> ControlFlow<()> {
        let text = e.to_string();
        if let Some(i) = self.groups.iter().position(|g| *g == text) {
            *e = ast::Expr::Identifier(ast::Ident::new(format!("__g{}", i + 1)));
            return ControlFlow::Continue(());
        }
        if let ast::Expr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            if f.over.is_none() && AggFunc::from_name(name.trim_start_matches("pg_catalog.")).is_some() {
                let i = match self.aggs.iter().position(|(t, _)| *t == text) {
                    Some(i) => i,
                    None => {
                        self.aggs.push((text, e.clone()));
                        self.aggs.len() - 1
                    }
                };
                *e = ast::Expr::Identifier(ast::Ident::new(format!("__a{}", i + 1)));
            }
        }
        ControlFlow::Continue(())
    }
}
