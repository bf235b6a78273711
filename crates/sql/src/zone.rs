//! The session time zone: PostgreSQL's `TimeZone` setting.
//!
//! A `timestamp with time zone` is an instant (µs since the Unix epoch, UTC) and is
//! stored, compared and sent in binary as one; the session's zone decides only how it
//! is *read and written as text* and how it meets local wall-clock values:
//!
//! ```text
//!   '2024-07-01 12:00'::timestamptz      local 12:00 in the zone  → instant
//!   instant → text                        local fields + the zone's offset then ("-04")
//!   timestamptz ↔ timestamp / date        through the zone's local time
//!   timestamptz ± interval                days and months in local time (DST-aware)
//!   date_trunc / extract / to_char        on the local fields
//! ```
//!
//! The zone is set with `SET TIME ZONE …` / `SET timezone = …` or the `TimeZone`
//! startup parameter (as JDBC sends it), and is in force on the thread that runs a
//! statement or produces its rows (`with_zone`), as `work_mem` is. The default is UTC.
//! Zone names come from the system's zoneinfo, or a copy bundled in the binary when the
//! system has none; POSIX TZ strings (`UTC+3`, `EST5EDT`) and numeric offsets are
//! accepted as PostgreSQL accepts them.
//!
//! Local times that do not exist (a spring-forward gap) are read with the offset before
//! the transition, and ambiguous ones (a fall-back fold) with the offset after it, as
//! PostgreSQL does: `'2024-03-10 02:30'` in New York is `03:30-04`, `'2024-11-03 01:30'`
//! is `01:30-05`.

use amberdb_error::{Error, Result};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use std::cell::RefCell;

const USEC_PER_SEC: i64 = 1_000_000;

/// A session time zone: the name it was set by (what `SHOW timezone` prints) and the
/// rules behind it. Cheap to clone (it is set around every row produced).
#[derive(Clone, Debug)]
pub struct Zone {
    name: std::sync::Arc<str>,
    tz: TimeZone,
}

impl Default for Zone {
    fn default() -> Self {
        Zone::utc()
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Zone>> = const { RefCell::new(None) };
}

/// Runs `f` with `zone` as the time zone of this thread (`None`: UTC).
pub fn with_zone<T>(zone: Option<&Zone>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Zone>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = old);
        }
    }
    let old = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), zone.cloned()));
    let _restore = Restore(old);
    f()
}

/// The zone in force on this thread.
pub fn current() -> Zone {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_default()
}

