//! Checksummed frames for append-only files.
//!
//! ```text
//!   +----------------+------------------+---------------------+
//!   | len: u32 LE    | crc32c: u32 LE   | payload (len bytes) |
//!   +----------------+------------------+---------------------+
//!   crc32c covers the length bytes and the payload, so a flipped length is caught too.
//! ```

use amberdb_error::{Error, Result};

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// Largest payload a frame may carry (256 MiB): a larger length is treated as corruption.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Appends one frame holding `payload` to `out`.
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked by callers against MAX_PAYLOAD");
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Makes `frame` — [`HEADER_LEN`] placeholder bytes followed by the payload — a frame,
/// by writing its header in place: for payloads encoded straight after room for the
/// header, so a large one is never copied into a frame.
pub fn seal(frame: &mut [u8]) {
    let (header, payload) = frame.split_at_mut(HEADER_LEN);
    let len = u32::try_from(payload.len()).expect("payload length checked by callers against MAX_PAYLOAD");
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    header[..4].copy_from_slice(&len_bytes);
    header[4..].copy_from_slice(&crc.to_le_bytes());
}

/// What was found at a position in a framed byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid frame: its payload and total size including the header.
    Frame { payload: &'a [u8], size: usize },
    /// The input ends before the frame does: a torn write if this is the file's tail.
    Incomplete,
    /// The frame is complete but its checksum or length is wrong.
    Corrupt(String),
}

/// Decodes the frame at the start of `input`.
pub fn decode(input: &[u8]) -> Decoded<'_> {
    if input.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&input[..4]);
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&input[4..8]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("frame length {len} exceeds maximum {MAX_PAYLOAD}"));
    }
    if input.len() < HEADER_LEN + len {
        return Decoded::Incomplete;
    }
    let payload = &input[HEADER_LEN..HEADER_LEN + len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    let stored = u32::from_le_bytes(crc_bytes);
    if crc != stored {
        return Decoded::Corrupt(format!("checksum mismatch: stored {stored:#010x}, computed {crc:#010x}"));
    }
    Decoded::Frame { payload, size: HEADER_LEN + len }
}

/// Decodes exactly one frame that must fill `input`; `what` names it in errors.
pub fn decode_exact<'a>(input: &'a [u8], what: &str) -> Result<&'a [u8]> {
    match decode(input) {
        Decoded::Frame { payload, size } if size == input.len() => Ok(payload),
        Decoded::Frame { size, .. } => {
            Err(Error::InvalidData(format!("{what}: {} trailing bytes after frame", input.len() - size)))
        }
        Decoded::Incomplete => Err(Error::InvalidData(format!("{what}: truncated frame"))),
        Decoded::Corrupt(why) => Err(Error::InvalidData(format!("{what}: {why}"))),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_sealed_frame_is_an_encoded_one() {
        let payload = b"some payload bytes".to_vec();
        let mut framed = Vec::new();
        encode_into(&mut framed, &payload);
        let mut sealed = vec![0u8; HEADER_LEN];
        sealed.extend_from_slice(&payload);
        seal(&mut sealed);
        assert_eq!(sealed, framed);
    }

    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"hello");
        assert_eq!(decode(&buf), Decoded::Frame { payload: b"hello", size: 13 });
        assert_eq!(decode(&buf[..10]), Decoded::Incomplete);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(!matches!(decode(&bad), Decoded::Frame { payload: b"hello", .. }), "flip at {i} not detected");
        }
        assert!(decode_exact(&buf, "x").is_ok());
    }
}
