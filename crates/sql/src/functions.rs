//! Scalar string and math functions with PostgreSQL's semantics: `substring`, the
//! `trim` family, `replace`, `position`/`strpos`, `left`/`right`, `lpad`/`rpad`,
//! `split_part`, `reverse`, `initcap`, `starts_with`, `ascii`/`chr`, `octet_length`,
//! `concat_ws`; `round`, `trunc`, `ceil`, `floor`, `mod`, `power`, `sqrt`, `cbrt`,
//! `sign`, `exp`, `ln`, `log`, `pi`, `random`, `degrees`, `radians`, `greatest`,
//! `least`; `md5`, `regexp_replace`; `to_date`, `to_timestamp(text, template)`; `make_date`, `make_time`, `make_timestamp`,
//! `clock_timestamp`.
//!
//! A call is bound once (`Builtin::from_name` checks the name and argument count) and
//! evaluated per row on its argument values; NULL in, NULL out, except where
//! PostgreSQL says otherwise (`concat_ws` skips NULLs, `greatest`/`least` ignore them).
//! Numbers follow the argument types: integers and numerics compute exactly (numeric
//! results), doubles in floating point, as PostgreSQL resolves these functions.

use crate::numeric::Numeric;
use crate::types::{DataType, Value};
use amberdb_error::{Error, Result};

/// Longest text a function builds, in characters (PostgreSQL refuses values over 1 GB).
const MAX_TEXT_CHARS: i64 = 1 << 28;

/// A built-in scalar function (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Substring,
    Btrim,
    Ltrim,
    Rtrim,
    Replace,
    Strpos,
    Left,
    Right,
    Lpad,
    Rpad,
    SplitPart,
    Reverse,
    Initcap,
    StartsWith,
    Ascii,
    Chr,
    OctetLength,
    ConcatWs,
    Round,
    Trunc,
    Ceil,
    Floor,
    Mod,
    Power,
    Sqrt,
    Cbrt,
    Sign,
    Exp,
    Ln,
    Log,
    Pi,
    Random,
    /// `gen_random_uuid()`: a version-4 UUID from the operating system's randomness.
    GenRandomUuid,
    Degrees,
    Radians,
    Greatest,
    Least,
    Md5,
    RegexpReplace,
    ToDate,
    ToTimestampFmt,
    MakeDate,
    MakeTime,
    MakeTimestamp,
    ClockTimestamp,
}

impl Builtin {
    /// The function called `name` with `n` arguments, if there is one.
    pub fn from_name(name: &str, n: usize) -> Option<Builtin> {
        use Builtin::*;
        let (f, ok) = match name {
            "substring" | "substr" => (Substring, matches!(n, 2 | 3)),
            "btrim" | "trim" => (Btrim, matches!(n, 1 | 2)),
            "ltrim" => (Ltrim, matches!(n, 1 | 2)),
            "rtrim" => (Rtrim, matches!(n, 1 | 2)),
            "replace" => (Replace, n == 3),
            "strpos" => (Strpos, n == 2),
            "left" => (Left, n == 2),
            "right" => (Right, n == 2),
            "lpad" => (Lpad, matches!(n, 2 | 3)),
            "rpad" => (Rpad, matches!(n, 2 | 3)),
            "split_part" => (SplitPart, n == 3),
            "reverse" => (Reverse, n == 1),
            "initcap" => (Initcap, n == 1),
            "starts_with" => (StartsWith, n == 2),
            "ascii" => (Ascii, n == 1),
            "chr" => (Chr, n == 1),
            "octet_length" => (OctetLength, n == 1),
            "concat_ws" => (ConcatWs, n >= 1),
            "round" => (Round, matches!(n, 1 | 2)),
            "trunc" => (Trunc, matches!(n, 1 | 2)),
            "ceil" | "ceiling" => (Ceil, n == 1),
            "floor" => (Floor, n == 1),
            "mod" => (Mod, n == 2),
            "power" | "pow" => (Power, n == 2),
            "sqrt" => (Sqrt, n == 1),
            "cbrt" => (Cbrt, n == 1),
            "sign" => (Sign, n == 1),
            "exp" => (Exp, n == 1),
            "ln" => (Ln, n == 1),
            "log" | "log10" => (Log, n == 1 || (name == "log" && n == 2)),
            "pi" => (Pi, n == 0),
            "random" => (Random, n == 0),
            "gen_random_uuid" => (GenRandomUuid, n == 0),
            "degrees" => (Degrees, n == 1),
            "radians" => (Radians, n == 1),
            "greatest" => (Greatest, n >= 1),
            "md5" => (Md5, n == 1),
            "regexp_replace" => (RegexpReplace, matches!(n, 3 | 4)),
            "to_date" => (ToDate, n == 2),
            "make_date" => (MakeDate, n == 3),
            "make_time" => (MakeTime, n == 3),
            "make_timestamp" => (MakeTimestamp, n == 6),
            "clock_timestamp" => (ClockTimestamp, n == 0),
            "least" => (Least, n >= 1),
            _ => return None,
        };
        ok.then_some(f)
    }

