//! `AS OF SYSTEM TIME`: reading the database as of an older commit.
//!
//! sqlparser does not know CockroachDB's clause, so it is lifted out of the statement
//! text before parsing: `SELECT … FROM t AS OF SYSTEM TIME '<timestamp>'` (or a commit
//! version number, or a negative interval such as `'-10s'`) runs the statement in a
//! read-only transaction at that point, within the retention window.

use amberdb_error::{Error, Result};
use amberdb_mvcc::{Timestamp, Version};

/// The point in time a statement reads at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// A commit version.
    Version(Version),
    /// A wall-clock time, µs since the Unix epoch (UTC).
    Time(Timestamp),
    /// That many µs before now.
    Ago(u64),
}

const CLAUSE: &str = "as of system time";

/// Removes one `AS OF SYSTEM TIME <literal>` clause from `sql`, returning the rest and
/// the parsed point. `None` if the text has no such clause.
pub fn extract(sql: &str) -> Result<Option<(String, AsOf)>> {
    let lower = sql.to_ascii_lowercase();
    let Some(start) = find_outside_quotes(&lower, CLAUSE) else { return Ok(None) };
    let after = &sql[start + CLAUSE.len()..];
    let trimmed = after.trim_start();
    let lead = after.len() - trimmed.len();
    let (literal, len) = if let Some(rest) = trimmed.strip_prefix('\'') {
        let end = rest.find('\'').ok_or_else(|| Error::sql("42601", "unterminated AS OF SYSTEM TIME literal"))?;
        (&rest[..end], end + 2)
    } else {
        let end = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(trimmed.len());
        (&trimmed[..end], end)
    };
    if literal.is_empty() {
        return Err(Error::sql(
            "42601",
            "AS OF SYSTEM TIME needs a timestamp, an interval such as '-10s', or a version",
        ));
    }
    let point = parse_point(literal)?;
    let rest = format!("{}{}", &sql[..start], &sql[start + CLAUSE.len() + lead + len..]);
    if find_outside_quotes(&rest.to_ascii_lowercase(), CLAUSE).is_some() {
        return Err(Error::sql("0A000", "only one AS OF SYSTEM TIME clause per statement is supported"));
    }
    Ok(Some((rest, point)))
}

fn find_outside_quotes(hay: &str, needle: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut prev: Option<char> = None;
    for (i, c) in hay.char_indices() {
        if c == '\'' {
            in_quote = !in_quote;
        }
        if !in_quote && hay[i..].starts_with(needle) && !prev.is_some_and(|p| p.is_alphanumeric() || p == '_') {
            return Some(i);
        }
        prev = Some(c);
    }
    None
}

/// Parses a version number, a negative interval (`-10s`, `-500ms`, `-2m`, `-1h`), or a
/// timestamp `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH[:MM]]` (no zone means UTC).
pub fn parse_point(s: &str) -> Result<AsOf> {
    let s = s.trim();
    let bad = || Error::sql("22007", format!("invalid AS OF SYSTEM TIME value: \"{s}\""));
    if let Ok(v) = s.parse::<u64>() {
        return Ok(AsOf::Version(v));
    }
    if let Some(rest) = s.strip_prefix('-') {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?;
        let (num, unit) = rest.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit {
            "us" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            "m" | "min" => 60e6,
            "h" => 3600e6,
            _ => return Err(bad()),
        };
        return Ok(AsOf::Ago((n * scale) as u64));
    }
    parse_timestamp(s).map(AsOf::Time).ok_or_else(bad)
}

/// Parses a timestamp (zone offsets applied, UTC if none) into µs since the epoch.
pub(crate) fn parse_timestamp(s: &str) -> Option<Timestamp> {
    crate::time::parse_timestamp(s, true).and_then(|t| u64::try_from(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_and_parses() {
        let (rest, p) =
            extract("SELECT * FROM t AS OF SYSTEM TIME '2023-11-14 22:13:20' WHERE a = 1").unwrap().unwrap();
        assert_eq!(rest, "SELECT * FROM t  WHERE a = 1");
        assert_eq!(p, AsOf::Time(1_700_000_000_000_000));
        assert_eq!(extract("select 1 as of system time 42").unwrap().unwrap().1, AsOf::Version(42));
        assert_eq!(parse_point("-10s").unwrap(), AsOf::Ago(10_000_000));
        assert_eq!(parse_point("2023-11-14T23:13:20.5+01:00").unwrap(), AsOf::Time(1_700_000_000_500_000));
        assert!(extract("SELECT 'as of system time 1'").unwrap().is_none());
        assert!(parse_point("yesterday").is_err());
        // Found by the fuzz test: multi-byte characters must not break the scan.
        assert!(extract("+ ORDER BY é NULL - <> )").unwrap().is_none());
        assert!(extract("SELECT 'é' AS OF SYSTEM TIME 'é'").is_err());
    }
}
