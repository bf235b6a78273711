//! INTERVAL and the date/time functions around it, with PostgreSQL's semantics.
//!
//! An interval is three independent fields, as in PostgreSQL: months, days and
//! microseconds. They are kept apart because their lengths vary: adding `1 mon` to
//! January 31 gives February's last day, and `1 day` is a calendar day, not 24 hours in
//! general (the session zone is UTC here, so days are always 24 hours long, but the
//! fields still stay separate so results print as PostgreSQL prints them).
//!
//! ```text
//!   '1 year 2 mons 3 days 04:05:06.5'  ─parse─▶  { months: 14, days: 3, micros: 14_706_500_000 }
//!   timestamp + interval: add months (clamping the day), then days, then micros
//!   comparison: months × 30 days + days × 24 h + micros (so '1 mon' = '30 days')
//! ```
//!
//! Invariant: every operation is checked; overflow is SQLSTATE 22008/22015, never a
//! wrapped value.

use crate::time::{civil_from_days, days_from_civil, days_in_month};
use crate::types::Value;
use amberdb_error::{Error, Result};
use std::cmp::Ordering;

const USEC_PER_SEC: i64 = 1_000_000;
const USEC_PER_MINUTE: i64 = 60 * USEC_PER_SEC;
const USEC_PER_HOUR: i64 = 60 * USEC_PER_MINUTE;
const USEC_PER_DAY: i64 = 24 * USEC_PER_HOUR;

/// A PostgreSQL interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interval {
    /// Calendar months.
    pub months: i32,
    /// Calendar days.
    pub days: i32,
    /// Microseconds.
    pub micros: i64,
}

fn out_of_range() -> Error {
    Error::sql("22008", "interval out of range")
}

fn ts_out_of_range() -> Error {
    Error::sql("22008", "timestamp out of range")
}

fn bad_input(s: &str) -> Error {
    Error::sql("22007", format!("invalid input syntax for type interval: \"{s}\""))
}

/// Converts an f64 to i64 if it is finite and in range.
fn to_i64(f: f64) -> Result<i64> {
    if f.is_finite() && f >= i64::MIN as f64 && f <= i64::MAX as f64 {
        Ok(f as i64)
    } else {
        Err(out_of_range())
    }
}

fn to_i32(f: f64) -> Result<i32> {
    i32::try_from(to_i64(f)?).map_err(|_| out_of_range())
}

impl Interval {
    /// An interval of whole microseconds.
    pub fn from_micros(micros: i64) -> Self {
        Interval { months: 0, days: 0, micros }
    }

    /// The total length PostgreSQL compares intervals by (30-day months, 24-hour days).
    pub fn span(&self) -> i128 {
        (i128::from(self.months) * 30 + i128::from(self.days)) * i128::from(USEC_PER_DAY) + i128::from(self.micros)
    }

    /// Parses PostgreSQL's interval input: `1 year 2 mons 3 days 04:05:06`,
    /// `-1.5 hours`, `10s`, `2 weeks ago`, `@ 1 minute`, a bare number of seconds.
    pub fn parse(input: &str) -> Result<Self> {
        let s = input.trim().to_ascii_lowercase();
        let s = s.strip_prefix('@').unwrap_or(&s).trim();
        if s.starts_with('p') {
            return parse_iso(s).ok_or_else(|| bad_input(input));
        }
        // Split into tokens: numbers (with sign, point, colons) and words, so that `10s`
        // and `10 s` read alike.
        let mut tokens: Vec<String> = Vec::new();
        let mut cur = String::new();
        let mut cur_is_num = false;
        for c in s.chars() {
            let is_num = c.is_ascii_digit() || matches!(c, '.' | ':' | '-' | '+');
            if c.is_whitespace() || c == ',' {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
                continue;
            }
            if !cur.is_empty() && is_num != cur_is_num {
                tokens.push(std::mem::take(&mut cur));
            }
            cur_is_num = is_num;
            cur.push(c);
        }
        if !cur.is_empty() {
            tokens.push(cur);
        }
        if tokens.is_empty() {
            return Err(bad_input(input));
        }
        // Accumulate in floats per field, then carry fractions down (years → months,
        // months → 30 days, days → 24 hours) as PostgreSQL does.
        let (mut months, mut days, mut micros) = (0f64, 0f64, 0f64);
        let mut i = 0;
        let mut ago = false;
        while i < tokens.len() {
            let t = &tokens[i];
            if t == "ago" && i == tokens.len() - 1 {
                ago = true;
                i += 1;
                continue;
            }
            if t.contains(':') {
                micros += parse_clock(t).ok_or_else(|| bad_input(input))?;
                i += 1;
                continue;
            }
            let n: f64 = t.parse().map_err(|_| bad_input(input))?;
            let unit = tokens.get(i + 1).filter(|u| u.chars().all(|c| c.is_ascii_alphabetic()) && *u != "ago");
            let (m, d, us) = match unit.map(String::as_str) {
                None => (0.0, 0.0, n * USEC_PER_SEC as f64),
                Some(u) => match u {
                    "microsecond" | "microseconds" | "us" | "usec" | "usecs" | "useconds" => (0.0, 0.0, n),
                    "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" | "mseconds" => (0.0, 0.0, n * 1000.0),
                    "second" | "seconds" | "s" | "sec" | "secs" => (0.0, 0.0, n * USEC_PER_SEC as f64),
                    "minute" | "minutes" | "m" | "min" | "mins" => (0.0, 0.0, n * USEC_PER_MINUTE as f64),
                    "hour" | "hours" | "h" | "hr" | "hrs" => (0.0, 0.0, n * USEC_PER_HOUR as f64),
                    "day" | "days" | "d" => (0.0, n, 0.0),
                    "week" | "weeks" | "w" => (0.0, n * 7.0, 0.0),
                    "month" | "months" | "mon" | "mons" => (n, 0.0, 0.0),
                    "year" | "years" | "y" | "yr" | "yrs" => (n * 12.0, 0.0, 0.0),
                    "decade" | "decades" => (n * 120.0, 0.0, 0.0),
                    "century" | "centuries" => (n * 1200.0, 0.0, 0.0),
                    "millennium" | "millennia" | "millenniums" => (n * 12000.0, 0.0, 0.0),
                    _ => return Err(bad_input(input)),
                },
            };
            months += m;
            days += d;
            micros += us;
            i += if unit.is_some() { 2 } else { 1 };
        }
        let whole_months = months.trunc();
        days += (months - whole_months) * 30.0;
        let whole_days = days.trunc();
        micros += (days - whole_days) * USEC_PER_DAY as f64;
        let mut iv =
            Interval { months: to_i32(whole_months)?, days: to_i32(whole_days)?, micros: to_i64(micros.round())? };
        if ago {
            iv = iv.neg()?;
        }
        Ok(iv)
    }