    /// The result type, from the argument types where it depends on them.
    pub fn result_type(self, args: &[Option<DataType>]) -> Option<DataType> {
        use Builtin::*;
        let first = args.first().copied().flatten();
        Some(match self {
            Substring | Btrim | Ltrim | Rtrim | Replace | Left | Right | Lpad | Rpad | SplitPart | Reverse
            | Initcap | Chr | ConcatWs | Md5 | RegexpReplace => DataType::Text,
            Strpos | Ascii | OctetLength => DataType::Int4,
            StartsWith => DataType::Bool,
            Round | Trunc | Ceil | Floor | Sign | Mod => match first {
                Some(DataType::Float4 | DataType::Float8) => DataType::Float8,
                Some(t @ (DataType::Int2 | DataType::Int4 | DataType::Int8)) if self == Mod => t,
                _ => DataType::Numeric(None),
            },
            Log if args.len() == 2 => DataType::Numeric(None),
            Power | Sqrt | Exp | Ln | Log => match first {
                Some(DataType::Numeric(_)) => DataType::Numeric(None),
                _ => DataType::Float8,
            },
            Cbrt | Pi | Random | Degrees | Radians => DataType::Float8,
            GenRandomUuid => DataType::Uuid,
            Greatest | Least => return args.iter().copied().flatten().next(),
            MakeDate | ToDate => DataType::Date,
            ToTimestampFmt => DataType::TimestampTz,
            MakeTime => DataType::Time,
            MakeTimestamp => DataType::Timestamp,
            ClockTimestamp => DataType::TimestampTz,
        })
    }