fn invalid(value: &str) -> Error {
    Error::sql("22023", format!("invalid value for parameter \"TimeZone\": \"{value}\""))
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS`, as PostgreSQL prints an offset.
pub fn format_offset(secs: i64) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.abs();
    let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
    match (m, s) {
        (0, 0) => format!("{sign}{h:02}"),
        (_, 0) => format!("{sign}{h:02}:{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}:{s:02}"),
    }
}

impl Zone {
    /// UTC, the default.
    pub fn utc() -> Zone {
        Zone { name: "UTC".into(), tz: TimeZone::UTC }
    }

    /// A zone `secs` east of UTC, named as PostgreSQL names it (`<-07>+07`).
    pub fn fixed(secs: i64) -> Result<Zone> {
        let offset = i32::try_from(secs)
            .ok()
            .and_then(|s| Offset::from_seconds(s).ok())
            .filter(|_| secs.abs() <= 15 * 3600)
            .ok_or_else(|| invalid(&secs.to_string()))?;
        let east = format_offset(secs);
        let posix = format_offset(-secs);
        Ok(Zone { name: format!("<{east}>{posix}").into(), tz: TimeZone::fixed(offset) })
    }

    /// A zone by name: an IANA name (`America/New_York`, `UTC`), a POSIX TZ string
    /// (`UTC+3` is three hours *west*, as in POSIX), or `LOCAL`/`DEFAULT` (UTC).
    pub fn parse(value: &str) -> Result<Zone> {
        let v = value.trim();
        if v.is_empty() {
            return Err(invalid(value));
        }
        if v.eq_ignore_ascii_case("local") || v.eq_ignore_ascii_case("default") {
            return Ok(Zone::utc());
        }
        if let Ok(tz) = TimeZone::get(v) {
            return Ok(Zone { name: v.into(), tz });
        }
        // A bare number of hours east of UTC, as `SET TIME ZONE -7` gives.
        if let Ok(hours) = v.parse::<f64>() {
            if hours.is_finite() {
                return Zone::fixed((hours * 3600.0).round() as i64);
            }
        }
        if v.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '<') {
            if let Ok(tz) = TimeZone::posix(v) {
                return Ok(Zone { name: v.into(), tz });
            }
        }
        Err(invalid(value))
    }

    /// What `SHOW timezone` prints.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn timestamp(us: i64) -> jiff::Timestamp {
        // Instants outside jiff's range (years beyond ±9999) take the offset of the
        // nearest one it knows.
        jiff::Timestamp::from_microsecond(us).unwrap_or(if us < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        })
    }

    /// The offset from UTC (seconds east) in force at the instant `us`.
    pub fn offset_at(&self, us: i64) -> i64 {
        i64::from(self.tz.to_offset(Self::timestamp(us)).seconds())
    }

    /// The zone's abbreviation at `us` (`EDT`), or its offset when it has none.
    pub fn abbreviation_at(&self, us: i64) -> String {
        let info = self.tz.to_offset_info(Self::timestamp(us));
        let abbrev = info.abbreviation();
        if abbrev.is_empty() {
            format_offset(self.offset_at(us))
        } else {
            abbrev.to_string()
        }
    }

    /// The local wall-clock time (µs since 1970-01-01 00:00 local) of the instant `us`.
    pub fn to_local(&self, us: i64) -> i64 {
        us.saturating_add(self.offset_at(us) * USEC_PER_SEC)
    }

    /// The instant of the local wall-clock time `local` (see the module docs for gaps
    /// and folds).
    pub fn to_utc(&self, local: i64) -> i64 {
        let offset = match Self::civil(local) {
            Some(dt) => match self.tz.to_ambiguous_timestamp(dt).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset,
                AmbiguousOffset::Gap { before, .. } => before,
                AmbiguousOffset::Fold { after, .. } => after,
            },
            // Out of jiff's range: the offset at the nearest instant it knows.
            None => self.tz.to_offset(Self::timestamp(local)),
        };
        local.saturating_sub(i64::from(offset.seconds()) * USEC_PER_SEC)
    }

    /// `local` (whole seconds; offsets have no fraction) as a civil date-time.
    fn civil(local: i64) -> Option<jiff::civil::DateTime> {
        let secs = local.div_euclid(USEC_PER_SEC);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = crate::time::civil_from_days(days);
        jiff::civil::DateTime::new(
            i16::try_from(y).ok()?,
            m as i8,
            d as i8,
            (sod / 3600) as i8,
            (sod / 60 % 60) as i8,
            (sod % 60) as i8,
            0,
        )
        .ok()
    }
}

/// `v AT TIME ZONE zone` (see `Func::AtTimeZone`). The zone is a name (as `SET TIME
/// ZONE` takes) or an interval east of UTC.
pub fn at_time_zone(v: crate::types::Value, zone: crate::types::Value) -> Result<crate::types::Value> {
    use crate::types::Value;
    let zone = match zone {
        Value::Null => return Ok(Value::Null),
        Value::Text(name) => {
            Zone::parse(&name).map_err(|_| Error::sql("22023", format!("time zone \"{name}\" not recognized")))?
        }
        Value::Interval(iv) if iv.months == 0 && iv.days == 0 => Zone::fixed(iv.micros / USEC_PER_SEC)?,
        other => {
            return Err(Error::sql(
                "42883",
                format!("operator does not exist: {} AT TIME ZONE {}", v.type_name(), other.type_name()),
            ))
        }
    };
    Ok(match v {
        Value::Null => Value::Null,
        Value::Timestamp(t) => Value::TimestampTz(zone.to_utc(t)),
        Value::TimestampTz(t) => Value::Timestamp(zone.to_local(t)),
        Value::Date(_) | Value::Text(_) => match v.cast(crate::types::DataType::TimestampTz)? {
            Value::TimestampTz(t) => Value::Timestamp(zone.to_local(t)),
            _ => Value::Null,
        },
        other => {
            return Err(Error::sql(
                "42883",
                format!("operator does not exist: {} AT TIME ZONE text", other.type_name()),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        crate::time::parse_timestamp(s, true).expect("valid test timestamp")
    }

    #[test]
    fn names_offsets_and_errors() {
        assert_eq!(Zone::parse("America/New_York").unwrap().name(), "America/New_York");
        assert_eq!(Zone::parse("-7").unwrap().name(), "<-07>+07");
        assert_eq!(Zone::parse("5.75").unwrap().name(), "<+05:45>-05:45");
        assert_eq!(Zone::parse("UTC+3").unwrap().offset_at(0), -3 * 3600);
        assert_eq!(Zone::parse("local").unwrap().name(), "UTC");
        let e = Zone::parse("Nowhere/Special").unwrap_err();
        assert_eq!(e.to_string(), "invalid value for parameter \"TimeZone\": \"Nowhere/Special\"");
        assert!(Zone::parse("").is_err());
        assert!(Zone::parse("99").is_err());
        assert_eq!(format_offset(-4 * 3600), "-04");
        assert_eq!(format_offset(5 * 3600 + 1800), "+05:30");
        assert_eq!(format_offset(19 * 60 + 32), "+00:19:32");
    }

    #[test]
    fn gaps_and_folds_resolve_as_postgres() {
        let ny = Zone::parse("America/New_York").unwrap();
        // 02:30 does not exist on 2024-03-10: read with EST → 07:30Z (03:30 EDT).
        assert_eq!(ny.to_utc(us("2024-03-10 02:30:00+00")), us("2024-03-10 07:30:00+00"));
        // 01:30 happens twice on 2024-11-03: the later one (EST) → 06:30Z.
        assert_eq!(ny.to_utc(us("2024-11-03 01:30:00+00")), us("2024-11-03 06:30:00+00"));
        assert_eq!(ny.offset_at(us("2024-07-01 00:00:00+00")), -4 * 3600);
        assert_eq!(ny.abbreviation_at(us("2024-07-01 00:00:00+00")), "EDT");
        let t = us("2024-07-01 02:00:00+00");
        assert_eq!(ny.to_utc(ny.to_local(t)), t);
    }

    #[test]
    fn the_thread_zone_is_scoped() {
        let ny = Zone::parse("America/New_York").unwrap();
        assert_eq!(current().name(), "UTC");
        with_zone(Some(&ny), || assert_eq!(current().name(), "America/New_York"));
        assert_eq!(current().name(), "UTC");
    }
}
