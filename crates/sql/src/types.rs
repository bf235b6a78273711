//! SQL types and values, with PostgreSQL's comparison, casting and text output rules
//! for the types supported so far.

use crate::numeric::Numeric;
use amberdb_encoding::codec::{Reader, Writer};
use amberdb_encoding::keycode::{KeyDecoder, KeyEncoder};
use amberdb_error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// A column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataType {
    /// `BOOLEAN`
    Bool,
    /// `SMALLINT` (int2)
    Int2,
    /// `INTEGER` (int4)
    Int4,
    /// `BIGINT` (int8)
    Int8,
    /// `REAL` (float4)
    Float4,
    /// `DOUBLE PRECISION` (float8)
    Float8,
    /// `TEXT`
    Text,
    /// `VARCHAR(n)`; `None` is unlimited.
    Varchar(Option<u32>),
    /// `CHAR(n)`, blank-padded.
    Char(u32),
    /// `DATE`
    Date,
    /// `TIMESTAMP` (without time zone)
    Timestamp,
    /// `TIMESTAMP WITH TIME ZONE`
    TimestampTz,
    /// `BYTEA`
    Bytea,
    /// `NUMERIC(precision, scale)`; `None` is unconstrained.
    Numeric(Option<(u32, u32)>),
    /// `INTERVAL`
    Interval,
    /// `TIME` (without time zone)
    Time,
    /// `UUID`
    Uuid,
}

impl DataType {
    /// Types whose equal values have equal key encodings, grouped by the `Value` they
    /// hold (so an int4 and an int8 column compare by encoding): hash joins and IN-sets
    /// use them. Floats (-0 = 0), numerics (1.0 = 1.00), intervals (1 day = 24 hours)
    /// and CHAR(n) (trailing blanks) compare looser than their encodings: None.
    pub fn hash_family(self) -> Option<u8> {
        Some(match self {
            DataType::Int2 | DataType::Int4 | DataType::Int8 => 0,
            DataType::Text | DataType::Varchar(_) => 1,
            DataType::Bool => 2,
            DataType::Date => 3,
            DataType::Timestamp => 4,
            DataType::TimestampTz => 5,
            DataType::Bytea => 6,
            DataType::Time => 7,
            DataType::Uuid => 8,
            _ => return None,
        })
    }

