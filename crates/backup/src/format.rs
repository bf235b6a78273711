//! Range files (`.amr`): sorted key/value entries in independently decodable blocks.
//!
//! ```text
//!   "AMBRNG01"                                      8-byte magic
//!   block frame *                                   [len u32][crc32c u32][payload]
//!       payload = codec u8 | raw_len u32 | entries u32 | body
//!       codec 1: body = zstd(raw); codec 2: body = XChaCha20-Poly1305(zstd(raw)) with
//!       the 9 header bytes as associated data (see crypto.rs)
//!       raw     = (varint klen, key, varint vlen, value) * entries
//!   index frame                                     [len u32][crc32c u32][payload]
//!       payload = varint n | n * (offset u64, frame_len u32, raw_len u32, entries u32,
//!                                 bytes first_key, bytes last_key)
//!       (encrypted backups: payload = XChaCha20-Poly1305 of that, aad "amr-index")
//!   trailer: index_offset u64 | index_frame_len u32 | "AMBRNGF1"   (20 bytes)
//! ```
//! Integers are little-endian. Because each block carries its own checksum and the index
//! names its key range, a reader can fetch and decode any block alone (in parallel, or
//! only the blocks a key range needs). The whole file's blake3 hash is recorded in the
//! manifest, so a flipped byte anywhere is caught before a block is even decoded.

use crate::crypto::Cipher;
use amberdb_encoding::codec::{Reader, Writer};
use amberdb_encoding::frame;
use amberdb_error::{Error, Result};

/// Magic at the start of a range file.
pub const MAGIC: &[u8; 8] = b"AMBRNG01";
/// Magic at the very end of a range file.
pub const TRAILER_MAGIC: &[u8; 8] = b"AMBRNGF1";
const TRAILER_LEN: usize = 20;
/// Uncompressed size at which a block is cut.
pub const BLOCK_TARGET: usize = 1 << 20;
const CODEC_ZSTD: u8 = 1;
const CODEC_ZSTD_XCHACHA: u8 = 2;
const INDEX_AAD: &[u8] = b"amr-index";

/// Appends a LEB128 varint (the codec's encoding) without an intermediate buffer.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Entries collected for one block, not yet compressed.
#[derive(Debug)]
pub struct RawBlock {
    data: Vec<u8>,
    entries: u32,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
}

impl Default for RawBlock {
    fn default() -> Self {
        Self {
            data: Vec::with_capacity(BLOCK_TARGET + (64 << 10)),
            entries: 0,
            first_key: Vec::new(),
            last_key: Vec::new(),
        }
    }
}

impl RawBlock {
    /// Appends an entry; keys must arrive in ascending order.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        if self.entries == 0 {
            self.first_key = key.to_vec();
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        put_varint(&mut self.data, key.len() as u64);
        self.data.extend_from_slice(key);
        put_varint(&mut self.data, value.len() as u64);
        self.data.extend_from_slice(value);
        self.entries += 1;
    }

    /// Uncompressed bytes so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// A compressed, framed block ready to append to a range file.
#[derive(Debug)]
pub struct SealedBlock {
    frame: Vec<u8>,
    raw_len: u32,
    entries: u32,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
}

impl SealedBlock {
    /// Size of the framed block in the file.
    pub(crate) fn size(&self) -> usize {
        self.frame.len()
    }
}

thread_local! {
    /// Each worker thread keeps its zstd context and output scratch: creating a context
    /// per block allocated (and zeroed) megabytes every time.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `data` at `level` with this thread's context, then hands the compressed
/// bytes to `then`.
fn with_compressed<T>(data: &[u8], level: i32, then: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let zerr = |e: std::io::Error| Error::Internal(format!("zstd: {e}"));
    ZSTD.with_borrow_mut(|z| {
        if z.as_ref().is_none_or(|(l, _)| *l != level) {
            *z = Some((level, zstd::bulk::Compressor::new(level).map_err(zerr)?));
        }
        let (_, c) = z.as_mut().expect("set just above");
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            out.reserve(zstd::zstd_safe::compress_bound(data.len()));
            c.compress_to_buffer(data, out).map_err(zerr)?;
            then(out)
        })
    })
}

