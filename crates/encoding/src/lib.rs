//! # Encodings: keys that sort, values that decode, frames that check themselves
//!
//! Everything AmberDB persists goes through one of three encodings defined here:
//!
//! ```text
//!   keycode   ── order-preserving: memcmp(encode(a), encode(b)) == cmp(a, b)
//!                used for every key in the storage engine (tables, versions, indexes)
//!   codec     ── little-endian fixed ints, LEB128 varints, length-prefixed bytes;
//!                used for values (commit batches, log entries, metadata)
//!   frame     ── [len u32 LE][crc32c u32 LE][payload]; used by append-only files
//!                (the Raft commit log) so that a torn or flipped byte is detected
//! ```
//!
//! Invariants:
//! - keycode is *prefix-free per component*: a composite key is the concatenation of its
//!   components and never compares across a component boundary, so `(a, x) < (b, y)`
//!   whenever `a < b`, regardless of `x` and `y`.
//! - Decoding never panics on arbitrary input: malformed bytes are an `InvalidData` error.
//! - Persisted integers are little-endian (codec, frame) or big-endian (keycode), never
//!   host-endian.

pub mod codec;
pub mod frame;
pub mod keycode;
