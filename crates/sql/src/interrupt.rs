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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Why the running statement must stop, if it must: set by a cancel request or by
/// `statement_timeout`, cleared when the next statement starts.
#[derive(Debug, Default)]
pub struct Interrupt(AtomicU8);

const RUN: u8 = 0;
const CANCELED: u8 = 1;
const TIMED_OUT: u8 = 2;

impl Interrupt {
    /// A cancel request arrived.
    pub fn cancel(&self) {
        self.0.store(CANCELED, Ordering::SeqCst);
    }

    /// The statement ran past `statement_timeout` (a cancel that came first wins).
    pub fn time_out(&self) {
        let _ = self.0.compare_exchange(RUN, TIMED_OUT, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A new statement starts.
    pub fn clear(&self) {
        self.0.store(RUN, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        match self.0.load(Ordering::Relaxed) {
            RUN => Ok(()),
            TIMED_OUT => Err(Error::sql("57014", "canceling statement due to statement timeout")),
            _ => Err(Error::sql("57014", "canceling statement due to user request")),
        }
    }
}

/// A session's interrupt flag (None: not cancellable, e.g. internal statements).
pub type Flag = Option<Arc<Interrupt>>;

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

/// Fails with 57014 if the statement was canceled or timed out.
pub(crate) fn check(flag: &Flag) -> Result<()> {
    flag.as_deref().map_or(Ok(()), Interrupt::check)
}

/// Parses `statement_timeout` as PostgreSQL does: a plain number is milliseconds, or a
/// number with a unit (`us`, `ms`, `s`, `min`, `h`, `d`); 0 turns it off (None).
pub fn parse_timeout(text: &str) -> Result<Option<std::time::Duration>> {
    let (num, unit) = crate::spill::number_and_unit(text);
    let invalid = || Error::sql("22023", format!("invalid value for parameter \"statement_timeout\": \"{text}\""));
    let n: u64 = num.parse().map_err(|_| invalid())?;
    let micros_per: u64 = match unit {
        "" | "ms" => 1_000,
        "us" => 1,
        "s" => 1_000_000,
        "min" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(Error::sql("22023", format!("invalid value for parameter \"statement_timeout\": \"{text}\"; valid units for this parameter are \"us\", \"ms\", \"s\", \"min\", \"h\", and \"d\""))),
    };
    let micros = n.checked_mul(micros_per).ok_or_else(invalid)?;
    if micros > i32::MAX as u64 * 1_000 {
        return Err(Error::sql(
            "22023",
            format!(
                "{} ms is outside the valid range for parameter \"statement_timeout\" (0 .. 2147483647)",
                micros / 1_000
            ),
        ));
    }
    Ok((micros > 0).then(|| std::time::Duration::from_micros(micros)))
}

/// Formats `statement_timeout` as PostgreSQL's SHOW does.
pub fn format_timeout(t: Option<std::time::Duration>) -> String {
    let Some(t) = t else { return "0".into() };
    let ms = t.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statement_timeout_parses_and_prints_like_postgresql() {
        assert_eq!(parse_timeout("0").unwrap(), None);
        assert_eq!(parse_timeout("250").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("'5s'").unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("2min").unwrap(), Some(Duration::from_secs(120)));
        assert!(parse_timeout("5 fortnights").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("3000000000").is_err());
        assert_eq!(format_timeout(None), "0");
        assert_eq!(format_timeout(Some(Duration::from_millis(250))), "250ms");
        assert_eq!(format_timeout(Some(Duration::from_secs(5))), "5s");
        assert_eq!(format_timeout(Some(Duration::from_secs(120))), "2min");
    }

    #[test]
    fn a_cancel_is_not_reported_as_a_timeout() {
        let i = Interrupt::default();
        assert!(i.check().is_ok());
        i.cancel();
        i.time_out();
        assert!(i.check().unwrap_err().to_string().contains("user request"));
        i.clear();
        i.time_out();
        assert!(i.check().unwrap_err().to_string().contains("statement timeout"));
    }
}
