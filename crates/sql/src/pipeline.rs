//! Lazily evaluated query stages.
//!
//! A query's rows are a [`RowIter`]: a boxed iterator that owns everything it needs
//! (its storage scans hold their own read-version registration, expressions are bound
//! and parameters shared), so it can be pulled after the statement returned, on another
//! thread, while the session runs its next statement. Stages that must see every row
//! before emitting one (grouping, sorting, DISTINCT) hold at most `work_mem` and spill
//! the rest to temporary files (`spill`); the right side of a nested-loop join and
//! INTERSECT/EXCEPT's right input are still held in memory. Everything else is a
//! per-row adapter, so a scan, filter, projection or LIMIT keeps memory independent of
//! table size and a LIMIT stops reading early.
//!
//! ```text
//!   scan ─▶ filter ─▶ [join: right side collected] ─▶ project ─▶ distinct ─▶ limit ─▶ client
//!                         └─▶ aggregate / sort (collect) ─┘
//! ```
//!
//! Invariant: an error is an item (`Err`), never dropped; adapters pass it through and
//! the consumer stops at the first one.

use crate::expr::Expr;
use crate::types::Value;
use amberdb_error::Result;
use std::cmp::Ordering;
use std::sync::Arc;

/// One row of values.
pub type Row = Vec<Value>;

/// Rows produced on demand.
pub type RowIter = Box<dyn Iterator<Item = Result<Row>> + Send>;

/// Bind parameters shared by the stages of one statement.
pub type Params = Arc<[Value]>;

/// Rows already in memory.
pub fn materialized(rows: Vec<Row>) -> RowIter {
    Box::new(rows.into_iter().map(Ok))
}

