//! `information_schema`: the SQL standard's catalog views, generated from the catalog
//! at query time (like `pg_catalog`, see [`crate::pg_catalog`]), for tools and ORMs
//! that introspect through them rather than through `pg_catalog`.
//!
//! Served: `schemata`, `tables`, `columns`, `table_constraints`, `key_column_usage`,
//! and empty `views`, `sequences`, `routines`. Identifier-typed columns are text and
//! `cardinal_number` columns integers, which is how clients read them anyway. Only
//! user tables (schema `public`) are listed; PostgreSQL also lists its own catalogs.

use crate::catalog::{Catalog, TableDef};
use crate::expr::ScopeCol;
use crate::pg_catalog::text;
use crate::types::{DataType, Value};
use amberdb_error::Result;
use amberdb_mvcc::Transaction;

const CATALOG: &str = "amberdb";
const SCHEMA: &str = "public";

/// Whether `name` is a view served here.
pub fn is_view(name: &str) -> bool {
    matches!(
        name,
        "schemata"
            | "tables"
            | "columns"
            | "table_constraints"
            | "key_column_usage"
            | "views"
            | "sequences"
            | "routines"
    )
}

fn int(n: impl Into<i64>) -> Value {
    Value::Int(n.into())
}

fn opt_int(n: Option<i64>) -> Value {
    n.map_or(Value::Null, Value::Int)
}

fn scope(alias: &str, names: &[&str], ints: &[&str]) -> Vec<ScopeCol> {
    names
        .iter()
        .map(|n| ScopeCol {
            table: Some(alias.to_string()),
            name: n.to_string(),
            ty: Some(if ints.contains(n) { DataType::Int4 } else { DataType::Text }),
        })
        .collect()
}

/// `information_schema.columns.data_type`: the type's name without modifiers.
fn data_type_name(ty: DataType) -> String {
    match ty {
        DataType::Varchar(_) => "character varying".into(),
        DataType::Char(_) => "character".into(),
        DataType::Numeric(_) => "numeric".into(),
        other => other.pg_name(),
    }
}

/// `udt_name`: PostgreSQL's internal type name.
fn udt_name(ty: DataType) -> &'static str {
    match ty {
        DataType::Bool => "bool",
        DataType::Int2 => "int2",
        DataType::Int4 => "int4",
        DataType::Int8 => "int8",
        DataType::Float4 => "float4",
        DataType::Float8 => "float8",
        DataType::Text => "text",
        DataType::Varchar(_) => "varchar",
        DataType::Char(_) => "bpchar",
        DataType::Date => "date",
        DataType::Timestamp => "timestamp",
        DataType::TimestampTz => "timestamptz",
        DataType::Bytea => "bytea",
        DataType::Numeric(_) => "numeric",
        DataType::Interval => "interval",
        DataType::Time => "time",
        DataType::Uuid => "uuid",
    }
}

/// (character_maximum_length, numeric_precision, numeric_precision_radix,
/// numeric_scale, datetime_precision) as PostgreSQL reports them.
fn type_facts(ty: DataType) -> [Option<i64>; 5] {
    match ty {
        DataType::Varchar(n) => [n.map(i64::from), None, None, None, None],
        DataType::Char(n) => [Some(i64::from(n)), None, None, None, None],
        DataType::Int2 => [None, Some(16), Some(2), Some(0), None],
        DataType::Int4 => [None, Some(32), Some(2), Some(0), None],
        DataType::Int8 => [None, Some(64), Some(2), Some(0), None],
        DataType::Float4 => [None, Some(24), Some(2), None, None],
        DataType::Float8 => [None, Some(53), Some(2), None, None],
        DataType::Numeric(Some((p, s))) => [None, Some(i64::from(p)), Some(10), Some(i64::from(s)), None],
        DataType::Numeric(None) => [None, None, Some(10), None, None],
        DataType::Date => [None, None, None, None, Some(0)],
        DataType::Timestamp | DataType::TimestampTz | DataType::Interval | DataType::Time => {
            [None, None, None, None, Some(6)]
        }
        DataType::Bool | DataType::Text | DataType::Bytea | DataType::Uuid => [None; 5],
    }
}

/// A table's constraints: (name, type, columns).
fn constraints(t: &TableDef) -> Vec<(String, &'static str, Vec<usize>)> {
    let mut out = Vec::new();
    if !t.primary_key.is_empty() {
        out.push((t.pkey_name(), "PRIMARY KEY", t.primary_key.clone()));
    }
    for i in t.indexes.iter().filter(|i| i.unique) {
        out.push((i.name.clone(), "UNIQUE", i.columns.clone()));
    }
    out
}

