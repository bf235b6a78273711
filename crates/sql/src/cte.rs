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
//! used inside CTEs. Data-modifying CTEs are refused (0A000).
//!
//! `WITH RECURSIVE`: a CTE that reads itself is inlined as the derived table
//! `(WITH RECURSIVE t AS (…) SELECT * FROM t)`, which [`recursive_parts`] recognises
//! and [`crate::exec`] evaluates by iteration, as PostgreSQL does:
//!
//! ```text
//!   anchor (non-recursive term) ──▶ working table W ──▶ result
//!   loop: rows of the recursive term, reading W as t ──▶ [UNION: drop rows seen]
//!         ──▶ next W ──▶ result;  until an iteration adds nothing
//! ```
//! The working table reaches the recursive term through a [`Working`] entry under a
//! name no SQL can spell; both it and the result spill to disk past work_mem
//! ([`crate::spill::RowStore`]). UNION (without ALL) remembers every row produced, in memory. Every
//! reference to the CTE evaluates it again (same snapshot, same rows).

use crate::pipeline::RowIter;
use crate::types::DataType;
use amberdb_error::{Error, Result};
use sqlparser::ast::{self, Visit, VisitMut, Visitor, VisitorMut};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
        if with.recursive && references(&query, &name) > 0 {
            query = recursive_query(&name, &cte.alias.columns, query);
        }
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