    /// Parses a type as sqlparser prints it (e.g. `INT`, `VARCHAR(100)`, `DOUBLE PRECISION`).
    pub fn parse(spelled: &str) -> Result<Self> {
        let s = spelled.trim().to_ascii_lowercase();
        let s = s.strip_prefix("pg_catalog.").map(str::to_string).unwrap_or(s);
        // Object identifiers are plain integers here.
        if matches!(s.as_str(), "oid" | "regtype" | "regclass" | "regproc" | "regnamespace") {
            return Ok(DataType::Int8);
        }
        // INTERVAL may carry a field restriction (`INTERVAL DAY TO SECOND`) or precision;
        // values keep every field.
        if s.starts_with("interval") {
            return Ok(DataType::Interval);
        }
        // Temporal types may carry a precision in the middle: TIMESTAMP(3) WITH TIME ZONE.
        // TIME [(p)] [WITHOUT TIME ZONE]; the zoned variant is not supported.
        if s.starts_with("time") && !s.starts_with("timestamp") {
            let plain: String = match (s.find('('), s.find(')')) {
                (Some(a), Some(b)) if b > a => format!("{}{}", &s[..a], &s[b + 1..]),
                _ => s.clone(),
            };
            let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
            return match plain.as_str() {
                "time" | "time without time zone" => Ok(DataType::Time),
                "timetz" | "time with time zone" => Err(Error::sql(
                    "0A000",
                    "type time with time zone is not supported; use time, or timestamp with time zone",
                )),
                _ => Err(Error::InvalidInput(format!("type \"{}\" is not supported", spelled.trim()))),
            };
        }
        if s.starts_with("timestamp") || s == "date" {
            let plain: String = match (s.find('('), s.find(')')) {
                (Some(a), Some(b)) if b > a => format!("{}{}", &s[..a], &s[b + 1..]),
                _ => s.clone(),
            };
            let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
            return match plain.as_str() {
                "date" => Ok(DataType::Date),
                "timestamp" | "timestamp without time zone" => Ok(DataType::Timestamp),
                "timestamptz" | "timestamp with time zone" => Ok(DataType::TimestampTz),
                _ => Err(Error::InvalidInput(format!("type \"{}\" is not supported", spelled.trim()))),
            };
        }
        let (base, arg) = match s.find('(') {
            Some(i) => {
                let inner = s[i + 1..].trim_end_matches(')').trim();
                (s[..i].trim().to_string(), Some(inner.to_string()))
            }
            None => (s.clone(), None),
        };
        let len = |arg: &Option<String>| -> Result<Option<u32>> {
            match arg {
                None => Ok(None),
                Some(a) => a
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| Error::InvalidInput(format!("length for type {base} must be at least 1: {a}"))),
            }
        };
        Ok(match base.as_str() {
            "bool" | "boolean" => DataType::Bool,
            "smallint" | "int2" => DataType::Int2,
            "int" | "integer" | "int4" => DataType::Int4,
            "bigint" | "int8" => DataType::Int8,
            "real" | "float4" => DataType::Float4,
            "double precision" | "double" | "float8" | "float" => DataType::Float8,
            "text" | "string" => DataType::Text,
            "bytea" => DataType::Bytea,
            "uuid" => DataType::Uuid,
            "numeric" | "decimal" | "dec" => DataType::Numeric(match &arg {
                None => None,
                Some(a) => {
                    let mut parts = a.split(',').map(|p| p.trim().parse::<u32>());
                    let bad = || Error::InvalidInput(format!("invalid NUMERIC type modifier: ({a})"));
                    // PostgreSQL's limits on the declaration (values are exact at any size).
                    let p = parts
                        .next()
                        .and_then(|r| r.ok())
                        .filter(|p| (1..=crate::numeric::MAX_PRECISION).contains(p))
                        .ok_or_else(bad)?;
                    let sc = match parts.next() {
                        None => 0,
                        Some(r) => r.ok().filter(|sc| *sc <= p).ok_or_else(bad)?,
                    };
                    Some((p, sc))
                }
            }),
            "varchar" | "character varying" => DataType::Varchar(len(&arg)?),
            "char" | "character" | "bpchar" => DataType::Char(len(&arg)?.unwrap_or(1)),
            _ => return Err(Error::InvalidInput(format!("type \"{}\" is not supported", spelled.trim()))),
        })
    }

    /// PostgreSQL's name for the type (as `format_type` prints it).
    pub fn pg_name(&self) -> String {
        match self {
            DataType::Bool => "boolean".into(),
            DataType::Int2 => "smallint".into(),
            DataType::Int4 => "integer".into(),
            DataType::Int8 => "bigint".into(),
            DataType::Float4 => "real".into(),
            DataType::Float8 => "double precision".into(),
            DataType::Text => "text".into(),
            DataType::Varchar(None) => "character varying".into(),
            DataType::Varchar(Some(n)) => format!("character varying({n})"),
            DataType::Char(n) => format!("character({n})"),
            DataType::Date => "date".into(),
            DataType::Timestamp => "timestamp without time zone".into(),
            DataType::TimestampTz => "timestamp with time zone".into(),
            DataType::Bytea => "bytea".into(),
            DataType::Numeric(None) => "numeric".into(),
            DataType::Numeric(Some((p, sc))) => format!("numeric({p},{sc})"),
            DataType::Interval => "interval".into(),
            DataType::Time => "time without time zone".into(),
            DataType::Uuid => "uuid".into(),
        }
    }

    /// The PostgreSQL type OID.
    pub fn oid(&self) -> u32 {
        match self {
            DataType::Bool => 16,
            DataType::Int2 => 21,
            DataType::Int4 => 23,
            DataType::Int8 => 20,
            DataType::Float4 => 700,
            DataType::Float8 => 701,
            DataType::Text => 25,
            DataType::Varchar(_) => 1043,
            DataType::Char(_) => 1042,
            DataType::Date => 1082,
            DataType::Timestamp => 1114,
            DataType::TimestampTz => 1184,
            DataType::Bytea => 17,
            DataType::Numeric(_) => 1700,
            DataType::Interval => 1186,
            DataType::Time => 1083,
            DataType::Uuid => 2950,
        }
    }

    pub(crate) fn is_integer(&self) -> bool {
        matches!(self, DataType::Int2 | DataType::Int4 | DataType::Int8)
    }

    pub(crate) fn is_text(&self) -> bool {
        matches!(self, DataType::Text | DataType::Varchar(_) | DataType::Char(_))
    }

    /// Whether PostgreSQL converts a value of this type to `to` on assignment (what
    /// `ALTER COLUMN … TYPE` does without USING): within the numeric, string and
    /// date/time families, and from any type to a string type.
    pub(crate) fn casts_on_assignment(&self, to: DataType) -> bool {
        let family = |t: &DataType| match t {
            DataType::Int2
            | DataType::Int4
            | DataType::Int8
            | DataType::Float4
            | DataType::Float8
            | DataType::Numeric(_) => 1,
            DataType::Text | DataType::Varchar(_) | DataType::Char(_) => 2,
            DataType::Date | DataType::Timestamp | DataType::TimestampTz => 3,
            _ => 0,
        };
        to.is_text() || std::mem::discriminant(self) == std::mem::discriminant(&to) || {
            let f = family(self);
            f != 0 && f == family(&to)
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pg_name())
    }
}

