//! Dates and timestamps: PostgreSQL's ISO text forms, proleptic Gregorian calendar,
//! µs resolution. `timestamp with time zone` text is read and written in the session's
//! time zone (`crate::zone`).

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days in month `m` (1–12) of year `y`.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DD` into a day number.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d_str = parts.next()?;
    let d: i64 = d_str.get(..2.min(d_str.len()))?.parse().ok()?;
    if d_str.len() != 2 || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) || !(1..=9999).contains(&y) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Parses `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]][Z|±HH[:MM]| zone name]` (or a bare date,
/// at midnight) into µs since the epoch. With `use_zone` (`timestamp with time zone`)
/// an offset or zone name in the text is applied, and a time without one is local time
/// in the session's zone; without it both are ignored (as PostgreSQL does for
/// `timestamp without time zone`).
pub fn parse_timestamp(s: &str, use_zone: bool) -> Option<i64> {
    let s = s.trim();
    // A trailing zone name ("… UTC", "… America/New_York").
    if let Some((head, name)) = s.rsplit_once(' ') {
        if name.starts_with(|c: char| c.is_ascii_alphabetic()) && !head.trim().is_empty() {
            let zone = crate::zone::Zone::parse(name).ok()?;
            let local = parse_timestamp(head, false)?;
            return Some(if use_zone { zone.to_utc(local) } else { local });
        }
    }
    if s.len() == 10 {
        let local = parse_date(s)? * 86_400_000_000;
        return Some(if use_zone { crate::zone::current().to_utc(local) } else { local });
    }
    let (date, rest) = (s.get(..10)?, s.get(11..)?);
    if !matches!(s.as_bytes().get(10), Some(b' ') | Some(b'T')) {
        return None;
    }
    let days = parse_date(date)?;
    let zone_at = rest.find(['+', '-', 'Z', 'z']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let local = days * 86_400_000_000 + parse_clock(clock)?;
    let offset = match zone.trim() {
        "" if use_zone => return Some(crate::zone::current().to_utc(local)),
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let body = &z[1..];
            let (hh, mm) = match body.split_once(':') {
                Some((a, b)) => (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?),
                None if body.len() == 4 => (body[..2].parse().ok()?, body[2..].parse().ok()?),
                None => (body.parse().ok()?, 0),
            };
            sign * (hh * 3600 + mm * 60)
        }
    };
    let offset = if use_zone { offset } else { 0 };
    Some(local - offset * 1_000_000)
}

/// Parses `HH:MM[:SS[.ffffff]]` into µs since midnight (up to 24:00:00, which
/// PostgreSQL accepts as the end of a day; a 60th second is the leap second's).
fn parse_clock(clock: &str) -> Option<i64> {
    let mut hms = clock.trim().split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let (sec, micros) = match hms.next() {
        None => (0, 0),
        Some(sf) => {
            let (sec, frac) = sf.split_once('.').unwrap_or((sf, ""));
            let micros = if frac.is_empty() {
                0
            } else {
                if !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Rounded to the microsecond, half to even, as PostgreSQL (a carry
                // moves the second: the sum below takes it).
                let us: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
                let rest = frac.get(6..).unwrap_or("").as_bytes();
                let up = match rest.split_first() {
                    Some((&d, more)) if d > b'5' || (d == b'5' && more.iter().any(|&m| m != b'0')) => true,
                    Some((b'5', _)) => us % 2 == 1,
                    _ => false,
                };
                us + i64::from(up)
            };
            (sec.parse::<i64>().ok()?, micros)
        }
    };
    if hms.next().is_some() || !(0..=24).contains(&h) || !(0..=59).contains(&mi) || !(0..=60).contains(&sec) {
        return None;
    }
    Some((h * 3600 + mi * 60 + sec) * 1_000_000 + micros)
}

/// Parses a `time [without time zone]` value: `HH:MM[:SS[.ffffff]]`, or a timestamp
/// whose date (and any zone) is ignored, as PostgreSQL does. µs since midnight, at
/// most 24:00:00.
pub fn parse_time(s: &str) -> Option<i64> {
    let t = s.trim();
    let us = match parse_clock(t) {
        Some(us) => us,
        None => {
            // A trailing offset or zone name is dropped, as for a timestamp without one.
            let clock = t.find(['+', '-', 'Z', 'z']).filter(|&i| i > 0).map_or(t, |i| &t[..i]);
            match parse_clock(clock) {
                Some(us) => us,
                None => parse_timestamp(t, false)?.rem_euclid(86_400_000_000),
            }
        }
    };
    (us <= 86_400_000_000).then_some(us)
}

/// `HH:MM:SS[.ffffff]` of µs since midnight.
pub fn format_time(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, (secs % 3600) / 60, secs % 60);
    if micros != 0 {
        let frac = format!("{micros:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out
}

/// `YYYY-MM-DD`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`; for `timestamp with time zone` the local time in the
/// session's zone followed by its offset (`-04`, `+05:30`).
pub fn format_timestamp(us: i64, with_zone: bool) -> String {
    if with_zone {
        let zone = crate::zone::current();
        let offset = zone.offset_at(us);
        let mut out = format_timestamp(us.saturating_add(offset * 1_000_000), false);
        out.push_str(&crate::zone::format_offset(offset));
        return out;
    }
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let mut out = format!("{} {:02}:{:02}:{:02}", format_date(days), sod / 3600, (sod % 3600) / 60, sod % 60);
    if micros != 0 {
        let frac = format!("{micros:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(format_date(parse_date("2024-02-29").unwrap()), "2024-02-29");
        assert_eq!(parse_date("2023-02-29"), None);
        let t = parse_timestamp("2023-11-14 22:13:20.5", false).unwrap();
        assert_eq!(format_timestamp(t, false), "2023-11-14 22:13:20.5");
        assert_eq!(parse_timestamp("2023-11-14T23:13:20+01", true), Some(1_700_000_000_000_000));
        assert_eq!(format_timestamp(-1, true), "1969-12-31 23:59:59.999999+00");
        assert_eq!(parse_timestamp("2023-11-14 25:00:00", false), None);
    }
}