    /// Calls the function on `args` (already evaluated).
    pub fn eval(self, args: Vec<Value>) -> Result<Value> {
        use Builtin::*;
        match self {
            ConcatWs => return concat_ws(args),
            Greatest | Least => return extreme(args, self == Greatest),
            Pi => return Ok(Value::Float(std::f64::consts::PI)),
            Random => return Ok(Value::Float(random())),
            GenRandomUuid => {
                let mut b = [0u8; 16];
                getrandom::fill(&mut b)
                    .map_err(|e| Error::Internal(format!("the system random source failed: {e}")))?;
                b[6] = (b[6] & 0x0f) | 0x40; // version 4
                b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
                return Ok(Value::Uuid(u128::from_be_bytes(b)));
            }
            // The wall clock now, unlike now() (the transaction's start).
            ClockTimestamp => {
                let us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
                return Ok(Value::TimestampTz(us));
            }
            _ => {}
        }
        if args.iter().any(Value::is_null) {
            return Ok(Value::Null);
        }
        let mut args = args.into_iter();
        let mut next = || args.next().unwrap_or(Value::Null);
        Ok(match self {
            Substring => {
                let s = text(next());
                let start = int(next(), "substring")?;
                let count = match next() {
                    Value::Null => None,
                    v => Some(int(v, "substring")?),
                };
                Value::Text(substring(&s, start, count)?)
            }
            Btrim | Ltrim | Rtrim => {
                let s = text(next());
                let chars: Vec<char> = match next() {
                    Value::Null => vec![' '],
                    v => text(v).chars().collect(),
                };
                let t = match self {
                    Ltrim => s.trim_start_matches(chars.as_slice()),
                    Rtrim => s.trim_end_matches(chars.as_slice()),
                    _ => s.trim_matches(chars.as_slice()),
                };
                Value::Text(t.to_string())
            }
            Replace => {
                let (s, from, to) = (text(next()), text(next()), text(next()));
                Value::Text(if from.is_empty() { s } else { s.replace(&from, &to) })
            }
            Strpos => {
                let (s, sub) = (text(next()), text(next()));
                Value::Int(s.find(&sub).map_or(0, |b| s[..b].chars().count() as i64 + 1))
            }
            Left | Right => {
                let s = text(next());
                let n = int(next(), "left/right")?;
                let len = s.chars().count() as i64;
                let keep = if n >= 0 { n.min(len) } else { (len + n).max(0) };
                let out: String = if self == Left {
                    s.chars().take(keep as usize).collect()
                } else {
                    s.chars().skip((len - keep) as usize).collect()
                };
                Value::Text(out)
            }
            Lpad | Rpad => {
                let s = text(next());
                let len = int(next(), "lpad/rpad")?.max(0);
                // PostgreSQL's limit on a text value (1 GB), in characters.
                if len > MAX_TEXT_CHARS {
                    return Err(Error::sql("54000", "requested length too large"));
                }
                let len = len as usize;
                let fill: Vec<char> = match next() {
                    Value::Null => vec![' '],
                    v => text(v).chars().collect(),
                };
                Value::Text(pad(&s, len, &fill, self == Lpad))
            }
            SplitPart => {
                let (s, delim) = (text(next()), text(next()));
                let n = int(next(), "split_part")?;
                if n == 0 {
                    return Err(Error::sql("22023", "field position must not be zero"));
                }
                let parts: Vec<&str> =
                    if delim.is_empty() { vec![s.as_str()] } else { s.split(delim.as_str()).collect() };
                let i = if n > 0 { n - 1 } else { parts.len() as i64 + n };
                Value::Text(usize::try_from(i).ok().and_then(|i| parts.get(i)).map_or(String::new(), |p| p.to_string()))
            }
            Reverse => Value::Text(text(next()).chars().rev().collect()),
            Initcap => Value::Text(initcap(&text(next()))),
            StartsWith => {
                let (s, p) = (text(next()), text(next()));
                Value::Bool(s.starts_with(&p))
            }
            Ascii => Value::Int(text(next()).chars().next().map_or(0, |c| c as i64)),
            Chr => {
                let n = int(next(), "chr")?;
                match u32::try_from(n).ok().filter(|&n| n != 0).and_then(char::from_u32) {
                    Some(c) => Value::Text(c.to_string()),
                    None if n == 0 => return Err(Error::sql("54000", "null character not permitted")),
                    None => {
                        return Err(Error::sql("54000", format!("requested character too large for encoding: {n}")))
                    }
                }
            }
            OctetLength => match next() {
                Value::Bytes(b) => Value::Int(b.len() as i64),
                v => Value::Int(text(v).len() as i64),
            },
            Round | Trunc => {
                let x = number(next())?;
                let places = match next() {
                    Value::Null => None,
                    v => Some(int(v, "round/trunc")?),
                };
                round_or_trunc(x, places, self == Round)?
            }
            Ceil | Floor => match number(next())? {
                Value::Float(f) => Value::Float(if self == Ceil { f.ceil() } else { f.floor() }),
                Value::Numeric(d) => Value::Numeric(if self == Ceil { d.ceil() } else { d.floor() }),
                v => v,
            },
            Sign => match number(next())? {
                Value::Float(f) => Value::Float(if f > 0.0 {
                    1.0
                } else if f < 0.0 {
                    -1.0
                } else {
                    0.0
                }),
                Value::Numeric(d) => Value::Numeric(Numeric::from(d.signum())),
                v => v,
            },
            Mod => match (number(next())?, number(next())?) {
                (Value::Int(_), Value::Int(0)) => return Err(division_by_zero()),
                (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_rem(b).unwrap_or(0)),
                (a, b) => {
                    let (a, b) = (decimal(a)?, decimal(b)?);
                    Value::Numeric(a.rem(&b)?)
                }
            },
            Power => {
                let (a, b) = (number(next())?, number(next())?);
                let exact = matches!(a, Value::Numeric(_)) || matches!(b, Value::Numeric(_));
                // An integral exponent is computed exactly, as PostgreSQL does for numeric.
                if exact && !matches!(a, Value::Float(_)) {
                    let exponent = match &b {
                        Value::Int(i) => Some(*i),
                        Value::Numeric(d) => d.to_i64_exact(),
                        _ => None,
                    };
                    if let Some(n) = exponent.filter(|n| i32::try_from(*n).is_ok()) {
                        return Ok(Value::Numeric(decimal(a)?.powi(n)?));
                    }
                }
                let (x, y) = (float(&a)?, float(&b)?);
                if x == 0.0 && y < 0.0 {
                    return Err(Error::sql("2201F", "zero raised to a negative power is undefined"));
                }
                if x < 0.0 && y.fract() != 0.0 {
                    return Err(Error::sql(
                        "2201F",
                        "a negative number raised to a non-integer power yields a complex result",
                    ));
                }
                finish(x.powf(y), exact, 17)?
            }
            Sqrt => {
                let a = number(next())?;
                if let Value::Numeric(d) = &a {
                    return Ok(Value::Numeric(d.sqrt()?));
                }
                let x = float(&a)?;
                if x < 0.0 {
                    return Err(Error::sql("2201F", "cannot take square root of a negative number"));
                }
                Value::Float(x.sqrt())
            }
            Cbrt => Value::Float(float(&number(next())?)?.cbrt()),
            Exp => {
                let a = number(next())?;
                finish(float(&a)?.exp(), matches!(a, Value::Numeric(_)), 17)?
            }
            Ln | Log => {
                let a = number(next())?;
                // log(b, x) exists only for numeric in PostgreSQL: its result is numeric.
                let (base, a, exact_log) = match next() {
                    Value::Null => {
                        let exact = matches!(a, Value::Numeric(_));
                        (if self == Ln { std::f64::consts::E } else { 10.0 }, a, exact)
                    }
                    x => (float(&a)?, number(x)?, true),
                };
                let x = float(&a)?;
                if x == 0.0 {
                    return Err(Error::sql("2201E", "cannot take logarithm of zero"));
                }
                if x < 0.0 {
                    return Err(Error::sql("2201E", "cannot take logarithm of a negative number"));
                }
                finish(x.log(base), exact_log, 17)?
            }
            Degrees => Value::Float(float(&number(next())?)?.to_degrees()),
            Radians => Value::Float(float(&number(next())?)?.to_radians()),
            Md5 => {
                use md5::Digest;
                let bytes = match next() {
                    Value::Bytes(b) => b,
                    v => text(v).into_bytes(),
                };
                let digest = md5::Md5::digest(&bytes);
                Value::Text(digest.iter().map(|b| format!("{b:02x}")).collect())
            }
            RegexpReplace => {
                let (s, pattern, replacement) = (text(next()), text(next()), text(next()));
                let flags = match next() {
                    Value::Null => String::new(),
                    v => text(v),
                };
                Value::Text(regexp_replace(&s, &pattern, &replacement, &flags)?)
            }
            ToDate | ToTimestampFmt => {
                let (input, template) = (text(next()), text(next()));
                let (day, micros, offset) = parse_with_template(&input, &template)?;
                if self == ToDate {
                    Value::Date(day)
                } else {
                    let local = day * 86_400_000_000 + micros;
                    Value::TimestampTz(match offset {
                        Some(secs) => local - secs * 1_000_000,
                        None => crate::zone::current().to_utc(local),
                    })
                }
            }
            MakeDate => {
                Value::Date(make_date(int(next(), "make_date")?, int(next(), "make_date")?, int(next(), "make_date")?)?)
            }
            MakeTime => {
                Value::Time(make_time(int(next(), "make_time")?, int(next(), "make_time")?, float(&number(next())?)?)?)
            }
            MakeTimestamp => {
                let day = make_date(
                    int(next(), "make_timestamp")?,
                    int(next(), "make_timestamp")?,
                    int(next(), "make_timestamp")?,
                )?;
                let time = make_time(
                    int(next(), "make_timestamp")?,
                    int(next(), "make_timestamp")?,
                    float(&number(next())?)?,
                )?;
                Value::Timestamp(day * 86_400_000_000 + time)
            }
            ConcatWs | Greatest | Least | Pi | Random | GenRandomUuid | ClockTimestamp => Value::Null,
        })
    }
}

