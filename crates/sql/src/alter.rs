//! ALTER TABLE.
//!
//! Most changes touch only the table's definition in the catalog: renames, defaults,
//! NOT NULL, UNIQUE constraints (a unique index filled from the rows), and columns
//! (whose rows are rewritten in place where their encoding changes). Changes to how
//! rows are *keyed* — adding or dropping the primary key, dropping a primary-key
//! column, changing a column's type — rebuild the table under a new table id, as
//! TRUNCATE moves a table:
//!
//! ```text
//!   rows of id 7 ──scan──▶ map (cast / drop a value) ──▶ key by the new primary key
//!                                                         (or a fresh row id) ──▶ id 9
//!                                                       └─ every index entry  ──▶ id 9
//!   catalog "t": id 7 → id 9        id 7 marked dropped, collected later in bounded
//!                                   transactions like a dropped table's rows
//! ```
//! A rebuild is one transaction, staged past the transaction buffer, so a table of any
//! size changes in bounded memory. Readers of older snapshots (`AS OF SYSTEM TIME`
//! included) still read id 7; a concurrent writer of the table conflicts on its catalog
//! entry (40001).
//!
//! Invariants: a rebuilt table's primary-key values are unique and NOT NULL (each row's
//! new key is looked up before it is written); its unique indexes are re-checked by
//! reading their new entries in order, where equal values are adjacent, so no check
//! holds the table in memory.

use crate::catalog::{Catalog, Column, TableDef};
use crate::exec::{
    add_index, apply_column_option, check_unique, column_def, default_value, delete_range, duplicated,
    ensure_relation_name_free, feature, key_columns, scan_stored, scope_of, table_name, unique_name, Outcome,
};
use crate::expr::{ident, Binder};
use crate::pipeline::Row;
use crate::types::{DataType, Value};
use amberdb_error::{Error, Result};
use amberdb_mvcc::Transaction;
use sqlparser::ast;

/// ALTER TABLE: its operations apply in order, in the statement's transaction.
pub fn alter_table(txn: &mut Transaction, at: &ast::AlterTable) -> Result<Outcome> {
    let name = table_name(&at.name)?;
    let mut def = match Catalog::get(txn, &name)? {
        Some(def) => def,
        None if at.if_exists => return Ok(Outcome::Command("ALTER TABLE".into())),
        None => Catalog::must_get(txn, &name)?,
    };
    for op in &at.operations {
        def = alter_one(txn, def, op)?;
    }
    Catalog::put(txn, &def)?;
    Ok(Outcome::Command("ALTER TABLE".into()))
}

fn no_column(def: &TableDef, name: &str) -> Error {
    Error::sql("42703", format!("column \"{name}\" of relation \"{}\" does not exist", def.name))
}

fn contains_nulls(def: &TableDef, col: &Column) -> Error {
    Error::sql("23502", format!("column \"{}\" of relation \"{}\" contains null values", col.name, def.name))
}

fn alter_one(txn: &mut Transaction, mut def: TableDef, op: &ast::AlterTableOperation) -> Result<TableDef> {
    match op {
        ast::AlterTableOperation::AddColumn { if_not_exists, column_def: cdef, column_position: None, .. } => {
            add_column(txn, def, cdef, *if_not_exists)
        }
        ast::AlterTableOperation::DropColumn { column_names, if_exists, .. } => {
            for cname in column_names {
                let cname = ident(cname);
                let Some(pos) = def.column_index(&cname) else {
                    if *if_exists {
                        continue;
                    }
                    return Err(no_column(&def, &cname));
                };
                def = drop_column(txn, def, pos)?;
            }
            Ok(def)
        }
        ast::AlterTableOperation::RenameColumn { old_column_name, new_column_name } => {
            let (old, new) = (ident(old_column_name), ident(new_column_name));
            let pos = def.column_index(&old).ok_or_else(|| no_column(&def, &old))?;
            if def.column_index(&new).is_some() {
                return Err(Error::sql(
                    "42701",
                    format!("column \"{new}\" of relation \"{}\" already exists", def.name),
                ));
            }
            def.columns[pos].name = new;
            Ok(def)
        }
        ast::AlterTableOperation::RenameTable { table_name: ast::RenameTableNameKind::To(to) }
        | ast::AlterTableOperation::RenameTable { table_name: ast::RenameTableNameKind::As(to) } => {
            let to = table_name(to)?;
            ensure_relation_name_free(txn, &to, None)?;
            // The primary key keeps its name, as in PostgreSQL.
            if !def.primary_key.is_empty() {
                def.primary_key_name = Some(def.pkey_name());
            }
            Catalog::rename(txn, &mut def, &to)?;
            Ok(def)
        }
        ast::AlterTableOperation::AddConstraint { constraint, .. } => add_constraint(txn, def, constraint),
        ast::AlterTableOperation::DropConstraint { if_exists, name, .. } => {
            let name = ident(name);
            if !def.primary_key.is_empty() && def.pkey_name() == name {
                // Key columns stay NOT NULL, as PostgreSQL leaves them.
                let new = TableDef { primary_key: Vec::new(), primary_key_name: None, ..def.clone() };
                return rebuild(txn, &def, new, false, Ok);
            }
            if let Some(pos) = def.indexes.iter().position(|i| i.unique && i.name == name) {
                let index = def.indexes.remove(pos);
                delete_range(txn, def.index_range(&index))?;
                return Ok(def);
            }
            if *if_exists {
                return Ok(def);
            }
            Err(Error::sql("42704", format!("constraint \"{name}\" of relation \"{}\" does not exist", def.name)))
        }
        ast::AlterTableOperation::AlterColumn { column_name, op } => {
            let cname = ident(column_name);
            let pos = def.column_index(&cname).ok_or_else(|| no_column(&def, &cname))?;
            alter_column(txn, def, pos, op)
        }
        other => Err(feature(format!("ALTER TABLE {other}"))),
    }
}