/// How many times `q` reads a table named `name` (not counting queries whose own WITH
/// defines that name).
fn references(q: &ast::Query, name: &str) -> usize {
    struct Count<'a> {
        name: &'a str,
        shadowed: Vec<bool>,
        n: usize,
    }
    impl Visitor for Count<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            let defines = q.with.iter().flat_map(|w| &w.cte_tables).any(|c| name_of(&c.alias.name) == self.name);
            self.shadowed.push(defines);
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &ast::Query) -> ControlFlow<()> {
            self.shadowed.pop();
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, tf: &ast::TableFactor) -> ControlFlow<()> {
            if let ast::TableFactor::Table { name, args: None, .. } = tf {
                if let [ast::ObjectNamePart::Identifier(id)] = name.0.as_slice() {
                    if name_of(id) == self.name && !self.shadowed.iter().any(|s| *s) {
                        self.n += 1;
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Count { name, shadowed: Vec::new(), n: 0 };
    let _ = q.visit(&mut c);
    c.n
}

/// `WITH RECURSIVE name (columns) AS (query) SELECT * FROM name`: the form a recursive
/// CTE is inlined in, evaluated where it is read.
fn recursive_query(name: &str, columns: &[ast::TableAliasColumnDef], query: ast::Query) -> ast::Query {
    let id = ast::Ident::with_quote('"', name);
    let cte = ast::Cte {
        alias: ast::TableAlias { explicit: true, name: id.clone(), columns: columns.to_vec(), at: None },
        query: Box::new(query),
        from: None,
        materialized: None,
        closing_paren_token: ast::helpers::attached_token::AttachedToken::empty(),
    };
    let mut select = crate::exec::star_from(id);
    select.with = Some(ast::With {
        with_token: ast::helpers::attached_token::AttachedToken::empty(),
        recursive: true,
        cte_tables: vec![cte],
    });
    select
}

/// A recursive CTE taken apart for evaluation.
pub(crate) struct Recursive<'a> {
    /// The CTE's name.
    pub name: String,
    /// Column names given to the CTE (empty: the anchor's).
    pub columns: Vec<String>,
    /// The non-recursive term.
    pub anchor: &'a ast::SetExpr,
    /// The recursive term, its reference to the CTE already pointing at the working
    /// table `working`.
    pub step: ast::SetExpr,
    /// The working table's name.
    pub working: String,
    /// UNION ALL (else UNION: rows already produced are dropped).
    pub all: bool,
}

static NEXT_WORKING: AtomicU64 = AtomicU64::new(1);

/// The parts of `q` if it is the form [`recursive_query`] builds.
pub(crate) fn recursive_parts(q: &ast::Query) -> Result<Option<Recursive<'_>>> {
    let Some(with) = &q.with else { return Ok(None) };
    let [cte] = with.cte_tables.as_slice() else { return Ok(None) };
    let name = name_of(&cte.alias.name);
    // The form is also what a user may write: a CTE that does not read itself is then an
    // ordinary one.
    if !with.recursive
        || references(&cte.query, &name) == 0
        || *q != recursive_query(&name, &cte.alias.columns, (*cte.query).clone())
    {
        return Ok(None);
    }
    let bad_form = || {
        Error::sql(
            "42P19",
            format!("recursive query \"{name}\" does not have the form non-recursive-term UNION [ALL] recursive-term"),
        )
    };
    let ast::SetExpr::SetOperation { op: ast::SetOperator::Union, set_quantifier, left, right } =
        cte.query.body.as_ref()
    else {
        return Err(bad_form());
    };
    if cte.query.order_by.is_some() || cte.query.limit_clause.is_some() {
        return Err(Error::sql("0A000", format!("ORDER BY or LIMIT in the recursive query \"{name}\"")));
    }
    let as_query =
        |e: &ast::SetExpr| ast::Query { body: Box::new(e.clone()), ..crate::exec::star_from(ast::Ident::new("x")) };
    if references(&as_query(left), &name) > 0 {
        return Err(Error::sql(
            "42P19",
            format!("recursive reference to query \"{name}\" must not appear within its non-recursive term"),
        ));
    }
    let mut step = as_query(right);
    match references(&step, &name) {
        1 => {}
        0 => return Err(bad_form()),
        _ => {
            return Err(Error::sql(
                "42P19",
                format!("recursive reference to query \"{name}\" must not appear more than once"),
            ))
        }
    }
    let working = format!("\u{0}working {}", NEXT_WORKING.fetch_add(1, Ordering::Relaxed));
    let columns: Vec<String> = cte.alias.columns.iter().map(|c| name_of(&c.name)).collect();
    let def = Def {
        name: name.clone(),
        columns: cte.alias.columns.clone(),
        query: crate::exec::star_from(ast::Ident::with_quote('"', &working)),
    };
    replace(&mut step, std::slice::from_ref(&def));
    let all = match set_quantifier {
        ast::SetQuantifier::All => true,
        ast::SetQuantifier::None | ast::SetQuantifier::Distinct => false,
        other => return Err(Error::sql("0A000", format!("UNION {other} in a recursive query"))),
    };
    Ok(Some(Recursive { name, columns, anchor: left, step: *step.body, working, all }))
}

/// Working tables of recursive CTEs being evaluated, by their unspellable names: the
/// columns (names, types) and the rows, taken by the one reference in the recursive
/// term.
static WORKING: Mutex<Option<HashMap<String, WorkingTable>>> = Mutex::new(None);

/// A working table's columns (names, types) and rows.
pub(crate) type WorkingTable = (Vec<(String, Option<DataType>)>, RowIter);

/// Publishes a working table for one iteration; dropping the guard withdraws it.
pub(crate) struct Working(String);

impl Working {
    pub(crate) fn publish(name: &str, columns: Vec<(String, Option<DataType>)>, rows: RowIter) -> Working {
        let mut map = WORKING.lock().unwrap_or_else(|p| p.into_inner());
        map.get_or_insert_with(HashMap::new).insert(name.to_string(), (columns, rows));
        Working(name.to_string())
    }

    /// The working table named `name`, if one is published (taken: it is read once).
    pub(crate) fn take(name: &str) -> Option<WorkingTable> {
        if !name.starts_with('\u{0}') {
            return None;
        }
        let mut map = WORKING.lock().unwrap_or_else(|p| p.into_inner());
        map.as_mut().and_then(|m| m.remove(name))
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        let mut map = WORKING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.as_mut() {
            m.remove(&self.0);
        }
    }
}