/// `regexp_replace(s, pattern, replacement [, flags])`: the first match (every one with
/// flag `g`; `i`: ignoring case), `\1`–`\9` in the replacement naming groups and `\&`
/// the whole match, as PostgreSQL. Patterns use Rust's regex syntax, which agrees with
/// PostgreSQL's for the common forms (classes, quantifiers, groups, anchors).
fn regexp_replace(s: &str, pattern: &str, replacement: &str, flags: &str) -> Result<String> {
    let mut global = false;
    let mut prefix = "";
    for f in flags.chars() {
        match f {
            'g' => global = true,
            'i' => prefix = "(?i)",
            'c' => prefix = "",
            other => return Err(Error::sql("22023", format!("invalid regular expression option: \"{other}\""))),
        }
    }
    let re = regex_lite::Regex::new(&format!("{prefix}{pattern}"))
        .map_err(|e| Error::sql("2201B", format!("invalid regular expression: {e}")))?;
    // PostgreSQL's replacement syntax into the regex crate's: \N → ${N}, \& → ${0},
    // \\ → \, a lone $ → $$.
    let mut rep = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('\\', Some(d @ '1'..='9')) => {
                chars.next();
                rep.push_str(&format!("${{{d}}}"));
            }
            ('\\', Some('&')) => {
                chars.next();
                rep.push_str("${0}");
            }
            ('\\', Some('\\')) => {
                chars.next();
                rep.push('\\');
            }
            ('$', _) => rep.push_str("$$"),
            (c, _) => rep.push(c),
        }
    }
    Ok(if global { re.replace_all(s, rep.as_str()) } else { re.replace(s, rep.as_str()) }.into_owned())
}

