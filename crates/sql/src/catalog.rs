//! The catalog: table definitions stored in the key-value store, versioned like data.
//!
//! ```text
//!   0x10 str(table name)            → JSON TableDef
//!   0x11                            → u64 LE: last table id handed out
//!   0x12 u64(table id)              → u64 LE: last hidden row id handed out
//!   0x12 u64(table id) u64(counter) → i64 LE: last value of an identity column
//!   0x13 u64(table id)              → table name: a restore in progress loads this id
//!   0x14 u64(table id)              → table name: dropped; its rows and index entries
//!                                     are garbage, deleted in bounded transactions
//!   0x15 u64(job id)                → JSON: a continuous backup job's settings and state
//!   0x16                            → u64 LE: last backup job id handed out
//!   0x17 str(view name)             → JSON ViewDef: the view's query text and column names
//!   0x20 u64(table id) key(pk...)   → row: encoded values of every column
//!   0x21 u64(table id) u64(index id) key(indexed values...) key(pk...) → empty
//! ```
//! Because catalog entries are ordinary versioned keys read through the transaction,
//! DDL is transactional and `AS OF SYSTEM TIME` sees the schema of its time.

use crate::types::{DataType, Value};
use amberdb_encoding::codec::{Reader, Writer};
use amberdb_encoding::keycode::{KeyDecoder, KeyEncoder};
use amberdb_error::{Error, Result};
use amberdb_mvcc::Transaction;
use amberdb_storage::KeyRange;
use serde::{Deserialize, Serialize};

const TAG_TABLE: u8 = 0x10;
const TAG_TABLE_SEQ: u8 = 0x11;
const TAG_ROWID: u8 = 0x12;
const TAG_PENDING_RESTORE: u8 = 0x13;
const TAG_DROPPED: u8 = 0x14;
const TAG_BACKUP_JOB: u8 = 0x15;
const TAG_BACKUP_JOB_SEQ: u8 = 0x16;
const TAG_VIEW: u8 = 0x17;
const TAG_ROW: u8 = 0x20;
const TAG_INDEX: u8 = 0x21;

/// A secondary index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexDef {
    /// Id, unique within the table (entries embed it).
    pub id: u64,
    /// Name, unique within the database.
    pub name: String,
    /// Indexed column positions, in order.
    pub columns: Vec<usize>,
    /// Whether two rows may not share non-NULL values.
    pub unique: bool,
}

/// A column definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Name (lower-cased unless quoted).
    pub name: String,
    /// Type.
    pub ty: DataType,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The DEFAULT expression as SQL text, evaluated at insert time.
    pub default: Option<String>,
    /// An identity column (`GENERATED … AS IDENTITY`, `serial`): its values come from a
    /// counter of the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

/// How an identity column gets its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `GENERATED ALWAYS`: an explicit value is refused (`BY DEFAULT` and `serial`
    /// take one, as PostgreSQL does).
    pub always: bool,
    /// The counter's number within the table (stable across renames and drops of
    /// other columns): its key is `0x12 u64(table id) u64(counter)`.
    pub counter: u64,
}

/// A view: a named query, inlined where it is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    /// Name.
    pub name: String,
    /// The query, as SQL text.
    pub query: String,
    /// Column names given in `CREATE VIEW v (a, b)`; empty: the query's own.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// A table definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    /// Stable id (keys of rows embed it, so a dropped and re-created table never sees
    /// old rows).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Primary key column indexes; empty means a hidden row id is the key.
    pub primary_key: Vec<usize>,
    /// The primary key constraint's name when it is not `<table>_pkey` (named by
    /// `CONSTRAINT … PRIMARY KEY`, or kept through a table rename, as PostgreSQL keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key_name: Option<String>,
    /// Secondary indexes (UNIQUE constraints are unique indexes).
    #[serde(default)]
    pub indexes: Vec<IndexDef>,
}

impl TableDef {
    /// A table definition with no constraints or indexes, its id to be assigned.
    pub fn new(name: String, columns: Vec<Column>) -> Self {
        TableDef { id: 0, name, columns, primary_key: Vec::new(), primary_key_name: None, indexes: Vec::new() }
    }

    /// The primary key constraint's (and its index's) name.
    pub fn pkey_name(&self) -> String {
        self.primary_key_name.clone().unwrap_or_else(|| format!("{}_pkey", self.name))
    }

    /// Index of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key of the row whose primary key values are in `row`.
    pub fn row_key(&self, row: &[Value], rowid: Option<u64>) -> Vec<u8> {
        let mut enc = KeyEncoder::with_tag(TAG_ROW).u64(self.id);
        if self.primary_key.is_empty() {
            enc = enc.u64(rowid.unwrap_or(0));
        } else {
            for &i in &self.primary_key {
                enc = row[i].encode_key(enc);
            }
        }
        enc.finish()
    }

