//! Describe: result columns and parameter types of a statement without executing it
//! (used by the extended query protocol). It runs the statement's *shape* against the
//! catalog only, in a read-only transaction that is discarded.

use crate::catalog::Catalog;
use crate::exec::OutColumn;
use crate::expr::ident;
use crate::types::{DataType, Value};
use amberdb_consensus::Node;
use amberdb_error::Result;
use sqlparser::ast;

/// What Describe reports: each parameter's type (None: unknown) and the result
/// columns (None: the statement returns no rows).
pub type Description = (Vec<Option<DataType>>, Option<Vec<OutColumn>>);

/// Infers parameter types from `column = $n`, `$n = column`, and INSERT value positions;
/// result columns by running the query with NULL parameters over tables read as empty
/// (uncorrelated subqueries, whose values become typed constants, still run).
pub fn describe(node: &Node, stmt: &ast::Statement) -> Result<Description> {
    let mut txn = node.begin_read_only()?;
    let params_cell: std::cell::RefCell<Vec<Option<DataType>>> = std::cell::RefCell::new(Vec::new());
    let note = |n: usize, ty: Option<DataType>| {
        let mut params = params_cell.borrow_mut();
        if n == 0 {
            return;
        }
        if params.len() < n {
            params.resize(n, None);
        }
        if params[n - 1].is_none() {
            params[n - 1] = ty;
        }
    };
    let placeholder = |e: &ast::Expr| -> Option<usize> {
        match e {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::Placeholder(p) => p.strip_prefix('$').and_then(|d| d.parse().ok()),
                _ => None,
            },
            ast::Expr::Cast { expr, .. } => match expr.as_ref() {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::Placeholder(p) => p.strip_prefix('$').and_then(|d| d.parse().ok()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    };
    // Column types of every table the statement may name, by column name.
    let tables = Catalog::list(&mut txn)?;
    let col_type = |name: &str| -> Option<DataType> {
        tables.iter().find_map(|t| t.columns.iter().find(|c| c.name == name).map(|c| c.ty))
    };
    let text = stmt.to_string();
    // Walk the SQL text's expressions cheaply through sqlparser's visitor-free Display:
    // handle the common shapes explicitly.
    fn walk(e: &ast::Expr, f: &mut dyn FnMut(&ast::Expr)) {
        f(e);
        match e {
            ast::Expr::BinaryOp { left, right, .. } => {
                walk(left, f);
                walk(right, f);
            }
            ast::Expr::Nested(x) | ast::Expr::UnaryOp { expr: x, .. } | ast::Expr::Cast { expr: x, .. } => walk(x, f),
            ast::Expr::Between { expr, low, high, .. } => {
                walk(expr, f);
                walk(low, f);
                walk(high, f);
            }
            ast::Expr::InList { expr, list, .. } => {
                walk(expr, f);
                list.iter().for_each(|x| walk(x, f));
            }
            _ => {}
        }
    }
    let visit = |e: &ast::Expr| {
        if let ast::Expr::BinaryOp { left, right, .. } = e {
            for (a, b) in [(left, right), (right, left)] {
                if let Some(n) = placeholder(b) {
                    let ty = match a.as_ref() {
                        ast::Expr::Identifier(i) => col_type(&ident(i)),
                        ast::Expr::CompoundIdentifier(p) => p.last().and_then(|i| col_type(&ident(i))),
                        _ => None,
                    };
                    note(n, ty);
                }
            }
        }
        if let Some(n) = placeholder(e) {
            let cast = match e {
                ast::Expr::Cast { data_type, .. } => DataType::parse(&data_type.to_string()).ok(),
                _ => None,
            };
            note(n, cast);
        }
    };
    let mut columns = None;
    match stmt {
        ast::Statement::Query(q) => {
            if let ast::SetExpr::Select(s) = q.body.as_ref() {
                if let Some(w) = &s.selection {
                    walk(w, &mut |e: &ast::Expr| visit(e));
                }
                for p in &s.projection {
                    if let ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } = p {
                        walk(e, &mut |e: &ast::Expr| visit(e));
                    }
                }
                // Arguments of FROM functions (`generate_series($1::bigint, …)`) and
                // join conditions.
                for twj in &s.from {
                    let factors = std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
                    for tf in factors {
                        if let ast::TableFactor::Table { args: Some(targs), .. } = tf {
                            for a in &targs.args {
                                if let ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) = a {
                                    walk(e, &mut |e: &ast::Expr| visit(e));
                                }
                            }
                        }
                    }
                    for j in &twj.joins {
                        use ast::JoinOperator as J;
                        if let J::Join(c)
                        | J::Inner(c)
                        | J::Left(c)
                        | J::LeftOuter(c)
                        | J::Right(c)
                        | J::RightOuter(c)
                        | J::FullOuter(c) = &j.join_operator
                        {
                            if let ast::JoinConstraint::On(e) = c {
                                walk(e, &mut |e: &ast::Expr| visit(e));
                            }
                        }
                    }
                }
            }
            // LIMIT $n / OFFSET $n are bigint, as in PostgreSQL.
            if let Some(ast::LimitClause::LimitOffset { limit, offset, .. }) = &q.limit_clause {
                for e in limit.iter().chain(offset.as_ref().map(|o| &o.value)) {
                    if let Some(n) = placeholder(e) {
                        note(n, Some(DataType::Int8));
                    }
                    walk(e, &mut |e: &ast::Expr| visit(e));
                }
            }
        }
        ast::Statement::Update(u) => {
            if let Some(w) = &u.selection {
                walk(w, &mut |e: &ast::Expr| visit(e));
            }
            for a in &u.assignments {
                if let ast::AssignmentTarget::ColumnName(c) = &a.target {
                    let cname = c.0.last().and_then(|p| p.as_ident()).map(ident);
                    walk(&a.value, &mut |e: &ast::Expr| visit(e));
                    if let Some(n) = placeholder(&a.value) {
                        note(n, cname.as_deref().and_then(col_type));
                    }
                }
            }
        }
        ast::Statement::Delete(d) => {
            if let Some(w) = &d.selection {
                walk(w, &mut |e: &ast::Expr| visit(e));
            }
        }
        ast::Statement::Insert(i) => {
            let table = match &i.table {
                ast::TableObject::TableName(n) => Catalog::get(&mut txn, &n.to_string().to_lowercase())?,
                _ => None,
            };
            if let (Some(def), Some(src)) = (table, &i.source) {
                let targets: Vec<Option<DataType>> = if i.columns.is_empty() {
                    def.columns.iter().map(|c| Some(c.ty)).collect()
                } else {
                    i.columns
                        .iter()
                        .map(|c| def.column_index(&c.to_string().to_lowercase()).map(|x| def.columns[x].ty))
                        .collect()
                };
                if let ast::SetExpr::Values(v) = src.body.as_ref() {
                    for row in &v.rows {
                        for (e, ty) in row.content.iter().zip(&targets) {
                            if let Some(n) = placeholder(e) {
                                note(n, *ty);
                            }
                            walk(e, &mut |e: &ast::Expr| visit(e));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    let mut params = params_cell.into_inner();
    // Count every placeholder in the text, even ones we could not type.
    let max = (1..=65535usize).take_while(|n| text.contains(&format!("${n}"))).last().unwrap_or(0);
    if params.len() < max {
        params.resize(max, None);
    }
    if let ast::Statement::Query(q) = stmt {
        let nulls = vec![Value::Null; params.len()];
        // Shape only: tables read as empty, so no aggregate or sort runs over real data.
        if let Ok((cols, _)) = crate::exec::with_shape_only(true, || crate::exec::query(&mut txn, q, &nulls)) {
            columns = Some(cols);
        }
    }
    if let ast::Statement::ShowVariable { variable } = stmt {
        columns = Some(vec![OutColumn {
            name: variable.last().map(|i| i.value.to_lowercase()).unwrap_or_default(),
            ty: Some(DataType::Text),
        }]);
    }
    Ok((params, columns))
}