/// `to_date` / `to_timestamp(text, template)`: reads `input` by the template's patterns
/// — YYYY, YY, MM, DD, DDD, HH24, HH12/HH, MI, SS, MS, US, AM/PM, MON/Mon/mon,
/// MONTH/Month/month, TZH, TZM, with an optional FM prefix — skipping one input
/// character per other template character and spaces freely, as PostgreSQL's default
/// (non-FX) mode. Returns (day number, µs into the day, explicit UTC offset in seconds).
fn parse_with_template(input: &str, template: &str) -> Result<(i64, i64, Option<i64>)> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let bad = |what: &str| Error::sql("22007", format!("invalid value for \"{what}\" in \"{input}\""));
    let inp: Vec<char> = input.chars().collect();
    let (mut i, mut t) = (0usize, template);
    let (mut y, mut m, mut d, mut doy) = (None::<i64>, 1i64, 1i64, None::<i64>);
    let (mut h, mut mi, mut sec, mut us, mut pm, mut twelve) = (0i64, 0i64, 0i64, 0i64, None::<bool>, false);
    let (mut tzh, mut tzm) = (None::<i64>, 0i64);
    let digits = |i: &mut usize, max: usize, what: &str| -> Result<i64> {
        while *i < inp.len() && inp[*i] == ' ' {
            *i += 1;
        }
        let neg = *i < inp.len() && inp[*i] == '-' && what == "TZH";
        let start = if neg || (*i < inp.len() && inp[*i] == '+' && what == "TZH") { *i + 1 } else { *i };
        let mut j = start;
        while j < inp.len() && j - start < max && inp[j].is_ascii_digit() {
            j += 1;
        }
        if j == start {
            return Err(bad(what));
        }
        let v: i64 = inp[start..j].iter().collect::<String>().parse().map_err(|_| bad(what))?;
        *i = j;
        Ok(if neg { -v } else { v })
    };
    let upper = |t: &str, p: &str| t.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p));
    while !t.is_empty() {
        if upper(t, "FM") {
            t = &t[2..];
            continue;
        }
        let len: usize = if upper(t, "YYYY") {
            y = Some(digits(&mut i, 4, "YYYY")?);
            4
        } else if upper(t, "YY") {
            y = Some(2000 + digits(&mut i, 2, "YY")?);
            2
        } else if upper(t, "MONTH") || upper(t, "MON") {
            let word: String = inp[i..].iter().take_while(|c| c.is_alphabetic()).collect::<String>().to_lowercase();
            let full = upper(t, "MONTH");
            let found =
                MONTHS
                    .iter()
                    .position(|name| if full { *name == word } else { word.len() == 3 && name.starts_with(&word) });
            m = found.ok_or_else(|| bad(if full { "MONTH" } else { "MON" }))? as i64 + 1;
            i += word.chars().count();
            if full {
                5
            } else {
                3
            }
        } else if upper(t, "MM") {
            m = digits(&mut i, 2, "MM")?;
            2
        } else if upper(t, "DDD") {
            doy = Some(digits(&mut i, 3, "DDD")?);
            3
        } else if upper(t, "DD") {
            d = digits(&mut i, 2, "DD")?;
            2
        } else if upper(t, "HH24") {
            h = digits(&mut i, 2, "HH24")?;
            4
        } else if upper(t, "HH12") || upper(t, "HH") {
            h = digits(&mut i, 2, "HH12")?;
            twelve = true;
            if upper(t, "HH12") {
                4
            } else {
                2
            }
        } else if upper(t, "MI") {
            mi = digits(&mut i, 2, "MI")?;
            2
        } else if upper(t, "SS") {
            sec = digits(&mut i, 2, "SS")?;
            2
        } else if upper(t, "MS") {
            us = digits(&mut i, 3, "MS")? * 1000;
            2
        } else if upper(t, "US") {
            us = digits(&mut i, 6, "US")?;
            2
        } else if upper(t, "AM") || upper(t, "PM") {
            let w: String = inp[i..].iter().take(2).collect::<String>().to_uppercase();
            pm = Some(match w.as_str() {
                "AM" => false,
                "PM" => true,
                _ => return Err(bad("AM/PM")),
            });
            i += 2;
            2
        } else if upper(t, "TZH") {
            tzh = Some(digits(&mut i, 2, "TZH")?);
            3
        } else if upper(t, "TZM") {
            tzm = digits(&mut i, 2, "TZM")?;
            3
        } else {
            // Any other template character stands for one input character (a space
            // for any run of spaces).
            let c = t.chars().next().map_or(1, char::len_utf8);
            if t.starts_with(' ') {
                while i < inp.len() && inp[i] == ' ' {
                    i += 1;
                }
            } else if i < inp.len() {
                i += 1;
            }
            c
        };
        t = &t[len..];
    }
    if twelve {
        if !(1..=12).contains(&h) {
            return Err(Error::sql("22008", format!("hour \"{h}\" is invalid for the 12-hour clock")));
        }
        h %= 12;
    }
    if pm == Some(true) {
        h = h % 12 + 12;
    }
    let year = y.unwrap_or(1);
    let day = match doy {
        Some(n) if (1..=366).contains(&n) => crate::time::days_from_civil(year, 1, 1) + n - 1,
        Some(_) => return Err(Error::sql("22008", format!("date/time field value out of range: \"{input}\""))),
        None => make_date(year, m, d)
            .map_err(|_| Error::sql("22008", format!("date/time field value out of range: \"{input}\"")))?,
    };
    if !(0..=24).contains(&h) || !(0..=59).contains(&mi) || !(0..=60).contains(&sec) {
        return Err(Error::sql("22008", format!("date/time field value out of range: \"{input}\"")));
    }
    let micros = ((h * 60 + mi) * 60 + sec) * 1_000_000 + us;
    let offset = tzh.map(|hh| hh * 3600 + if hh < 0 { -tzm * 60 } else { tzm * 60 });
    Ok((day, micros, offset))
}