    /// Position of the row prefix in [`TableDef::key_prefixes`].
    pub const ROW_PREFIX: usize = 1;

    /// Every key prefix the table's entries live under, ascending: the hidden row id
    /// counter, the rows, the index entries. Backups copy exactly these.
    pub fn key_prefixes(&self) -> Vec<Vec<u8>> {
        vec![
            KeyEncoder::with_tag(TAG_ROWID).u64(self.id).finish(),
            KeyEncoder::with_tag(TAG_ROW).u64(self.id).finish(),
            KeyEncoder::with_tag(TAG_INDEX).u64(self.id).finish(),
        ]
    }

    /// The key range holding every row of the table.
    pub fn rows_range(&self) -> KeyRange {
        KeyRange::prefix(&KeyEncoder::with_tag(TAG_ROW).u64(self.id).finish())
    }

    /// The prefix of every entry of `index` whose indexed values are `values` (a prefix
    /// of the index's columns).
    pub fn index_prefix(&self, index: &IndexDef, values: &[Value]) -> Vec<u8> {
        let enc = KeyEncoder::with_tag(TAG_INDEX).u64(self.id).u64(index.id);
        values.iter().fold(enc, |e, v| v.encode_key(e)).finish()
    }

    /// The prefix of every row key of the table.
    pub fn row_prefix(&self) -> Vec<u8> {
        KeyEncoder::with_tag(TAG_ROW).u64(self.id).finish()
    }

    /// The entry of `index` for the row stored under `row_key`. The entry ends with the
    /// row key *without* the table's row prefix, so entries do not embed the table id
    /// and a restore can move a table to a new id by rewriting key prefixes alone.
    pub fn index_key(&self, index: &IndexDef, row: &[Value], row_key: &[u8]) -> Vec<u8> {
        let values: Vec<Value> = index.columns.iter().map(|&c| row[c].clone()).collect();
        let mut k = self.index_prefix(index, &values);
        let prefix = self.row_prefix();
        k.extend_from_slice(row_key.strip_prefix(prefix.as_slice()).unwrap_or(row_key));
        k
    }

    /// The row key an index entry points at.
    pub fn row_key_of_entry(&self, index: &IndexDef, entry: &[u8]) -> Result<Vec<u8>> {
        let mut d = KeyDecoder::new(entry);
        d.tag()?;
        d.u64()?;
        d.u64()?;
        for &c in &index.columns {
            Value::decode_key(&mut d, self.columns[c].ty)?;
        }
        let mut key = self.row_prefix();
        key.extend_from_slice(d.remaining());
        Ok(key)
    }

    /// Every entry of every index of the table.
    pub fn indexes_range(&self) -> KeyRange {
        KeyRange::prefix(&KeyEncoder::with_tag(TAG_INDEX).u64(self.id).finish())
    }

    /// Every entry of one index.
    pub fn index_range(&self, index: &IndexDef) -> KeyRange {
        KeyRange::prefix(&KeyEncoder::with_tag(TAG_INDEX).u64(self.id).u64(index.id).finish())
    }

    /// Encodes a row's values.
    pub fn encode_row(&self, row: &[Value]) -> Vec<u8> {
        let mut w = Writer::new();
        w.varint(row.len() as u64);
        for v in row {
            v.encode(&mut w);
        }
        w.finish()
    }

    /// Decodes a row's values; rows written before columns were added get NULLs.
    pub fn decode_row(&self, raw: &[u8]) -> Result<Vec<Value>> {
        let mut r = Reader::new(raw, "table row");
        let n = r.varint()? as usize;
        let mut row = Vec::with_capacity(self.columns.len());
        for _ in 0..n {
            row.push(Value::decode(&mut r)?);
        }
        r.finish()?;
        row.resize(self.columns.len(), Value::Null);
        Ok(row)
    }

    /// Decodes the primary key values out of a row key (for tools; unused by SELECT).
    pub fn decode_key(&self, key: &[u8]) -> Result<Vec<Value>> {
        let mut d = KeyDecoder::new(key);
        d.tag()?;
        d.u64()?;
        self.primary_key.iter().map(|&i| Value::decode_key(&mut d, self.columns[i].ty)).collect()
    }
}

fn table_key(name: &str) -> Vec<u8> {
    KeyEncoder::with_tag(TAG_TABLE).str(name).finish()
}

/// A JSON catalog entry (table or view definition).
fn decode_entry<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| Error::InvalidData(format!("catalog entry: {e}")))
}

fn read_u64(raw: Option<Vec<u8>>) -> Result<u64> {
    match raw {
        None => Ok(0),
        Some(b) => {
            let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| Error::InvalidData("bad catalog counter".into()))?;
            Ok(u64::from_le_bytes(arr))
        }
    }
}

