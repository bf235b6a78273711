//! NUMERIC: exact decimals of arbitrary precision, with PostgreSQL's rules for the
//! scale of every result.
//!
//! ```text
//!   value = mantissa × 10^-scale      mantissa: a big integer (num-bigint), signed
//!                                      scale: the display scale, 0 ..= 16383
//!
//!   "12.50"  → mantissa 1250,  scale 2      (prints 12.50; equal to 12.5)
//!   "1e3"    → mantissa 1000,  scale 0      (prints 1000)
//!   1 / 3    → scale 20 by select_div_scale (0.33333333333333333333)
//! ```
//!
//! PostgreSQL stores base-10000 digits; we keep one big integer and a decimal scale,
//! which makes every operation plain integer arithmetic. What must match PostgreSQL
//! is what users see: the display scale of each result (sum: the larger scale;
//! product: the sum of scales; quotient, square root and integer powers: at least 16
//! significant digits, computed by the same formulas over the base-10000 weight of
//! the operands), rounding half away from zero, the limits (131072 digits before the
//! point, 16383 after) and the errors past them.
//!
//! Invariants: `scale <= MAX_SCALE`; `|mantissa| < 10^(MAX_INT_DIGITS + scale)`;
//! equality and ordering are by value (`1.5 == 1.50`), and so is hashing.

