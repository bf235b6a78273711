//! Lazily evaluated query stages.
//!
//! A query's rows are a [`RowIter`]: a boxed iterator that owns everything it needs
//! (its storage scans hold their own read-version registration, expressions are bound
//! and parameters shared), so it can be pulled after the statement returned, on another
//! thread, while the session runs its next statement. Stages that must see every row
//! before emitting one (grouping, sorting, DISTINCT) hold at most `work_mem` and spill
//! the rest to temporary files (`spill`); the right side of a join and
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

/// The rows of one part after another, each part made when the previous one is used
/// up (`next_part` returns None when there are no more). An error ends the rows.
pub fn parts(mut next_part: impl FnMut() -> Result<Option<RowIter>> + Send + 'static) -> RowIter {
    let mut current: Option<RowIter> = None;
    let mut failed = false;
    Box::new(std::iter::from_fn(move || loop {
        if failed {
            return None;
        }
        if let Some(r) = current.as_mut().and_then(Iterator::next) {
            failed = r.is_err();
            return Some(r);
        }
        match next_part() {
            Ok(Some(p)) => current = Some(p),
            Ok(None) => return None,
            Err(e) => {
                failed = true;
                return Some(Err(e));
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

/// A join: the left input streams, the right one is held in memory. Each left row
/// tries every right row (nested loop) or, once [`NestedLoop::hashed`], only those
/// with its key.
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
    /// Equi-join keys: the right rows by key, so a left row meets only its matches.
    hash: Option<HashIndex>,
    /// The left row being joined, its candidate right rows (None: all), the next
    /// candidate to try, and whether it matched.
    current: Option<(Row, Option<Candidates>, usize, bool)>,
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
            hash: None,
            current: None,
            left_done: false,
            tail: 0,
        }
    }
}

/// Positions of the right rows one left row may match.
type Candidates = Arc<[usize]>;

/// The right side of a hash join: row positions by the encoded values of the key.
struct HashIndex {
    left_keys: Vec<Expr>,
    buckets: std::collections::HashMap<Vec<u8>, Candidates>,
}

/// The encoded key of `row` under `keys`, or None if a key value is NULL (which equals
/// nothing).
fn join_key(keys: &[Expr], row: &[Value], params: &[Value]) -> Result<Option<Vec<u8>>> {
    let vals = keys.iter().map(|k| k.eval(row, params)).collect::<Result<Vec<_>>>()?;
    Ok((!vals.iter().any(Value::is_null)).then(|| crate::exec::row_identity(&vals)))
}

impl NestedLoop {
    /// Makes this a hash join: `left_keys` (over left rows) and `right_keys` (over right
    /// rows) are equal in every row pair the ON condition accepts, and equal values
    /// encode equally (the planner only pairs types for which that holds). The ON
    /// condition is still checked on every candidate pair.
    pub fn hashed(mut self, left_keys: Vec<Expr>, right_keys: &[Expr]) -> Result<Self> {
        let mut buckets: std::collections::HashMap<Vec<u8>, Vec<usize>> = std::collections::HashMap::new();
        for (i, r) in self.right.iter().enumerate() {
            if let Some(k) = join_key(right_keys, r, &self.params)? {
                buckets.entry(k).or_default().push(i);
            }
        }
        let buckets = buckets.into_iter().map(|(k, v)| (k, Arc::from(v))).collect();
        self.hash = Some(HashIndex { left_keys, buckets });
        Ok(self)
    }

    /// The right rows `l` may match.
    fn candidates(&self, l: &[Value]) -> Result<Option<Candidates>> {
        let Some(h) = &self.hash else { return Ok(None) };
        Ok(Some(match join_key(&h.left_keys, l, &self.params)? {
            Some(k) => h.buckets.get(&k).cloned().unwrap_or_else(|| Arc::from(Vec::new())),
            None => Arc::from(Vec::new()),
        }))
    }
}

impl Iterator for NestedLoop {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some((l, cands, next, matched)) = &mut self.current {
                let total = cands.as_ref().map_or(self.right.len(), |c| c.len());
                while *next < total {
                    let i = cands.as_ref().map_or(*next, |c| c[*next]);
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
                let (mut l, _, _, matched) = self.current.take().expect("current was just matched as Some");
                if self.keep_left && !matched {
                    l.extend(std::iter::repeat_n(Value::Null, self.right_width));
                    return Some(Ok(l));
                }
                continue;
            }
            if !self.left_done {
                match self.left.next() {
                    Some(Ok(l)) => {
                        match self.candidates(&l) {
                            Ok(cands) => self.current = Some((l, cands, 0, false)),
                            Err(e) => return Some(Err(e)),
                        }
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

/// A join without equality keys whose right side does not fit in `work_mem`: the right
/// rows are in a spill file, the left side is read in blocks of up to `budget` bytes,
/// and the file is read once per block, each right row tried against every left row of
/// the block. Memory holds one block and one right row; the output has no order. LEFT
/// and FULL joins pad a block's unmatched left rows after its pass; RIGHT and FULL joins
/// keep one flag per right row (a bit each) and pad the unmatched ones at the end.
pub struct BlockNestedLoop {
    left: RowIter,
    left_done: bool,
    right: crate::spill::SpillReader,
    on: Option<Expr>,
    params: Params,
    keep_left: bool,
    keep_right: bool,
    left_width: usize,
    right_width: usize,
    budget: usize,
    /// Which right rows matched some left row (RIGHT/FULL joins only).
    right_matched: Vec<u64>,
    /// The left rows of this block, each with whether it matched.
    block: Vec<(Row, bool)>,
    /// The right row being tried against the block, its position, and the next left row.
    current: Option<(Row, u64, usize)>,
    /// Right rows read in this pass.
    right_read: u64,
    /// After the block's pass: the next block row to check for LEFT padding.
    pad_left: Option<usize>,
    /// After the left side: padding unmatched right rows (the file read once more).
    pad_right: Option<u64>,
    failed: bool,
}

impl BlockNestedLoop {
    /// Joins `left` with the right rows in `right` (see the type's docs).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        left: RowIter,
        left_width: usize,
        right: crate::spill::SpillReader,
        right_width: usize,
        on: Option<Expr>,
        params: Params,
        keep_left: bool,
        keep_right: bool,
        budget: usize,
    ) -> Self {
        let flags = if keep_right { right.total().div_ceil(64) as usize } else { 0 };
        Self {
            left,
            left_done: false,
            right,
            on,
            params,
            keep_left,
            keep_right,
            left_width,
            right_width,
            budget,
            right_matched: vec![0; flags],
            block: Vec::new(),
            current: None,
            right_read: 0,
            pad_left: None,
            pad_right: None,
            failed: false,
        }
    }

    /// Reads the next block of left rows and starts a pass over the right rows; false
    /// once the left side is exhausted.
    fn next_block(&mut self) -> Result<bool> {
        self.block.clear();
        let mut bytes = 0usize;
        while !self.left_done && (bytes < self.budget || self.block.is_empty()) {
            match self.left.next() {
                Some(r) => {
                    let r = r?;
                    bytes += crate::spill::row_bytes(&r);
                    self.block.push((r, false));
                }
                None => self.left_done = true,
            }
        }
        if self.block.is_empty() {
            return Ok(false);
        }
        self.right.rewind()?;
        self.right_read = 0;
        Ok(true)
    }

    fn step(&mut self) -> Result<Option<Row>> {
        loop {
            if let Some((r, j, next)) = &mut self.current {
                while *next < self.block.len() {
                    let i = *next;
                    *next += 1;
                    let mut row = self.block[i].0.clone();
                    row.extend(r.iter().cloned());
                    if self.on.as_ref().map_or(Ok(true), |p| p.matches(&row, &self.params))? {
                        self.block[i].1 = true;
                        if let Some(w) = self.right_matched.get_mut((*j / 64) as usize) {
                            *w |= 1 << (*j % 64);
                        }
                        return Ok(Some(row));
                    }
                }
                self.current = None;
            }
            if let Some(i) = &mut self.pad_left {
                while *i < self.block.len() {
                    let (l, matched) = &self.block[*i];
                    *i += 1;
                    if !matched {
                        let mut row = l.clone();
                        row.extend(std::iter::repeat_n(Value::Null, self.right_width));
                        return Ok(Some(row));
                    }
                }
                self.pad_left = None;
                if !self.next_block()? {
                    return self.start_right_padding();
                }
                continue;
            }
            if let Some(j) = &mut self.pad_right {
                for r in self.right.by_ref() {
                    let r = r?;
                    let at = *j;
                    *j += 1;
                    let matched = self.right_matched.get((at / 64) as usize).is_some_and(|w| w & (1 << (at % 64)) != 0);
                    if !matched {
                        let mut row = vec![Value::Null; self.left_width];
                        row.extend(r);
                        return Ok(Some(row));
                    }
                }
                return Ok(None);
            }
            if self.block.is_empty() {
                if !self.next_block()? {
                    return self.start_right_padding();
                }
                continue;
            }
            match self.right.next() {
                Some(r) => {
                    self.current = Some((r?, self.right_read, 0));
                    self.right_read += 1;
                }
                // The pass over the block is done.
                None if self.keep_left => self.pad_left = Some(0),
                None => {
                    if !self.next_block()? {
                        return self.start_right_padding();
                    }
                }
            }
        }
    }

    /// After the last block: RIGHT/FULL joins read the right rows once more for the
    /// unmatched ones; other joins are done.
    fn start_right_padding(&mut self) -> Result<Option<Row>> {
        if !self.keep_right || self.pad_right.is_some() {
            return Ok(None);
        }
        self.block.clear();
        self.right.rewind()?;
        self.pad_right = Some(0);
        self.step()
    }
}

impl Iterator for BlockNestedLoop {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.failed = true;
                None
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Levels of re-partitioning before a partition's right side is held in memory
/// whatever its size (only reached when one key has more rows than `work_mem` holds).
const MAX_JOIN_LEVELS: u32 = 4;

/// State of a hash join whose right side does not fit in `work_mem` (a grace hash join): both
/// inputs are partitioned to files by a hash of their key, so matching rows land in
/// partitions with the same number, and each pair is joined in memory in turn (one
/// level down, a pair whose right side is still too large is partitioned again). A
/// row whose key is NULL matches nothing; it goes to some partition all the same, to
/// be padded there if its side is kept by an outer join.
struct GraceJoin {
    spec: Arc<JoinSpec>,
    pairs: std::collections::VecDeque<(Option<crate::spill::SpillReader>, Option<crate::spill::SpillReader>, u32)>,
}

/// What every partition pair of a [`grace_join`] is joined with.
pub struct JoinSpec {
    /// Width of left rows.
    pub left_width: usize,
    /// Width of right rows.
    pub right_width: usize,
    /// Key expressions over left rows.
    pub left_keys: Vec<Expr>,
    /// Key expressions over right rows.
    pub right_keys: Vec<Expr>,
    /// The full ON condition over joined rows.
    pub on: Option<Expr>,
    /// Bind parameters.
    pub params: Params,
    /// LEFT/FULL: pad unmatched left rows.
    pub keep_left: bool,
    /// RIGHT/FULL: pad unmatched right rows.
    pub keep_right: bool,
    /// Bytes a partition's right side may hold in memory.
    pub budget: usize,
}

/// Joins `left` and `right` as a grace hash join (see `GraceJoin`); both inputs are
/// read and partitioned now, the pairs joined as the rows are pulled.
pub fn grace_join(left: RowIter, right: RowIter, spec: Arc<JoinSpec>) -> Result<RowIter> {
    let mut join = GraceJoin { spec, pairs: Default::default() };
    join.split_inputs(left, right, 0)?;
    Ok(parts(move || join.next_pair()))
}

impl GraceJoin {
    fn split_inputs(&mut self, left: RowIter, right: RowIter, level: u32) -> Result<()> {
        let split = |rows: RowIter, keys: &[Expr]| -> Result<Vec<Option<crate::spill::SpillReader>>> {
            let mut parts = crate::spill::Partitions::new(level);
            for r in rows {
                let r = r?;
                let key = join_key(keys, &r, &self.spec.params)?.unwrap_or_default();
                parts.push(&key, &r)?;
            }
            parts.finish_aligned()
        };
        let lefts = split(left, &self.spec.left_keys)?;
        let rights = split(right, &self.spec.right_keys)?;
        // Depth first: a re-partitioned pair's parts go before the pairs still waiting,
        // so open partition files (each with its read buffer) stay ~2 × 16 per level
        // instead of 2 × 16 for every pair split.
        let pairs: Vec<_> = lefts.into_iter().zip(rights).filter(|(l, r)| l.is_some() || r.is_some()).collect();
        for (l, r) in pairs.into_iter().rev() {
            self.pairs.push_front((l, r, level));
        }
        Ok(())
    }

    /// The joined rows of the next partition pair (None: no pair left).
    fn next_pair(&mut self) -> Result<Option<RowIter>> {
        let Some((left, right, level)) = self.pairs.pop_front() else { return Ok(None) };
        let left: RowIter = match left {
            Some(l) => Box::new(l),
            None => Box::new(std::iter::empty()),
        };
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut right: RowIter = match right {
            Some(r) => Box::new(r),
            None => Box::new(std::iter::empty()),
        };
        for r in right.by_ref() {
            let r = r?;
            bytes += crate::spill::row_bytes(&r);
            rows.push(r);
            if bytes > self.spec.budget && level + 1 < MAX_JOIN_LEVELS {
                // Still too large: partition this pair again, one level down.
                let right = Box::new(materialized(std::mem::take(&mut rows)).chain(right));
                self.split_inputs(left, right, level + 1)?;
                return Ok(Some(Box::new(std::iter::empty())));
            }
        }
        let s = &self.spec;
        let join = NestedLoop::new(
            left,
            s.left_width,
            rows,
            s.right_width,
            s.on.clone(),
            s.params.clone(),
            s.keep_left,
            s.keep_right,
        )
        .hashed(s.left_keys.clone(), &s.right_keys)?;
        Ok(Some(Box::new(join)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::BinOp;
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

    /// A small deterministic generator: `next(n)` is in `0..n`.
    /// Up to `max_len` rows of (key, x): keys 1–5 or NULL, x 0–2 — small ranges make
    /// duplicates and NULLs common.
    fn random_side(next: &mut impl FnMut(u64) -> u64, max_len: u64) -> Vec<Row> {
        (0..next(max_len))
            .map(|_| {
                let k = match next(6) {
                    0 => Value::Null,
                    v => Value::Int(v as i64),
                };
                vec![k, Value::Int(next(3) as i64)]
            })
            .collect()
    }

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    /// Two-column rows joined on `on` by a nested loop, hashed on the first columns or not.
    fn two_column_join(left: &[Row], right: &[Row], on: &Expr, keep: (bool, bool), hashed: bool) -> Vec<Row> {
        let j = NestedLoop::new(
            materialized(left.to_vec()),
            2,
            right.to_vec(),
            2,
            Some(on.clone()),
            Arc::from(vec![]),
            keep.0,
            keep.1,
        );
        let j = if hashed { j.hashed(vec![Expr::Column(0)], &[Expr::Column(0)]).unwrap() } else { j };
        j.collect::<Result<_>>().unwrap()
    }

    #[test]
    fn hash_joins_equal_nested_loops() {
        // Small value ranges make duplicates and NULLs common.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for case in 0..300 {
            let (left, right) = (random_side(&mut next, 12), random_side(&mut next, 12));
            // ON l.k = r.k AND l.x <= r.x
            let on = bin(
                BinOp::And,
                bin(BinOp::Eq, Expr::Column(0), Expr::Column(2)),
                bin(BinOp::LtEq, Expr::Column(1), Expr::Column(3)),
            );
            for (keep_left, keep_right) in [(false, false), (true, false), (false, true), (true, true)] {
                let run = |hashed| two_column_join(&left, &right, &on, (keep_left, keep_right), hashed);
                assert_eq!(run(true), run(false), "case {case}, keep {keep_left}/{keep_right}");
            }
        }
    }

    #[test]
    fn block_nested_loops_equal_nested_loops() {
        let mut next = xorshift(0x1234_5678_9abc_def1);
        for case in 0..200 {
            let (left, right) = (random_side(&mut next, 30), random_side(&mut next, 30));
            // ON l.k < r.k OR l.x = r.x: no equality keys.
            let on = bin(
                BinOp::Or,
                bin(BinOp::Lt, Expr::Column(0), Expr::Column(2)),
                bin(BinOp::Eq, Expr::Column(1), Expr::Column(3)),
            );
            for (keep_left, keep_right) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut expected = two_column_join(&left, &right, &on, (keep_left, keep_right), false);
                let mut spilled = crate::spill::SpillWriter::new().unwrap();
                for r in &right {
                    spilled.push(r).unwrap();
                }
                // A budget of a few rows: many blocks.
                let budget = 1 + (case % 5) * 40;
                let mut got: Vec<Row> = BlockNestedLoop::new(
                    materialized(left.clone()),
                    2,
                    spilled.into_reader().unwrap(),
                    2,
                    Some(on.clone()),
                    Arc::from(vec![]),
                    keep_left,
                    keep_right,
                    budget as usize,
                )
                .collect::<Result<_>>()
                .unwrap();
                let key = |r: &Row| format!("{r:?}");
                expected.sort_by_key(key);
                got.sort_by_key(key);
                assert_eq!(got, expected, "case {case}, keep {keep_left}/{keep_right}");
            }
        }
    }

    #[test]
    fn grace_joins_equal_in_memory_hash_joins() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for case in 0..12 {
            let mut side = |len: u64, keys: u64| -> Vec<Row> {
                (0..len)
                    .map(|_| {
                        let k = match next(keys + 1) {
                            0 => Value::Null,
                            v => Value::Int(v as i64),
                        };
                        vec![k, Value::Int(next(3) as i64)]
                    })
                    .collect()
            };
            // Some cases have one hot key (more rows than the budget): the levels run out.
            let keys = if case % 4 == 0 { 2 } else { 400 };
            let (left, right) = (side(600, keys), side(700, keys));
            let on = bin(
                BinOp::And,
                bin(BinOp::Eq, Expr::Column(0), Expr::Column(2)),
                bin(BinOp::LtEq, Expr::Column(1), Expr::Column(3)),
            );
            for (keep_left, keep_right) in [(false, false), (true, false), (false, true), (true, true)] {
                let spec = Arc::new(JoinSpec {
                    left_width: 2,
                    right_width: 2,
                    left_keys: vec![Expr::Column(0)],
                    right_keys: vec![Expr::Column(0)],
                    on: Some(on.clone()),
                    params: Arc::from(vec![]),
                    keep_left,
                    keep_right,
                    budget: 8_000,
                });
                let mut grace: Vec<Row> = grace_join(materialized(left.clone()), materialized(right.clone()), spec)
                    .unwrap()
                    .collect::<Result<_>>()
                    .unwrap();
                let mut memory = two_column_join(&left, &right, &on, (keep_left, keep_right), true);
                let key = |r: &Row| crate::exec::row_identity(r);
                grace.sort_by_key(key);
                memory.sort_by_key(key);
                assert_eq!(grace, memory, "case {case}, keep {keep_left}/{keep_right}");
            }
        }
    }

    #[test]
    fn nested_loop_outer_joins_pad_unmatched_rows() {
        // l.a = r.a with left {1,2}, right {2,3}: full join gives (1,N), (2,2), (N,3).
        let on = bin(BinOp::Eq, Expr::Column(0), Expr::Column(1));
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
