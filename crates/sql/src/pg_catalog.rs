//! Read-only `pg_catalog` tables, generated from AmberDB's catalog at query time, so
//! that clients' introspection queries (psql's `\dt`, drivers' type lookups) work.
//!
//! OIDs: namespaces use PostgreSQL's (11 pg_catalog, 2200 public); a table's OID is
//! `16384 + 100 × table id`, its indexes follow it (`+ index id`); types use their
//! PostgreSQL OIDs.

use crate::catalog::{Catalog, TableDef};
use crate::expr::ScopeCol;
use crate::types::{DataType, Value};
use amberdb_error::Result;
use amberdb_mvcc::Transaction;

/// OID of a table.
pub fn table_oid(def: &TableDef) -> i64 {
    16_384 + 100 * def.id as i64
}

const PUBLIC: i64 = 2200;
/// Views have no table id; their pg_class oids start here: above the tables' (for table
/// ids below ~10.7 million) and within a 32-bit oid, which clients compare as `int4`
/// (psql's `\d view` sends `WHERE c.oid = '<oid>'`).
const VIEW_OID_BASE: i64 = 1 << 30;
const PG_CATALOG: i64 = 11;
const HEAP_AM: i64 = 2;
const BTREE_AM: i64 = 403;
/// The one role.
pub const OWNER_OID: i64 = 10;

pub(crate) fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn cols(table: &str, spec: &[(&str, DataType)]) -> Vec<ScopeCol> {
    spec.iter().map(|(n, t)| ScopeCol { table: Some(table.to_string()), name: n.to_string(), ty: Some(*t) }).collect()
}

/// pg_class columns that are constant for every relation AmberDB has.
fn class_extras() -> Vec<Value> {
    vec![
        Value::Int(0),
        Value::Bool(false),
        Value::Bool(false),
        Value::Bool(false),
        Value::Bool(false),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(0),
        Value::Text("d".into()),
        Value::Int(0),
        Value::Null,
    ]
}

/// Definitions (`CREATE INDEX …`, `PRIMARY KEY (…)`) by OID, for
/// `pg_get_indexdef`/`pg_get_constraintdef`. The binder turns a call into a lookup in
/// this list taken from the statement's own snapshot, so evaluating it later (a streamed
/// result) or on another thread gives the same answer.
pub fn definitions(txn: &mut Transaction) -> Result<Vec<(i64, String)>> {
    let mut d = Vec::new();
    for t in Catalog::list(txn)? {
        let oid = table_oid(&t);
        let names = |cols: &[usize]| cols.iter().map(|&c| t.columns[c].name.as_str()).collect::<Vec<_>>().join(", ");
        if !t.primary_key.is_empty() {
            let cols = names(&t.primary_key);
            d.push((
                oid + 99,
                format!("CREATE UNIQUE INDEX {} ON public.{} USING btree ({cols})", t.pkey_name(), t.name),
            ));
            d.push((-(oid + 99), format!("PRIMARY KEY ({cols})")));
        }
        for i in &t.indexes {
            let cols = names(&i.columns);
            let unique = if i.unique { "UNIQUE " } else { "" };
            d.push((
                oid + i.id as i64,
                format!("CREATE {unique}INDEX {} ON public.{} USING btree ({cols})", i.name, t.name),
            ));
            d.push((-(oid + i.id as i64), format!("UNIQUE ({cols})")));
        }
    }
    Ok(d)
}

/// Whether `name` (unqualified) is one of the catalog tables served here.
pub fn is_catalog_table(name: &str) -> bool {
    matches!(
        name,
        "pg_namespace"
            | "pg_class"
            | "pg_attribute"
            | "pg_type"
            | "pg_index"
            | "pg_am"
            | "pg_roles"
            | "pg_database"
            | "pg_attrdef"
            | "pg_collation"
            | "pg_constraint"
            | "pg_policy"
            | "pg_statistic_ext"
            | "pg_publication"
            | "pg_publication_rel"
            | "pg_publication_namespace"
            | "pg_inherits"
            | "pg_trigger"
            | "pg_rewrite"
            | "pg_partitioned_table"
    )
}