/// Drops the column at `pos`: its indexes go with it, and so does the primary key if
/// the column is part of it (the table is then rebuilt with hidden row ids), as in
/// PostgreSQL.
fn drop_column(txn: &mut Transaction, mut def: TableDef, pos: usize) -> Result<TableDef> {
    if def.columns.len() == 1 {
        return Err(feature("dropping the last column of a table"));
    }
    let old = def.clone();
    let (gone, kept): (Vec<_>, Vec<_>) = def.indexes.drain(..).partition(|i| i.columns.contains(&pos));
    def.indexes = kept;
    def.columns.remove(pos);
    let shift = |c: &mut usize| {
        if *c > pos {
            *c -= 1;
        }
    };
    def.indexes.iter_mut().for_each(|i| i.columns.iter_mut().for_each(shift));
    if old.primary_key.contains(&pos) {
        def.primary_key.clear();
        def.primary_key_name = None;
        return rebuild(txn, &old, def, false, |mut row| {
            row.remove(pos);
            Ok(row)
        });
    }
    def.primary_key.iter_mut().for_each(shift);
    for index in gone {
        delete_range(txn, old.index_range(&index))?;
    }
    // Decoded with the definition that still has the column.
    for r in scan_stored(txn, &old, old.rows_range()) {
        let r = r?;
        let mut row = r.row;
        row.remove(pos);
        txn.put(r.key, def.encode_row(&row))?;
    }
    Ok(def)
}

/// ADD COLUMN: existing rows get the column's default, or for an identity (`serial`)
/// column the counter's next values in key order, as PostgreSQL numbers them; an
/// inline UNIQUE adds its index, an inline PRIMARY KEY rebuilds the table on it.
fn add_column(
    txn: &mut Transaction,
    mut def: TableDef,
    cdef: &ast::ColumnDef,
    if_not_exists: bool,
) -> Result<TableDef> {
    // A counter number no column of the table uses (see `Identity::counter`).
    let counter = def
        .columns
        .iter()
        .filter_map(|c| c.identity.map(|i| i.counter))
        .max()
        .unwrap_or(0)
        .max(def.columns.len() as u64)
        + 1;
    let (col, keys) = column_def(cdef, counter, &def.name)?;
    if def.column_index(&col.name).is_some() {
        if if_not_exists {
            return Ok(def);
        }
        return Err(Error::sql(
            "42701",
            format!("column \"{}\" of relation \"{}\" already exists", col.name, def.name),
        ));
    }
    if keys.primary_key && !def.primary_key.is_empty() {
        return Err(Error::sql("42P16", format!("multiple primary keys for table \"{}\" are not allowed", def.name)));
    }
    let value = default_value(&col)?.cast(col.ty).map_err(crate::expr::to_sql_err)?;
    // Decoded with the definition before the column exists.
    let mut rows = scan_stored(txn, &def, def.rows_range()).peekable();
    if value.is_null() && col.identity.is_none() && !col.nullable && rows.peek().is_some() {
        return Err(contains_nulls(&def, &col));
    }
    let (ty, identity) = (col.ty, col.identity);
    def.columns.push(col);
    let pos = def.columns.len() - 1;
    if identity.is_some() || !value.is_null() {
        for r in rows {
            let r = r?;
            let mut row = r.row;
            row.resize(pos, Value::Null);
            row.push(match identity {
                Some(i) => {
                    Value::Int(Catalog::next_identity(txn, &def, i)?).cast(ty).map_err(crate::expr::to_sql_err)?
                }
                None => value.clone(),
            });
            txn.put(r.key, def.encode_row(&row))?;
        }
    }
    if keys.unique {
        let name = unique_name(&def, &[pos]);
        ensure_relation_name_free(txn, &name, Some(&def))?;
        add_index(txn, &mut def, name, vec![pos], true)?;
    }
    if keys.primary_key {
        let new = TableDef { primary_key: vec![pos], ..def.clone() };
        ensure_relation_name_free(txn, &new.pkey_name(), None)?;
        return rebuild(txn, &def, new, false, Ok);
    }
    Ok(def)
}

