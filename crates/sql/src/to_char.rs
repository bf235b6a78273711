//! `to_char`: timestamps, dates, intervals and numbers formatted by a template, as in
//! PostgreSQL (C locale, UTC).
//!
//! A template is read left to right, longest pattern first: date/time patterns
//! (`YYYY`, `MM`, `Month`, `HH24`, `MI`, `SS`, `MS`, `US`, `Day`, `IW`, …, with the `FM`
//! prefix that drops padding and the `TH`/`th` ordinal suffix), or number patterns (`9`,
//! `0`, `.`/`D`, `,`/`G`, `S`, `MI`, `PL`, `SG`, `PR`, `FM`); double-quoted text and
//! anything else is copied. Values: NULL in, NULL out.

use crate::numeric::Numeric as Decimal;
use crate::time::{civil_from_days, days_from_civil};
use crate::types::Value;
use amberdb_error::{Error, Result};

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const ROMAN: [&str; 12] = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"];

/// `to_char(value, template)`.
pub fn to_char(v: Value, template: Value) -> Result<Value> {
    let fmt = match template {
        Value::Null => return Ok(Value::Null),
        Value::Text(t) => t,
        other => return Err(Error::sql("42883", format!("function to_char(…, {}) does not exist", other.type_name()))),
    };
    Ok(Value::Text(match v {
        Value::Null => return Ok(Value::Null),
        Value::Timestamp(us) => datetime(&Fields::of_timestamp(us), &fmt, None),
        // The local time in the session's zone, which `TZ` and `OF` name.
        Value::TimestampTz(us) => {
            let zone = crate::zone::current();
            let offset = zone.offset_at(us);
            let local = us.saturating_add(offset * 1_000_000);
            datetime(&Fields::of_timestamp(local), &fmt, Some((&zone.abbreviation_at(us), offset)))
        }
        Value::Date(d) => datetime(&Fields::of_timestamp(d.saturating_mul(MICROS_PER_DAY)), &fmt, None),
        Value::Interval(iv) => datetime(&Fields::of_interval(&iv), &fmt, None),
        // As PostgreSQL, through its implicit cast to interval.
        Value::Time(t) => {
            datetime(&Fields::of_interval(&crate::interval::Interval { months: 0, days: 0, micros: t }), &fmt, None)
        }
        Value::Int(i) => number(Decimal::from(i), &fmt)?,
        Value::Numeric(d) => number(d, &fmt)?,
        Value::Float(f) => match Decimal::from_f64(f) {
            Some(d) => number(d, &fmt)?,
            None => return Err(Error::sql("22003", format!("value {f} cannot be formatted by to_char"))),
        },
        other => {
            return Err(Error::sql("42883", format!("function to_char({}, text) does not exist", other.type_name())))
        }
    }))
}

/// The calendar and clock fields a template can name.
struct Fields {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micros: i64,
    /// Days since 1970-01-01 (None for intervals: no weekday, week or Julian day).
    days: Option<i64>,
}

impl Fields {
    fn of_timestamp(us: i64) -> Self {
        let days = us.div_euclid(MICROS_PER_DAY);
        let tod = us.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Fields {
            year,
            month,
            day,
            hour: tod / 3_600_000_000,
            minute: tod / 60_000_000 % 60,
            second: tod / 1_000_000 % 60,
            micros: tod % 1_000_000,
            days: Some(days),
        }
    }

    fn of_interval(iv: &crate::interval::Interval) -> Self {
        let m = i64::from(iv.months);
        let t = iv.micros;
        Fields {
            year: m / 12,
            month: m % 12,
            day: i64::from(iv.days),
            hour: t / 3_600_000_000,
            minute: t / 60_000_000 % 60,
            second: t / 1_000_000 % 60,
            micros: t % 1_000_000,
            days: None,
        }
    }

    fn day_of_year(&self) -> i64 {
        self.days.map_or(0, |d| d - days_from_civil(self.year, 1, 1) + 1)
    }

    /// 0 = Sunday.
    fn weekday(&self) -> i64 {
        self.days.map_or(0, |d| (d + 4).rem_euclid(7))
    }

