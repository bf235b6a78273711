//! Order-preserving key encoding ("keycode").
//!
//! | type  | encoding                                                             |
//! |-------|----------------------------------------------------------------------|
//! | bool  | `0x00` / `0x01`                                                      |
//! | u64   | 8 bytes big-endian                                                   |
//! | i64   | 8 bytes big-endian with the sign bit flipped                          |
//! | f64   | IEEE bits; positive: sign bit flipped, negative: all bits inverted    |
//! | bytes | each `0x00` escaped as `0x00 0xFF`, terminated by `0x00 0x00`          |
//! | str   | as bytes (UTF-8)                                                     |
//!
//! The bytes terminator `0x00 0x00` sorts below any escaped byte (`0x00 0xFF`) and any
//! other byte, so a shorter string sorts before every longer string it prefixes, exactly
//! as with `memcmp` on the raw bytes.

use amberdb_error::{Error, Result};

/// Builds a composite key component by component.
#[derive(Debug, Default, Clone)]
pub struct KeyEncoder {
    buf: Vec<u8>,
}

impl KeyEncoder {
    /// Starts an empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a key with a raw prefix byte (used for keyspace tags).
    pub fn with_tag(tag: u8) -> Self {
        Self { buf: vec![tag] }
    }

    /// Appends a boolean.
    pub fn bool(mut self, v: bool) -> Self {
        self.buf.push(u8::from(v));
        self
    }

    /// Appends an unsigned integer.
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a signed integer.
    pub fn i64(mut self, v: i64) -> Self {
        self.buf.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        self
    }

    /// Appends a float. NaN sorts above +infinity; -0.0 sorts below +0.0.
    pub fn f64(mut self, v: f64) -> Self {
        let bits = v.to_bits();
        let bits = if bits >> 63 == 0 { bits ^ (1 << 63) } else { !bits };
        self.buf.extend_from_slice(&bits.to_be_bytes());
        self
    }

