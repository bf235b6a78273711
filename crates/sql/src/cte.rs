//! WITH: common table expressions, inlined as derived tables.
//!
//! ```text
//!   WITH a AS (SELECT …), b (x) AS (SELECT … FROM a)      FROM b JOIN t …
//!   SELECT … FROM b JOIN t …                        ──▶     FROM (SELECT … FROM (SELECT …) AS a) AS b(x)
//!                                                           JOIN t …
//! ```
//!
//! Every reference to a CTE's name — in FROM, joins, and subqueries at any depth — is
//! replaced by the CTE's query as a derived table, with the CTE's column names as the
//! alias's columns. A CTE sees the CTEs defined before it; a nested query's own WITH
//! shadows an outer name inside that query. PostgreSQL (12+) inlines a non-recursive,
//! side-effect-free CTE referenced once in just this way; one referenced several times
//! it evaluates once, which gives the same rows here, since a query reads one snapshot
//! and our functions with volatile results (random(), clock_timestamp()) are rarely
//! used inside CTEs. `WITH RECURSIVE` and data-modifying CTEs are refused (0A000).

use amberdb_error::{Error, Result};
use sqlparser::ast::{self, VisitMut, VisitorMut};
use std::ops::ControlFlow;

/// One CTE ready to inline: its name, column names and query (its own references to
/// earlier CTEs already inlined).
struct Def {
    name: String,
    columns: Vec<ast::TableAliasColumnDef>,
    query: ast::Query,
}

fn name_of(ident: &ast::Ident) -> String {
    crate::expr::ident(ident)
}

/// `q` without its WITH clause, every reference to one of its CTEs replaced by the
/// CTE's query. `q` itself when it has none.
pub(crate) fn inline(q: &ast::Query) -> Result<ast::Query> {
    let Some(with) = &q.with else { return Ok(q.clone()) };
    if with.recursive {
        return Err(Error::sql("0A000", "WITH RECURSIVE is not supported"));
    }
    let mut defs: Vec<Def> = Vec::with_capacity(with.cte_tables.len());
    for cte in &with.cte_tables {
        let name = name_of(&cte.alias.name);
        if defs.iter().any(|d| d.name == name) {
            return Err(Error::sql("42712", format!("WITH query name \"{name}\" specified more than once")));
        }
        if !matches!(
            cte.query.body.as_ref(),
            ast::SetExpr::Select(_)
                | ast::SetExpr::Query(_)
                | ast::SetExpr::SetOperation { .. }
                | ast::SetExpr::Values(_)
        ) {
            return Err(Error::sql(
                "0A000",
                format!("data-modifying statements in WITH (\"{name}\") are not supported"),
            ));
        }
        let mut query = (*cte.query).clone();
        replace(&mut query, &defs);
        defs.push(Def { name, columns: cte.alias.columns.clone(), query });
    }
    let mut out = q.clone();
    out.with = None;
    replace(&mut out, &defs);
    Ok(out)
}

fn replace(q: &mut ast::Query, defs: &[Def]) {
    let mut v = Inline { defs, shadowed: Vec::new() };
    // The visitor never breaks.
    let _ = q.visit(&mut v);
}

struct Inline<'a> {
    defs: &'a [Def],
    /// Names defined by the WITH clauses of the queries being visited (innermost last).
    shadowed: Vec<Vec<String>>,
}

impl VisitorMut for Inline<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut ast::Query) -> ControlFlow<()> {
        let names = q.with.iter().flat_map(|w| w.cte_tables.iter().map(|c| name_of(&c.alias.name))).collect();
        self.shadowed.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &mut ast::Query) -> ControlFlow<()> {
        self.shadowed.pop();
        ControlFlow::Continue(())
    }

    // After the children: the inlined query is not visited again, so a CTE whose
    // query reads a table of its own name (`WITH t AS (SELECT * FROM t)`) reads the
    // table, as in PostgreSQL.
    fn post_visit_table_factor(&mut self, tf: &mut ast::TableFactor) -> ControlFlow<()> {
        let ast::TableFactor::Table { name, alias, args: None, .. } = tf else { return ControlFlow::Continue(()) };
        let [ast::ObjectNamePart::Identifier(id)] = name.0.as_slice() else { return ControlFlow::Continue(()) };
        let n = name_of(id);
        if self.shadowed.iter().any(|s| s.contains(&n)) {
            return ControlFlow::Continue(());
        }
        let Some(def) = self.defs.iter().find(|d| d.name == n) else { return ControlFlow::Continue(()) };
        let mut alias = alias.clone().unwrap_or(ast::TableAlias {
            explicit: true,
            name: id.clone(),
            columns: Vec::new(),
            at: None,
        });
        if alias.columns.is_empty() {
            alias.columns = def.columns.clone();
        }
        *tf = ast::TableFactor::Derived {
            lateral: false,
            subquery: Box::new(def.query.clone()),
            alias: Some(alias),
            sample: None,
        };
        ControlFlow::Continue(())
    }
}
