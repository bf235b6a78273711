//! # One error type for every layer
//!
//! AmberDB has a single error enum whose variants say *what kind of thing went
//! wrong*, not *where*: callers decide what to do from the kind (retry it, report
//! it to the client with a SQLSTATE, stop start-up), while the message says where.
//!
//! ```text
//!   storage ──┐
//!   mvcc ─────┼──▶ Error { kind variant, message naming file/key/version }
//!   consensus ┘         │
//!                       ├─▶ is_retryable()  — drivers' retry loops (40001)
//!                       └─▶ sqlstate()      — the one mapping to PostgreSQL codes
//! ```
//!
//! Invariants:
//! - Every error carries a human-readable message that names the object involved
//!   (file, key range, version); no variant is ever constructed with an empty message.
//! - `Serialization` is the only variant a client should blindly retry; `Unavailable`
//!   may succeed later (e.g. after a leader election) and is also marked retryable.

use std::fmt::Display;

/// The result type used throughout AmberDB.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// AmberDB's error kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The operation was aborted on purpose (e.g. shutdown, cancelled request).
    #[error("aborted: {0}")]
    Abort(String),
    /// A serializable transaction conflicted with a concurrent commit; retry it.
    #[error("serialization failure: {0}")]
    Serialization(String),
    /// A write was attempted in a read-only transaction (e.g. a time-travel read).
    #[error("read-only transaction: {0}")]
    ReadOnly(String),
    /// A read asked for a version that garbage collection has already removed, or that
    /// lies outside the retention window.
    #[error("version too old: {0}")]
    TooOld(String),
    /// The caller supplied something invalid (bad argument, bad config, bad request).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Persisted or received data failed validation (checksum, framing, decoding).
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// An operating-system I/O error; the message names the file.
    #[error("I/O error: {0}")]
    Io(String),
    /// The service cannot serve the request right now (no leader, shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A broken internal invariant. Never expected; always a bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// A SQL-level error with its exact SQLSTATE (undefined table, unique violation,
    /// syntax error with its 1-based character position, ...).
    #[error("{message}")]
    Sql {
        /// The five-character SQLSTATE.
        code: &'static str,
        /// The message, as PostgreSQL would word it.
        message: String,
        /// For syntax errors: 1-based character position in the statement text.
        position: Option<u32>,
    },
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Serialization(_) | Error::Unavailable(_))
    }

    /// The PostgreSQL SQLSTATE code for this error: the single place this mapping lives.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Abort(_) => "57014",         // query_canceled
            Error::Serialization(_) => "40001", // serialization_failure
            Error::ReadOnly(_) => "25006",      // read_only_sql_transaction
            Error::TooOld(_) => "72000",        // snapshot_too_old
            Error::InvalidInput(_) => "22023",  // invalid_parameter_value
            Error::InvalidData(_) => "XX001",   // data_corrupted
            Error::Io(_) => "58030",            // io_error
            Error::Unavailable(_) => "57P03",   // cannot_connect_now
            Error::Internal(_) => "XX000",      // internal_error
            Error::Sql { code, .. } => code,
        }
    }

    /// Builds a SQL error with an exact SQLSTATE.
    pub fn sql(code: &'static str, message: impl Into<String>) -> Self {
        Error::Sql { code, message: message.into(), position: None }
    }

    /// The message without the kind prefix (what a SQL client should see).
    pub fn message(&self) -> String {
        match self {
            Error::Sql { message, .. } => message.clone(),
            Error::Abort(m)
            | Error::Serialization(m)
            | Error::ReadOnly(m)
            | Error::TooOld(m)
            | Error::InvalidInput(m)
            | Error::InvalidData(m)
            | Error::Io(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => m.clone(),
        }
    }

    /// Builds an `Io` error whose message names the path involved.
    pub fn io(path: impl Display, err: impl Display) -> Self {
        Error::Io(format!("{path}: {err}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err.to_string())
    }
}

/// Returns early with an `InvalidInput` error built from a format string.
#[macro_export]
macro_rules! invalid_input {
    ($($args:tt)*) => { return Err($crate::Error::InvalidInput(format!($($args)*))) };
}

/// Returns early with an `InvalidData` error built from a format string.
#[macro_export]
macro_rules! invalid_data {
    ($($args:tt)*) => { return Err($crate::Error::InvalidData(format!($($args)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_and_sqlstate() {
        let e = Error::Serialization("conflict on key 'a'".into());
        assert!(e.is_retryable());
        assert_eq!(e.sqlstate(), "40001");
        assert!(!Error::TooOld("v1".into()).is_retryable());
        assert_eq!(Error::io("/x/y", "denied").to_string(), "I/O error: /x/y: denied");
    }
}