/// The rows and columns of catalog table `name`, seen under `alias`.
pub fn catalog_table(txn: &mut Transaction, name: &str, alias: &str) -> Result<(Vec<ScopeCol>, Vec<Vec<Value>>)> {
    use DataType::{Bool, Int2, Int4, Int8, Text};
    let tables = Catalog::list(txn)?;
    Ok(match name {
        "pg_namespace" => (
            cols(alias, &[("oid", Int8), ("nspname", Text), ("nspowner", Int8)]),
            vec![
                vec![Value::Int(PG_CATALOG), text("pg_catalog"), Value::Int(OWNER_OID)],
                vec![Value::Int(PUBLIC), text("public"), Value::Int(OWNER_OID)],
                vec![Value::Int(13_000), text("information_schema"), Value::Int(OWNER_OID)],
            ],
        ),
        "pg_am" => (
            cols(alias, &[("oid", Int8), ("amname", Text), ("amtype", Text)]),
            vec![
                vec![Value::Int(HEAP_AM), text("heap"), text("t")],
                vec![Value::Int(BTREE_AM), text("btree"), text("i")],
            ],
        ),
        "pg_roles" => (
            cols(alias, &[("oid", Int8), ("rolname", Text), ("rolsuper", Bool)]),
            vec![vec![Value::Int(OWNER_OID), text("amberdb"), Value::Bool(true)]],
        ),
        "pg_database" => (
            cols(alias, &[("oid", Int8), ("datname", Text), ("datdba", Int8), ("encoding", Int4)]),
            vec![vec![Value::Int(16_383), text("amberdb"), Value::Int(OWNER_OID), Value::Int(6)]],
        ),
        "pg_class" => {
            let mut rows = Vec::new();
            for t in &tables {
                let oid = table_oid(t);
                rows.push(vec![
                    Value::Int(oid),
                    text(&t.name),
                    Value::Int(PUBLIC),
                    text("r"),
                    Value::Int(OWNER_OID),
                    Value::Int(HEAP_AM),
                    Value::Bool(!t.indexes.is_empty() || !t.primary_key.is_empty()),
                    Value::Int(t.columns.len() as i64),
                    text("p"),
                ]);
                rows.last_mut().into_iter().for_each(|r| r.extend(class_extras()));
                if !t.primary_key.is_empty() {
                    rows.push(vec![
                        Value::Int(oid + 99),
                        text(&t.pkey_name()),
                        Value::Int(PUBLIC),
                        text("i"),
                        Value::Int(OWNER_OID),
                        Value::Int(BTREE_AM),
                        Value::Bool(false),
                        Value::Int(t.primary_key.len() as i64),
                        text("p"),
                    ]);
                    rows.last_mut().into_iter().for_each(|r| r.extend(class_extras()));
                }
                for i in &t.indexes {
                    rows.push(vec![
                        Value::Int(oid + i.id as i64),
                        text(&i.name),
                        Value::Int(PUBLIC),
                        text("i"),
                        Value::Int(OWNER_OID),
                        Value::Int(BTREE_AM),
                        Value::Bool(false),
                        Value::Int(i.columns.len() as i64),
                        text("p"),
                    ]);
                    rows.last_mut().into_iter().for_each(|r| r.extend(class_extras()));
                }
            }
            // Views (psql's \dv): oids above every table's, by name order.
            for (n, v) in Catalog::list_views(txn)?.iter().enumerate() {
                rows.push(vec![
                    Value::Int(VIEW_OID_BASE + n as i64),
                    text(&v.name),
                    Value::Int(PUBLIC),
                    text("v"),
                    Value::Int(OWNER_OID),
                    Value::Int(0),
                    Value::Bool(false),
                    Value::Int(0),
                    text("p"),
                ]);
                rows.last_mut().into_iter().for_each(|r| r.extend(class_extras()));
            }
            (
                cols(
                    alias,
                    &[
                        ("oid", Int8),
                        ("relname", Text),
                        ("relnamespace", Int8),
                        ("relkind", Text),
                        ("relowner", Int8),
                        ("relam", Int8),
                        ("relhasindex", Bool),
                        ("relnatts", Int2),
                        ("relpersistence", Text),
                        ("relchecks", Int2),
                        ("relhasrules", Bool),
                        ("relhastriggers", Bool),
                        ("relrowsecurity", Bool),
                        ("relforcerowsecurity", Bool),
                        ("relispartition", Bool),
                        ("reltablespace", Int8),
                        ("reloftype", Int8),
                        ("relreplident", Text),
                        ("reltoastrelid", Int8),
                        ("relpartbound", Text),
                    ],
                ),
                rows,
            )
        }
        "pg_attribute" => {
            let mut rows = Vec::new();
            let typmod = |ty: DataType| match ty {
                DataType::Varchar(Some(n)) | DataType::Char(n) => i64::from(n) + 4,
                DataType::Numeric(Some((p, sc))) => (i64::from(p) << 16) + i64::from(sc) + 4,
                _ => -1,
            };
            for t in &tables {
                for (i, c) in t.columns.iter().enumerate() {
                    rows.push(vec![
                        Value::Int(table_oid(t)),
                        text(&c.name),
                        Value::Int(i64::from(c.ty.oid())),
                        Value::Int(typmod(c.ty)),
                        Value::Int(i as i64 + 1),
                        Value::Bool(!c.nullable),
                        Value::Bool(c.default.is_some()),
                        Value::Bool(false),
                        Value::Int(0),
                        // psql's \d shows "generated always/by default as identity".
                        text(match c.identity {
                            Some(i) if i.always => "a",
                            Some(_) => "d",
                            None => "",
                        }),
                        text(""),
                    ]);
                }
            }
            // A view's columns are its query's (found without reading rows); a view
            // that no longer runs (a table it reads was dropped) shows none.
            for (n, v) in Catalog::list_views(txn)?.iter().enumerate() {
                let Ok(columns) = crate::exec::view_columns(txn, v) else { continue };
                for (i, c) in columns.iter().enumerate() {
                    let ty = c.ty.unwrap_or(DataType::Text);
                    rows.push(vec![
                        Value::Int(VIEW_OID_BASE + n as i64),
                        text(&c.name),
                        Value::Int(i64::from(ty.oid())),
                        Value::Int(typmod(ty)),
                        Value::Int(i as i64 + 1),
                        Value::Bool(false),
                        Value::Bool(false),
                        Value::Bool(false),
                        Value::Int(0),
                        text(""),
                        text(""),
                    ]);
                }
            }
            (
                cols(
                    alias,
                    &[
                        ("attrelid", Int8),
                        ("attname", Text),
                        ("atttypid", Int8),
                        ("atttypmod", Int4),
                        ("attnum", Int2),
                        ("attnotnull", Bool),
                        ("atthasdef", Bool),
                        ("attisdropped", Bool),
                        ("attcollation", Int8),
                        ("attidentity", Text),
                        ("attgenerated", Text),
                    ],
                ),
                rows,
            )
        }
        "pg_type" => {
            let types = [
                (16, "bool"),
                (17, "bytea"),
                (20, "int8"),
                (21, "int2"),
                (23, "int4"),
                (25, "text"),
                (700, "float4"),
                (701, "float8"),
                (1042, "bpchar"),
                (1043, "varchar"),
                (1082, "date"),
                (1114, "timestamp"),
                (1184, "timestamptz"),
                (1700, "numeric"),
                (1186, "interval"),
                (1083, "time"),
                (2950, "uuid"),
            ];
            (
                cols(alias, &[("oid", Int8), ("typname", Text), ("typnamespace", Int8), ("typcollation", Int8)]),
                types
                    .iter()
                    .map(|(o, n)| vec![Value::Int(*o), text(n), Value::Int(PG_CATALOG), Value::Int(0)])
                    .collect(),
            )
        }
        "pg_index" => {
            let mut rows = Vec::new();
            for t in &tables {
                let oid = table_oid(t);
                if !t.primary_key.is_empty() {
                    rows.push(vec![Value::Int(oid + 99), Value::Int(oid), Value::Bool(true), Value::Bool(true)]);
                }
                for i in &t.indexes {
                    rows.push(vec![
                        Value::Int(oid + i.id as i64),
                        Value::Int(oid),
                        Value::Bool(i.unique),
                        Value::Bool(false),
                    ]);
                }
            }
            for r in &mut rows {
                r.extend([Value::Bool(false), Value::Bool(true), Value::Bool(false), Value::Bool(true)]);
            }
            (
                cols(
                    alias,
                    &[
                        ("indexrelid", Int8),
                        ("indrelid", Int8),
                        ("indisunique", Bool),
                        ("indisprimary", Bool),
                        ("indisclustered", Bool),
                        ("indisvalid", Bool),
                        ("indisreplident", Bool),
                        ("indislive", Bool),
                    ],
                ),
                rows,
            )
        }
        "pg_attrdef" => {
            let mut rows = Vec::new();
            for t in &tables {
                for (i, c) in t.columns.iter().enumerate() {
                    if let Some(d) = &c.default {
                        rows.push(vec![Value::Int(table_oid(t)), Value::Int(i as i64 + 1), text(d)]);
                    }
                }
            }
            (cols(alias, &[("adrelid", Int8), ("adnum", Int2), ("adbin", Text)]), rows)
        }
        "pg_constraint" => {
            // Primary keys and UNIQUE constraints; a constraint's OID is minus its index's.
            let mut rows = Vec::new();
            for t in &tables {
                let oid = table_oid(t);
                if !t.primary_key.is_empty() {
                    rows.push(vec![
                        Value::Int(-(oid + 99)),
                        text(&t.pkey_name()),
                        Value::Int(oid),
                        Value::Int(oid + 99),
                        text("p"),
                    ]);
                }
                for i in t.indexes.iter().filter(|i| i.unique) {
                    rows.push(vec![
                        Value::Int(-(oid + i.id as i64)),
                        text(&i.name),
                        Value::Int(oid),
                        Value::Int(oid + i.id as i64),
                        text("u"),
                    ]);
                }
            }
            for r in &mut rows {
                r.extend([
                    Value::Bool(false),
                    Value::Bool(false),
                    Value::Int(0),
                    Value::Bool(true),
                    Value::Int(PUBLIC),
                ]);
            }
            (
                cols(
                    alias,
                    &[
                        ("oid", Int8),
                        ("conname", Text),
                        ("conrelid", Int8),
                        ("conindid", Int8),
                        ("contype", Text),
                        ("condeferrable", Bool),
                        ("condeferred", Bool),
                        ("confrelid", Int8),
                        ("convalidated", Bool),
                        ("connamespace", Int8),
                    ],
                ),
                rows,
            )
        }
        // Catalogs of features AmberDB does not have: present, empty, so that
        // introspection queries joining them work.
        "pg_policy" => (
            cols(
                alias,
                &[
                    ("oid", Int8),
                    ("polname", Text),
                    ("polrelid", Int8),
                    ("polpermissive", Bool),
                    ("polroles", Text),
                    ("polqual", Text),
                    ("polwithcheck", Text),
                    ("polcmd", Text),
                ],
            ),
            vec![],
        ),
        "pg_statistic_ext" => (
            cols(
                alias,
                &[
                    ("oid", Int8),
                    ("stxname", Text),
                    ("stxrelid", Int8),
                    ("stxnamespace", Int8),
                    ("stxkind", Text),
                    ("stxstattarget", Int4),
                ],
            ),
            vec![],
        ),
        "pg_publication" => (cols(alias, &[("oid", Int8), ("pubname", Text), ("puballtables", Bool)]), vec![]),
        "pg_publication_rel" => (
            cols(alias, &[("oid", Int8), ("prpubid", Int8), ("prrelid", Int8), ("prqual", Text), ("prattrs", Text)]),
            vec![],
        ),
        "pg_publication_namespace" => (cols(alias, &[("oid", Int8), ("pnpubid", Int8), ("pnnspid", Int8)]), vec![]),
        "pg_inherits" => (
            cols(alias, &[("inhrelid", Int8), ("inhparent", Int8), ("inhseqno", Int4), ("inhdetachpending", Bool)]),
            vec![],
        ),
        "pg_trigger" => (cols(alias, &[("oid", Int8), ("tgname", Text), ("tgrelid", Int8)]), vec![]),
        "pg_rewrite" => (cols(alias, &[("oid", Int8), ("rulename", Text), ("ev_class", Int8)]), vec![]),
        "pg_partitioned_table" => (cols(alias, &[("partrelid", Int8)]), vec![]),
        "pg_collation" => {
            (cols(alias, &[("oid", Int8), ("collname", Text)]), vec![vec![Value::Int(100), text("default")]])
        }
        _ => (vec![], vec![]),
    })
}