/// A value. Integers of every width are `Int`, floats `Float`, strings `Text`; the
/// column type decides range and formatting.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Text(String),
    /// A date: days since 1970-01-01.
    Date(i64),
    /// A timestamp without time zone: µs since 1970-01-01 00:00:00.
    Timestamp(i64),
    /// A timestamp with time zone: µs since the Unix epoch (UTC).
    TimestampTz(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// An exact decimal of arbitrary precision.
    Numeric(Numeric),
    /// An interval: months, days and microseconds.
    Interval(crate::interval::Interval),
    /// A time of day: µs since midnight (0 to 24:00:00 inclusive).
    Time(i64),
    /// A UUID, its 16 bytes as a big-endian integer (so integer order is byte order).
    Uuid(u128),
}

impl Value {
    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The type PostgreSQL would infer for a literal or expression result.
    pub fn natural_type(&self) -> Option<DataType> {
        match self {
            Value::Null => None,
            Value::Bool(_) => Some(DataType::Bool),
            Value::Int(i) if i32::try_from(*i).is_ok() => Some(DataType::Int4),
            Value::Int(_) => Some(DataType::Int8),
            Value::Float(_) => Some(DataType::Float8),
            Value::Text(_) => Some(DataType::Text),
            Value::Date(_) => Some(DataType::Date),
            Value::Timestamp(_) => Some(DataType::Timestamp),
            Value::TimestampTz(_) => Some(DataType::TimestampTz),
            Value::Bytes(_) => Some(DataType::Bytea),
            Value::Numeric(_) => Some(DataType::Numeric(None)),
            Value::Interval(_) => Some(DataType::Interval),
            Value::Time(_) => Some(DataType::Time),
            Value::Uuid(_) => Some(DataType::Uuid),
        }
    }