/// Catalog operations within a transaction.
pub struct Catalog;

impl Catalog {
    /// Looks a table up by name.
    pub fn get(txn: &mut Transaction, name: &str) -> Result<Option<TableDef>> {
        match txn.get(&table_key(name))? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| Error::InvalidData(format!("catalog entry for table {name}: {e}"))),
        }
    }

    /// Looks a table up by name, failing with PostgreSQL's error if it does not exist.
    pub fn must_get(txn: &mut Transaction, name: &str) -> Result<TableDef> {
        if let Some(def) = Self::get(txn, name)? {
            return Ok(def);
        }
        if Self::get_view(txn, name)?.is_some() {
            return Err(Error::sql("0A000", format!("\"{name}\" is a view: views can only be read")));
        }
        Err(Error::sql("42P01", format!("relation \"{name}\" does not exist")))
    }

    /// A view's definition.
    pub fn get_view(txn: &mut Transaction, name: &str) -> Result<Option<ViewDef>> {
        txn.get(&KeyEncoder::with_tag(TAG_VIEW).str(name).finish())?.map(|raw| decode_entry(&raw)).transpose()
    }

    /// Stores (or replaces) a view.
    pub fn put_view(txn: &mut Transaction, view: &ViewDef) -> Result<()> {
        let raw = serde_json::to_vec(view).map_err(|e| Error::Internal(format!("encode view definition: {e}")))?;
        txn.put(KeyEncoder::with_tag(TAG_VIEW).str(&view.name).finish(), raw)
    }

    /// Drops a view.
    pub fn drop_view(txn: &mut Transaction, name: &str) -> Result<()> {
        txn.delete(KeyEncoder::with_tag(TAG_VIEW).str(name).finish())
    }

    /// Every view, ordered by name.
    pub fn list_views(txn: &mut Transaction) -> Result<Vec<ViewDef>> {
        txn.scan(KeyRange::prefix(&[TAG_VIEW])).map(|kv| decode_entry(&kv?.1)).collect()
    }

    /// Every table, ordered by name.
    pub fn list(txn: &mut Transaction) -> Result<Vec<TableDef>> {
        txn.scan(KeyRange::prefix(&[TAG_TABLE])).map(|kv| decode_entry(&kv?.1)).collect()
    }

    /// Hands out a new table id.
    pub fn allocate_id(txn: &mut Transaction) -> Result<u64> {
        let id = read_u64(txn.get(&[TAG_TABLE_SEQ])?)? + 1;
        txn.put(vec![TAG_TABLE_SEQ], id.to_le_bytes().to_vec())?;
        Ok(id)
    }

    /// Records that a restore is loading entries under table id `id`.
    pub fn put_pending_restore(txn: &mut Transaction, id: u64, name: &str) -> Result<()> {
        txn.put(KeyEncoder::with_tag(TAG_PENDING_RESTORE).u64(id).finish(), name.as_bytes().to_vec())
    }

    /// Clears a pending-restore marker.
    pub fn remove_pending_restore(txn: &mut Transaction, id: u64) -> Result<()> {
        txn.delete(KeyEncoder::with_tag(TAG_PENDING_RESTORE).u64(id).finish())
    }

    /// Every pending-restore marker: (table id, table name).
    pub fn pending_restores(txn: &mut Transaction) -> Result<Vec<(u64, String)>> {
        Self::markers(txn, TAG_PENDING_RESTORE)
    }

    /// Creates a table, assigning its id.
    pub fn create(txn: &mut Transaction, mut def: TableDef) -> Result<TableDef> {
        def.id = Self::allocate_id(txn)?;
        Self::put(txn, &def)?;
        Ok(def)
    }

    /// Stores a (changed) definition.
    pub fn put(txn: &mut Transaction, def: &TableDef) -> Result<()> {
        let raw = serde_json::to_vec(def).map_err(|e| Error::Internal(format!("encode table definition: {e}")))?;
        txn.put(table_key(&def.name), raw)
    }

    /// Drops a table. Only its catalog entry and row-id counter go in this transaction,
    /// so dropping a table of any size is one small commit; its rows and index entries
    /// (unreachable from then on: ids are never reused) are marked for
    /// [`Catalog::dropped_tables`] collection in bounded transactions.
    pub fn drop_table(txn: &mut Transaction, def: &TableDef) -> Result<()> {
        txn.delete(KeyEncoder::with_tag(TAG_ROWID).u64(def.id).finish())?;
        txn.put(KeyEncoder::with_tag(TAG_DROPPED).u64(def.id).finish(), def.name.as_bytes().to_vec())?;
        txn.delete(table_key(&def.name))
    }

    /// Tables dropped but not yet collected: (table id, name).
    pub fn dropped_tables(txn: &mut Transaction) -> Result<Vec<(u64, String)>> {
        Self::markers(txn, TAG_DROPPED)
    }

    /// Clears the drop marker of a collected table.
    pub fn remove_dropped(txn: &mut Transaction, id: u64) -> Result<()> {
        txn.delete(KeyEncoder::with_tag(TAG_DROPPED).u64(id).finish())
    }

    fn markers(txn: &mut Transaction, tag: u8) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for kv in txn.scan(KeyRange::prefix(&[tag])) {
            let (k, v) = kv?;
            let mut d = KeyDecoder::new(&k);
            d.tag()?;
            out.push((d.u64()?, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// The key prefix under which table definitions live (a point-in-time restore
    /// replays changes to it from a backup's log).
    pub fn tables_prefix() -> Vec<u8> {
        vec![TAG_TABLE]
    }

    /// The table name a key under [`Catalog::tables_prefix`] names.
    pub fn table_name_of_key(key: &[u8]) -> Result<String> {
        let mut d = KeyDecoder::new(key);
        if d.tag()? != TAG_TABLE {
            return Err(Error::InvalidData("not a table definition key".into()));
        }
        d.string()
    }

    /// Hands out a new backup job id.
    pub fn allocate_job_id(txn: &mut Transaction) -> Result<u64> {
        let id = read_u64(txn.get(&[TAG_BACKUP_JOB_SEQ])?)? + 1;
        txn.put(vec![TAG_BACKUP_JOB_SEQ], id.to_le_bytes().to_vec())?;
        Ok(id)
    }

    /// Stores a backup job's record.
    pub fn put_job(txn: &mut Transaction, id: u64, record: &[u8]) -> Result<()> {
        txn.put(KeyEncoder::with_tag(TAG_BACKUP_JOB).u64(id).finish(), record.to_vec())
    }

    /// Every backup job record, by id.
    pub fn jobs(txn: &mut Transaction) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in txn.scan(KeyRange::prefix(&[TAG_BACKUP_JOB])) {
            let (k, v) = kv?;
            let mut d = KeyDecoder::new(&k);
            d.tag()?;
            out.push((d.u64()?, v));
        }
        Ok(out)
    }

    /// The next value of an identity column (1, 2, …). Transactional: a rolled-back
    /// insert gives its value back, and concurrent inserters of one table conflict on
    /// the counter (one of them retries, 40001), as they do on hidden row ids.
    pub fn next_identity(txn: &mut Transaction, def: &TableDef, identity: Identity) -> Result<i64> {
        let key = KeyEncoder::with_tag(TAG_ROWID).u64(def.id).u64(identity.counter).finish();
        let last = read_u64(txn.get(&key)?)? as i64;
        let next =
            last.checked_add(1).ok_or_else(|| Error::sql("2200H", "identity column reached its maximum value"))?;
        txn.put(key, (next as u64).to_le_bytes().to_vec())?;
        Ok(next)
    }

    /// Carries a table's identity counters over to `to` (TRUNCATE … CONTINUE IDENTITY,
    /// which moves the table to a new id).
    pub fn copy_identities(txn: &mut Transaction, from: &TableDef, to: &TableDef) -> Result<()> {
        for identity in from.columns.iter().filter_map(|c| c.identity) {
            let key = |id: u64| KeyEncoder::with_tag(TAG_ROWID).u64(id).u64(identity.counter).finish();
            if let Some(v) = txn.get(&key(from.id))? {
                txn.put(key(to.id), v)?;
            }
        }
        Ok(())
    }

    /// Renames a table: its definition moves to the new name's key (rows and index
    /// entries are keyed by table id and stay where they are).
    pub fn rename(txn: &mut Transaction, def: &mut TableDef, to: &str) -> Result<()> {
        txn.delete(table_key(&def.name))?;
        def.name = to.to_string();
        Self::put(txn, def)
    }

    /// Sets the last hidden row id handed out (after a rebuild numbered the rows).
    pub fn set_rowid(txn: &mut Transaction, def: &TableDef, last: u64) -> Result<()> {
        txn.put(KeyEncoder::with_tag(TAG_ROWID).u64(def.id).finish(), last.to_le_bytes().to_vec())
    }

    /// Hands out the next hidden row id of a table without a primary key.
    pub fn next_rowid(txn: &mut Transaction, def: &TableDef) -> Result<u64> {
        let key = KeyEncoder::with_tag(TAG_ROWID).u64(def.id).finish();
        let id = read_u64(txn.get(&key)?)? + 1;
        txn.put(key, id.to_le_bytes().to_vec())?;
        Ok(id)
    }
}
