//! The descriptor (what a destination is) and the manifest (what a snapshot holds).
//!
//! A manifest is the single claim that a snapshot is complete: it is written only after
//! every file it names has been written, and it carries each file's size and blake3
//! hash, so no file can be missing, short, or altered without verify noticing. The
//! manifest protects itself with a blake3 hash of its JSON body in its first line.

use crate::crypto::{Cipher, EncryptionParams};
use amberdb_error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Name of the descriptor object at the root of a destination.
pub const DESCRIPTOR: &str = "amber-backup.json";
/// Current format version of descriptors and manifests.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST_HEADER: &str = "AMBERDB-MANIFEST 1 blake3=";
const DESCRIPTOR_HEADER: &str = "AMBERDB-BACKUP 1 blake3=";
const MANIFEST_AAD: &[u8] = b"amberdb-manifest";

/// Prefixes a JSON body with a header line carrying its blake3 hash, so a flipped byte
/// anywhere in a metadata object is detected.
pub(crate) fn seal_json(header: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{header}{}\n", blake3::hash(body).to_hex()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Checks the header line of a sealed JSON object and returns the body.
pub(crate) fn open_json<'a>(header: &str, raw: &'a [u8], what: &str) -> Result<&'a [u8]> {
    let bad = |why: &str| Error::InvalidData(format!("{what}: {why}"));
    let nl = raw.iter().position(|&b| b == b'\n').ok_or_else(|| bad("no header line (truncated?)"))?;
    let line = std::str::from_utf8(&raw[..nl]).map_err(|_| bad("header is not text"))?;
    let hash = line.strip_prefix(header).ok_or_else(|| bad("not an AmberDB backup object (bad header)"))?;
    let body = &raw[nl + 1..];
    if blake3::hash(body).to_hex().as_str() != hash {
        return Err(bad("content does not match its hash (corrupted or truncated)"));
    }
    Ok(body)
}

/// The descriptor: identifies a destination as an AmberDB backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    /// Always `amberdb-backup`.
    pub format: String,
    /// Format version.
    pub format_version: u32,
    /// When the destination was first written (RFC 3339, UTC).
    pub created_at: String,
    /// Key derivation parameters if the backup is encrypted (never the key).
    #[serde(default)]
    pub encryption: Option<EncryptionParams>,
}

impl Descriptor {
    /// A descriptor for a new destination.
    pub fn new(created_at: String, encryption: Option<EncryptionParams>) -> Self {
        Self { format: "amberdb-backup".into(), format_version: FORMAT_VERSION, created_at, encryption }
    }

    /// Serializes with the self-checking header line.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(format!("encode descriptor: {e}")))?;
        Ok(seal_json(DESCRIPTOR_HEADER, &body))
    }

    /// Parses and checks a descriptor; `name` names the object in errors.
    pub fn decode(raw: &[u8], name: &str) -> Result<Self> {
        let body = open_json(DESCRIPTOR_HEADER, raw, &format!("backup descriptor {name}"))?;
        let d: Descriptor =
            serde_json::from_slice(body).map_err(|e| Error::InvalidData(format!("backup descriptor {name}: {e}")))?;
        if d.format != "amberdb-backup" {
            return Err(Error::InvalidData(format!("{name} is not an AmberDB backup descriptor")));
        }
        if d.format_version > FORMAT_VERSION {
            return Err(Error::InvalidData(format!(
                "{name}: format version {} is newer than this build understands ({FORMAT_VERSION})",
                d.format_version
            )));
        }
        Ok(d)
    }
}

/// What was backed up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Every table.
    Database,
    /// The tables named by the statement.
    Tables,
}

/// One table in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableManifest {
    /// Table name.
    pub name: String,
    /// The table definition as the SQL layer stores it (opaque to this crate).
    pub schema: serde_json::Value,
    /// Key prefixes (hex) the table's entries live under; keys are restored under new
    /// prefixes, so everything else about a key is position-independent.
    pub prefixes: Vec<String>,
    /// Which prefix holds the rows (the others hold index entries and counters).
    pub row_prefix: usize,
    /// Number of rows.
    pub rows: u64,
    /// Number of key/value entries (rows, index entries, counters).
    pub entries: u64,
    /// Logical bytes (keys + values, uncompressed).
    pub logical_bytes: u64,
    /// `xxh3sum:` + the sum of xxh3-128 over every entry (prefix number, key without
    /// prefix, value), see `TableSum`: survives a restore under new prefixes, so a
    /// restore can prove it loaded exactly the backed-up data.
    pub checksum: String,
    /// Indexes into [`Manifest::files`], in key order.
    pub files: Vec<usize>,
}

/// One range file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileManifest {
    /// Path relative to the snapshot directory.
    pub path: String,
    /// The table it belongs to (index into [`Manifest::tables`]).
    pub table: usize,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    /// Number of blocks.
    pub blocks: u32,
    /// Number of entries.
    pub entries: u64,
    /// First key (hex).
    pub first_key: String,
    /// Last key (hex).
    pub last_key: String,
}

/// A snapshot's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version.
    pub format_version: u32,
    /// Database or selected tables.
    pub kind: BackupKind,
    /// The commit version the snapshot was read at.
    pub version: u64,
    /// Commit time of that version, microseconds since the Unix epoch.
    pub commit_time_micros: u64,
    /// Commit time, RFC 3339.
    pub commit_time: String,
    /// When the backup started and finished (RFC 3339).
    pub started_at: String,
    /// See `started_at`.
    pub finished_at: String,
    /// The AmberDB build that wrote it.
    pub amberdb_version: String,
    /// Tables, in name order.
    pub tables: Vec<TableManifest>,
    /// Range files.
    pub files: Vec<FileManifest>,
}