fn add_constraint(txn: &mut Transaction, mut def: TableDef, constraint: &ast::TableConstraint) -> Result<TableDef> {
    match constraint {
        ast::TableConstraint::PrimaryKey(p) => {
            if !def.primary_key.is_empty() {
                return Err(Error::sql(
                    "42P16",
                    format!("multiple primary keys for table \"{}\" are not allowed", def.name),
                ));
            }
            let mut new = def.clone();
            new.primary_key = key_columns(&def.columns, &p.columns, "PRIMARY KEY", Some(&def.name))?;
            new.primary_key_name = p.name.as_ref().map(ident);
            // NOT NULL first, as PostgreSQL checks it before building the key.
            for c in new.primary_key.clone() {
                set_not_null(txn, &mut new, c)?;
            }
            ensure_relation_name_free(txn, &new.pkey_name(), None)?;
            rebuild(txn, &def, new, false, Ok)
        }
        ast::TableConstraint::Unique(u) => {
            let columns = key_columns(&def.columns, &u.columns, "UNIQUE", Some(&def.name))?;
            let name = u.name.as_ref().map(ident).unwrap_or_else(|| unique_name(&def, &columns));
            ensure_relation_name_free(txn, &name, Some(&def))?;
            add_index(txn, &mut def, name, columns, true)?;
            Ok(def)
        }
        ast::TableConstraint::ForeignKey(_) => Err(feature("FOREIGN KEY")),
        ast::TableConstraint::Check(_) => Err(feature("CHECK constraints")),
        other => Err(feature(format!("constraint {other}"))),
    }
}

/// Makes a column NOT NULL after checking that no row holds NULL in it.
fn set_not_null(txn: &mut Transaction, def: &mut TableDef, pos: usize) -> Result<()> {
    if def.columns[pos].nullable {
        for r in scan_stored(txn, def, def.rows_range()) {
            if r?.row[pos].is_null() {
                return Err(contains_nulls(def, &def.columns[pos]));
            }
        }
        def.columns[pos].nullable = false;
    }
    Ok(())
}

fn alter_column(
    txn: &mut Transaction,
    mut def: TableDef,
    pos: usize,
    op: &ast::AlterColumnOperation,
) -> Result<TableDef> {
    let identity_error = |def: &TableDef| {
        Error::sql(
            "42601",
            format!("column \"{}\" of relation \"{}\" is an identity column", def.columns[pos].name, def.name),
        )
    };
    match op {
        ast::AlterColumnOperation::SetNotNull => set_not_null(txn, &mut def, pos)?,
        ast::AlterColumnOperation::DropNotNull => {
            if def.primary_key.contains(&pos) {
                return Err(Error::sql("42P16", format!("column \"{}\" is in a primary key", def.columns[pos].name)));
            }
            if def.columns[pos].identity.is_some() {
                return Err(identity_error(&def));
            }
            def.columns[pos].nullable = true;
        }
        ast::AlterColumnOperation::SetDefault { value } => {
            if def.columns[pos].identity.is_some() {
                return Err(identity_error(&def));
            }
            apply_column_option(&mut def.columns[pos], &ast::ColumnOption::Default(value.clone()))?;
        }
        ast::AlterColumnOperation::DropDefault => match def.columns[pos].identity {
            Some(i) if i.always => return Err(identity_error(&def)),
            // A serial column's default is its counter (`serial` is an identity column
            // here); dropping it leaves a plain integer column, as in PostgreSQL.
            Some(_) => def.columns[pos].identity = None,
            None => def.columns[pos].default = None,
        },
        ast::AlterColumnOperation::SetDataType { data_type, using, .. } => {
            return change_type(txn, def, pos, data_type, using.as_ref());
        }
        other => return Err(feature(format!("ALTER COLUMN … {other}"))),
    }
    Ok(def)
}