/// Days since the epoch of a civil date; negative years are BC (no year 0).
fn make_date(y: i64, m: i64, d: i64) -> Result<i64> {
    let year = if y < 0 { y + 1 } else { y };
    if y == 0
        || !(1..=12).contains(&m)
        || d < 1
        || d > crate::time::days_in_month(year, m)
        || !(-4713..=294276).contains(&y)
    {
        return Err(Error::sql("22008", format!("date field value out of range: {y}-{m:02}-{d:02}")));
    }
    Ok(crate::time::days_from_civil(year, m, d))
}

/// µs since midnight of a clock time (up to 24:00:00).
fn make_time(h: i64, m: i64, sec: f64) -> Result<i64> {
    if !(0..=24).contains(&h) || !(0..=59).contains(&m) || !sec.is_finite() {
        return Err(Error::sql("22008", format!("time field value out of range: {h}:{m:02}:{sec}")));
    }
    let us = (sec * 1e6).round();
    let total = (h * 3600 + m * 60) as f64 * 1e6 + us;
    let hour_ok = (0..=23).contains(&h) || (h == 24 && m == 0 && us == 0.0);
    if !hour_ok || !(0..=59).contains(&m) || !(0.0..61e6).contains(&us) || total > 86_400e6 {
        return Err(Error::sql("22008", format!("time field value out of range: {h}:{m:02}:{sec}")));
    }
    Ok(total as i64)
}