use amberdb_error::{Error, Result};
use num_bigint::{BigInt, Sign};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Most digits after the point a value may have (PostgreSQL's NUMERIC_DSCALE_MAX).
pub const MAX_SCALE: u32 = 16383;
/// Most digits before the point (PostgreSQL: weight ≤ 32767 base-10000 digits).
pub const MAX_INT_DIGITS: u32 = 131_072;
/// Most digits a declared precision may have (`numeric(1000, s)`).
pub const MAX_PRECISION: u32 = 1000;
/// Significant digits a quotient, square root or power keeps at least.
const MIN_SIG_DIGITS: i64 = 16;
/// Most fractional digits of a computed result (NUMERIC_MAX_DISPLAY_SCALE).
const MAX_DISPLAY_SCALE: i64 = 1000;
/// Places round() and trunc() accept, either way (NUMERIC_MAX_RESULT_SCALE).
const MAX_RESULT_SCALE: i64 = 2000;

/// An exact decimal. See the module docs.
#[derive(Clone)]
pub struct Numeric {
    m: BigInt,
    scale: u32,
}

fn overflow() -> Error {
    Error::sql("22003", "value overflows numeric format")
}

/// `m × 10^n`.
fn shift(m: &BigInt, n: u32) -> BigInt {
    match n {
        0 => m.clone(),
        1..=19 => m * 10u64.pow(n),
        _ => m * BigInt::from(10u32).pow(n),
    }
}

fn pow10(n: u32) -> BigInt {
    shift(&BigInt::from(1u8), n)
}

/// `n / d` rounded half away from zero.
fn round_div(n: &BigInt, d: &BigInt) -> BigInt {
    let (q, r) = (n / d, n % d);
    if r.sign() == Sign::NoSign || r.magnitude() * 2u8 < *d.magnitude() {
        return q;
    }
    if (n.sign() == Sign::Minus) == (d.sign() == Sign::Minus) {
        q + 1u8
    } else {
        q - 1u8
    }
}

/// Decimal digits of `|m|` (0 for zero).
fn digit_count(m: &BigInt) -> u64 {
    if m.sign() == Sign::NoSign {
        return 0;
    }
    let bits = m.bits();
    if bits < 64 {
        return m.magnitude().to_string().len() as u64;
    }
    // Within one of the truth from the bit length; settle it by comparison.
    let est = ((bits - 1) as f64 * std::f64::consts::LOG10_2) as u64 + 1;
    if *m.magnitude() >= *pow10(u32::try_from(est).unwrap_or(u32::MAX)).magnitude() {
        est + 1
    } else {
        est
    }
}

impl Numeric {
    /// Builds a value, refusing one past the limits.
    fn checked(m: BigInt, scale: u32) -> Result<Numeric> {
        if scale > MAX_SCALE {
            return Err(overflow());
        }
        // Cheap bound first: fewer bits than the limit's digits can never reach it.
        let limit = u64::from(MAX_INT_DIGITS + scale);
        if m.bits() as f64 * std::f64::consts::LOG10_2 >= (limit - 1) as f64 && digit_count(&m) > limit {
            return Err(overflow());
        }
        Ok(Numeric { m, scale })
    }

    /// Zero (scale 0).
    pub fn zero() -> Numeric {
        Numeric { m: BigInt::default(), scale: 0 }
    }

    /// `m × 10^-scale`.
    pub fn new(m: i64, scale: u32) -> Numeric {
        Numeric { m: BigInt::from(m), scale: scale.min(MAX_SCALE) }
    }

    /// The display scale.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.m.sign() == Sign::NoSign
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.m.sign() == Sign::Minus
    }

    /// -1, 0 or 1.
    pub fn signum(&self) -> i64 {
        match self.m.sign() {
            Sign::Minus => -1,
            Sign::NoSign => 0,
            Sign::Plus => 1,
        }
    }

    /// The absolute value.
    pub fn abs(&self) -> Numeric {
        Numeric { m: BigInt::from(self.m.magnitude().clone()), scale: self.scale }
    }

    /// Parses PostgreSQL's numeric input: `12.50`, `-3`, `.5`, `1e3`, `1.5E-2`.
    pub fn parse(s: &str) -> Result<Numeric> {
        let t = s.trim();
        let bad = || Error::sql("22P02", format!("invalid input syntax for type numeric: \"{s}\""));
        let (neg, rest) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        if ["nan", "infinity", "inf"].iter().any(|w| rest.eq_ignore_ascii_case(w)) {
            return Err(Error::sql("0A000", format!("NaN and infinite numeric values are not supported: \"{s}\"")));
        }
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_only = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits_only(int) || !digits_only(frac) {
            return Err(bad());
        }
        let exponent: i64 = match exponent {
            None => 0,
            Some(e) => {
                let body = e.strip_prefix(['+', '-']).unwrap_or(e);
                if body.is_empty() || !digits_only(body) {
                    return Err(bad());
                }
                // Past the limits either way the value cannot be stored (a zero can).
                match e.parse::<i64>() {
                    Ok(x) if x.abs() < i64::from(i32::MAX / 2) => x,
                    _ => return Err(overflow()),
                }
            }
        };
        let all: String = int.chars().chain(frac.chars()).collect();
        let all = all.trim_start_matches('0');
        let mut m = if all.is_empty() {
            BigInt::default()
        } else if all.len() <= 18 {
            BigInt::from(all.parse::<u64>().map_err(|_| bad())?)
        } else {
            BigInt::parse_bytes(all.as_bytes(), 10).ok_or_else(bad)?
        };
        if neg {
            m = -m;
        }
        let scale = frac.len() as i64 - exponent;
        if scale < 0 {
            if m.sign() == Sign::NoSign {
                return Ok(Numeric::zero());
            }
            // Refused before shifting: `1e1000000000` must not allocate its digits.
            if -scale > i64::from(MAX_INT_DIGITS) {
                return Err(overflow());
            }
            return Numeric::checked(shift(&m, (-scale) as u32), 0);
        }
        Numeric::checked(m, u32::try_from(scale).map_err(|_| overflow())?)
    }

    /// Both mantissas at the larger of the two scales.
    fn aligned(&self, o: &Numeric) -> (BigInt, BigInt, u32) {
        match self.scale.cmp(&o.scale) {
            Ordering::Equal => (self.m.clone(), o.m.clone(), self.scale),
            Ordering::Less => (shift(&self.m, o.scale - self.scale), o.m.clone(), o.scale),
            Ordering::Greater => (self.m.clone(), shift(&o.m, self.scale - o.scale), self.scale),
        }
    }

    /// `self + o` at the larger scale.
    pub fn add(&self, o: &Numeric) -> Result<Numeric> {
        let (a, b, s) = self.aligned(o);
        Numeric::checked(a + b, s)
    }

    /// `self - o` at the larger scale.
    pub fn sub(&self, o: &Numeric) -> Result<Numeric> {
        let (a, b, s) = self.aligned(o);
        Numeric::checked(a - b, s)
    }

    /// Adds `o` in place (a running sum: no new allocation while it fits).
    pub fn add_assign(&mut self, o: &Numeric) -> Result<()> {
        if self.scale == o.scale {
            self.m += &o.m;
        } else if self.scale > o.scale {
            self.m += shift(&o.m, self.scale - o.scale);
        } else {
            self.m = shift(&self.m, o.scale - self.scale) + &o.m;
            self.scale = o.scale;
        }
        let m = std::mem::take(&mut self.m);
        *self = Numeric::checked(m, self.scale)?;
        Ok(())
    }

    /// `self × o` at the sum of the scales (rounded to 16383 places past that).
    pub fn mul(&self, o: &Numeric) -> Result<Numeric> {
        let product = Numeric { m: &self.m * &o.m, scale: self.scale + o.scale };
        if product.scale > MAX_SCALE {
            return product.round(i64::from(MAX_SCALE));
        }
        Numeric::checked(product.m, product.scale)
    }

    /// `self / o` at PostgreSQL's quotient scale (at least 16 significant digits, and
    /// never fewer places than either operand), rounded half away from zero.
    pub fn div(&self, o: &Numeric) -> Result<Numeric> {
        if o.is_zero() {
            return Err(Error::sql("22012", "division by zero"));
        }
        let (w1, f1) = self.weight_first();
        let (w2, f2) = o.weight_first();
        // PostgreSQL's select_div_scale: estimate the quotient's base-10000 weight.
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * 4)
            .max(i64::from(self.scale))
            .max(i64::from(o.scale))
            .clamp(0, MAX_DISPLAY_SCALE);
        self.div_round(o, rscale as u32)
    }

    /// `self / o` rounded to `rscale` places.
    fn div_round(&self, o: &Numeric, rscale: u32) -> Result<Numeric> {
        if o.is_zero() {
            return Err(Error::sql("22012", "division by zero"));
        }
        // self/o = (m1 × 10^s2) / (m2 × 10^s1); scaled up by 10^rscale.
        let e = i64::from(o.scale) + i64::from(rscale) - i64::from(self.scale);
        let q = if e >= 0 {
            round_div(&shift(&self.m, e as u32), &o.m)
        } else {
            round_div(&self.m, &shift(&o.m, (-e) as u32))
        };
        Numeric::checked(q, rscale)
    }

    /// The remainder of truncated division (sign of the dividend), at the larger scale.
    pub fn rem(&self, o: &Numeric) -> Result<Numeric> {
        if o.is_zero() {
            return Err(Error::sql("22012", "division by zero"));
        }
        let (a, b, s) = self.aligned(o);
        Numeric::checked(a % b, s)
    }

    /// The base-10000 weight of the leading non-zero digit group and that group's value
    /// (0, 0 for zero), as PostgreSQL's scale choices see a value.
    fn weight_first(&self) -> (i64, u32) {
        if self.is_zero() {
            return (0, 0);
        }
        let digits = self.m.magnitude().to_string();
        let e10 = digits.len() as i64 - i64::from(self.scale) - 1;
        let w = e10.div_euclid(4);
        let lead = (e10 - 4 * w) as usize + 1;
        let first =
            digits.bytes().chain(std::iter::repeat(b'0')).take(lead).fold(0u32, |a, b| a * 10 + u32::from(b - b'0'));
        (w, first)
    }

    /// Rounds (half away from zero) to `places` after the point; negative places round
    /// to tens, hundreds, …. The result shows `max(places, 0)` places, as PostgreSQL's
    /// round(numeric, int) does (`round(1.5, 3)` is 1.500).
    pub fn round(&self, places: i64) -> Result<Numeric> {
        self.to_places(places, true)
    }

    /// Truncates toward zero to `places`; see [`Numeric::round`].
    pub fn trunc(&self, places: i64) -> Result<Numeric> {
        self.to_places(places, false)
    }

    fn to_places(&self, places: i64, round: bool) -> Result<Numeric> {
        let p = places.clamp(-MAX_RESULT_SCALE, MAX_RESULT_SCALE);
        let scale = i64::from(self.scale);
        if p >= scale {
            return Numeric::checked(shift(&self.m, (p - scale) as u32), p as u32);
        }
        let d = pow10((scale - p) as u32);
        let q = if round { round_div(&self.m, &d) } else { &self.m / &d };
        if p >= 0 {
            Numeric::checked(q, p as u32)
        } else {
            Numeric::checked(shift(&q, (-p) as u32), 0)
        }
    }

    /// The smallest integer not below the value.
    pub fn ceil(&self) -> Numeric {
        self.to_integer(true)
    }

    /// The largest integer not above the value.
    pub fn floor(&self) -> Numeric {
        self.to_integer(false)
    }

    fn to_integer(&self, up: bool) -> Numeric {
        let d = pow10(self.scale);
        let (q, r) = (&self.m / &d, &self.m % &d);
        let m = match r.sign() {
            Sign::Plus if up => q + 1u8,
            Sign::Minus if !up => q - 1u8,
            _ => q,
        };
        Numeric { m, scale: 0 }
    }

    /// The same value without trailing fractional zeros.
    pub fn normalize(&self) -> Numeric {
        if self.is_zero() {
            return Numeric::zero();
        }
        let mut m = self.m.clone();
        let mut scale = self.scale;
        let ten = BigInt::from(10u8);
        while scale > 0 && (&m % &ten).sign() == Sign::NoSign {
            m /= &ten;
            scale -= 1;
        }
        Numeric { m, scale }
    }

    /// Digits before the point, not counting leading zeros (0 for |x| < 1).
    pub fn integer_digits(&self) -> u64 {
        digit_count(&self.m).saturating_sub(u64::from(self.scale))
    }

    /// The nearest double (±inf past its range, as text parsing does).
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// A double as PostgreSQL converts it: its 15 significant digits, trailing zeros
    /// dropped (`0.1::float8::numeric` is 0.1). `None` for NaN and infinities.
    pub fn from_f64(f: f64) -> Option<Numeric> {
        if !f.is_finite() {
            return None;
        }
        Numeric::parse(&format!("{f:.14e}")).ok().map(|n| n.normalize())
    }

    /// Rounded (half away from zero) to an integer, if one fits in i64.
    pub fn to_i64_round(&self) -> Option<i64> {
        let r = self.round(0).ok()?;
        i64::try_from(&r.m).ok()
    }

    /// The integer value, if the value is one and fits in i64 (`2.0` is 2).
    pub fn to_i64_exact(&self) -> Option<i64> {
        let r = self.trunc(0).ok()?;
        (r == *self).then(|| i64::try_from(&r.m).ok()).flatten()
    }

    /// Square root at PostgreSQL's scale (16 significant digits at least, never fewer
    /// places than the argument), correctly rounded.
    pub fn sqrt(&self) -> Result<Numeric> {
        if self.is_negative() {
            return Err(Error::sql("2201F", "cannot take square root of a negative number"));
        }
        let (w, _) = self.weight_first();
        // PostgreSQL: sweight = (weight + 1) × DEC_DIGITS / 2 − 1.
        let sweight = (w + 1) * 4 / 2 - 1;
        let rscale = (MIN_SIG_DIGITS - sweight).max(i64::from(self.scale)).clamp(0, MAX_DISPLAY_SCALE) as u32;
        // sqrt(m × 10^-s) × 10^r = sqrt(m × 10^(2r − s)); 2r ≥ s since r ≥ s.
        let n = shift(&self.m, 2 * rscale - self.scale);
        // floor(sqrt(4n)) = floor(2 sqrt(n)); +1, halved: sqrt(n) rounded (never a tie).
        let t = (n * 4u8).sqrt();
        Numeric::checked((t + 1u8) / 2u8, rscale)
    }

    /// `self ^ n` for an integer `n`, as PostgreSQL 15 computes it: at least 16 places
    /// (never fewer than the base has), rounded half away from zero.
    pub fn powi(&self, n: i64) -> Result<Numeric> {
        if self.is_zero() && n < 0 {
            return Err(Error::sql("2201F", "zero raised to a negative power is undefined"));
        }
        let rscale = (MIN_SIG_DIGITS.max(i64::from(self.scale))).min(MAX_DISPLAY_SCALE) as u32;
        if n == 0 {
            return Numeric::checked(pow10(rscale), rscale);
        }
        if self.is_zero() {
            return Ok(Numeric { m: BigInt::default(), scale: rscale });
        }
        // log10 of the result, to refuse overflow and skip underflow before computing.
        let digits = self.m.magnitude().to_string();
        let lead_len = digits.len().min(17);
        let lead: f64 = digits[..lead_len].parse().unwrap_or(1.0);
        let log_base = lead.log10() + (digits.len() - lead_len) as f64 - f64::from(self.scale);
        let log_result = log_base * n as f64;
        if log_result > f64::from(MAX_INT_DIGITS) + 1.0 {
            return Err(overflow());
        }
        if log_result < -(f64::from(rscale) + 2.0) {
            return Ok(Numeric { m: BigInt::default(), scale: rscale });
        }
        // Enough significant digits that rounding the last to `rscale` places is right:
        // the places, the integer digits, and a guard for the error each trimmed
        // multiplication adds (about one part in 10^sig per squaring, doubling).
        let guard = 6 + n.unsigned_abs().ilog10() as i64;
        let sig = i64::from(rscale) + log_result.abs().ceil() as i64 + guard;
        let (pm, pe) = pow_sig(&self.m, -i64::from(self.scale), n.unsigned_abs(), sig.max(1) as u64);
        // The power is pm × 10^pe.
        if n > 0 {
            // Round pm × 10^pe to rscale places.
            let e = pe + i64::from(rscale);
            let m = if e >= 0 {
                shift(&pm, u32::try_from(e).map_err(|_| overflow())?)
            } else {
                round_div(&pm, &pow10(u32::try_from(-e).map_err(|_| overflow())?))
            };
            Numeric::checked(m, rscale)
        } else {
            // 1 / (pm × 10^pe) × 10^rscale = 10^(rscale − pe) / pm.
            let e = i64::from(rscale) - pe;
            let q = if e >= 0 {
                round_div(&pow10(u32::try_from(e).map_err(|_| overflow())?), &pm)
            } else {
                round_div(&BigInt::from(1u8), &shift(&pm, u32::try_from(-e).map_err(|_| overflow())?))
            };
            Numeric::checked(q, rscale)
        }
    }

    /// The key form: sign, the number of digits before the point, and the digits
    /// without trailing fractional zeros (`1000` keeps its zeros, `1.50` drops one: the
    /// form index keys have always had). `None` for zero.
    pub fn key_parts(&self) -> Option<(bool, i64, String)> {
        if self.is_zero() {
            return None;
        }
        let n = self.normalize();
        let digits = n.m.magnitude().to_string();
        let exponent = digits.len() as i64 - i64::from(n.scale);
        Some((self.is_negative(), exponent, digits))
    }

    /// Inverse of [`Numeric::key_parts`]: `0.digits × 10^exponent`, negated if asked.
    pub fn from_key_parts(negative: bool, exponent: i64, digits: &str) -> Result<Numeric> {
        let bad = || Error::InvalidData("bad numeric key".into());
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let m = BigInt::parse_bytes(digits.as_bytes(), 10).ok_or_else(bad)?;
        let m = if negative { -m } else { m };
        let scale = digits.len() as i64 - exponent;
        if scale < 0 {
            // A damaged key must not make us allocate its claimed digits.
            if -scale > i64::from(MAX_INT_DIGITS) {
                return Err(bad());
            }
            return Numeric::checked(shift(&m, (-scale) as u32), 0);
        }
        Numeric::checked(m, u32::try_from(scale).map_err(|_| bad())?)
    }

    /// Row encoding: scale (u32 little-endian) then the mantissa's two's-complement bytes,
    /// little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.scale.to_le_bytes().to_vec();
        out.extend_from_slice(&self.m.to_signed_bytes_le());
        out
    }

    /// Inverse of [`Numeric::to_bytes`].
    pub fn from_bytes(raw: &[u8]) -> Result<Numeric> {
        let (scale, m) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::InvalidData("numeric value shorter than its scale".into()))?;
        let scale = u32::from_le_bytes(*scale);
        Numeric::checked(BigInt::from_signed_bytes_le(m), scale)
            .map_err(|_| Error::InvalidData(format!("numeric value past the limits (scale {scale})")))
    }

    /// Decodes the 16-byte form rows held before arbitrary precision (rust_decimal's
    /// `serialize`: flags with the scale in bits 16–23 and the sign in bit 31, then the
    /// 96-bit magnitude as three little-endian u32: low, middle, high).
    pub fn from_legacy_bytes(raw: [u8; 16]) -> Result<Numeric> {
        let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let flags = word(0);
        let scale = (flags >> 16) & 0xff;
        if scale > 28 {
            return Err(Error::InvalidData(format!("legacy numeric value with scale {scale}")));
        }
        let magnitude = (u128::from(word(12)) << 64) | (u128::from(word(8)) << 32) | u128::from(word(4));
        let m = BigInt::from(magnitude);
        Ok(Numeric { m: if flags & 0x8000_0000 != 0 { -m } else { m }, scale })
    }

    /// PostgreSQL's binary numeric: ndigits, weight, sign, dscale (i16/u16, big-endian),
    /// then ndigits base-10000 digits, most significant first.
    pub fn to_pg_binary(&self) -> Vec<u8> {
        let digits = self.m.magnitude().to_string();
        let scale = self.scale as usize;
        let (int, frac) = if self.is_zero() {
            (String::new(), String::new())
        } else if digits.len() > scale {
            (digits[..digits.len() - scale].to_string(), digits[digits.len() - scale..].to_string())
        } else {
            (String::new(), format!("{}{digits}", "0".repeat(scale - digits.len())))
        };
        // Base-10000 groups aligned on the point.
        let int_pad = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac_pad = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let group = |c: &[u8]| c.iter().fold(0i16, |a, b| a * 10 + i16::from(b - b'0'));
        let mut groups: Vec<i16> =
            int_pad.as_bytes().chunks(4).chain(frac_pad.as_bytes().chunks(4)).map(group).collect();
        let mut weight = (int_pad.len() / 4) as i64 - 1;
        let leading = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..leading);
        weight -= leading as i64;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let mut out = Vec::with_capacity(8 + 2 * groups.len());
        out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&(if self.is_negative() { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend_from_slice(&(self.scale as i16).to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        out
    }

    /// Inverse of [`Numeric::to_pg_binary`]; digits past `dscale` are truncated away,
    /// as PostgreSQL's numeric_recv does.
    pub fn from_pg_binary(raw: &[u8]) -> Result<Numeric> {
        let bad = |what: &str| Error::sql("22P03", format!("invalid external numeric value: {what}"));
        let word = |i: usize| -> Result<[u8; 2]> {
            raw.get(i..i + 2).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("too short"))
        };
        let ndigits = i16::from_be_bytes(word(0)?);
        let weight = i64::from(i16::from_be_bytes(word(2)?));
        let sign = u16::from_be_bytes(word(4)?);
        let dscale = i16::from_be_bytes(word(6)?);
        let ndigits = usize::try_from(ndigits).map_err(|_| bad("negative digit count"))?;
        if raw.len() != 8 + 2 * ndigits {
            return Err(bad("length does not match its digit count"));
        }
        let negative = match sign {
            0 => false,
            0x4000 => true,
            0xC000 | 0xD000 | 0xF000 => {
                return Err(Error::sql("0A000", "NaN and infinite numeric values are not supported"))
            }
            _ => return Err(bad("invalid sign")),
        };
        let dscale = u32::try_from(dscale).ok().filter(|d| *d <= MAX_SCALE).ok_or_else(|| bad("invalid scale"))?;
        let mut m = BigInt::default();
        for i in 0..ndigits {
            let d = i16::from_be_bytes(word(8 + 2 * i)?);
            if !(0..10000).contains(&d) {
                return Err(bad("invalid digit"));
            }
            m = m * 10000u32 + d as u32;
        }
        // value = m × 10000^(weight − ndigits + 1); shown with dscale places.
        let e = 4 * (weight - ndigits as i64 + 1) + i64::from(dscale);
        let m = if e >= 0 {
            if e > i64::from(MAX_INT_DIGITS + MAX_SCALE) + 8 && m.sign() != Sign::NoSign {
                return Err(overflow());
            }
            shift(&m, e as u32)
        } else {
            &m / pow10(u32::try_from(-e).map_err(|_| bad("invalid weight"))?)
        };
        Numeric::checked(if negative { -m } else { m }, dscale)
    }
}