    /// Text output, as PostgreSQL prints the value of a column of type `ty`.
    pub fn to_pg_text(&self, ty: Option<DataType>) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format_float(*f, ty == Some(DataType::Float4)),
            Value::Text(s) => s.clone(),
            Value::Date(d) => crate::time::format_date(*d),
            Value::Timestamp(t) => crate::time::format_timestamp(*t, false),
            Value::TimestampTz(t) => crate::time::format_timestamp(*t, true),
            Value::Numeric(d) => d.to_string(),
            Value::Interval(iv) => iv.format(),
            Value::Time(t) => crate::time::format_time(*t),
            Value::Uuid(u) => format_uuid(*u),
            Value::Bytes(b) => {
                let mut out = String::with_capacity(2 + 2 * b.len());
                out.push_str("\\x");
                for byte in b {
                    out.push_str(&format!("{byte:02x}"));
                }
                out
            }
        })
    }

    /// Casts to `ty` with PostgreSQL's rules (assignment and explicit casts).
    pub fn cast(self, ty: DataType) -> Result<Value> {
        let v = match (self, ty) {
            (Value::Null, _) => Value::Null,
            (Value::Bool(b), DataType::Bool) => Value::Bool(b),
            (Value::Bool(b), t) if t.is_integer() => Value::Int(i64::from(b)),
            (Value::Bool(b), t) if t.is_text() => Value::Text(if b { "true" } else { "false" }.into()),
            (Value::Int(i), t) if t.is_integer() => Value::Int(i),
            (Value::Int(i), DataType::Float4 | DataType::Float8) => Value::Float(i as f64),
            (Value::Int(i), DataType::Bool) => Value::Bool(i != 0),
            (Value::Int(i), t) if t.is_text() => Value::Text(i.to_string()),
            (Value::Float(f), DataType::Float4) => Value::Float(f64::from(f as f32)),
            (Value::Float(f), DataType::Float8) => Value::Float(f),
            (Value::Float(f), t) if t.is_integer() => {
                if !f.is_finite() || f.round() < i64::MIN as f64 || f.round() > i64::MAX as f64 {
                    return Err(out_of_range(t));
                }
                Value::Int(f.round_ties_even() as i64)
            }
            (Value::Float(f), t) if t.is_text() => Value::Text(format_float(f, false)),
            (Value::Text(s), t) if t.is_text() => Value::Text(s),
            (Value::Text(s), DataType::Bool) => Value::Bool(parse_bool(&s)?),
            (Value::Text(s), t) if t.is_integer() => {
                Value::Int(s.trim().parse::<i64>().map_err(|_| {
                    Error::InvalidInput(format!("invalid input syntax for type {}: \"{s}\"", t.pg_name()))
                })?)
            }
            (Value::Text(s), DataType::Float4 | DataType::Float8) => Value::Float(parse_float(&s, ty)?),
            (Value::Text(s), DataType::Date) => Value::Date(
                crate::time::parse_date(&s)
                    .or_else(|| crate::time::parse_timestamp(&s, false).map(|t| t.div_euclid(86_400_000_000)))
                    .ok_or_else(|| Error::InvalidInput(format!("invalid input syntax for type date: \"{s}\"")))?,
            ),
            (Value::Text(s), DataType::Timestamp) => Value::Timestamp(
                crate::time::parse_timestamp(&s, false)
                    .ok_or_else(|| Error::InvalidInput(format!("invalid input syntax for type timestamp: \"{s}\"")))?,
            ),
            (Value::Text(s), DataType::TimestampTz) => {
                Value::TimestampTz(crate::time::parse_timestamp(&s, true).ok_or_else(|| {
                    Error::InvalidInput(format!("invalid input syntax for type timestamp with time zone: \"{s}\""))
                })?)
            }
            (Value::Numeric(d), DataType::Numeric(_)) => Value::Numeric(d),
            (Value::Int(i), DataType::Numeric(_)) => Value::Numeric(Numeric::from(i)),
            (Value::Float(f), DataType::Numeric(_)) => Value::Numeric(Numeric::from_f64(f).ok_or_else(|| {
                Error::sql(
                    "0A000",
                    format!("cannot convert {f} to numeric: NaN and infinite numeric values are not supported"),
                )
            })?),
            (Value::Text(s), DataType::Numeric(_)) => Value::Numeric(parse_decimal(&s)?),
            (Value::Numeric(d), t) if t.is_integer() => Value::Int(d.to_i64_round().ok_or_else(|| out_of_range(t))?),
            (Value::Numeric(d), DataType::Float4 | DataType::Float8) => {
                let f = d.to_f64();
                if !f.is_finite() {
                    return Err(Error::sql("22003", format!("\"{d}\" is out of range for type double precision")));
                }
                Value::Float(f)
            }
            (Value::Numeric(d), t) if t.is_text() => Value::Text(d.to_string()),
            (Value::Bytes(b), DataType::Bytea) => Value::Bytes(b),
            (Value::Text(s), DataType::Bytea) => Value::Bytes(parse_bytea(&s)?),
            (v @ Value::Bytes(_), t) if t.is_text() => Value::Text(v.to_pg_text(None).unwrap_or_default()),
            (Value::Date(d), DataType::Date) => Value::Date(d),
            (Value::Date(d), DataType::Timestamp) => Value::Timestamp(d * 86_400_000_000),
            // Between local (date, timestamp) and absolute (timestamptz) time: through the
            // session's time zone.
            (Value::Date(d), DataType::TimestampTz) => {
                Value::TimestampTz(crate::zone::current().to_utc(d.saturating_mul(86_400_000_000)))
            }
            (Value::Timestamp(t), DataType::Date) => Value::Date(t.div_euclid(86_400_000_000)),
            (Value::TimestampTz(t), DataType::Date) => {
                Value::Date(crate::zone::current().to_local(t).div_euclid(86_400_000_000))
            }
            (Value::Timestamp(t), DataType::Timestamp) => Value::Timestamp(t),
            (Value::TimestampTz(t), DataType::Timestamp) => Value::Timestamp(crate::zone::current().to_local(t)),
            (Value::Timestamp(t), DataType::TimestampTz) => Value::TimestampTz(crate::zone::current().to_utc(t)),
            (Value::TimestampTz(t), DataType::TimestampTz) => Value::TimestampTz(t),
            (Value::Interval(iv), DataType::Interval) => Value::Interval(iv),
            (Value::Time(t), DataType::Time) => Value::Time(t),
            (Value::Uuid(u), DataType::Uuid) => Value::Uuid(u),
            (Value::Text(s), DataType::Uuid) => Value::Uuid(parse_uuid(&s)?),
            (Value::Uuid(u), t) if t.is_text() => Value::Text(format_uuid(u)),
            (Value::Text(s), DataType::Time) => Value::Time(crate::time::parse_time(&s).ok_or_else(|| {
                // A clock with a field out of range ('25:00') is 22008, other text 22007.
                let t = s.trim();
                let clock = t.contains(':')
                    && t.split(':').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
                if clock {
                    Error::sql("22008", format!("date/time field value out of range: \"{s}\""))
                } else {
                    Error::sql("22007", format!("invalid input syntax for type time: \"{s}\""))
                }
            })?),
            // The time of day of a local time; of an instant, in the session's zone.
            (Value::Timestamp(t), DataType::Time) => Value::Time(t.rem_euclid(86_400_000_000)),
            (Value::TimestampTz(t), DataType::Time) => {
                Value::Time(crate::zone::current().to_local(t).rem_euclid(86_400_000_000))
            }
            // As PostgreSQL: an interval's time part, modulo a day; a time as an interval.
            (Value::Interval(iv), DataType::Time) => Value::Time(iv.micros.rem_euclid(86_400_000_000)),
            (Value::Time(t), DataType::Interval) => {
                Value::Interval(crate::interval::Interval { months: 0, days: 0, micros: t })
            }
            (Value::Text(s), DataType::Interval) => Value::Interval(crate::interval::Interval::parse(&s)?),
            (
                v
                @ (Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_) | Value::Interval(_) | Value::Time(_)),
                t,
            ) if t.is_text() => Value::Text(v.to_pg_text(None).unwrap_or_default()),
            (v, t) => return Err(Error::InvalidInput(format!("cannot cast {} to {}", v.type_name(), t.pg_name()))),
        };
        v.check(ty)
    }

    /// Checks range and length for storing into a column of type `ty`.
    pub fn check(self, ty: DataType) -> Result<Value> {
        match (&self, ty) {
            (Value::Numeric(d), DataType::Numeric(Some((p, sc)))) => {
                let r = d.round(i64::from(sc))?;
                if r.integer_digits() > u64::from(p - sc) {
                    return Err(Error::InvalidInput(format!(
                        "numeric field overflow: a field with precision {p}, scale {sc} must round to an absolute value less than 10^{}",
                        p - sc
                    )));
                }
                Ok(Value::Numeric(r))
            }
            (Value::Int(i), DataType::Int2) if i16::try_from(*i).is_err() => Err(out_of_range(ty)),
            (Value::Int(i), DataType::Int4) if i32::try_from(*i).is_err() => Err(out_of_range(ty)),
            (Value::Text(s), DataType::Varchar(Some(n))) if s.chars().count() > n as usize => {
                let trimmed = s.trim_end_matches(' ');
                if trimmed.chars().count() <= n as usize {
                    Ok(Value::Text(trimmed.to_string()))
                } else {
                    Err(Error::InvalidInput(format!("value too long for type character varying({n})")))
                }
            }
            (Value::Text(s), DataType::Char(n)) => {
                let len = s.chars().count();
                if len > n as usize {
                    let trimmed = s.trim_end_matches(' ');
                    if trimmed.chars().count() > n as usize {
                        return Err(Error::InvalidInput(format!("value too long for type character({n})")));
                    }
                    return Ok(Value::Text(format!("{trimmed:<width$}", width = n as usize)));
                }
                Ok(Value::Text(format!("{s:<width$}", width = n as usize)))
            }
            _ => Ok(self),
        }
    }

    /// A short name of the value's kind, for error messages.
    /// The [`DataType::hash_family`] of a value (None for NULL and looser types).
    pub fn hash_family(&self) -> Option<u8> {
        Some(match self {
            Value::Int(_) => 0,
            Value::Text(_) => 1,
            Value::Bool(_) => 2,
            Value::Date(_) => 3,
            Value::Timestamp(_) => 4,
            Value::TimestampTz(_) => 5,
            Value::Bytes(_) => 6,
            _ => return None,
        })
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "double precision",
            Value::Text(_) => "text",
            Value::Date(_) => "date",
            Value::Timestamp(_) => "timestamp without time zone",
            Value::TimestampTz(_) => "timestamp with time zone",
            Value::Bytes(_) => "bytea",
            Value::Numeric(_) => "numeric",
            Value::Interval(_) => "interval",
            Value::Time(_) => "time without time zone",
            Value::Uuid(_) => "uuid",
        }
    }

    /// SQL comparison: `None` if either side is NULL; numbers compare across kinds.
    pub fn sql_cmp(&self, other: &Value) -> Result<Option<Ordering>> {
        Ok(Some(match (self, other) {
            (Value::Null, _) | (_, Value::Null) => return Ok(None),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Int(a), Value::Float(b)) => float_cmp(*a as f64, *b),
            (Value::Float(a), Value::Int(b)) => float_cmp(*a, *b as f64),
            (Value::Float(a), Value::Float(b)) => float_cmp(*a, *b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Numeric(a), Value::Numeric(b)) => a.cmp(b),
            (Value::Numeric(a), Value::Int(b)) => a.cmp(&Numeric::from(*b)),
            (Value::Int(a), Value::Numeric(b)) => Numeric::from(*a).cmp(b),
            (Value::Numeric(a), Value::Float(b)) => float_cmp(a.to_f64(), *b),
            (Value::Float(a), Value::Numeric(b)) => float_cmp(*a, b.to_f64()),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Text(t)) => a.cmp(&parse_bytea(t)?),
            (Value::Text(t), Value::Bytes(b)) => parse_bytea(t)?.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) | (Value::TimestampTz(a), Value::TimestampTz(b)) => a.cmp(b),
            // A local time meets an instant in the session's time zone.
            (Value::Timestamp(a), Value::TimestampTz(b)) => crate::zone::current().to_utc(*a).cmp(b),
            (Value::TimestampTz(a), Value::Timestamp(b)) => a.cmp(&crate::zone::current().to_utc(*b)),
            (Value::Date(a), Value::Timestamp(b)) => a.saturating_mul(86_400_000_000).cmp(b),
            (Value::Timestamp(a), Value::Date(b)) => a.cmp(&b.saturating_mul(86_400_000_000)),
            (Value::Date(a), Value::TimestampTz(b)) => {
                crate::zone::current().to_utc(a.saturating_mul(86_400_000_000)).cmp(b)
            }
            (Value::TimestampTz(a), Value::Date(b)) => {
                a.cmp(&crate::zone::current().to_utc(b.saturating_mul(86_400_000_000)))
            }
            (Value::Interval(a), Value::Interval(b)) => a.cmp_span(b),
            (Value::Time(a), Value::Time(b)) => a.cmp(b),
            (Value::Uuid(a), Value::Uuid(b)) => a.cmp(b),
            (Value::Uuid(a), Value::Text(t)) => a.cmp(&parse_uuid(t)?),
            (Value::Text(t), Value::Uuid(b)) => parse_uuid(t)?.cmp(b),
            // Unknown-typed literals compare as the other side's type, as in PostgreSQL.
            (
                Value::Text(s),
                v @ (Value::Int(_)
                | Value::Numeric(_)
                | Value::Float(_)
                | Value::Bool(_)
                | Value::Date(_)
                | Value::Timestamp(_)
                | Value::TimestampTz(_)
                | Value::Interval(_)
                | Value::Time(_)),
            ) => {
                let parsed = Value::Text(s.clone()).cast(v.natural_type().unwrap_or(DataType::Text))?;
                return parsed.sql_cmp(v);
            }
            (_, Value::Text(_)) => return Ok(other.sql_cmp(self)?.map(Ordering::reverse)),
            (a, b) => {
                return Err(Error::InvalidInput(format!(
                    "operator does not exist: {} = {}",
                    a.type_name(),
                    b.type_name()
                )))
            }
        }))
    }

    /// Total order used by ORDER BY, DISTINCT and GROUP BY: NULLs last (ascending).
    pub fn sort_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            _ => self.sql_cmp(other).ok().flatten().unwrap_or_else(|| self.type_name().cmp(other.type_name())),
        }
    }

    /// Encodes into an order-preserving key component (primary keys).
    pub fn encode_key(&self, enc: KeyEncoder) -> KeyEncoder {
        match self {
            Value::Null => enc.bool(false),
            Value::Bool(b) => enc.bool(true).bool(*b),
            Value::Int(i) => enc.bool(true).i64(*i),
            Value::Float(f) => enc.bool(true).f64(*f),
            Value::Text(s) => enc.bool(true).str(s),
            Value::Date(t) | Value::Timestamp(t) | Value::TimestampTz(t) | Value::Time(t) => enc.bool(true).i64(*t),
            Value::Uuid(u) => enc.bool(true).u64((*u >> 64) as u64).u64(*u as u64),
            Value::Bytes(b) => enc.bool(true).bytes(b),
            Value::Numeric(d) => encode_decimal_key(enc.bool(true), d),
            // By length first (equal spans sort together), then the fields, so the key
            // decodes back to the same interval.
            Value::Interval(iv) => {
                let span = iv.span();
                let day = 86_400_000_000i128;
                enc.bool(true)
                    .i64(span.div_euclid(day) as i64)
                    .i64(span.rem_euclid(day) as i64)
                    .i64(i64::from(iv.months))
                    .i64(i64::from(iv.days))
                    .i64(iv.micros)
            }
        }
    }

    /// Decodes a key component written by `encode_key` for a column of type `ty`.
    pub fn decode_key(dec: &mut KeyDecoder<'_>, ty: DataType) -> Result<Value> {
        if !dec.bool()? {
            return Ok(Value::Null);
        }
        Ok(match ty {
            DataType::Bool => Value::Bool(dec.bool()?),
            DataType::Int2 | DataType::Int4 | DataType::Int8 => Value::Int(dec.i64()?),
            DataType::Float4 | DataType::Float8 => Value::Float(dec.f64()?),
            DataType::Text | DataType::Varchar(_) | DataType::Char(_) => Value::Text(dec.string()?),
            DataType::Date => Value::Date(dec.i64()?),
            DataType::Timestamp => Value::Timestamp(dec.i64()?),
            DataType::TimestampTz => Value::TimestampTz(dec.i64()?),
            DataType::Time => Value::Time(dec.i64()?),
            DataType::Uuid => Value::Uuid((u128::from(dec.u64()?) << 64) | u128::from(dec.u64()?)),
            DataType::Bytea => Value::Bytes(dec.bytes()?),
            DataType::Numeric(_) => Value::Numeric(decode_decimal_key(dec)?),
            DataType::Interval => {
                dec.i64()?;
                dec.i64()?;
                let months = i32::try_from(dec.i64()?).map_err(|_| Error::InvalidData("interval key months".into()))?;
                let days = i32::try_from(dec.i64()?).map_err(|_| Error::InvalidData("interval key days".into()))?;
                Value::Interval(crate::interval::Interval { months, days, micros: dec.i64()? })
            }
        })
    }

    /// Appends the value to a row encoding.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Value::Null => {
                w.u8(0);
            }
            Value::Bool(b) => {
                w.u8(1).u8(u8::from(*b));
            }
            Value::Int(i) => {
                w.u8(2).u64(*i as u64);
            }
            Value::Float(f) => {
                w.u8(3).u64(f.to_bits());
            }
            Value::Text(s) => {
                w.u8(4).bytes(s.as_bytes());
            }
            Value::Date(d) => {
                w.u8(5).u64(*d as u64);
            }
            Value::Timestamp(t) => {
                w.u8(6).u64(*t as u64);
            }
            Value::TimestampTz(t) => {
                w.u8(7).u64(*t as u64);
            }
            Value::Bytes(b) => {
                w.u8(8).bytes(b);
            }
            Value::Numeric(d) => {
                w.u8(12).bytes(&d.to_bytes());
            }
            Value::Interval(iv) => {
                w.u8(10).u64(i64::from(iv.months) as u64).u64(i64::from(iv.days) as u64).u64(iv.micros as u64);
            }
            Value::Time(t) => {
                w.u8(11).u64(*t as u64);
            }
            Value::Uuid(u) => {
                w.u8(13).u64((*u >> 64) as u64).u64(*u as u64);
            }
        }
    }

    /// Reads a value written by `encode`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Value> {
        Ok(match r.u8()? {
            0 => Value::Null,
            1 => Value::Bool(r.u8()? != 0),
            2 => Value::Int(r.u64()? as i64),
            3 => Value::Float(f64::from_bits(r.u64()?)),
            4 => Value::Text(
                String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|e| Error::InvalidData(format!("row value is not UTF-8: {e}")))?,
            ),
            5 => Value::Date(r.u64()? as i64),
            6 => Value::Timestamp(r.u64()? as i64),
            7 => Value::TimestampTz(r.u64()? as i64),
            8 => Value::Bytes(r.bytes()?.to_vec()),
            // Rows written before arbitrary precision: rust_decimal's 16 bytes.
            9 => {
                let raw: [u8; 16] =
                    r.bytes()?.try_into().map_err(|_| Error::InvalidData("numeric value is not 16 bytes".into()))?;
                Value::Numeric(Numeric::from_legacy_bytes(raw)?)
            }
            12 => Value::Numeric(Numeric::from_bytes(r.bytes()?)?),
            10 => {
                let field = |v: u64, what: &str| {
                    i32::try_from(v as i64)
                        .map_err(|_| Error::InvalidData(format!("interval {what} out of range in row")))
                };
                let months = field(r.u64()?, "months")?;
                let days = field(r.u64()?, "days")?;
                Value::Interval(crate::interval::Interval { months, days, micros: r.u64()? as i64 })
            }
            11 => Value::Time(r.u64()? as i64),
            13 => Value::Uuid((u128::from(r.u64()?) << 64) | u128::from(r.u64()?)),
            t => return Err(Error::InvalidData(format!("unknown value tag {t} in row"))),
        })
    }
}