impl Manifest {
    /// Directory (relative to the destination) of the snapshot at `version`.
    pub fn dir_of(version: u64) -> String {
        format!("snapshots/{version:016x}")
    }

    /// Object holding the manifest of the snapshot at `version`.
    pub fn path_of(version: u64) -> String {
        format!("{}/manifest.json", Self::dir_of(version))
    }

    /// Serializes with the self-checking header line; with a cipher the JSON body is
    /// encrypted (the header's hash then covers the ciphertext).
    pub fn encode(&self, cipher: Option<&Cipher>) -> Result<Vec<u8>> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(format!("encode manifest: {e}")))?;
        let body = match cipher {
            Some(c) => c.seal(MANIFEST_AAD, &body)?,
            None => body,
        };
        Ok(seal_json(MANIFEST_HEADER, &body))
    }

    /// Parses and checks a manifest (hash, format version, internal consistency).
    pub fn decode(raw: &[u8], name: &str, cipher: Option<&Cipher>) -> Result<Self> {
        let bad = |why: String| Error::InvalidData(format!("manifest {name}: {why}"));
        let what = format!("manifest {name}");
        let body = open_json(MANIFEST_HEADER, raw, &what)?;
        let plain;
        let body = match cipher {
            Some(c) => {
                plain = c.open_sealed(MANIFEST_AAD, body, &what)?;
                plain.as_slice()
            }
            None => body,
        };
        let m: Manifest = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        if m.format_version > FORMAT_VERSION {
            return Err(bad(format!("format version {} is newer than this build understands", m.format_version)));
        }
        for (i, f) in m.files.iter().enumerate() {
            if f.table >= m.tables.len() || !m.tables[f.table].files.contains(&i) {
                return Err(bad(format!("file {} is not claimed by its table", f.path)));
            }
            if f.path.contains("..") || f.path.starts_with('/') {
                return Err(bad(format!("file path {} leaves the snapshot directory", f.path)));
            }
        }
        for t in &m.tables {
            if t.files.iter().any(|&i| i >= m.files.len()) || t.row_prefix >= t.prefixes.len().max(1) {
                return Err(bad(format!("table {} names files or prefixes that do not exist", t.name)));
            }
            t.prefix_bytes().map_err(|e| bad(e.message()))?;
        }
        Ok(m)
    }

    /// Total size of the range files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// A table by name.
    pub fn table(&self, name: &str) -> Option<(usize, &TableManifest)> {
        self.tables.iter().enumerate().find(|(_, t)| t.name == name)
    }
}

impl TableManifest {
    /// The key prefixes, decoded.
    pub fn prefix_bytes(&self) -> Result<Vec<Vec<u8>>> {
        self.prefixes.iter().map(|p| from_hex(p)).collect()
    }
}

/// Lower-case hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses lower- or upper-case hex.
pub fn from_hex(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::InvalidData(format!("bad hex string '{s}'"));
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// Running logical checksum and counts of one table's entries.
///
/// The checksum is the sum (mod 2^128) of xxh3-128 over each entry's bytes, so it does
/// not depend on the order entries are seen in: parts of a table exported or read back
/// in parallel combine with [`TableSum::merge`]. It is a consistency check of the
/// logical content; integrity against tampering is the files' blake3 (and AEAD).
#[derive(Debug, Clone)]
pub struct TableSum {
    acc: u128,
    scratch: Vec<u8>,
    row_prefix: usize,
    /// Rows seen.
    pub rows: u64,
    /// Entries seen.
    pub entries: u64,
    /// Key and value bytes seen.
    pub logical_bytes: u64,
}

impl TableSum {
    /// A checksum for a table whose rows live under prefix number `row_prefix`.
    pub fn new(row_prefix: usize) -> Self {
        Self { acc: 0, scratch: Vec::new(), row_prefix, rows: 0, entries: 0, logical_bytes: 0 }
    }

    /// Adds an entry found under prefix number `prefix`, with the prefix stripped.
    pub fn add(&mut self, prefix: usize, key_suffix: &[u8], value: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(&(prefix as u32).to_le_bytes());
        self.scratch.extend_from_slice(&(key_suffix.len() as u64).to_le_bytes());
        self.scratch.extend_from_slice(key_suffix);
        self.scratch.extend_from_slice(&(value.len() as u64).to_le_bytes());
        self.scratch.extend_from_slice(value);
        self.acc = self.acc.wrapping_add(xxhash_rust::xxh3::xxh3_128(&self.scratch));
        self.entries += 1;
        self.logical_bytes += (key_suffix.len() + value.len()) as u64;
        if prefix == self.row_prefix {
            self.rows += 1;
        }
    }

    /// Adds another part's sums.
    pub fn merge(&mut self, other: &TableSum) {
        self.acc = self.acc.wrapping_add(other.acc);
        self.rows += other.rows;
        self.entries += other.entries;
        self.logical_bytes += other.logical_bytes;
    }

    /// The checksum, hex.
    pub fn finish(&self) -> String {
        format!("xxh3sum:{:032x}", self.acc)
    }

    /// Compares with what a manifest claims; `what` names the check in errors.
    pub fn check(&self, t: &TableManifest, what: &str) -> Result<()> {
        if self.rows != t.rows || self.entries != t.entries || self.finish() != t.checksum {
            return Err(Error::InvalidData(format!(
                "{what}: table {} has {} rows / {} entries with checksum {}, but the manifest records {} rows / {} \
                 entries with checksum {}",
                t.name,
                self.rows,
                self.entries,
                self.finish(),
                t.rows,
                t.entries,
                t.checksum
            )));
        }
        Ok(())
    }
}

/// Now, RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    let us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    amberdb_mvcc::format_micros(us)
}