/// One frame (as [`frame::encode_into`]) whose payload is `parts` concatenated, built in
/// a single allocation of its final size.
fn frame_of(parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len_bytes = (len as u32).to_le_bytes();
    let crc = parts.iter().fold(crc32c::crc32c(&len_bytes), |c, p| crc32c::crc32c_append(c, p));
    let mut out = Vec::with_capacity(frame::HEADER_LEN + len);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Compresses (and, with a cipher, encrypts) and frames a block (CPU-heavy: run it on
/// a worker).
pub fn seal(block: RawBlock, level: i32, cipher: Option<&Cipher>) -> Result<SealedBlock> {
    let raw_len = u32::try_from(block.data.len())
        .map_err(|_| Error::InvalidInput(format!("backup block of {} bytes is too large", block.data.len())))?;
    let mut w = Writer::with_capacity(9);
    w.u8(if cipher.is_some() { CODEC_ZSTD_XCHACHA } else { CODEC_ZSTD }).u32(raw_len).u32(block.entries);
    let header = w.finish();
    let frame = with_compressed(&block.data, level, |compressed| {
        let body = match cipher {
            Some(c) => Some(c.seal(&header, compressed)?),
            None => None,
        };
        let body = body.as_deref().unwrap_or(compressed);
        if header.len() + body.len() > frame::MAX_PAYLOAD {
            return Err(Error::InvalidInput(format!("backup block of {} bytes is too large", body.len())));
        }
        Ok(frame_of(&[&header, body]))
    })?;
    Ok(SealedBlock { frame, raw_len, entries: block.entries, first_key: block.first_key, last_key: block.last_key })
}

/// Where a block sits in a range file, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    /// Offset of the block's frame.
    pub offset: u64,
    /// Length of the frame.
    pub len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Number of entries.
    pub entries: u32,
    /// Smallest key.
    pub first_key: Vec<u8>,
    /// Largest key.
    pub last_key: Vec<u8>,
}

/// Assembles a range file in memory (files are bounded by the writer's file target).
#[derive(Debug)]
pub struct RangeFileWriter {
    buf: Vec<u8>,
    index: Vec<BlockRef>,
    entries: u64,
}

impl Default for RangeFileWriter {
    fn default() -> Self {
        Self { buf: MAGIC.to_vec(), index: Vec::new(), entries: 0 }
    }
}

impl RangeFileWriter {
    /// Appends a sealed block.
    pub fn add(&mut self, b: SealedBlock) {
        self.index.push(BlockRef {
            offset: self.buf.len() as u64,
            len: b.frame.len() as u32,
            raw_len: b.raw_len,
            entries: b.entries,
            first_key: b.first_key,
            last_key: b.last_key,
        });
        self.entries += u64::from(b.entries);
        self.buf.extend_from_slice(&b.frame);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no block was added.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Blocks so far.
    pub fn blocks(&self) -> u32 {
        self.index.len() as u32
    }

    /// Entries so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The first key of the file and the last.
    pub fn key_range(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.index.first().map(|b| b.first_key.clone()).unwrap_or_default(),
            self.index.last().map(|b| b.last_key.clone()).unwrap_or_default(),
        )
    }

    /// Writes the index (encrypted with a cipher) and trailer; returns the file's bytes.
    pub fn finish(mut self, cipher: Option<&Cipher>) -> Result<Vec<u8>> {
        let mut w = Writer::new();
        w.varint(self.index.len() as u64);
        for b in &self.index {
            w.u64(b.offset).u32(b.len).u32(b.raw_len).u32(b.entries).bytes(&b.first_key).bytes(&b.last_key);
        }
        let index = match cipher {
            Some(c) => c.seal(INDEX_AAD, &w.finish())?,
            None => w.finish(),
        };
        let offset = self.buf.len() as u64;
        frame::encode_into(&mut self.buf, &index);
        let len = (self.buf.len() as u64 - offset) as u32;
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        Ok(self.buf)
    }
}

/// Reads a range file's block index; `name` names the file in errors.
pub fn read_index(file: &[u8], name: &str, cipher: Option<&Cipher>) -> Result<Vec<BlockRef>> {
    let bad = |why: String| Error::InvalidData(format!("range file {name}: {why}"));
    if file.len() < MAGIC.len() + TRAILER_LEN || &file[..MAGIC.len()] != MAGIC {
        return Err(bad("not a range file (bad magic or too short)".into()));
    }
    let (offset, len) = index_location(&file[file.len() - TRAILER_LEN..], file.len() as u64, name)?;
    let (offset, end) = (offset as usize, (offset + len) as usize);
    parse_index(&file[offset..end], offset as u64, name, cipher)
}

/// Bytes at the end of a range file that hold its trailer.
pub const TRAILER_BYTES: u64 = TRAILER_LEN as u64;

/// Where the block index lies, from the trailer (the last [`TRAILER_BYTES`] of a file
/// of `file_len` bytes): `(offset, length)`.
pub fn index_location(trailer: &[u8], file_len: u64, name: &str) -> Result<(u64, u64)> {
    let bad = |why: String| Error::InvalidData(format!("range file {name}: {why}"));
    if trailer.len() != TRAILER_LEN || file_len < (MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(bad("too short to be a range file".into()));
    }
    if &trailer[12..] != TRAILER_MAGIC {
        return Err(bad("missing trailer (truncated?)".into()));
    }
    let offset = u64::from_le_bytes(trailer[..8].try_into().expect("8-byte slice"));
    let len = u64::from(u32::from_le_bytes(trailer[8..12].try_into().expect("4-byte slice")));
    let end = file_len - TRAILER_LEN as u64;
    if offset < MAGIC.len() as u64 || offset.checked_add(len) != Some(end) {
        return Err(bad(format!("index at {offset}+{len} does not end where the trailer starts ({end})")));
    }
    Ok((offset, len))
}

/// Parses a block index frame read from `offset` of a range file.
pub fn parse_index(frame_bytes: &[u8], offset: u64, name: &str, cipher: Option<&Cipher>) -> Result<Vec<BlockRef>> {
    let bad = |why: String| Error::InvalidData(format!("range file {name}: {why}"));
    let what = format!("range file {name}: block index");
    let payload = frame::decode_exact(frame_bytes, &what)?;
    let plain;
    let payload = match cipher {
        Some(c) => {
            plain = c.open_sealed(INDEX_AAD, payload, &what)?;
            plain.as_slice()
        }
        None => payload,
    };
    let mut r = Reader::new(payload, "range file block index");
    let n = r.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    let mut expect_offset = MAGIC.len() as u64;
    for i in 0..n {
        let b = BlockRef {
            offset: r.u64()?,
            len: r.u32()?,
            raw_len: r.u32()?,
            entries: r.u32()?,
            first_key: r.bytes()?.to_vec(),
            last_key: r.bytes()?.to_vec(),
        };
        if b.offset != expect_offset {
            return Err(bad(format!(
                "block {i} at offset {} but the previous block ends at {expect_offset}",
                b.offset
            )));
        }
        expect_offset += u64::from(b.len);
        if let Some(prev) = out.last() {
            let prev: &BlockRef = prev;
            if prev.last_key >= b.first_key {
                return Err(bad(format!("block {i} overlaps the key range of block {}", i - 1)));
            }
        }
        out.push(b);
    }
    r.finish()?;
    if expect_offset != offset {
        return Err(bad(format!("blocks end at {expect_offset} but the index starts at {offset}")));
    }
    Ok(out)
}

/// Decodes one block (checksum, decompression, entry count, key order and the index's
/// key bounds are all checked) into its raw entry bytes; iterate them with [`entries`].
pub fn decode_block(file: &[u8], b: &BlockRef, name: &str, cipher: Option<&Cipher>) -> Result<Vec<u8>> {
    let start = b.offset as usize;
    let end = start.checked_add(b.len as usize).filter(|&e| e <= file.len());
    let Some(end) = end else {
        return Err(Error::InvalidData(format!(
            "range file {name}: block at offset {}: extends past the end of the file",
            b.offset
        )));
    };
    decode_block_frame(&file[start..end], b, name, cipher)
}

/// [`decode_block`] for a block's frame read on its own (exactly `b.len` bytes from
/// `b.offset`): what a reader that fetches only some blocks uses.
pub fn decode_block_frame(frame_bytes: &[u8], b: &BlockRef, name: &str, cipher: Option<&Cipher>) -> Result<Vec<u8>> {
    let what = format!("range file {name}: block at offset {}", b.offset);
    let payload = frame::decode_exact(frame_bytes, &what)?;
    let mut r = Reader::new(payload, "range file block header");
    let codec = r.u8()?;
    let raw_len = r.u32()?;
    let count = r.u32()?;
    let expected = if cipher.is_some() { CODEC_ZSTD_XCHACHA } else { CODEC_ZSTD };
    if codec != expected {
        return Err(Error::InvalidData(format!(
            "{what}: codec {codec}, expected {expected} ({} backup)",
            if cipher.is_some() { "an encrypted" } else { "an unencrypted" }
        )));
    }
    if raw_len != b.raw_len || count != b.entries {
        return Err(Error::InvalidData(format!("{what}: header disagrees with the block index")));
    }
    let plain;
    let compressed = match cipher {
        Some(c) => {
            plain = c.open_sealed(&payload[..9], &payload[9..], &what)?;
            plain.as_slice()
        }
        None => &payload[9..],
    };
    let raw = UNZSTD
        .with_borrow_mut(|d| {
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("set just above").decompress(compressed, raw_len as usize)
        })
        .map_err(|e| Error::InvalidData(format!("{what}: zstd: {e}")))?;
    if raw.len() != raw_len as usize {
        return Err(Error::InvalidData(format!("{what}: decompressed to {} bytes, expected {raw_len}", raw.len())));
    }
    let mut n = 0u32;
    let mut prev: Option<&[u8]> = None;
    let mut first: Option<&[u8]> = None;
    for e in entries(&raw) {
        let (k, _) = e.map_err(|e| Error::InvalidData(format!("{what}: {}", e.message())))?;
        if prev.is_some_and(|p| p >= k) {
            return Err(Error::InvalidData(format!("{what}: keys out of order")));
        }
        first.get_or_insert(k);
        prev = Some(k);
        n += 1;
    }
    if n != count || first != Some(b.first_key.as_slice()) || prev != Some(b.last_key.as_slice()) {
        return Err(Error::InvalidData(format!("{what}: entries disagree with the block index")));
    }
    Ok(raw)
}

/// Iterates the entries of a decoded block.
pub fn entries(raw: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8])>> {
    let mut r = Reader::new(raw, "range file block entries");
    std::iter::from_fn(move || {
        if r.is_empty() {
            return None;
        }
        Some(r.bytes().and_then(|k| Ok((k, r.bytes()?))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_with(n: usize, c: Option<&Cipher>) -> Vec<u8> {
        let mut w = RangeFileWriter::default();
        let mut block = RawBlock::default();
        for i in 0..n {
            block.push(format!("key{i:06}").as_bytes(), format!("value {i}").as_bytes());
            if block.len() > 200 {
                w.add(seal(std::mem::take(&mut block), 3, c).expect("seal"));
            }
        }
        if !block.is_empty() {
            w.add(seal(block, 3, c).expect("seal"));
        }
        w.finish(c).expect("finish")
    }

    fn build(n: usize) -> Vec<u8> {
        build_with(n, None)
    }

    fn read_all(file: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        read_all_with(file, None)
    }

    fn read_all_with(file: &[u8], c: Option<&Cipher>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for b in read_index(file, "t", c)? {
            let raw = decode_block(file, &b, "t", c)?;
            for e in entries(&raw) {
                let (k, v) = e?;
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let file = build(1000);
        let all = read_all(&file).expect("read");
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999].0, b"key000999");
        assert!(read_index(&file, "t", None).expect("index").len() > 10);
    }

    #[test]
    fn encrypted_blocks_hide_keys_and_reject_tampering_and_wrong_keys() {
        let secret = crate::Secret::new("pw").expect("secret");
        let (c, _) = Cipher::create(&secret).expect("cipher");
        let file = build_with(40, Some(&c));
        assert_eq!(read_all_with(&file, Some(&c)).expect("read").len(), 40);
        assert!(!file.windows(6).any(|w| w == b"key000"), "keys must not appear in clear");
        assert!(!file.windows(5).any(|w| w == b"value"), "values must not appear in clear");
        assert!(read_all(&file).is_err(), "an encrypted file needs the key");
        let (other, _) = Cipher::create(&secret).expect("cipher");
        assert!(read_all_with(&file, Some(&other)).is_err(), "another key fails authentication");
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(read_all_with(&bad, Some(&c)).is_err(), "flip at {i} went undetected");
        }
    }

    #[test]
    fn every_flipped_byte_or_truncation_is_detected() {
        let file = build(60);
        let good = read_all(&file).expect("read");
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            // A flip may only ever yield an error — never different data.
            if let Ok(got) = read_all(&bad) {
                panic!("flip at {i} went undetected ({} entries vs {})", got.len(), good.len());
            }
        }
        for cut in 0..file.len() {
            assert!(read_all(&file[..cut]).is_err(), "truncation to {cut} went undetected");
        }
    }
}