/// Parses a decimal literal (`12.50`, `-3`, `1e3`).
pub fn parse_decimal(s: &str) -> Result<Numeric> {
    Numeric::parse(s)
}

/// Order-preserving key encoding of a decimal: sign class, then (for non-zero values)
/// the decimal exponent and the significant digits; for negatives both are inverted and
/// the digits end in 0xFF so that a longer digit string sorts first.
fn encode_decimal_key(
    enc: amberdb_encoding::keycode::KeyEncoder,
    d: &Numeric,
) -> amberdb_encoding::keycode::KeyEncoder {
    let Some((negative, exponent, digits)) = d.key_parts() else {
        return enc.raw(&[1]);
    };
    if !negative {
        let mut digits = digits.into_bytes();
        digits.push(0x00);
        enc.raw(&[2]).i64(exponent).raw(&digits)
    } else {
        let mut digits: Vec<u8> = digits.bytes().map(|b| b'9' - b + b'0').collect();
        digits.push(0xff);
        enc.raw(&[0]).i64(-exponent).raw(&digits)
    }
}

fn decode_decimal_key(dec: &mut KeyDecoder<'_>) -> Result<Numeric> {
    let class = dec.tag()?;
    if class == 1 {
        return Ok(Numeric::zero());
    }
    let negative = class == 0;
    let e = dec.i64()?;
    let exponent = if negative { -e } else { e };
    let end = if negative { 0xff } else { 0x00 };
    let mut digits = String::new();
    loop {
        let b = dec.tag()?;
        if b == end {
            break;
        }
        let d = if negative { b'9' - b + b'0' } else { b };
        if !d.is_ascii_digit() {
            return Err(Error::InvalidData(format!("bad digit {b:#x} in numeric key")));
        }
        digits.push(d as char);
    }
    Numeric::from_key_parts(negative, exponent, &digits)
}