    /// Appends a byte string.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        encode_bytes_into(&mut self.buf, v);
        self
    }

    /// Appends a UTF-8 string.
    pub fn str(self, v: &str) -> Self {
        self.bytes(v.as_bytes())
    }

    /// Appends raw bytes with no escaping (only valid as the last component).
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Returns the encoded key.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Appends the escaped, terminated encoding of `v` to `out`.
pub fn encode_bytes_into(out: &mut Vec<u8>, v: &[u8]) {
    out.reserve(v.len() + 2);
    for &b in v {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Reads components back from an encoded key, in the order they were written.
#[derive(Debug, Clone)]
pub struct KeyDecoder<'a> {
    input: &'a [u8],
}

impl<'a> KeyDecoder<'a> {
    /// Starts decoding `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.input.len() < n {
            return Err(Error::InvalidData(format!("key ended early: wanted {n} bytes, {} left", self.input.len())));
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    fn take8(&mut self) -> Result<[u8; 8]> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8)?);
        Ok(out)
    }

    /// Reads a raw tag byte.
    pub fn tag(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a boolean.
    pub fn bool(&mut self) -> Result<bool> {
        match self.tag()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Error::InvalidData(format!("invalid bool byte {b:#x} in key"))),
        }
    }

    /// Reads an unsigned integer.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take8()?))
    }

    /// Reads a signed integer.
    pub fn i64(&mut self) -> Result<i64> {
        Ok((u64::from_be_bytes(self.take8()?) ^ (1 << 63)) as i64)
    }

    /// Reads a float.
    pub fn f64(&mut self) -> Result<f64> {
        let bits = u64::from_be_bytes(self.take8()?);
        let bits = if bits >> 63 == 1 { bits ^ (1 << 63) } else { !bits };
        Ok(f64::from_bits(bits))
    }

    /// Reads a byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.bytes_into(&mut out)?;
        Ok(out)
    }

    /// Reads a byte string, appending it to `out` (copies the runs between escapes in
    /// bulk; scans of large tables decode one per row).
    pub fn bytes_into(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let mut rest = self.input;
        loop {
            let Some(z) = rest.iter().position(|&b| b == 0) else {
                return Err(Error::InvalidData("unterminated bytes in key".into()));
            };
            out.extend_from_slice(&rest[..z]);
            match rest.get(z + 1) {
                Some(0) => {
                    self.input = &rest[z + 2..];
                    return Ok(());
                }
                Some(0xff) => {
                    out.push(0);
                    rest = &rest[z + 2..];
                }
                Some(b) => return Err(Error::InvalidData(format!("invalid escape 0x00 {b:#04x} in key bytes"))),
                None => return Err(Error::InvalidData("unterminated bytes in key".into())),
            }
        }
    }

    /// Reads a UTF-8 string.
    pub fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|e| Error::InvalidData(format!("invalid UTF-8 in key: {e}")))
    }

    /// Returns the bytes not yet decoded.
    pub fn remaining(&self) -> &'a [u8] {
        self.input
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<()> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidData(format!("{} trailing bytes after key", self.input.len())))
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`, or `None` if
/// there is none (the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, PartialOrd)]
    enum Comp {
        Bool(bool),
        U(u64),
        I(i64),
        B(Vec<u8>),
        S(String),
    }

    fn comp_strategy() -> impl Strategy<Value = Comp> {
        prop_oneof![
            any::<bool>().prop_map(Comp::Bool),
            any::<u64>().prop_map(Comp::U),
            any::<i64>().prop_map(Comp::I),
            proptest::collection::vec(prop_oneof![Just(0u8), Just(0xff), any::<u8>()], 0..8).prop_map(Comp::B),
            ".{0,6}".prop_map(Comp::S),
        ]
    }

    fn encode(e: KeyEncoder, c: &Comp) -> KeyEncoder {
        match c {
            Comp::Bool(v) => e.bool(*v),
            Comp::U(v) => e.u64(*v),
            Comp::I(v) => e.i64(*v),
            Comp::B(v) => e.bytes(v),
            Comp::S(v) => e.str(v),
        }
    }

    fn decode_like(d: &mut KeyDecoder, like: &Comp) -> Comp {
        match like {
            Comp::Bool(_) => Comp::Bool(d.bool().unwrap()),
            Comp::U(_) => Comp::U(d.u64().unwrap()),
            Comp::I(_) => Comp::I(d.i64().unwrap()),
            Comp::B(_) => Comp::B(d.bytes().unwrap()),
            Comp::S(_) => Comp::S(d.string().unwrap()),
        }
    }

    /// A schema: a list of component kinds; both tuples share it so they compare.
    fn tuple_pair() -> impl Strategy<Value = (Vec<Comp>, Vec<Comp>)> {
        proptest::collection::vec(comp_strategy(), 1..4).prop_flat_map(|schema| {
            let gen = |schema: &Vec<Comp>| {
                schema
                    .iter()
                    .map(|c| match c {
                        Comp::Bool(_) => any::<bool>().prop_map(Comp::Bool).boxed(),
                        Comp::U(_) => prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()].prop_map(Comp::U).boxed(),
                        Comp::I(_) => {
                            prop_oneof![Just(0i64), Just(-1), Just(i64::MIN), any::<i64>()].prop_map(Comp::I).boxed()
                        }
                        Comp::B(_) => proptest::collection::vec(
                            prop_oneof![Just(0u8), Just(1u8), Just(0xffu8), any::<u8>()],
                            0..6,
                        )
                        .prop_map(Comp::B)
                        .boxed(),
                        Comp::S(_) => "[a-c\u{0}é]{0,4}".prop_map(Comp::S).boxed(),
                    })
                    .collect::<Vec<_>>()
            };
            (gen(&schema), gen(&schema))
        })
    }

    proptest! {
        #[test]
        fn roundtrip_and_order((a, b) in tuple_pair()) {
            let ea = a.iter().fold(KeyEncoder::new(), encode).finish();
            let eb = b.iter().fold(KeyEncoder::new(), encode).finish();
            // Round trip.
            let mut d = KeyDecoder::new(&ea);
            let back: Vec<Comp> = a.iter().map(|c| decode_like(&mut d, c)).collect();
            d.finish().unwrap();
            prop_assert_eq!(&back, &a);
            // Order preservation (component-wise lexicographic order of the tuples).
            prop_assert_eq!(a.partial_cmp(&b), Some(ea.cmp(&eb)), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn f64_order(a in any::<f64>(), b in any::<f64>()) {
            prop_assume!(!a.is_nan() && !b.is_nan());
            let ea = KeyEncoder::new().f64(a).finish();
            let eb = KeyEncoder::new().f64(b).finish();
            let back = KeyDecoder::new(&ea).f64().unwrap();
            prop_assert_eq!(back.to_bits(), a.to_bits());
            if a < b { prop_assert!(ea < eb); }
            if a > b { prop_assert!(ea > eb); }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut d = KeyDecoder::new(&bytes);
            let _ = d.bytes();
            let _ = d.u64();
            let _ = d.string();
            let _ = d.bool();
        }
    }

    #[test]
    fn prefix_end_cases() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