    /// PostgreSQL's output (IntervalStyle `postgres`): `1 year 2 mons -3 days +04:05:06`.
    pub fn format(&self) -> String {
        let mut out = String::new();
        let mut prev_negative = false;
        let mut part = |out: &mut String, value: i64, unit: &str| {
            if value == 0 {
                return;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            if prev_negative && value > 0 {
                out.push('+');
            }
            out.push_str(&format!("{value} {unit}{}", if value != 1 { "s" } else { "" }));
            prev_negative = value < 0;
        };
        part(&mut out, i64::from(self.months / 12), "year");
        part(&mut out, i64::from(self.months % 12), "mon");
        part(&mut out, i64::from(self.days), "day");
        if out.is_empty() || self.micros != 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            let negative = self.micros < 0;
            if negative {
                out.push('-');
            } else if prev_negative {
                out.push('+');
            }
            let abs = self.micros.unsigned_abs();
            let (h, rest) = (abs / USEC_PER_HOUR as u64, abs % USEC_PER_HOUR as u64);
            let (m, rest) = (rest / USEC_PER_MINUTE as u64, rest % USEC_PER_MINUTE as u64);
            let (sec, frac) = (rest / USEC_PER_SEC as u64, rest % USEC_PER_SEC as u64);
            out.push_str(&format!("{h:02}:{m:02}:{sec:02}"));
            if frac != 0 {
                out.push('.');
                out.push_str(format!("{frac:06}").trim_end_matches('0'));
            }
        }
        out
    }

    /// `-interval`.
    pub fn neg(&self) -> Result<Self> {
        Ok(Interval {
            months: self.months.checked_neg().ok_or_else(out_of_range)?,
            days: self.days.checked_neg().ok_or_else(out_of_range)?,
            micros: self.micros.checked_neg().ok_or_else(out_of_range)?,
        })
    }

    /// Field-wise sum.
    pub fn add(&self, other: &Interval) -> Result<Self> {
        Ok(Interval {
            months: self.months.checked_add(other.months).ok_or_else(out_of_range)?,
            days: self.days.checked_add(other.days).ok_or_else(out_of_range)?,
            micros: self.micros.checked_add(other.micros).ok_or_else(out_of_range)?,
        })
    }

    /// Field-wise difference.
    pub fn sub(&self, other: &Interval) -> Result<Self> {
        self.add(&other.neg()?)
    }

    /// `interval * factor`: fractional months carry into days (30 per month) and
    /// fractional days into microseconds, as in PostgreSQL.
    pub fn mul(&self, factor: f64) -> Result<Self> {
        let months = f64::from(self.months) * factor;
        let whole_months = months.trunc();
        let days = f64::from(self.days) * factor + (months - whole_months) * 30.0;
        let whole_days = days.trunc();
        let micros = self.micros as f64 * factor + (days - whole_days) * USEC_PER_DAY as f64;
        Ok(Interval { months: to_i32(whole_months)?, days: to_i32(whole_days)?, micros: to_i64(micros.round())? })
    }

    /// `interval / divisor`.
    pub fn div(&self, divisor: f64) -> Result<Self> {
        if divisor == 0.0 {
            return Err(Error::sql("22012", "division by zero"));
        }
        self.mul(1.0 / divisor)
    }