    /// ISO 8601 week-numbering year and week.
    fn iso_week(&self) -> (i64, i64) {
        let Some(d) = self.days else { return (0, 0) };
        let iso_dow = (d + 3).rem_euclid(7) + 1; // 1 = Monday
        let thursday = d - (iso_dow - 4);
        let (y, _, _) = civil_from_days(thursday);
        (y, (thursday - days_from_civil(y, 1, 1)) / 7 + 1)
    }
}

/// The patterns, longest first where one is a prefix of another. `true`: matched
/// case-insensitively (numbers); text patterns are matched exactly, their case
/// choosing the output's.
const DATETIME_PATTERNS: &[(&str, bool)] = &[
    ("A.M.", false),
    ("a.m.", false),
    ("P.M.", false),
    ("p.m.", false),
    ("B.C.", false),
    ("b.c.", false),
    ("A.D.", false),
    ("a.d.", false),
    ("MONTH", false),
    ("Month", false),
    ("month", false),
    ("MON", false),
    ("Mon", false),
    ("mon", false),
    ("DAY", false),
    ("Day", false),
    ("day", false),
    ("DY", false),
    ("Dy", false),
    ("dy", false),
    ("AM", false),
    ("am", false),
    ("PM", false),
    ("pm", false),
    ("BC", false),
    ("bc", false),
    ("AD", false),
    ("ad", false),
    ("RM", false),
    ("rm", false),
    ("TZ", false),
    ("tz", false),
    ("OF", false),
    ("Y,YYY", true),
    ("YYYY", true),
    ("YYY", true),
    ("YY", true),
    ("Y", true),
    ("IYYY", true),
    ("IYY", true),
    ("IY", true),
    ("IDDD", true),
    ("ID", true),
    ("IW", true),
    ("I", true),
    ("HH24", true),
    ("HH12", true),
    ("HH", true),
    ("MI", true),
    ("MS", true),
    ("US", true),
    ("SSSS", true),
    ("SS", true),
    ("MM", true),
    ("DDD", true),
    ("DD", true),
    ("D", true),
    ("WW", true),
    ("W", true),
    ("Q", true),
    ("CC", true),
    ("J", true),
];

fn match_pattern(rest: &str, table: &[(&'static str, bool)]) -> Option<&'static str> {
    table.iter().find_map(|&(p, fold)| {
        let head = rest.get(..p.len())?;
        let hit = if fold { head.eq_ignore_ascii_case(p) } else { head == p };
        hit.then_some(p)
    })
}

fn ordinal(n: i64, upper: bool) -> &'static str {
    let s = match (n % 100, n % 10) {
        (11..=13, _) => "th",
        (_, 1) => "st",
        (_, 2) => "nd",
        (_, 3) => "rd",
        _ => "th",
    };
    match (upper, s) {
        (false, s) => s,
        (true, "st") => "ST",
        (true, "nd") => "ND",
        (true, "rd") => "RD",
        (true, _) => "TH",
    }
}

/// Copies a double-quoted literal (with backslash escapes) starting at `rest[0] == '"'`;
/// returns the bytes consumed.
fn quoted(rest: &str, out: &mut String) -> usize {
    let mut chars = rest.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return i + 1,
            '\\' => {
                if let Some((_, e)) = chars.next() {
                    out.push(e);
                }
            }
            c => out.push(c),
        }
    }
    rest.len()
}

/// An AM/PM or BC/AD marker in the pattern's case.
fn marker(s: &str, case: &str) -> String {
    if case == "lower" {
        s.to_lowercase()
    } else {
        s.to_string()
    }
}

