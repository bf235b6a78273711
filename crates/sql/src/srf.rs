//! `generate_series` in a select list, as PostgreSQL allows: one row per value.
//!
//! ```text
//!   SELECT id, generate_series(1, 2) AS g FROM t
//!     ──▶ SELECT id, __srf.v AS g FROM t, generate_series(1, 2) AS __srf(v)
//! ```
//!
//! With arguments that do not depend on the row, a set-returning call in the select
//! list is exactly a cross join with the same function in FROM (each input row once per
//! value, the values in order), so the select is rewritten into that. Not rewritten,
//! and refused with 0A000 rather than answered differently from PostgreSQL: arguments
//! naming columns (that needs LATERAL), two such calls (PostgreSQL zips them), and a
//! call beside aggregates or GROUP BY (PostgreSQL expands after grouping).

use amberdb_error::{Error, Result};
use sqlparser::ast;
use std::ops::ControlFlow;

const ALIAS: &str = "__amber_srf";

fn is_series(e: &ast::Expr) -> Option<&ast::Function> {
    match e {
        ast::Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("generate_series") => Some(f),
        _ => None,
    }
}

fn unsupported(what: &str) -> Error {
    Error::sql("0A000", format!("generate_series in a select list {what} is not supported; call it in FROM"))
}

/// The select with its select-list `generate_series` moved into FROM, or `None` if it
/// has none.
pub(crate) fn rewrite(select: &ast::Select) -> Result<Option<ast::Select>> {
    let item_expr = |p: &ast::SelectItem| match p {
        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => Some(e.clone()),
        _ => None,
    };
    let calls: Vec<usize> = select
        .projection
        .iter()
        .enumerate()
        .filter(|(_, p)| item_expr(p).as_ref().and_then(is_series).is_some())
        .map(|(i, _)| i)
        .collect();
    let Some(&at) = calls.first() else { return Ok(None) };
    if calls.len() > 1 {
        return Err(unsupported("more than once"));
    }
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
        || select.having.is_some()
        || select.projection.iter().filter_map(item_expr).any(|e| crate::exec::contains_aggregate(&e));
    if grouped {
        return Err(unsupported("beside aggregates or GROUP BY"));
    }
    let item = &select.projection[at];
    let call = item_expr(item).ok_or_else(|| Error::Internal("select item without an expression".into()))?;
    let Some(f) = is_series(&call) else { return Ok(None) };
    let ast::FunctionArguments::List(list) = &f.args else {
        return Err(Error::sql("42883", "function generate_series() does not exist"));
    };
    let names_a_column = ast::visit_expressions(&list.args, |e| match e {
        ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if names_a_column.is_break() {
        return Err(unsupported("with arguments from the row"));
    }
    // The FROM item, by parsing its text: the arguments print back as they parsed.
    let args = list.args.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT 1 FROM generate_series({args}) AS {ALIAS}(v)");
    let parsed = sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, &sql)
        .map_err(|e| Error::Internal(format!("rewriting generate_series: {e}")))?;
    let from = match parsed.into_iter().next() {
        Some(ast::Statement::Query(q)) => match *q.body {
            ast::SetExpr::Select(s) => s.from.into_iter().next(),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| Error::Internal(format!("rewriting generate_series: unexpected parse of {sql}")))?;
    let mut out = select.clone();
    out.from.push(from);
    let alias = match item {
        ast::SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
        _ => ast::Ident::new("generate_series"),
    };
    out.projection[at] = ast::SelectItem::ExprWithAlias {
        expr: ast::Expr::CompoundIdentifier(vec![ast::Ident::new(ALIAS), ast::Ident::new("v")]),
        alias,
    };
    Ok(Some(out))
}