/// Parses a UUID as PostgreSQL accepts it: 32 hex digits, upper or lower case, with a
/// hyphen after any group of four, optionally in braces.
pub fn parse_uuid(s: &str) -> Result<u128> {
    let bad = || Error::sql("22P02", format!("invalid input syntax for type uuid: \"{s}\""));
    let t = s.trim();
    let t = match t.strip_prefix('{') {
        Some(inner) => inner.strip_suffix('}').ok_or_else(bad)?,
        None => t,
    };
    let mut value: u128 = 0;
    let mut digits = 0;
    let mut prev_hyphen = true;
    for c in t.chars() {
        if c == '-' {
            // Hyphens only between groups of four digits, never doubled or leading.
            if prev_hyphen || digits % 4 != 0 || digits == 32 {
                return Err(bad());
            }
            prev_hyphen = true;
            continue;
        }
        let d = c.to_digit(16).ok_or_else(bad)?;
        if digits == 32 {
            return Err(bad());
        }
        value = (value << 4) | u128::from(d);
        digits += 1;
        prev_hyphen = false;
    }
    if digits != 32 || prev_hyphen {
        return Err(bad());
    }
    Ok(value)
}

/// The canonical text of a UUID: lower-case 8-4-4-4-12.
pub fn format_uuid(u: u128) -> String {
    let h = format!("{u:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Parses bytea input: hex (`\\x0a1b`) or PostgreSQL's escape format.
pub fn parse_bytea(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::InvalidInput(format!("invalid input syntax for type bytea: \"{s}\""));
    if let Some(hex) = s.strip_prefix("\\x").or_else(|| s.strip_prefix("\\X")) {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(bad());
        }
        return digits
            .chunks(2)
            .map(|p| std::str::from_utf8(p).ok().and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(bad))
            .collect();
    }
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = s.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()).ok_or_else(bad)?;
            out.push(oct);
            i += 4;
        }
    }
    Ok(out)
}