/// `(m × 10^e)^n` to about `sig` significant digits, as `(mantissa, exponent)`: exact
/// while it fits in `sig` digits, rounded (half away from zero) past that.
fn pow_sig(m: &BigInt, e: i64, mut n: u64, sig: u64) -> (BigInt, i64) {
    let trim = |(m, e): (BigInt, i64)| -> (BigInt, i64) {
        let d = digit_count(&m);
        if d <= sig + 2 {
            return (m, e);
        }
        let drop = d - sig;
        let drop32 = u32::try_from(drop).unwrap_or(u32::MAX);
        (round_div(&m, &pow10(drop32)), e + drop as i64)
    };
    let mut base = (m.clone(), e);
    let mut acc = (BigInt::from(1u8), 0i64);
    while n > 0 {
        if n & 1 == 1 {
            acc = trim((&acc.0 * &base.0, acc.1 + base.1));
        }
        n >>= 1;
        if n > 0 {
            base = trim((&base.0 * &base.0, base.1 * 2));
        }
    }
    acc
}

impl From<i64> for Numeric {
    fn from(i: i64) -> Numeric {
        Numeric { m: BigInt::from(i), scale: 0 }
    }
}

impl From<i32> for Numeric {
    fn from(i: i32) -> Numeric {
        Numeric::from(i64::from(i))
    }
}