    /// Compares by [`Interval::span`].
    pub fn cmp_span(&self, other: &Interval) -> Ordering {
        self.span().cmp(&other.span())
    }
}

/// `[-]H[H…]:MM[:SS[.ffffff]]` in microseconds.
fn parse_clock(t: &str) -> Option<f64> {
    let (negative, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let mut parts = body.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0.0,
    };
    if parts.next().is_some() || !(0.0..60.0).contains(&m) || !(0.0..60.0).contains(&s) {
        return None;
    }
    let us = h * USEC_PER_HOUR as f64 + m * USEC_PER_MINUTE as f64 + s * USEC_PER_SEC as f64;
    Some(if negative { -us } else { us })
}

/// ISO 8601 durations: `P1Y2M3DT4H5M6.5S`, `PT10M`, `P2W`.
fn parse_iso(s: &str) -> Option<Interval> {
    let body = s.strip_prefix('p')?;
    let (date, time) = match body.split_once('t') {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let (mut months, mut days, mut micros) = (0f64, 0f64, 0f64);
    let mut fields = |part: &str, in_time: bool| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || matches!(c, '.' | '-' | '+') {
                num.push(c);
                continue;
            }
            let n: f64 = std::mem::take(&mut num).parse().ok()?;
            match (c, in_time) {
                ('y', false) => months += n * 12.0,
                ('m', false) => months += n,
                ('w', false) => days += n * 7.0,
                ('d', false) => days += n,
                ('h', true) => micros += n * USEC_PER_HOUR as f64,
                ('m', true) => micros += n * USEC_PER_MINUTE as f64,
                ('s', true) => micros += n * USEC_PER_SEC as f64,
                _ => return None,
            }
        }
        num.is_empty().then_some(())
    };
    fields(date, false)?;
    if let Some(t) = time {
        fields(t, true)?;
    }
    let whole_months = months.trunc();
    days += (months - whole_months) * 30.0;
    let whole_days = days.trunc();
    micros += (days - whole_days) * USEC_PER_DAY as f64;
    Some(Interval {
        months: to_i32(whole_months).ok()?,
        days: to_i32(whole_days).ok()?,
        micros: to_i64(micros.round()).ok()?,
    })
}

/// `timestamp + interval` (µs since the epoch, UTC): months first, clamping the day
/// of month (Jan 31 + 1 mon = Feb 28/29), then days, then microseconds.
pub fn add_to_timestamp(ts: i64, iv: &Interval) -> Result<i64> {
    let mut ts = ts;
    if iv.months != 0 {
        let day = ts.div_euclid(USEC_PER_DAY);
        let time = ts.rem_euclid(USEC_PER_DAY);
        let (y, m, d) = civil_from_days(day);
        let total = y * 12 + (m - 1) + i64::from(iv.months);
        let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        if !(-4713..=294_276).contains(&ny) {
            return Err(ts_out_of_range());
        }
        let nd = d.min(days_in_month(ny, nm));
        ts = days_from_civil(ny, nm, nd) * USEC_PER_DAY + time;
    }
    ts = ts.checked_add(i64::from(iv.days) * USEC_PER_DAY).ok_or_else(ts_out_of_range)?;
    ts.checked_add(iv.micros).ok_or_else(ts_out_of_range)
}

/// `timestamptz + interval`: months and days are calendar steps in the session's time
/// zone (a day across a DST change is 23 or 25 hours), the rest is elapsed time.
pub fn add_to_instant(ts: i64, iv: &Interval) -> Result<i64> {
    let zone = crate::zone::current();
    let mut ts = ts;
    if iv.months != 0 || iv.days != 0 {
        let calendar = Interval { months: iv.months, days: iv.days, micros: 0 };
        ts = zone.to_utc(add_to_timestamp(zone.to_local(ts), &calendar)?);
    }
    ts.checked_add(iv.micros).ok_or_else(ts_out_of_range)
}

/// `timestamp - timestamp`: whole days and the rest (PostgreSQL's justified hours).
pub fn between(a: i64, b: i64) -> Result<Interval> {
    let diff = a.checked_sub(b).ok_or_else(out_of_range)?;
    let days = i32::try_from(diff / USEC_PER_DAY).map_err(|_| out_of_range())?;
    Ok(Interval { months: 0, days, micros: diff % USEC_PER_DAY })
}

/// Broken-down UTC time of a timestamp: (year, month, day, hour, minute, µs of minute).
fn fields_of(ts: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (y, m, d) = civil_from_days(ts.div_euclid(USEC_PER_DAY));
    let tod = ts.rem_euclid(USEC_PER_DAY);
    (y, m, d, tod / USEC_PER_HOUR, (tod % USEC_PER_HOUR) / USEC_PER_MINUTE, tod % USEC_PER_MINUTE)
}