/// `ALTER COLUMN c TYPE t [USING expr]`: every row's value is converted (by the USING
/// expression over the old row, else by an assignment cast), and the table is rebuilt
/// because the column may be part of keys.
fn change_type(
    txn: &mut Transaction,
    def: TableDef,
    pos: usize,
    data_type: &ast::DataType,
    using: Option<&ast::Expr>,
) -> Result<TableDef> {
    let ty = DataType::parse(&data_type.to_string()).map_err(crate::expr::to_sql_err)?;
    let col = &def.columns[pos];
    if col.identity.is_some() && !ty.is_integer() {
        return Err(Error::sql(
            "22023",
            format!("identity column type must be smallint, integer, or bigint (column \"{}\")", col.name),
        ));
    }
    if using.is_none() && !col.ty.casts_on_assignment(ty) {
        return Err(Error::sql(
            "42804",
            format!(
                "column \"{}\" cannot be cast automatically to type {} (specify USING {}::{})",
                col.name,
                ty.pg_name(),
                col.name,
                ty.pg_name()
            ),
        ));
    }
    if col.default.is_some() && default_value(col)?.cast(ty).is_err() {
        return Err(Error::sql(
            "42804",
            format!("default for column \"{}\" cannot be cast automatically to type {}", col.name, ty.pg_name()),
        ));
    }
    let using = using.map(|e| Binder::new(&scope_of(&def, &def.name)).bind(e)).transpose()?;
    let mut new = def.clone();
    new.columns[pos].ty = ty;
    rebuild(txn, &def, new, true, |mut row: Row| {
        let v = match &using {
            Some(e) => e.eval(&row, &[])?,
            None => std::mem::replace(&mut row[pos], Value::Null),
        };
        row[pos] = v.cast(ty).map_err(crate::expr::to_sql_err)?;
        Ok(row)
    })
}

/// The error for the first primary-key value (in key order) that two rows of `old` share
/// once mapped into `new`: their keys sorted (spilling past work_mem), equal ones
/// adjacent.
fn first_duplicate(
    txn: &mut Transaction,
    old: &TableDef,
    new: &TableDef,
    map: &mut impl FnMut(Row) -> Result<Row>,
) -> Result<Error> {
    let mut keys = crate::spill::RowStore::new();
    for r in scan_stored(txn, old, old.rows_range()) {
        let row = map(r?.row)?;
        let mut entry = vec![Value::Bytes(new.row_key(&row, None))];
        entry.extend(new.primary_key.iter().map(|&c| row[c].clone()));
        keys.push(entry)?;
    }
    let sorted = crate::spill::sort(keys.into_rows()?, &[(0, false, false)], None, crate::spill::work_mem())?;
    let mut previous: Option<Row> = None;
    for entry in sorted {
        let entry = entry?;
        if previous.as_ref().is_some_and(|p| p[0] == entry[0]) {
            return Ok(duplicated(&new.pkey_name(), new, &new.primary_key, &entry[1..]));
        }
        previous = Some(entry);
    }
    Err(Error::Internal(format!("rebuilding {}: fewer rows than written, but no two share a key", new.name)))
}

/// Moves every row of `old` into `new` under a fresh table id (see the module
/// comment), each row passed through `map`; returns `new` with its id. `values_change`:
/// `map` may change indexed values (a type change), so unique indexes are checked again.
fn rebuild(
    txn: &mut Transaction,
    old: &TableDef,
    new: TableDef,
    values_change: bool,
    mut map: impl FnMut(Row) -> Result<Row>,
) -> Result<TableDef> {
    Catalog::drop_table(txn, old)?;
    let new = Catalog::create(txn, new)?;
    Catalog::copy_identities(txn, old, &new)?;
    let mut rowid = 0u64;
    let mut written = 0u64;
    for r in scan_stored(txn, old, old.rows_range()) {
        let row = map(r?.row)?;
        if let Some(c) = row.iter().zip(&new.columns).find_map(|(v, c)| (v.is_null() && !c.nullable).then_some(c)) {
            return Err(contains_nulls(&new, c));
        }
        let key = if new.primary_key.is_empty() {
            rowid += 1;
            new.row_key(&row, Some(rowid))
        } else {
            new.row_key(&row, None)
        };
        for index in &new.indexes {
            txn.put(new.index_key(index, &row, &key), Vec::new())?;
        }
        txn.put(key, new.encode_row(&row))?;
        written += 1;
    }
    // Two rows with one key leave fewer rows than were written: counting them back is
    // one ordered read instead of a lookup per row.
    if !new.primary_key.is_empty() {
        let flag = crate::interrupt::current();
        let mut stored = 0u64;
        for kv in txn.scan(new.rows_range()) {
            crate::interrupt::check(&flag)?;
            kv?;
            stored += 1;
        }
        if stored != written {
            return Err(first_duplicate(txn, old, &new, &mut map)?);
        }
    }
    if rowid > 0 {
        Catalog::set_rowid(txn, &new, rowid)?;
    }
    if values_change {
        for index in new.indexes.iter().filter(|i| i.unique) {
            check_unique(txn, &new, index, &index.name)?;
        }
    }
    Ok(new)
}