/// The names of [`constraint_of`]'s columns.
const CONSTRAINT_OF: [&str; 6] =
    ["constraint_catalog", "constraint_schema", "constraint_name", "table_catalog", "table_schema", "table_name"];

/// The leading columns shared by constraint views: the constraint's catalog, schema
/// and name, then its table's.
fn constraint_of(name: &str, t: &TableDef) -> Vec<Value> {
    vec![text(CATALOG), text(SCHEMA), text(name), text(CATALOG), text(SCHEMA), text(&t.name)]
}

/// The columns and rows of `information_schema.<name>`, seen under `alias`.
pub fn view(txn: &mut Transaction, name: &str, alias: &str) -> Result<(Vec<ScopeCol>, Vec<Vec<Value>>)> {
    let tables = Catalog::list(txn)?;
    Ok(match name {
        "schemata" => (
            scope(alias, &["catalog_name", "schema_name", "schema_owner"], &[]),
            ["public", "pg_catalog", "information_schema"]
                .iter()
                .map(|s| vec![text(CATALOG), text(s), text("amberdb")])
                .collect(),
        ),
        "tables" => (
            scope(
                alias,
                &["table_catalog", "table_schema", "table_name", "table_type", "is_insertable_into", "is_typed"],
                &[],
            ),
            tables
                .iter()
                .map(|t| vec![text(CATALOG), text(SCHEMA), text(&t.name), text("BASE TABLE"), text("YES"), text("NO")])
                .collect(),
        ),
        "columns" => {
            let names = [
                "table_catalog",
                "table_schema",
                "table_name",
                "column_name",
                "ordinal_position",
                "column_default",
                "is_nullable",
                "data_type",
                "character_maximum_length",
                "numeric_precision",
                "numeric_precision_radix",
                "numeric_scale",
                "datetime_precision",
                "udt_catalog",
                "udt_schema",
                "udt_name",
                "is_identity",
                "is_generated",
                "is_updatable",
            ];
            let ints = [
                "ordinal_position",
                "character_maximum_length",
                "numeric_precision",
                "numeric_precision_radix",
                "numeric_scale",
                "datetime_precision",
            ];
            let mut rows = Vec::new();
            for t in &tables {
                for (i, c) in t.columns.iter().enumerate() {
                    let mut row = vec![
                        text(CATALOG),
                        text(SCHEMA),
                        text(&t.name),
                        text(&c.name),
                        int(i as i64 + 1),
                        c.default.as_deref().map_or(Value::Null, text),
                        text(if c.nullable { "YES" } else { "NO" }),
                        text(&data_type_name(c.ty)),
                    ];
                    row.extend(type_facts(c.ty).into_iter().map(opt_int));
                    row.extend([text(CATALOG), text("pg_catalog"), text(udt_name(c.ty))]);
                    row.extend([text(if c.identity.is_some() { "YES" } else { "NO" }), text("NEVER"), text("YES")]);
                    rows.push(row);
                }
            }
            (scope(alias, &names, &ints), rows)
        }
        "table_constraints" => {
            let mut rows = Vec::new();
            for t in &tables {
                for (cname, kind, _) in constraints(t) {
                    let mut row = constraint_of(&cname, t);
                    row.extend([text(kind), text("NO"), text("NO"), text("YES")]);
                    rows.push(row);
                }
            }
            let names =
                [&CONSTRAINT_OF[..], &["constraint_type", "is_deferrable", "initially_deferred", "enforced"]].concat();
            (scope(alias, &names, &[]), rows)
        }
        "key_column_usage" => {
            let mut rows = Vec::new();
            for t in &tables {
                for (cname, _, cols) in constraints(t) {
                    for (pos, &c) in cols.iter().enumerate() {
                        let mut row = constraint_of(&cname, t);
                        row.extend([text(&t.columns[c].name), int(pos as i64 + 1), Value::Null]);
                        rows.push(row);
                    }
                }
            }
            let names =
                [&CONSTRAINT_OF[..], &["column_name", "ordinal_position", "position_in_unique_constraint"]].concat();
            (scope(alias, &names, &["ordinal_position", "position_in_unique_constraint"]), rows)
        }
        "views" => (scope(alias, &["table_catalog", "table_schema", "table_name", "view_definition"], &[]), vec![]),
        "sequences" => {
            (scope(alias, &["sequence_catalog", "sequence_schema", "sequence_name", "data_type"], &[]), vec![])
        }
        "routines" => {
            (scope(alias, &["routine_catalog", "routine_schema", "routine_name", "routine_type"], &[]), vec![])
        }
        other => {
            return Err(amberdb_error::Error::sql(
                "42P01",
                format!("relation \"information_schema.{other}\" does not exist"),
            ))
        }
    })
}