impl std::ops::Neg for Numeric {
    type Output = Numeric;
    fn neg(self) -> Numeric {
        Numeric { m: -self.m, scale: self.scale }
    }
}

impl std::ops::Neg for &Numeric {
    type Output = Numeric;
    fn neg(self) -> Numeric {
        Numeric { m: -&self.m, scale: self.scale }
    }
}

impl Ord for Numeric {
    fn cmp(&self, o: &Numeric) -> Ordering {
        let (a, b) = (self.signum(), o.signum());
        if a != b {
            return a.cmp(&b);
        }
        match self.scale.cmp(&o.scale) {
            Ordering::Equal => self.m.cmp(&o.m),
            Ordering::Less => shift(&self.m, o.scale - self.scale).cmp(&o.m),
            Ordering::Greater => self.m.cmp(&shift(&o.m, self.scale - o.scale)),
        }
    }
}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, o: &Numeric) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Numeric {
    fn eq(&self, o: &Numeric) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Numeric {}

impl Hash for Numeric {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let n = self.normalize();
        n.m.hash(h);
        n.scale.hash(h);
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.m.magnitude().to_string();
        let scale = self.scale as usize;
        if self.is_negative() {
            f.write_str("-")?;
        }
        if scale == 0 {
            return f.write_str(&digits);
        }
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{int}.{frac}")
        } else {
            write!(f, "0.{}{digits}", "0".repeat(scale - digits.len()))
        }
    }
}