/// `age(a, b)`: the difference in years, months and days as a person would count it
/// (PostgreSQL's algorithm: field-wise difference, borrowing from the next field up,
/// with a month borrowed as the length of `b`'s month).
pub fn age(a: i64, b: i64) -> Result<Interval> {
    let (hi, lo, negative) = if a >= b { (a, b, false) } else { (b, a, true) };
    let (y1, m1, d1, h1, mi1, us1) = fields_of(hi);
    let (y2, m2, d2, h2, mi2, us2) = fields_of(lo);
    let (mut years, mut months, mut days) = (y1 - y2, m1 - m2, d1 - d2);
    let (mut hours, mut minutes, mut micros) = (h1 - h2, mi1 - mi2, us1 - us2);
    if micros < 0 {
        micros += USEC_PER_MINUTE;
        minutes -= 1;
    }
    if minutes < 0 {
        minutes += 60;
        hours -= 1;
    }
    if hours < 0 {
        hours += 24;
        days -= 1;
    }
    if days < 0 {
        days += days_in_month(y2, m2);
        months -= 1;
    }
    if months < 0 {
        months += 12;
        years -= 1;
    }
    let iv = Interval {
        months: i32::try_from(years * 12 + months).map_err(|_| out_of_range())?,
        days: i32::try_from(days).map_err(|_| out_of_range())?,
        micros: hours * USEC_PER_HOUR + minutes * USEC_PER_MINUTE + micros,
    };
    if negative {
        iv.neg()
    } else {
        Ok(iv)
    }
}

fn unit_error(unit: &str, what: &str) -> Error {
    Error::sql("22023", format!("unit \"{unit}\" not supported for type {what}"))
}

/// `date_trunc(unit, timestamp)`.
pub fn trunc_timestamp(unit: &str, ts: i64) -> Result<i64> {
    let (y, m, d, _, mi, us) = fields_of(ts);
    let at = |y: i64, m: i64, d: i64| days_from_civil(y, m, d) * USEC_PER_DAY;
    Ok(match unit.to_ascii_lowercase().as_str() {
        "microseconds" | "microsecond" => ts,
        "milliseconds" | "millisecond" => ts - ts.rem_euclid(1000),
        "second" | "seconds" => ts - ts.rem_euclid(USEC_PER_SEC),
        "minute" | "minutes" => ts - us,
        "hour" | "hours" => ts - us - mi * USEC_PER_MINUTE,
        "day" | "days" => at(y, m, d),
        "week" | "weeks" => {
            // ISO weeks start on Monday; 1970-01-01 was a Thursday.
            let day = ts.div_euclid(USEC_PER_DAY);
            (day - (day + 3).rem_euclid(7)) * USEC_PER_DAY
        }
        "month" | "months" => at(y, m, 1),
        "quarter" => at(y, (m - 1) / 3 * 3 + 1, 1),
        "year" | "years" => at(y, 1, 1),
        "decade" | "decades" => at(y.div_euclid(10) * 10, 1, 1),
        "century" | "centuries" => at(if y > 0 { (y - 1) / 100 * 100 + 1 } else { y }, 1, 1),
        "millennium" | "millennia" => at(if y > 0 { (y - 1) / 1000 * 1000 + 1 } else { y }, 1, 1),
        other => return Err(unit_error(other, "timestamp")),
    })
}

/// A field of a timestamp for `extract`/`date_part`, as a decimal number of units.
pub fn timestamp_field(unit: &str, ts: i64) -> Result<crate::numeric::Numeric> {
    use crate::numeric::Numeric as Decimal;
    let (y, m, d, h, mi, us) = fields_of(ts);
    let day = ts.div_euclid(USEC_PER_DAY);
    let micros = |v: i64, scale: u32| Decimal::new(v, scale);
    Ok(match unit.to_ascii_lowercase().as_str() {
        "year" | "years" => Decimal::from(y),
        "month" | "months" => Decimal::from(m),
        "day" | "days" => Decimal::from(d),
        "hour" | "hours" => Decimal::from(h),
        "minute" | "minutes" => Decimal::from(mi),
        "second" | "seconds" => micros(us, 6),
        "milliseconds" | "millisecond" => micros(us, 3),
        "microseconds" | "microsecond" => Decimal::from(us),
        "epoch" => micros(ts, 6),
        "dow" => Decimal::from((day + 4).rem_euclid(7)),
        "isodow" => Decimal::from((day + 3).rem_euclid(7) + 1),
        "doy" => Decimal::from(day - days_from_civil(y, 1, 1) + 1),
        "quarter" => Decimal::from((m - 1) / 3 + 1),
        "week" => Decimal::from(iso_week(day)),
        "decade" => Decimal::from(y.div_euclid(10)),
        "century" => Decimal::from(if y > 0 { (y + 99) / 100 } else { -((99 - (y - 1)) / 100) }),
        "millennium" => Decimal::from(if y > 0 { (y + 999) / 1000 } else { -((999 - (y - 1)) / 1000) }),
        "julian" => Decimal::from(day + 2_440_588),
        "timezone" | "timezone_hour" | "timezone_minute" => Decimal::zero(),
        other => return Err(unit_error(other, "timestamp")),
    })
}