fn float_cmp(a: f64, b: f64) -> Ordering {
    // PostgreSQL sorts NaN above every other value and treats NaN = NaN.
    a.partial_cmp(&b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

fn out_of_range(ty: DataType) -> Error {
    Error::InvalidInput(format!("{} out of range", ty.pg_name()))
}

pub(crate) fn parse_bool(s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Ok(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Ok(false),
        _ => Err(Error::InvalidInput(format!("invalid input syntax for type boolean: \"{s}\""))),
    }
}

fn parse_float(s: &str, ty: DataType) -> Result<f64> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "nan" => Ok(f64::NAN),
        "infinity" | "inf" | "+infinity" => Ok(f64::INFINITY),
        "-infinity" | "-inf" => Ok(f64::NEG_INFINITY),
        _ => t
            .parse::<f64>()
            .map_err(|_| Error::InvalidInput(format!("invalid input syntax for type {}: \"{s}\"", ty.pg_name()))),
    }
}

/// Formats a float the way PostgreSQL 12+ does (shortest round-trip representation).
pub fn format_float(f: f64, single: bool) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let s = if single { format!("{}", f as f32) } else { format!("{f}") };
    // Rust prints 1e20 as "100000000000000000000"; PostgreSQL switches to exponent
    // notation at 1e15 (float8) / 1e6 (float4) magnitude — keep it simple and close.
    let limit = if single { 1e6 } else { 1e15 };
    if f.abs() >= limit || (f != 0.0 && f.abs() < 1e-4) {
        let e = if single { format!("{:e}", f as f32) } else { format!("{f:e}") };
        // "1.5e20" → "1.5e+20"
        if let Some((m, exp)) = e.split_once('e') {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            return format!("{m}e{sign}{digits:0>2}");
        }
        return e;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_types() {
        assert_eq!(DataType::parse("INT").unwrap(), DataType::Int4);
        assert_eq!(DataType::parse("VARCHAR(100)").unwrap(), DataType::Varchar(Some(100)));
        assert_eq!(DataType::parse("DOUBLE PRECISION").unwrap(), DataType::Float8);
        assert!(DataType::parse("GEOMETRY").is_err());
    }

    #[test]
    fn numeric_keys_sort_like_numbers() {
        let vals = [
            "-1000", "-12.5", "-12.25", "-1", "-0.123", "-0.12", "0", "0.0012", "0.12", "0.123", "1", "12.25", "12.5",
            "1000",
        ];
        let keys: Vec<Vec<u8>> = vals
            .iter()
            .map(|v| Value::Numeric(parse_decimal(v).unwrap()).encode_key(KeyEncoder::new()).finish())
            .collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
        }
        for (v, k) in vals.iter().zip(&keys) {
            let back = Value::decode_key(&mut KeyDecoder::new(k), DataType::Numeric(None)).unwrap();
            assert_eq!(back, Value::Numeric(parse_decimal(v).unwrap().normalize()), "{v}");
        }
        assert_eq!(
            Value::Text("3.14159".into()).cast(DataType::Numeric(Some((5, 2)))).unwrap(),
            Value::Numeric(parse_decimal("3.14").unwrap())
        );
        assert!(Value::Int(1000).cast(DataType::Numeric(Some((4, 2)))).is_err());
    }

    #[test]
    fn casts_and_checks() {
        assert_eq!(Value::Text("42".into()).cast(DataType::Int4).unwrap(), Value::Int(42));
        assert!(Value::Int(70000).cast(DataType::Int2).is_err());
        assert_eq!(Value::Float(2.5).cast(DataType::Int4).unwrap(), Value::Int(2));
        assert!(Value::Text("abcd".into()).cast(DataType::Varchar(Some(3))).is_err());
        assert_eq!(Value::Text("ab".into()).cast(DataType::Char(4)).unwrap(), Value::Text("ab  ".into()));
        assert_eq!(format_float(0.1, false), "0.1");
        assert_eq!(format_float(1e20, false), "1e+20");
    }
}