/// Keeps the rows for which `keep` is true.
pub fn filter(rows: RowIter, mut keep: impl FnMut(&Row) -> Result<bool> + Send + 'static) -> RowIter {
    Box::new(rows.filter_map(move |r| match r {
        Ok(r) => match keep(&r) {
            Ok(true) => Some(Ok(r)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        },
        Err(e) => Some(Err(e)),
    }))
}

/// Transforms every row.
pub fn map(rows: RowIter, mut f: impl FnMut(Row) -> Result<Row> + Send + 'static) -> RowIter {
    Box::new(rows.map(move |r| r.and_then(&mut f)))
}

/// OFFSET/LIMIT: skips `offset` rows (errors among them still surface) and stops
/// pulling from the input once `limit` rows are out.
pub fn limit(mut rows: RowIter, offset: usize, limit: Option<usize>) -> RowIter {
    let (mut skipped, mut taken) = (0usize, 0usize);
    Box::new(std::iter::from_fn(move || loop {
        if limit.is_some_and(|l| taken >= l) {
            return None;
        }
        match rows.next()? {
            Err(e) => return Some(Err(e)),
            Ok(_) if skipped < offset => skipped += 1,
            Ok(r) => {
                taken += 1;
                return Some(Ok(r));
            }
        }
    }))
}

/// A sort key: (column, descending, nulls first).
pub type SortKey = (usize, bool, bool);

/// Orders two rows by `keys` (PostgreSQL's default: NULLs sort as larger than any value).
pub fn compare(a: &[Value], b: &[Value], keys: &[SortKey]) -> Ordering {
    for &(c, desc, nulls_first) in keys {
        let ord = match (a[c].is_null(), b[c].is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ if desc => a[c].sort_cmp(&b[c]).reverse(),
            _ => a[c].sort_cmp(&b[c]),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// A nested-loop join: the left input streams, the right one is held in memory.
pub struct NestedLoop {
    left: RowIter,
    right: Vec<Row>,
    on: Option<Expr>,
    params: Params,
    keep_left: bool,
    keep_right: bool,
    left_width: usize,
    right_width: usize,
    right_matched: Vec<bool>,
    /// The left row being joined, the next right row to try, and whether it matched.
    current: Option<(Row, usize, bool)>,
    left_done: bool,
    /// After the left side: the next right row to check for RIGHT/FULL padding.
    tail: usize,
}

impl NestedLoop {
    /// Joins `left` (width `left_width`) with `right` (width `right_width`) on `on`;
    /// `keep_left`/`keep_right` pad unmatched rows with NULLs (outer joins).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        left: RowIter,
        left_width: usize,
        right: Vec<Row>,
        right_width: usize,
        on: Option<Expr>,
        params: Params,
        keep_left: bool,
        keep_right: bool,
    ) -> Self {
        let right_matched = vec![false; right.len()];
        Self {
            left,
            right,
            on,
            params,
            keep_left,
            keep_right,
            left_width,
            right_width,
            right_matched,
            current: None,
            left_done: false,
            tail: 0,
        }
    }
}

impl Iterator for NestedLoop {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some((l, next, matched)) = &mut self.current {
                while *next < self.right.len() {
                    let i = *next;
                    *next += 1;
                    let mut row = l.clone();
                    row.extend(self.right[i].iter().cloned());
                    match self.on.as_ref().map_or(Ok(true), |p| p.matches(&row, &self.params)) {
                        Ok(true) => {
                            *matched = true;
                            self.right_matched[i] = true;
                            return Some(Ok(row));
                        }
                        Ok(false) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                let (mut l, _, matched) = self.current.take().expect("current was just matched as Some");
                if self.keep_left && !matched {
                    l.extend(std::iter::repeat_n(Value::Null, self.right_width));
                    return Some(Ok(l));
                }
                continue;
            }
            if !self.left_done {
                match self.left.next() {
                    Some(Ok(l)) => {
                        self.current = Some((l, 0, false));
                        continue;
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.left_done = true,
                }
            }
            if !self.keep_right {
                return None;
            }
            while self.tail < self.right.len() {
                let i = self.tail;
                self.tail += 1;
                if !self.right_matched[i] {
                    let mut row = vec![Value::Null; self.left_width];
                    row.extend(self.right[i].iter().cloned());
                    return Some(Ok(row));
                }
            }
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amberdb_error::Error;

    fn ints(rows: &[i64]) -> RowIter {
        materialized(rows.iter().map(|&i| vec![Value::Int(i)]).collect())
    }

    fn collect(rows: RowIter) -> Result<Vec<i64>> {
        rows.map(|r| {
            r.map(|r| match r[0] {
                Value::Int(i) => i,
                _ => -1,
            })
        })
        .collect()
    }

    #[test]
    fn limit_stops_pulling_and_keeps_errors_in_the_offset() {
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = pulled.clone();
        let counting: RowIter = Box::new((0..1_000_000).map(move |i| {
            p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(vec![Value::Int(i)])
        }));
        assert_eq!(collect(limit(counting, 2, Some(3))).unwrap(), vec![2, 3, 4]);
        assert_eq!(pulled.load(std::sync::atomic::Ordering::Relaxed), 5);

        let failing: RowIter =
            Box::new(vec![Ok(vec![Value::Int(1)]), Err(Error::sql("22012", "division by zero"))].into_iter());
        assert!(collect(limit(failing, 5, None)).is_err(), "an error inside OFFSET must not be skipped");
    }

    #[test]
    fn nested_loop_outer_joins_pad_unmatched_rows() {
        // l.a = r.a with left {1,2}, right {2,3}: full join gives (1,N), (2,2), (N,3).
        let on = Expr::Binary(crate::expr::BinOp::Eq, Box::new(Expr::Column(0)), Box::new(Expr::Column(1)));
        let right = vec![vec![Value::Int(2)], vec![Value::Int(3)]];
        let rows: Vec<Row> = NestedLoop::new(ints(&[1, 2]), 1, right, 1, Some(on), Arc::from(vec![]), true, true)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Value::Int(1), Value::Null],
                vec![Value::Int(2), Value::Int(2)],
                vec![Value::Null, Value::Int(3)],
            ]
        );
    }
}