/// A field of a time of day (only the clock's fields exist, as in PostgreSQL).
fn time_field(unit: &str, t: i64) -> Result<crate::numeric::Numeric> {
    use crate::numeric::Numeric as Decimal;
    let lower = unit.to_ascii_lowercase();
    Ok(match lower.as_str() {
        // 24:00:00 is hour 24, not the next day's 0.
        "hour" | "hours" => Decimal::from(t / (3600 * USEC_PER_SEC)),
        "minute" | "minutes" => Decimal::from(t / (60 * USEC_PER_SEC) % 60),
        "second" | "seconds" => Decimal::new(t % (60 * USEC_PER_SEC), 6),
        "milliseconds" | "millisecond" => Decimal::new(t % (60 * USEC_PER_SEC), 3),
        "microseconds" | "microsecond" => Decimal::from(t % (60 * USEC_PER_SEC)),
        "epoch" => Decimal::new(t, 6),
        "year" | "years" | "month" | "months" | "day" | "days" | "dow" | "isodow" | "doy" | "quarter" | "week"
        | "decade" | "century" | "millennium" | "julian" | "timezone" | "timezone_hour" | "timezone_minute" => {
            return Err(Error::sql("0A000", format!("unit \"{lower}\" not supported for type time without time zone")))
        }
        other => return Err(unit_error(other, "time without time zone")),
    })
}

/// The ISO 8601 week number of a day.
fn iso_week(day: i64) -> i64 {
    // The Thursday of this ISO week decides its year.
    let thursday = day - (day + 3).rem_euclid(7) + 3;
    let (y, _, _) = civil_from_days(thursday);
    (thursday - days_from_civil(y, 1, 1)) / 7 + 1
}

/// A field of an interval for `extract`/`date_part`.
pub fn interval_field(unit: &str, iv: &Interval) -> Result<crate::numeric::Numeric> {
    use crate::numeric::Numeric as Decimal;
    let time = iv.micros;
    Ok(match unit.to_ascii_lowercase().as_str() {
        "millennium" | "millennia" => Decimal::from(iv.months / 12000),
        "century" | "centuries" => Decimal::from(iv.months / 1200),
        "decade" | "decades" => Decimal::from(iv.months / 120),
        "year" | "years" => Decimal::from(iv.months / 12),
        "quarter" => Decimal::from((iv.months % 12) / 3 + 1),
        "month" | "months" => Decimal::from(iv.months % 12),
        "day" | "days" => Decimal::from(iv.days),
        "hour" | "hours" => Decimal::from(time / USEC_PER_HOUR),
        "minute" | "minutes" => Decimal::from((time % USEC_PER_HOUR) / USEC_PER_MINUTE),
        "second" | "seconds" => Decimal::new(time % USEC_PER_MINUTE, 6),
        "milliseconds" | "millisecond" => Decimal::new(time % USEC_PER_MINUTE, 3),
        "microseconds" | "microsecond" => Decimal::from(time % USEC_PER_MINUTE),
        "epoch" => {
            // PostgreSQL counts a year as 365.25 days and a month as 30 days here.
            let years = i64::from(iv.months / 12);
            let months = i64::from(iv.months % 12);
            Decimal::from(years)
                .mul(&Decimal::new(3_155_760_000, 2))?
                .add(&Decimal::from(months * 30 * 86_400))?
                .add(&Decimal::from(i64::from(iv.days) * 86_400))?
                .add(&Decimal::new(time, 6))?
        }
        other => return Err(unit_error(other, "interval")),
    })
}