fn datetime(f: &Fields, fmt: &str, zone: Option<(&str, i64)>) -> String {
    let mut out = String::new();
    let mut rest = fmt;
    while !rest.is_empty() {
        if rest.starts_with('"') {
            let n = quoted(rest, &mut out);
            rest = &rest[n..];
            continue;
        }
        if let Some(esc) = rest.strip_prefix('\\') {
            if let Some(c) = esc.chars().next() {
                out.push(c);
                rest = &esc[c.len_utf8()..];
            } else {
                rest = esc;
            }
            continue;
        }
        let fill = rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("FM");
        let body = if fill { &rest[2..] } else { rest };
        let Some(p) = match_pattern(body, DATETIME_PATTERNS) else {
            let c = rest.chars().next().expect("rest is not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        let mut after = &body[p.len()..];
        let num = |n: i64, width: usize| if fill { n.to_string() } else { format!("{n:0width$}") };
        let text = |s: &str, width: usize, case: &str| {
            let s = match case {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                _ => s.to_string(),
            };
            if fill {
                s
            } else {
                format!("{s:<width$}")
            }
        };
        let case = if p.chars().all(|c| !c.is_ascii_lowercase()) {
            "upper"
        } else if p.chars().all(|c| !c.is_ascii_uppercase()) {
            "lower"
        } else {
            "title"
        };
        let pm = f.hour >= 12;
        let bc = f.year <= 0;
        let year = if bc { 1 - f.year } else { f.year };
        let (iso_year, iso_week) = f.iso_week();
        let value: Option<i64>;
        let piece = match p.to_ascii_uppercase().as_str() {
            "A.M." | "P.M." => {
                value = None;
                marker(if pm { "P.M." } else { "A.M." }, case)
            }
            "AM" | "PM" => {
                value = None;
                marker(if pm { "PM" } else { "AM" }, case)
            }
            "B.C." | "A.D." => {
                value = None;
                marker(if bc { "B.C." } else { "A.D." }, case)
            }
            "BC" | "AD" => {
                value = None;
                marker(if bc { "BC" } else { "AD" }, case)
            }
            "MONTH" => {
                value = None;
                let m = MONTHS[((f.month - 1).rem_euclid(12)) as usize];
                text(m, 9, case)
            }
            "MON" => {
                value = None;
                let m = &MONTHS[((f.month - 1).rem_euclid(12)) as usize][..3];
                text(m, 3, case)
            }
            "DAY" => {
                value = None;
                text(DAYS[f.weekday() as usize], 9, case)
            }
            "DY" => {
                value = None;
                text(&DAYS[f.weekday() as usize][..3], 3, case)
            }
            "RM" => {
                value = None;
                let r = ROMAN[((f.month - 1).rem_euclid(12)) as usize];
                text(r, 4, if case == "lower" { "lower" } else { "upper" })
            }
            "TZ" => {
                value = None;
                match (zone, case) {
                    (None, _) => String::new(),
                    (Some((abbrev, _)), "lower") => abbrev.to_lowercase(),
                    (Some((abbrev, _)), _) => abbrev.to_string(),
                }
            }
            "OF" => {
                value = None;
                zone.map(|(_, offset)| crate::zone::format_offset(offset)).unwrap_or_default()
            }
            "Y,YYY" => {
                value = Some(year);
                format!("{},{:03}", year / 1000, year % 1000)
            }
            other => {
                let (n, width) = match other {
                    "YYYY" => (year, 4),
                    "YYY" => (year % 1000, 3),
                    "YY" => (year % 100, 2),
                    "Y" => (year % 10, 1),
                    "IYYY" => (iso_year, 4),
                    "IYY" => (iso_year % 1000, 3),
                    "IY" => (iso_year % 100, 2),
                    "I" => (iso_year % 10, 1),
                    "IDDD" => ((iso_week - 1) * 7 + (f.weekday() + 6) % 7 + 1, 3),
                    "ID" => ((f.weekday() + 6) % 7 + 1, 1),
                    "IW" => (iso_week, 2),
                    "HH24" => (f.hour, 2),
                    "HH12" | "HH" => ((f.hour + 11) % 12 + 1, 2),
                    "MI" => (f.minute, 2),
                    "MS" => (f.micros / 1000, 3),
                    "US" => (f.micros, 6),
                    "SSSS" => (f.hour * 3600 + f.minute * 60 + f.second, 0),
                    "SS" => (f.second, 2),
                    "MM" => (f.month, 2),
                    "DDD" => (f.day_of_year(), 3),
                    "DD" => (f.day, 2),
                    "D" => (f.weekday() + 1, 1),
                    "WW" => ((f.day_of_year() - 1) / 7 + 1, 2),
                    "W" => ((f.day - 1) / 7 + 1, 1),
                    "Q" => ((f.month - 1) / 3 + 1, 1),
                    "CC" => ((year - 1) / 100 + 1, 2),
                    _ => (f.days.map_or(0, |d| d + 2_440_588), 0),
                };
                value = Some(n);
                num(n, width)
            }
        };
        out.push_str(&piece);
        if let Some(n) = value {
            if after.starts_with("TH") || after.starts_with("th") {
                out.push_str(ordinal(n, after.starts_with("TH")));
                after = &after[2..];
            }
        }
        rest = after;
    }
    out
}

/// One element of a number template.
enum NumTok {
    /// `9` (blank when not significant) or `0` (always a digit); before or after the
    /// decimal point.
    Digit {
        zero: bool,
        frac: bool,
    },
    Point,
    Group,
    /// `S` (plus or minus), `SG` (same), `PL` (plus or blank), `MI` (minus or blank).
    Sign(&'static str),
    /// `PR`: negative values in angle brackets.
    Brackets,
    /// `EEEE`: scientific notation (with only digits and a point beside it).
    Sci,
    /// `RN` / `rn`: the value as a Roman numeral (1–3999).
    Roman {
        lower: bool,
    },
    /// `V`: the digits after it shift the value left by as many places.
    Shift,
    Text(String),
}

/// `RN`: 1–3999 as a Roman numeral (rounded half away from zero), right-aligned in 15
/// characters unless `FM`; anything else is 15 `#`.
fn roman(v: Decimal, lower: bool, fill: bool) -> String {
    const NUMERALS: [(i64, &str); 13] = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let n = v.to_i64_round().unwrap_or(0);
    if !(1..=3999).contains(&n) {
        return "#".repeat(15);
    }
    let mut left = n;
    let mut out = String::new();
    for (value, numeral) in NUMERALS {
        while left >= value {
            out.push_str(numeral);
            left -= value;
        }
    }
    if lower {
        out = out.to_lowercase();
    }
    if fill {
        out
    } else {
        format!("{out:>15}")
    }
}

/// `EEEE`: `d.ddde±XX` with as many decimals as the pattern has after its point, and a
/// sign place (blank or `-`). As PostgreSQL, the exponent is that of the value before
/// rounding (9.999 with two decimals is `10.00e+00`), and only digits and a point may
/// stand beside it.
fn scientific(v: Decimal, toks: &[NumTok], fill: bool) -> Result<String> {
    if fill || toks.iter().any(|t| !matches!(t, NumTok::Digit { .. } | NumTok::Point | NumTok::Sci)) {
        return Err(Error::sql(
            "42601",
            "\"EEEE\" is incompatible with other formats (it may only be used together with digit and decimal point patterns)",
        ));
    }
    let places = toks.iter().filter(|t| matches!(t, NumTok::Digit { frac: true, .. })).count() as u32;
    let negative = v.is_negative();
    let (exponent, mantissa) = match v.key_parts() {
        // The digits with the point after the first: d.ddd × 10^(digits before the point − 1).
        Some((_, before_point, digits)) => (before_point - 1, Decimal::from_key_parts(false, 1, &digits)?),
        None => (0, Decimal::zero()),
    };
    // Rounding shows exactly `places` decimals.
    let text = mantissa.round(i64::from(places))?.to_string();
    let sign = if exponent < 0 { '-' } else { '+' };
    Ok(format!("{}{text}e{sign}{:02}", if negative { '-' } else { ' ' }, exponent.abs()))
}

fn number(v: Decimal, fmt: &str) -> Result<String> {
    let mut toks = Vec::new();
    let mut fill = false;
    let mut rest = fmt;
    let mut frac = false;
    let mut shift = false;
    while let Some(c) = rest.chars().next() {
        let upper = rest.get(..2).map(str::to_ascii_uppercase);
        let (tok, n) = match (c, upper.as_deref()) {
            (_, Some("FM")) => {
                fill = true;
                rest = &rest[2..];
                continue;
            }
            (_, Some("MI")) => (NumTok::Sign("MI"), 2),
            (_, Some("PL")) => (NumTok::Sign("PL"), 2),
            (_, Some("SG")) => (NumTok::Sign("S"), 2),
            (_, Some("PR")) => (NumTok::Brackets, 2),
            _ if rest.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("EEEE")) => (NumTok::Sci, 4),
            (_, Some("RN")) => (NumTok::Roman { lower: rest.starts_with('r') }, 2),
            (_, Some("EE") | Some("TH")) => {
                return Err(Error::sql("0A000", format!("to_char number pattern \"{}\" is not supported", &rest[..2])))
            }
            ('9', _) => (NumTok::Digit { zero: false, frac }, 1),
            ('0', _) => (NumTok::Digit { zero: true, frac }, 1),
            ('.' | 'D' | 'd', _) if shift => {
                return Err(Error::sql("42601", "cannot use \"V\" and decimal point together"));
            }
            ('.' | 'D' | 'd', _) if !frac => {
                frac = true;
                (NumTok::Point, 1)
            }
            ('V' | 'v', _) if frac => {
                return Err(Error::sql("42601", "cannot use \"V\" and decimal point together"));
            }
            ('V' | 'v', _) => {
                shift = true;
                (NumTok::Shift, 1)
            }
            // The locale's currency symbol: the C locale has none, which PostgreSQL
            // prints as a blank.
            ('L' | 'l', _) => (NumTok::Text(" ".into()), 1),
            (',' | 'G' | 'g', _) => (NumTok::Group, 1),
            ('S' | 's', _) => (NumTok::Sign("S"), 1),
            ('"', _) => {
                let mut lit = String::new();
                let n = quoted(rest, &mut lit);
                (NumTok::Text(lit), n)
            }
            (c, _) => (NumTok::Text(c.to_string()), c.len_utf8()),
        };
        toks.push(tok);
        rest = &rest[n..];
    }
    if let Some(lower) = toks.iter().find_map(|t| if let NumTok::Roman { lower } = t { Some(*lower) } else { None }) {
        return Ok(roman(v, lower, fill));
    }
    if toks.iter().any(|t| matches!(t, NumTok::Sci)) {
        return scientific(v, &toks, fill);
    }
    // `V`: the value shifted left by the digits after it, which print as integer places.
    let mut v = v;
    if let Some(at) = toks.iter().position(|t| matches!(t, NumTok::Shift)) {
        let places = toks[at..].iter().filter(|t| matches!(t, NumTok::Digit { .. })).count();
        v = v.mul(&Decimal::parse(&format!("1{}", "0".repeat(places)))?)?;
        toks.remove(at);
    }
    let int_places = toks.iter().filter(|t| matches!(t, NumTok::Digit { frac: false, .. })).count();
    let frac_places = toks.iter().filter(|t| matches!(t, NumTok::Digit { frac: true, .. })).count();
    let rounded = v.round(frac_places as i64)?;
    let negative = rounded.is_negative();
    let abs = rounded.abs();
    let int_part = Some(abs.trunc(0)?.to_string());
    let overflow = int_part.as_ref().is_none_or(|s| s != "0" && s.len() > int_places);
    let int_digits: Vec<char> = match &int_part {
        Some(s) if s != "0" => format!("{s:0>int_places$}").chars().collect(),
        _ => vec!['0'; int_places],
    };
    let frac_digits: Vec<char> = {
        let s = abs.sub(&abs.trunc(0)?)?.to_string();
        let digits = s.split_once('.').map_or("", |(_, f)| f);
        format!("{digits:0<frac_places$}").chars().take(frac_places).collect()
    };
    // The first integer position that prints a digit: the first significant digit, the
    // first `0` pattern, or (for a zero with no fraction places) the last position.
    let first_sig = int_digits.iter().position(|&d| d != '0').unwrap_or(int_places);
    let first_zero_tok = toks
        .iter()
        .filter(|t| matches!(t, NumTok::Digit { frac: false, .. }))
        .position(|t| matches!(t, NumTok::Digit { zero: true, .. }))
        .unwrap_or(int_places);
    let mut print_from = first_sig.min(first_zero_tok);
    if print_from == int_places && frac_places == 0 && int_places > 0 {
        print_from = int_places - 1;
    }
    // Fill mode drops the fraction's trailing zeros that `9` patterns hold.
    let mut frac_keep = frac_places;
    if fill {
        let frac_toks: Vec<bool> = toks
            .iter()
            .filter_map(|t| if let NumTok::Digit { zero, frac: true } = t { Some(*zero) } else { None })
            .collect();
        while frac_keep > 0 && !frac_toks[frac_keep - 1] && frac_digits[frac_keep - 1] == '0' {
            frac_keep -= 1;
        }
    }
    let explicit_sign = toks.iter().any(|t| matches!(t, NumTok::Sign(_) | NumTok::Brackets));
    let mut out = String::new();
    let mut start: Option<usize> = None;
    let (mut i, mut j) = (0usize, 0usize);
    let mut printed = false;
    for t in &toks {
        match t {
            NumTok::Digit { frac: false, .. } => {
                if overflow {
                    start.get_or_insert(out.len());
                    out.push('#');
                } else if i >= print_from {
                    start.get_or_insert(out.len());
                    out.push(int_digits[i]);
                    printed = true;
                } else if !fill {
                    out.push(' ');
                }
                i += 1;
            }
            NumTok::Digit { frac: true, .. } => {
                if j < frac_keep {
                    out.push(if overflow { '#' } else { frac_digits[j] });
                }
                j += 1;
            }
            NumTok::Point => {
                start.get_or_insert(out.len());
                out.push('.');
            }
            NumTok::Group => {
                if printed || overflow {
                    out.push(',');
                } else if !fill {
                    out.push(' ');
                }
            }
            NumTok::Sign("MI") => out.push_str(if negative {
                "-"
            } else if fill {
                ""
            } else {
                " "
            }),
            NumTok::Sign("PL") => out.push_str(if negative { "" } else { "+" }),
            NumTok::Sign(_) => {}
            NumTok::Brackets => out.push_str(if negative {
                ">"
            } else if fill {
                ""
            } else {
                " "
            }),
            NumTok::Text(s) => out.push_str(s),
            NumTok::Sci | NumTok::Roman { .. } | NumTok::Shift => {}
        }
    }
    // The sign goes right before the number's first printed character.
    let at = start.unwrap_or(out.len());
    let sign = if toks.iter().any(|t| matches!(t, NumTok::Sign("S"))) {
        Some(if negative { '-' } else { '+' })
    } else if toks.iter().any(|t| matches!(t, NumTok::Brackets)) {
        if negative {
            Some('<')
        } else if fill {
            None
        } else {
            Some(' ')
        }
    } else if explicit_sign {
        None
    } else if negative {
        Some('-')
    } else if fill {
        None
    } else {
        Some(' ')
    };
    if let Some(c) = sign {
        out.insert(at, c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        crate::time::parse_timestamp(s, false).expect("timestamp")
    }

    fn fmt_ts(s: &str, f: &str) -> String {
        datetime(&Fields::of_timestamp(ts(s)), f, None)
    }

    #[test]
    fn dates_and_times_format_like_postgresql() {
        // Every expected value is PostgreSQL 15's.
        let t = "2024-03-05 14:07:09.123456";
        assert_eq!(fmt_ts(t, "YYYY-MM-DD HH24:MI:SS"), "2024-03-05 14:07:09");
        assert_eq!(fmt_ts(t, "YYYY-MM-DD HH12:MI:SS AM MS US"), "2024-03-05 02:07:09 PM 123 123456");
        let t = "2024-03-05 04:07:09";
        assert_eq!(fmt_ts(t, "Day, DD Month YYYY"), "Tuesday  , 05 March     2024");
        assert_eq!(fmt_ts(t, "FMDay, FMDD FMMonth YYYY"), "Tuesday, 5 March 2024");
        assert_eq!(fmt_ts(t, "DY dy Dy MON Mon mon"), "TUE tue Tue MAR Mar mar");
        assert_eq!(fmt_ts(t, "DDD D ID WW IW Q CC J YY Y SSSS"), "065 3 2 10 10 1 21 2460375 24 4 14829");
        assert_eq!(fmt_ts(t, "DDth Mon, \"week\" IW p.m. PM a.m."), "05th Mar, week 10 a.m. AM a.m.");
        assert_eq!(
            datetime(&Fields::of_timestamp(ts(t)), "YYYY-MM-DD\"T\"HH24:MI:SSOF TZ", Some(("UTC", 0))),
            "2024-03-05T04:07:09+00 UTC"
        );
        assert_eq!(fmt_ts(t, "YYYY-MM-DD TZ|"), "2024-03-05 |");
        assert_eq!(fmt_ts("2024-12-31 00:00:00", "YYYY/MM/DD IYYY-IW-ID RM rm"), "2024/12/31 2025-01-2 XII  xii ");
        assert_eq!(fmt_ts("2021-01-03 00:00:00", "IYYY IW ID WW D DDD"), "2020 53 7 01 1 003");
        assert_eq!(fmt_ts("2024-03-05 00:07:09", "HH HH12 HH24 AM"), "12 12 00 AM");
        assert_eq!(fmt_ts("2024-03-05 12:07:09", "HH HH12 AM"), "12 12 PM");
        let iv = crate::interval::Interval::parse("1 day 03:04:05").unwrap();
        assert_eq!(datetime(&Fields::of_interval(&iv), "DD HH24:MI:SS", None), "01 03:04:05");
        let iv = crate::interval::Interval::parse("27 hours 5 minutes").unwrap();
        assert_eq!(datetime(&Fields::of_interval(&iv), "HH24:MI", None), "27:05");
    }

    fn n(v: &str, f: &str) -> String {
        number(Decimal::parse(v).unwrap(), f).unwrap()
    }

    #[test]
    fn numbers_format_like_postgresql() {
        // Every expected value is PostgreSQL 15's.
        assert_eq!(n("1234.5", "9999.99"), " 1234.50");
        assert_eq!(n("1234.5", "FM9999.99"), "1234.5");
        assert_eq!(n("-1234.5", "9,999.00"), "-1,234.50");
        assert_eq!(n("5", "999"), "   5");
        assert_eq!(n("-5", "999"), "  -5");
        assert_eq!(n("5", "FM999"), "5");
        assert_eq!(n("5", "0999"), " 0005");
        assert_eq!(n("5", "9099"), "  005");
        assert_eq!(n("12345", "999"), " ###");
        assert_eq!(n("0.5", "9.99"), "  .50");
        assert_eq!(n("0.5", "0.99"), " 0.50");
        assert_eq!(n("0.5", "FM0.99"), "0.5");
        assert_eq!(n("5", "FM999.99"), "5.");
        assert_eq!(n("1234567.891", "9G999G999D99"), " 1,234,567.89");
        assert_eq!(n("-12.3", "S999.9"), " -12.3");
        assert_eq!(n("12.3", "S999.9"), " +12.3");
        assert_eq!(n("-12.3", "999.9MI"), " 12.3-");
        assert_eq!(n("-12.3", "999.9PR"), " <12.3>");
        assert_eq!(n("12.3", "999.9PR"), "  12.3 ");
        assert_eq!(n("3.14159", "9.999"), " 3.142");
        assert_eq!(n("2.5", "9"), " 3");
        assert_eq!(n("3.5", "9"), " 4");
        assert_eq!(n("-0.4", "9"), " 0");
        assert_eq!(n("1000", "FM9,999"), "1,000");
        assert_eq!(n("100", "FM9,999"), "100");
        assert_eq!(n("0", "999"), "   0");
        assert_eq!(n("0", "FM999"), "0");
        assert_eq!(n("0", "990.00"), "   0.00");
        assert_eq!(n("42", "\"Total: \"999"), "Total:   42");
        assert_eq!(n("485", "RN"), "        CDLXXXV");
        assert_eq!(n("485", "FMRN"), "CDLXXXV");
        assert_eq!(n("485", "rn"), "        cdlxxxv");
        assert_eq!(n("4000", "RN"), "###############");
        assert_eq!(n("0", "RN"), "###############");
        assert_eq!(n("3.5", "RN"), "             IV");
        assert_eq!(n("-5", "RN"), "###############");
        assert_eq!(n("12.4", "99V9"), " 124");
        assert_eq!(n("12.45", "99V99"), " 1245");
        assert_eq!(n("-0.5", "9V9"), " -5");
        assert_eq!(n("12.4", "FM99V999"), "12400");
        assert_eq!(n("12345.678", "9.99EEEE"), " 1.23e+04");
        assert_eq!(n("-0.000123", "9.99EEEE"), "-1.23e-04");
        assert_eq!(n("0", "9.99EEEE"), " 0.00e+00");
        assert_eq!(n("5", "9EEEE"), " 5e+00");
        assert_eq!(n("100000000000000000000", "9.9EEEE"), " 1.0e+20");
        assert_eq!(n("9.999", "9.99EEEE"), " 10.00e+00");
        assert_eq!(n("12345.678", "99.99EEEE"), " 1.23e+04");
        assert_eq!(n("1.5", "9.9eeee"), " 1.5e+00");
        assert!(number(Decimal::from(1), "FM9.99EEEE").is_err());
        assert!(number(Decimal::from(1), "9.9V9").is_err());
        assert_eq!(n("12", "L99"), "  12");
        assert_eq!(n("12", "FML99"), " 12");
    }
}
