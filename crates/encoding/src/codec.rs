//! Value codec: little-endian fixed-width integers, LEB128 varints and length-prefixed
//! byte strings. Values need not sort, so this is compact rather than ordered.

use amberdb_error::{Error, Result};

/// Appends values to a byte buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n) }
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a fixed 4-byte little-endian integer.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a fixed 8-byte little-endian integer.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends an unsigned LEB128 varint.
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return self;
            }
            self.buf.push(byte | 0x80);
        }
    }

    /// Appends a varint length followed by the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// Returns the bytes written so far.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads values back; every read checks bounds and fails with `InvalidData` naming `what`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading `input`; `what` names the structure in error messages.
    pub fn new(input: &'a [u8], what: &'static str) -> Self {
        Self { input, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.input.len() < n {
            return Err(Error::InvalidData(format!(
                "{}: truncated (wanted {n} bytes, {} left)",
                self.what,
                self.input.len()
            )));
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a fixed 4-byte little-endian integer.
    pub fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a fixed 8-byte little-endian integer.
    pub fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// Reads an unsigned LEB128 varint (at most 10 bytes).
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.u8()?;
            if shift == 63 && byte > 1 {
                break;
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::InvalidData(format!("{}: varint overflows u64", self.what)))
    }

    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()?;
        let len =
            usize::try_from(len).map_err(|_| Error::InvalidData(format!("{}: length {len} too large", self.what)))?;
        self.take(len)
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<()> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidData(format!("{}: {} unexpected trailing bytes", self.what, self.input.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(a in any::<u64>(), b in any::<u32>(), c in proptest::collection::vec(any::<u8>(), 0..40), d in any::<u64>()) {
            let mut w = Writer::new();
            w.varint(a).u32(b).bytes(&c).u64(d);
            let buf = w.finish();
            let mut r = Reader::new(&buf, "test");
            prop_assert_eq!(r.varint().unwrap(), a);
            prop_assert_eq!(r.u32().unwrap(), b);
            prop_assert_eq!(r.bytes().unwrap(), &c[..]);
            prop_assert_eq!(r.u64().unwrap(), d);
            r.finish().unwrap();
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(buf in proptest::collection::vec(any::<u8>(), 0..20)) {
            let mut r = Reader::new(&buf, "garbage");
            let _ = r.varint();
            let _ = r.bytes();
            let _ = r.u64();
        }
    }
}