fn division_by_zero() -> Error {
    Error::sql("22012", "division by zero")
}

fn text(v: Value) -> String {
    match v {
        Value::Text(s) => s,
        other => other.to_pg_text(None).unwrap_or_default(),
    }
}

fn int(v: Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Text(s) => {
            s.trim().parse().map_err(|_| Error::sql("22P02", format!("invalid input syntax for type integer: \"{s}\"")))
        }
        Value::Numeric(d) => d.to_i64_round().ok_or_else(|| Error::sql("22003", "integer out of range")),
        Value::Float(f) if f.is_finite() => Ok(f.round() as i64),
        other => Err(Error::sql("42883", format!("function {what} does not accept {}", other.type_name()))),
    }
}

/// A numeric argument: an untyped string is read as a number.
fn number(v: Value) -> Result<Value> {
    match v {
        Value::Text(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Ok(Value::Int(i))
            } else if let Ok(d) = crate::types::parse_decimal(t) {
                Ok(Value::Numeric(d))
            } else {
                t.parse::<f64>()
                    .map(Value::Float)
                    .map_err(|_| Error::sql("22P02", format!("invalid input syntax for type numeric: \"{s}\"")))
            }
        }
        v @ (Value::Int(_) | Value::Float(_) | Value::Numeric(_)) => Ok(v),
        other => Err(Error::sql("42883", format!("function does not exist for {}", other.type_name()))),
    }
}

fn float(v: &Value) -> Result<f64> {
    Ok(match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Numeric(d) => d.to_f64(),
        other => return Err(Error::sql("42883", format!("function does not exist for {}", other.type_name()))),
    })
}

fn decimal(v: Value) -> Result<Numeric> {
    match v {
        Value::Int(i) => Ok(Numeric::from(i)),
        Value::Numeric(d) => Ok(d),
        Value::Float(f) => Numeric::from_f64(f).ok_or_else(|| Error::sql("22003", "value out of range for numeric")),
        other => Err(Error::sql("42883", format!("function does not exist for {}", other.type_name()))),
    }
}

