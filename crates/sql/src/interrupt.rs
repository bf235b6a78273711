//! Cancel requests reach work that runs inside a statement.
//!
//! A statement's rows may be produced while it executes (sorts, groupings, UPDATE and
//! DELETE reading their rows) or later, as the client reads them (on another thread).
//! Either way the work is a loop pulling rows, so each long loop checks the session's
//! interrupt flag, captured when the statement was planned, and stops with SQLSTATE
//! 57014 once a cancel request set it. The flag is cleared when the next statement
//! starts, so a cancel that arrives between statements cancels nothing, as in
//! PostgreSQL.

use crate::pipeline::RowIter;
use amberdb_error::{Error, Result};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A session's interrupt flag (None: not cancellable, e.g. internal statements).
pub type Flag = Option<Arc<AtomicBool>>;

thread_local! {
    static CURRENT: RefCell<Flag> = const { RefCell::new(None) };
}

/// Runs `f` (executing a statement) with `flag` as the statement's interrupt flag.
pub(crate) fn with_flag<T>(flag: Flag, f: impl FnOnce() -> T) -> T {
    let before = CURRENT.with(|c| c.replace(flag));
    let out = f();
    CURRENT.with(|c| *c.borrow_mut() = before);
    out
}

/// The flag of the statement executing on this thread, for loops that outlive it.
pub(crate) fn current() -> Flag {
    CURRENT.with(|c| c.borrow().clone())
}

/// Fails with 57014 if the statement was canceled.
pub(crate) fn check(flag: &Flag) -> Result<()> {
    match flag {
        Some(f) if f.load(Ordering::Relaxed) => Err(Error::sql("57014", "canceling statement due to user request")),
        _ => Ok(()),
    }
}

/// `rows`, ending in a 57014 error once the statement is canceled.
pub(crate) fn rows(rows: RowIter) -> RowIter {
    let flag = current();
    if flag.is_none() {
        return rows;
    }
    let mut done = false;
    Box::new(rows.map_while(move |r| {
        if done {
            return None;
        }
        if let Err(e) = check(&flag) {
            done = true;
            return Some(Err(e));
        }
        Some(r)
    }))
}
