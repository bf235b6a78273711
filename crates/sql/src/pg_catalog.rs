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
const PG_CATALOG: i64 = 11;
const HEAP_AM: i64 = 2;
const BTREE_AM: i64 = 403;
/// The one role.
pub const OWNER_OID: i64 = 10;

fn text(s: &str) -> Value {
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
    ]
}

/// Whether `name` (unqualified) is one of the catalog tables served here.
pub fn is_catalog_table(name: &str) -> bool {
    matches!(
        name,
        "pg_namespace" | "pg_class" | "pg_attribute" | "pg_type" | "pg_index" | "pg_am" | "pg_roles" | "pg_database"
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
                        text(&format!("{}_pkey", t.name)),
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
                    ],
                ),
                rows,
            )
        }
        "pg_attribute" => {
            let mut rows = Vec::new();
            for t in &tables {
                for (i, c) in t.columns.iter().enumerate() {
                    let typmod = match c.ty {
                        DataType::Varchar(Some(n)) | DataType::Char(n) => i64::from(n) + 4,
                        _ => -1,
                    };
                    rows.push(vec![
                        Value::Int(table_oid(t)),
                        text(&c.name),
                        Value::Int(i64::from(c.ty.oid())),
                        Value::Int(typmod),
                        Value::Int(i as i64 + 1),
                        Value::Bool(!c.nullable),
                        Value::Bool(c.default.is_some()),
                        Value::Bool(false),
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
                    ],
                ),
                rows,
            )
        }
        "pg_type" => {
            let types = [
                (16, "bool"),
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
            ];
            (
                cols(alias, &[("oid", Int8), ("typname", Text), ("typnamespace", Int8)]),
                types.iter().map(|(o, n)| vec![Value::Int(*o), text(n), Value::Int(PG_CATALOG)]).collect(),
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
            (
                cols(alias, &[("indexrelid", Int8), ("indrelid", Int8), ("indisunique", Bool), ("indisprimary", Bool)]),
                rows,
            )
        }
        _ => (vec![], vec![]),
    })
}