/// Date/time operators: `Some(result)` if `a op b` is one (timestamp ± interval,
/// timestamp − timestamp, interval ± interval, interval × / number, date ± interval),
/// `None` to fall through to numeric arithmetic. An untyped string beside a timestamp
/// is read as an interval (or, for `timestamp - '…'`, as a timestamp if it is one), as
/// PostgreSQL resolves unknown literals.
pub fn arith(op: crate::expr::BinOp, a: &Value, b: &Value) -> Result<Option<Value>> {
    use crate::expr::BinOp::{Add, Div, Mul, Sub};
    let as_factor = |v: &Value| -> Option<f64> {
        match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Numeric(d) => Some(d.to_f64()),
            _ => None,
        }
    };
    let is_time =
        |v: &Value| matches!(v, Value::Timestamp(_) | Value::TimestampTz(_) | Value::Date(_) | Value::Time(_));
    // Resolve an untyped literal beside a date/time value.
    let resolve = |text: &str, other: &Value| -> Result<Value> {
        if op == Sub && matches!(other, Value::Time(_)) {
            if let Some(t) = crate::time::parse_time(text) {
                return Ok(Value::Time(t));
            }
        }
        if op == Sub && is_time(other) && !matches!(other, Value::Time(_)) {
            if let Some(t) = crate::time::parse_timestamp(text, true) {
                return Ok(Value::TimestampTz(t));
            }
        }
        Ok(Value::Interval(Interval::parse(text)?))
    };
    let (a, b) = match (a, b) {
        (Value::Text(t), o) if (is_time(o) || matches!(o, Value::Interval(_))) && matches!(op, Add | Sub) => {
            (resolve(t, o)?, o.clone())
        }
        (o, Value::Text(t)) if (is_time(o) || matches!(o, Value::Interval(_))) && matches!(op, Add | Sub) => {
            (o.clone(), resolve(t, o)?)
        }
        _ => (a.clone(), b.clone()),
    };
    let day = USEC_PER_DAY;
    let date_us = |d: i64| d.checked_mul(day).ok_or_else(ts_out_of_range);
    Ok(Some(match (op, &a, &b) {
        (Add, Value::Timestamp(t), Value::Interval(iv)) | (Add, Value::Interval(iv), Value::Timestamp(t)) => {
            Value::Timestamp(add_to_timestamp(*t, iv)?)
        }
        (Add, Value::TimestampTz(t), Value::Interval(iv)) | (Add, Value::Interval(iv), Value::TimestampTz(t)) => {
            Value::TimestampTz(add_to_instant(*t, iv)?)
        }
        (Add, Value::Date(d), Value::Interval(iv)) | (Add, Value::Interval(iv), Value::Date(d)) => {
            Value::Timestamp(add_to_timestamp(date_us(*d)?, iv)?)
        }
        (Sub, Value::Timestamp(t), Value::Interval(iv)) => Value::Timestamp(add_to_timestamp(*t, &iv.neg()?)?),
        (Sub, Value::TimestampTz(t), Value::Interval(iv)) => Value::TimestampTz(add_to_instant(*t, &iv.neg()?)?),
        (Sub, Value::Date(d), Value::Interval(iv)) => Value::Timestamp(add_to_timestamp(date_us(*d)?, &iv.neg()?)?),
        (Sub, Value::Timestamp(x), Value::Timestamp(y)) | (Sub, Value::TimestampTz(x), Value::TimestampTz(y)) => {
            Value::Interval(between(*x, *y)?)
        }
        // A local time meets an instant: as an instant in the session's time zone.
        (Sub, Value::Timestamp(x), Value::TimestampTz(y)) => {
            Value::Interval(between(crate::zone::current().to_utc(*x), *y)?)
        }
        (Sub, Value::TimestampTz(x), Value::Timestamp(y)) => {
            Value::Interval(between(*x, crate::zone::current().to_utc(*y))?)
        }
        (Sub, Value::Timestamp(x), Value::Date(d)) => Value::Interval(between(*x, date_us(*d)?)?),
        (Sub, Value::Date(d), Value::Timestamp(y)) => Value::Interval(between(date_us(*d)?, *y)?),
        (Sub, Value::TimestampTz(x), Value::Date(d)) => {
            Value::Interval(between(*x, crate::zone::current().to_utc(date_us(*d)?))?)
        }
        (Sub, Value::Date(d), Value::TimestampTz(y)) => {
            Value::Interval(between(crate::zone::current().to_utc(date_us(*d)?), *y)?)
        }
        // A time of day moves by an interval's time part and wraps around midnight; its
        // days and months do nothing (as in PostgreSQL).
        (Add, Value::Time(t), Value::Interval(iv)) | (Add, Value::Interval(iv), Value::Time(t)) => {
            Value::Time((t.rem_euclid(day) + iv.micros.rem_euclid(day)).rem_euclid(day))
        }
        (Sub, Value::Time(t), Value::Interval(iv)) => {
            Value::Time((t.rem_euclid(day) - iv.micros.rem_euclid(day)).rem_euclid(day))
        }
        (Sub, Value::Time(x), Value::Time(y)) => Value::Interval(Interval { months: 0, days: 0, micros: x - y }),
        (Add, Value::Date(d), Value::Time(t)) | (Add, Value::Time(t), Value::Date(d)) => {
            Value::Timestamp(date_us(*d)?.checked_add(*t).ok_or_else(ts_out_of_range)?)
        }
        (Add, Value::Interval(x), Value::Interval(y)) => Value::Interval(x.add(y)?),
        (Sub, Value::Interval(x), Value::Interval(y)) => Value::Interval(x.sub(y)?),
        (Mul, Value::Interval(iv), n) | (Mul, n, Value::Interval(iv)) if as_factor(n).is_some() => {
            Value::Interval(iv.mul(as_factor(n).unwrap_or(1.0))?)
        }
        (Div, Value::Interval(iv), n) if as_factor(n).is_some() => {
            Value::Interval(iv.div(as_factor(n).unwrap_or(1.0))?)
        }
        _ => return Ok(None),
    }))
}

/// The local wall-clock time (µs) a date/time argument stands for, for field-wise work
/// (`extract`, `date_trunc`, `age`): a timestamp as it is, a date at midnight, an instant
/// (`timestamptz`, or an untyped string read as one) in the session's time zone. `None`
/// for NULL.
fn local_time(v: Value, what: &str) -> Result<Option<i64>> {
    Ok(match v {
        Value::Null => None,
        Value::Timestamp(t) => Some(t),
        Value::TimestampTz(t) => Some(crate::zone::current().to_local(t)),
        Value::Date(d) => Some(d.checked_mul(USEC_PER_DAY).ok_or_else(ts_out_of_range)?),
        Value::Text(s) => {
            Some(crate::zone::current().to_local(crate::time::parse_timestamp(&s, true).ok_or_else(|| {
                Error::sql("22007", format!("invalid input syntax for type timestamp with time zone: \"{s}\""))
            })?))
        }
        other => return Err(Error::sql("42883", format!("function {what}({}) does not exist", other.type_name()))),
    })
}