impl fmt::Debug for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Numeric({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Numeric {
        Numeric::parse(s).unwrap()
    }

    #[test]
    fn parse_and_print_keep_the_display_scale() {
        for (input, shown) in [
            ("12.50", "12.50"),
            ("-0.5", "-0.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1e3", "1000"),
            ("1.5E-2", "0.015"),
            ("-0", "0"),
            ("0.000", "0.000"),
            ("  42 ", "42"),
            ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
        ] {
            assert_eq!(n(input).to_string(), shown, "{input}");
        }
        assert_eq!(n("1e1001").to_string().len(), 1002);
        assert_eq!(n("0e99999999").to_string(), "0");
        for big in ["1e131072", "1e999999999", "1e-16384", "1e9999999999999"] {
            assert_eq!(Numeric::parse(big).unwrap_err().sqlstate(), "22003", "{big}");
        }
        for bad in ["", "-", ".", "1.2.3", "1e", "e5", "12a", "1e+", "--1"] {
            assert_eq!(Numeric::parse(bad).unwrap_err().sqlstate(), "22P02", "{bad:?}");
        }
        assert_eq!(Numeric::parse("NaN").unwrap_err().sqlstate(), "0A000");
        assert_eq!(Numeric::parse(&format!("1{}", "0".repeat(131_072))).unwrap_err().sqlstate(), "22003");
        assert!(Numeric::parse(&"9".repeat(131_072)).is_ok());
    }

    #[test]
    fn arithmetic_follows_postgresql_scales() {
        // Expected values from PostgreSQL 15.
        assert_eq!(n("1.50").add(&n("1")).unwrap().to_string(), "2.50");
        assert_eq!(n("1.5").mul(&n("2.25")).unwrap().to_string(), "3.375");
        assert_eq!(n("1").div(&n("3")).unwrap().to_string(), "0.33333333333333333333");
        assert_eq!(n("2").div(&n("3")).unwrap().to_string(), "0.66666666666666666667");
        assert_eq!(n("1").div(&n("1")).unwrap().to_string(), "1.00000000000000000000");
        assert_eq!(n("10").div(&n("4")).unwrap().to_string(), "2.5000000000000000");
        assert_eq!(n("-7.5").rem(&n("2")).unwrap().to_string(), "-1.5");
        assert_eq!(n("2").sqrt().unwrap().to_string(), "1.414213562373095");
        assert_eq!(n("2").powi(100).unwrap().to_string(), "1267650600228229401496703205376.0000000000000000");
        assert_eq!(n("2").powi(-2).unwrap().to_string(), "0.2500000000000000");
        assert_eq!(n("1.5").round(0).unwrap().to_string(), "2");
        assert_eq!(n("-1.5").round(0).unwrap().to_string(), "-2");
        assert_eq!(n("1.5").round(3).unwrap().to_string(), "1.500");
        assert_eq!(n("1234.5").round(-2).unwrap().to_string(), "1200");
        assert_eq!(n("-1.7").trunc(0).unwrap().to_string(), "-1");
        assert_eq!(n("-1.2").floor().to_string(), "-2");
        assert_eq!(n("1.2").ceil().to_string(), "2");
        assert!(n("1.5") == n("1.50") && n("-2") < n("-1.5") && n("0.001") > n("0"));
    }

    #[test]
    fn encodings_round_trip() {
        for s in ["0", "1", "-1", "12.50", "0.0001", "-123456789012345678901234567890.5", "10000", "1e40"] {
            let v = n(s);
            assert_eq!(Numeric::from_bytes(&v.to_bytes()).unwrap().to_string(), v.to_string(), "{s}");
            let bin = v.to_pg_binary();
            assert_eq!(Numeric::from_pg_binary(&bin).unwrap().to_string(), v.to_string(), "{s}");
            let back = match v.key_parts() {
                None => Numeric::zero(),
                Some((neg, e, d)) => Numeric::from_key_parts(neg, e, &d).unwrap(),
            };
            assert_eq!(back, v, "{s}");
        }
        // PostgreSQL's bytes for 12.50: 2 digits, weight 0, positive, dscale 2, [12, 5000].
        assert_eq!(n("12.50").to_pg_binary(), [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88]);
        assert!(Numeric::from_key_parts(false, 4_000_000_000, "1").is_err());
        assert!(Numeric::from_pg_binary(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Numeric::from_pg_binary(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err());
        // -0.00012: weight -1, digits [1, 2000], dscale 5.
        assert_eq!(n("-0.00012").to_pg_binary(), [0, 2, 0xff, 0xff, 0x40, 0, 0, 5, 0, 1, 0x07, 0xd0]);
    }

    /// Rows written before arbitrary precision hold rust_decimal's 16 bytes; they must
    /// read back as the same numbers.
    #[test]
    fn legacy_rows_decode() {
        for s in
            ["0", "1", "-1", "12.50", "-0.0001", "79228162514264337593543950335", "-7922816251426433759354395.0335"]
        {
            let old: rust_decimal::Decimal = s.parse().unwrap();
            let back = Numeric::from_legacy_bytes(old.serialize()).unwrap();
            assert_eq!(back.to_string(), old.to_string(), "{s}");
        }
    }

    fn arb() -> impl proptest::strategy::Strategy<Value = Numeric> {
        use proptest::prelude::*;
        (any::<i64>(), 0u32..12, 0u32..3).prop_map(|(m, scale, widen)| {
            // Some values past 64 bits: m × m' for a second factor.
            let m = match widen {
                0 => BigInt::from(m),
                1 => BigInt::from(m) * BigInt::from(m).pow(2),
                _ => BigInt::from(m % 1000),
            };
            Numeric { m, scale }
        })
    }

    fn exact(v: &Numeric, scale: u32) -> BigInt {
        shift(&v.m, scale - v.scale)
    }

    proptest::proptest! {
        /// Against a model: both operands as integers at a common scale.
        #[test]
        fn arithmetic_agrees_with_integer_model(a in arb(), b in arb()) {
            let s = a.scale.max(b.scale);
            let (x, y) = (exact(&a, s), exact(&b, s));
            proptest::prop_assert_eq!(a.cmp(&b), x.cmp(&y));
            let sum = a.add(&b).unwrap();
            proptest::prop_assert_eq!((&sum.m, sum.scale), (&(&x + &y), s));
            let diff = a.sub(&b).unwrap();
            proptest::prop_assert_eq!((&diff.m, diff.scale), (&(&x - &y), s));
            let product = a.mul(&b).unwrap();
            proptest::prop_assert_eq!((&product.m, product.scale), (&(&a.m * &b.m), a.scale + b.scale));
            if !b.is_zero() {
                let r = a.rem(&b).unwrap();
                proptest::prop_assert_eq!(&r.m, &(&x % &y));
                // The quotient is within half a unit of its last place of a / b, keeps
                // the operands' places, and has at least 16 significant digits.
                let q = a.div(&b).unwrap();
                proptest::prop_assert!(q.scale >= s);
                let lhs = (&q.m * &b.m * pow10(a.scale) - &a.m * pow10(b.scale + q.scale)) * 2u8;
                proptest::prop_assert!(lhs.magnitude() <= (&b.m * pow10(a.scale)).magnitude());
                if !q.is_zero() {
                    proptest::prop_assert!(digit_count(&q.m) >= 16, "{} / {} = {}", a, b, q);
                }
            }
            // Text, row and wire forms read back to the same display.
            for v in [&a, &b, &sum, &product] {
                proptest::prop_assert_eq!(Numeric::parse(&v.to_string()).unwrap().to_string(), v.to_string());
                proptest::prop_assert_eq!(Numeric::from_bytes(&v.to_bytes()).unwrap().to_string(), v.to_string());
                proptest::prop_assert_eq!(Numeric::from_pg_binary(&v.to_pg_binary()).unwrap().to_string(), v.to_string());
            }
        }

        /// Square roots are correctly rounded: (r − ½)² ≤ x ≤ (r + ½)² in units of the
        /// last place.
        #[test]
        fn sqrt_is_correctly_rounded(a in arb()) {
            let a = a.abs();
            let r = a.sqrt().unwrap();
            let n = shift(&a.m, 2 * r.scale - a.scale) * 4u8;
            let two_r = &r.m * 2u8;
            proptest::prop_assert!((&two_r - 1u8).pow(2) <= n || r.is_zero());
            proptest::prop_assert!(n <= (&two_r + 1u8).pow(2));
        }

        /// Key order is value order.
        #[test]
        fn keys_sort_as_values(a in arb(), b in arb()) {
            use crate::types::Value;
            use amberdb_encoding::keycode::KeyEncoder;
            let key = |v: &Numeric| Value::Numeric(v.clone()).encode_key(KeyEncoder::new()).finish();
            proptest::prop_assert_eq!(key(&a).cmp(&key(&b)), a.cmp(&b));
        }
    }
}