/// A floating result, as numeric when the argument was, with the fractional digits
/// PostgreSQL's numeric versions show: `sig` significant digits in all, counting at
/// least one before the point (`exp(1::numeric)` shows 16 places). Computed in double
/// precision, so digits past the 17th are not exact (exp, ln, log and non-integral
/// powers; square roots and integral powers are exact, see `numeric.rs`).
fn finish(x: f64, exact: bool, sig: u32) -> Result<Value> {
    if !x.is_finite() {
        return Err(Error::sql("22003", "value out of range: overflow"));
    }
    if !exact {
        return Ok(Value::Float(x));
    }
    // The shortest text that reads back as x: every digit the double carries.
    let d = Numeric::parse(&format!("{x:e}"))?;
    let digits = d.integer_digits().max(1) as u32;
    let places = sig.saturating_sub(digits);
    Ok(Value::Numeric(d.round(i64::from(places))?))
}

fn round_or_trunc(x: Value, places: Option<i64>, round: bool) -> Result<Value> {
    Ok(match x {
        // Doubles: round half to even (PostgreSQL's rint), no places.
        Value::Float(f) => {
            if places.is_some() {
                return Err(Error::sql(
                    "42883",
                    format!(
                        "function {}(double precision, integer) does not exist",
                        if round { "round" } else { "trunc" }
                    ),
                ));
            }
            Value::Float(if round { f.round_ties_even() } else { f.trunc() })
        }
        v => {
            let d = decimal(v)?;
            let p = places.unwrap_or(0);
            Value::Numeric(if round { d.round(p)? } else { d.trunc(p)? })
        }
    })
}

fn substring(s: &str, start: i64, count: Option<i64>) -> Result<String> {
    // PostgreSQL: characters from `start` (1-based, may be ≤ 0) for `count` characters
    // counted from `start` itself.
    let end = match count {
        Some(c) if c < 0 => return Err(Error::sql("22011", "negative substring length not allowed")),
        Some(c) => start.saturating_add(c),
        None => i64::MAX,
    };
    let from = start.max(1);
    if end <= from {
        return Ok(String::new());
    }
    let skip = usize::try_from(from - 1).unwrap_or(usize::MAX);
    Ok(s.chars().skip(skip).take(usize::try_from(end - from).unwrap_or(usize::MAX)).collect())
}

fn pad(s: &str, len: usize, fill: &[char], left: bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() >= len || fill.is_empty() {
        return chars.into_iter().take(len).collect();
    }
    let padding: String = fill.iter().cycle().take(len - chars.len()).collect();
    if left {
        padding + s
    } else {
        s.to_string() + &padding
    }
}

fn initcap(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_word = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if in_word {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    out
}

fn concat_ws(args: Vec<Value>) -> Result<Value> {
    let mut args = args.into_iter();
    let sep = match args.next() {
        None | Some(Value::Null) => return Ok(Value::Null),
        Some(v) => text(v),
    };
    let parts: Vec<String> = args.filter(|v| !v.is_null()).map(text).collect();
    Ok(Value::Text(parts.join(&sep)))
}

fn extreme(args: Vec<Value>, greatest: bool) -> Result<Value> {
    let mut best: Option<Value> = None;
    for v in args.into_iter().filter(|v| !v.is_null()) {
        best = Some(match best {
            None => v,
            Some(b) => {
                let ord = v.sql_cmp(&b)?.unwrap_or(std::cmp::Ordering::Equal);
                if (greatest && ord == std::cmp::Ordering::Greater) || (!greatest && ord == std::cmp::Ordering::Less) {
                    v
                } else {
                    b
                }
            }
        });
    }
    Ok(best.unwrap_or(Value::Null))
}

/// A uniform double in [0, 1): xorshift64* per thread, seeded from the process's
/// random hasher keys (not for cryptography, as PostgreSQL's `random()`).
fn random() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    })
}