fn unit_of(v: Value, what: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::Text(s) => Ok(Some(s)),
        other => Err(Error::sql("42883", format!("function {what}({}, …) does not exist", other.type_name()))),
    }
}

/// `extract(unit FROM v)` (`as_float` false: numeric, PostgreSQL 14+) and
/// `date_part(unit, v)` (`as_float`: double precision).
pub fn extract(unit: Value, v: Value, as_float: bool) -> Result<Value> {
    let what = if as_float { "date_part" } else { "extract" };
    let Some(unit) = unit_of(unit, what)? else { return Ok(Value::Null) };
    // An untyped string is read as a timestamp with time zone.
    let v = match v {
        Value::Text(s) => Value::TimestampTz(crate::time::parse_timestamp(&s, true).ok_or_else(|| {
            Error::sql("22007", format!("invalid input syntax for type timestamp with time zone: \"{s}\""))
        })?),
        v => v,
    };
    let d = match v {
        Value::Null => return Ok(Value::Null),
        Value::Interval(iv) => interval_field(&unit, &iv)?,
        Value::Time(t) => time_field(&unit, t)?,
        // The fields of an instant are those of its local time; its epoch and zone
        // fields are its own.
        Value::TimestampTz(t) => {
            let offset = crate::zone::current().offset_at(t);
            match unit.to_ascii_lowercase().as_str() {
                "epoch" => crate::numeric::Numeric::new(t, 6),
                "timezone" => crate::numeric::Numeric::from(offset),
                "timezone_hour" => crate::numeric::Numeric::from(offset / 3600),
                "timezone_minute" => crate::numeric::Numeric::from(offset / 60 % 60),
                _ => timestamp_field(&unit, t.saturating_add(offset * USEC_PER_SEC))?,
            }
        }
        Value::Timestamp(_) | Value::Date(_)
            if matches!(unit.to_ascii_lowercase().as_str(), "timezone" | "timezone_hour" | "timezone_minute") =>
        {
            return Err(Error::sql(
                "0A000",
                format!("unit \"{}\" not supported for type timestamp without time zone", unit.to_ascii_lowercase()),
            ));
        }
        other => match local_time(other, what)? {
            Some(t) => timestamp_field(&unit, t)?,
            None => return Ok(Value::Null),
        },
    };
    Ok(if as_float { Value::Float(d.to_f64()) } else { Value::Numeric(d) })
}

/// `date_trunc(unit, v)`: a timestamp stays one; a date (or string) becomes a
/// timestamp with time zone, as in PostgreSQL.
pub fn date_trunc(unit: Value, v: Value) -> Result<Value> {
    let Some(unit) = unit_of(unit, "date_trunc")? else { return Ok(Value::Null) };
    Ok(match v {
        Value::Null => Value::Null,
        Value::Timestamp(t) => Value::Timestamp(trunc_timestamp(&unit, t)?),
        // Truncated in local time, in the session's time zone.
        other => match local_time(other, "date_trunc")? {
            Some(t) => Value::TimestampTz(crate::zone::current().to_utc(trunc_timestamp(&unit, t)?)),
            None => Value::Null,
        },
    })
}

/// `age(a, b)`, or `age(a)` = `age(current_date, a)`.
pub fn age_of(a: Value, b: Option<Value>, today: i64) -> Result<Value> {
    let (x, y) = match b {
        Some(b) => (local_time(a, "age")?, local_time(b, "age")?),
        None => (Some(today * USEC_PER_DAY), local_time(a, "age")?),
    };
    Ok(match (x, y) {
        (Some(x), Some(y)) => Value::Interval(age(x, y)?),
        _ => Value::Null,
    })
}

/// `to_timestamp(seconds since the epoch)`.
pub fn to_timestamp(v: Value) -> Result<Value> {
    let secs = match v {
        Value::Null => return Ok(Value::Null),
        Value::Int(i) => i as f64,
        Value::Float(f) => f,
        Value::Numeric(d) => d.to_f64(),
        other => {
            return Err(Error::sql("42883", format!("function to_timestamp({}) does not exist", other.type_name())))
        }
    };
    let us = (secs * USEC_PER_SEC as f64).round();
    if !us.is_finite() || us.abs() > 9.2e18 {
        return Err(ts_out_of_range());
    }
    Ok(Value::TimestampTz(us as i64))
}

/// The current instant (µs since the Unix epoch).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

thread_local! {
    /// The start of the running statement's transaction and of the statement itself.
    static NOW: std::cell::Cell<Option<(i64, i64)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with `now()` fixed at `transaction` and `statement_timestamp()` at
/// `statement` (µs since the epoch), as PostgreSQL fixes them for a transaction.
pub fn with_now<T>(transaction: i64, statement: i64, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(i64, i64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            NOW.with(|n| n.set(self.0));
        }
    }
    let _restore = Restore(NOW.with(|n| n.replace(Some((transaction, statement)))));
    f()
}

