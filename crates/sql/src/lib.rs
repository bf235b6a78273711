//! # SQL: parse, bind, plan and execute over serializable transactions
//!
//! ```text
//!   SQL text ──sqlparser──▶ AST ──Binder──▶ bound expressions (column positions,
//!                                           parameters) ──exec──▶ rows over mvcc
//!                                                       │
//!   catalog (tables as versioned KV entries) ◀──────────┘
//! ```
//!
//! The parser is sqlparser's (PostgreSQL dialect); every semantic check — names, types,
//! grouping, constraints — is ours, with PostgreSQL's SQLSTATEs. Rows live in the same
//! versioned key space as everything else, keyed by (table id, primary key), so time
//! travel and backups see tables exactly as transactions do.
//!
//! Invariants:
//! - A statement either applies completely or not at all (it runs in one transaction;
//!   inside a block, an error marks the block failed and nothing of it commits).
//! - A NOT NULL or primary-key violation is detected before the write is buffered.
//! - A single-table statement whose WHERE fixes the whole primary key reads one key,
//!   so concurrent transactions on different rows do not conflict.

mod alter;
mod asof;
mod backup_job;
mod backup_sql;
mod catalog;
mod copy;
mod cte;
mod describe;
mod exec;
mod expr;
mod functions;
mod info_schema;
mod interrupt;
pub use interrupt::Interrupt;
mod interval;
mod numeric;
pub use numeric::Numeric;
mod pg_catalog;
mod pipeline;
mod session;
pub mod spill;
mod srf;
mod time;
mod to_char;
mod types;
mod valueset;
mod window;
mod zone;

pub use asof::AsOf;
pub use backup_job::{parse_duration, Control, Increment, JobManager, JobRecord, JobState, JobStatus};
pub use backup_sql::{
    backup, cleanup_pending_restores, collect_dropped_tables, restore, row_check, BackupOptions, BackupStatement, Env,
    RestoreRequest, RestoreSummary, RestoreTarget,
};
pub use catalog::{Catalog, Column, IndexDef, TableDef};
/// The SQL syntax tree (sqlparser's), for front ends that inspect statements.
pub use sqlparser::ast;

/// Describes a statement (parameter types, result columns) without running it.
pub fn describe_statement(
    node: &amberdb_consensus::Node,
    stmt: &Statement,
) -> amberdb_error::Result<describe::Description> {
    match stmt {
        Statement::Sql { ast, .. } => describe::describe(node, ast),
        Statement::Backup(b) => Ok((Vec::new(), Some(b.columns()))),
        Statement::Maintenance { .. } => Ok((Vec::new(), None)),
    }
}
pub use exec::{runs_briefly, OutColumn, Outcome, RecordIter};
pub use interval::Interval;
pub use pipeline::{Row, RowIter};
pub use session::{parse, syntax_error, Session, Statement, TxnState};
pub use types::{format_float, DataType, Value};
pub use zone::{with_zone, Zone};

/// The version string reported to clients (`SELECT version()`, `server_version`).
pub const SERVER_VERSION: &str = "15.0";

/// The full `version()` text.
pub const VERSION_TEXT: &str = concat!("PostgreSQL 15.0 (AmberDB ", env!("CARGO_PKG_VERSION"), ")");