/// `now()`: the start of the current transaction (the clock outside a statement).
pub fn transaction_now() -> i64 {
    NOW.with(|n| n.get()).map_or_else(now_micros, |(t, _)| t)
}

/// `statement_timestamp()`: the start of the current statement.
pub fn statement_now() -> i64 {
    NOW.with(|n| n.get()).map_or_else(now_micros, |(_, s)| s)
}

/// Whole days since the epoch, today (as of `now()`) in the session's time zone.
pub fn today() -> i64 {
    crate::zone::current().to_local(transaction_now()).div_euclid(USEC_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Interval {
        Interval::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_prints_like_postgres() {
        // Expected strings are PostgreSQL 15's output for the same input.
        for (input, out) in [
            ("1 day", "1 day"),
            ("-1 day", "-1 days"),
            ("1 year 2 months 3 days 04:05:06.5", "1 year 2 mons 3 days 04:05:06.5"),
            ("25 hours", "25:00:00"),
            ("1.5 days", "1 day 12:00:00"),
            ("1.5 months", "1 mon 15 days"),
            ("1.5 years", "1 year 6 mons"),
            ("-1 day +2 hours", "-1 days +02:00:00"),
            ("-1 year 2 mons", "-10 mons"),
            ("-1 years -2 mons", "-1 years -2 mons"),
            ("1 year -1 mons", "11 mons"),
            ("-1 mons 2 days", "-1 mons +2 days"),
            ("10s", "00:00:10"),
            ("90 minutes", "01:30:00"),
            ("2 weeks ago", "-14 days"),
            ("@ 1 minute", "00:01:00"),
            ("0", "00:00:00"),
            ("-00:00:01.25", "-00:00:01.25"),
            ("P1Y2M3DT4H5M6S", "1 year 2 mons 3 days 04:05:06"),
            ("PT1.5S", "00:00:01.5"),
            ("3 millisecond", "00:00:00.003"),
        ] {
            assert_eq!(p(input).format(), out, "{input}");
        }
        for bad in ["", "day", "1 fortnight", "1:99", "abc", "1 day 2"] {
            let r = Interval::parse(bad);
            if bad == "1 day 2" {
                // A trailing bare number is seconds, as in PostgreSQL.
                assert_eq!(r.unwrap().format(), "1 day 00:00:02");
            } else {
                assert!(r.is_err(), "{bad:?} parsed");
            }
        }
    }

    #[test]
    fn calendar_arithmetic() {
        let ts = |s: &str| crate::time::parse_timestamp(s, false).unwrap();
        let fmt = |us: i64| crate::time::format_timestamp(us, false);
        assert_eq!(fmt(add_to_timestamp(ts("2024-01-31 10:00:00"), &p("1 mon")).unwrap()), "2024-02-29 10:00:00");
        assert_eq!(fmt(add_to_timestamp(ts("2023-01-31 10:00:00"), &p("1 mon 1 day")).unwrap()), "2023-03-01 10:00:00");
        assert_eq!(fmt(add_to_timestamp(ts("2024-03-01"), &p("-1 day -1 hour")).unwrap()), "2024-02-28 23:00:00");
        assert_eq!(between(ts("2020-01-02 03:00:00"), ts("2020-01-01")).unwrap().format(), "1 day 03:00:00");
        assert_eq!(between(ts("2020-01-01"), ts("2020-01-02 03:00:00")).unwrap().format(), "-1 days -03:00:00");
        assert_eq!(
            age(ts("2024-03-15"), ts("2020-06-20 12:00:00")).unwrap().format(),
            "3 years 8 mons 24 days 12:00:00"
        );
        assert_eq!(age(ts("2020-01-01"), ts("2021-02-03")).unwrap().format(), "-1 years -1 mons -2 days");
        assert_eq!(p("1 mon").cmp_span(&p("30 days")), Ordering::Equal);
        assert_eq!(p("1 day").mul(1.5).unwrap().format(), "1 day 12:00:00");
        assert_eq!(p("1 mon").div(2.0).unwrap().format(), "15 days");
        assert!(p("1 day").div(0.0).is_err());
        assert_eq!(fmt(trunc_timestamp("week", ts("2024-03-14 10:11:12")).unwrap()), "2024-03-11 00:00:00");
        assert_eq!(fmt(trunc_timestamp("quarter", ts("2024-08-14 10:11:12")).unwrap()), "2024-07-01 00:00:00");
        assert_eq!(timestamp_field("dow", ts("2024-03-17")).unwrap().to_string(), "0");
        assert_eq!(timestamp_field("week", ts("2021-01-03")).unwrap().to_string(), "53");
        assert_eq!(timestamp_field("second", ts("2024-03-17 01:02:03.5")).unwrap().to_string(), "3.500000");
        assert_eq!(interval_field("epoch", &p("1 day 1 second")).unwrap().to_string(), "86401.000000");
    }
}
