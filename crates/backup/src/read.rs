//! Reading a snapshot back: locating the manifest, fetching and checking range files,
//! and decoding their blocks in parallel — shared by restore and verify.

use crate::crypto::{Cipher, Secret};
use crate::dest::Destination;
use crate::format::{decode_block, entries, read_index};
use crate::manifest::{from_hex, Descriptor, FileManifest, Manifest, TableManifest, DESCRIPTOR};
use amberdb_error::{Error, Result};
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};

/// The complete snapshots in a destination, oldest first.
pub async fn snapshots(dest: &Destination) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for (p, _) in dest.list("snapshots").await? {
        let Some(hex) = p.strip_prefix("snapshots/").and_then(|r| r.strip_suffix("/manifest.json")) else {
            continue;
        };
        if let Ok(v) = u64::from_str_radix(hex, 16) {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A complete snapshot, opened: its manifest and, for encrypted backups, the key.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The manifest.
    pub manifest: Manifest,
    /// The key of an encrypted backup.
    pub cipher: Option<Cipher>,
}

/// Reads and checks the descriptor and the newest complete snapshot's manifest; an
/// encrypted backup needs `secret`, and a wrong one is a clear error.
pub async fn open_latest(dest: &Destination, secret: Option<&Secret>) -> Result<Snapshot> {
    let (_, cipher) = open_descriptor(dest, secret).await?;
    let Some(&version) = snapshots(dest).await?.last() else {
        return Err(Error::InvalidData(format!(
            "{} holds no complete backup (no snapshot has a manifest; an interrupted backup leaves none)",
            dest.url()
        )));
    };
    open_snapshot(dest, version, cipher).await
}

/// Reads and checks the descriptor and, for an encrypted backup, derives the key from
/// `secret` (a missing or wrong one is a clear error).
pub async fn open_descriptor(dest: &Destination, secret: Option<&Secret>) -> Result<(Descriptor, Option<Cipher>)> {
    let Some(raw) = dest.get(DESCRIPTOR).await? else {
        return Err(Error::InvalidInput(format!(
            "{} holds no AmberDB backup ({} is missing)",
            dest.url(),
            dest.name(DESCRIPTOR)
        )));
    };
    let descriptor = Descriptor::decode(&raw, &dest.name(DESCRIPTOR))?;
    let cipher = match (&descriptor.encryption, secret) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::InvalidInput(format!(
                "backup {} is encrypted: give its passphrase (WITH (encryption_passphrase = '…'), or --key-file)",
                dest.url()
            )))
        }
        (Some(params), Some(secret)) => {
            let (p, s, url) = (params.clone(), secret.clone(), dest.url().to_string());
            Some(
                tokio::task::spawn_blocking(move || Cipher::open(&s, &p, &url))
                    .await
                    .map_err(|e| Error::Internal(format!("key derivation: {e}")))??,
            )
        }
    };
    Ok((descriptor, cipher))
}

/// Opens the complete snapshot taken at `version`.
pub async fn open_snapshot(dest: &Destination, version: u64, cipher: Option<Cipher>) -> Result<Snapshot> {
    let path = Manifest::path_of(version);
    let m = Manifest::decode(&dest.must_get(&path).await?, &dest.name(&path), cipher.as_ref())?;
    if m.version != version {
        return Err(Error::InvalidData(format!(
            "manifest {} claims version {} but lives in the directory of version {version}",
            dest.name(&path),
            m.version
        )));
    }
    Ok(Snapshot { manifest: m, cipher })
}

/// The newest complete snapshot's manifest of an unencrypted backup.
pub async fn latest_manifest(dest: &Destination) -> Result<Manifest> {
    Ok(open_latest(dest, None).await?.manifest)
}

/// Fetches a range file and checks it against the manifest (presence, size, blake3).
pub async fn fetch_file(dest: &Destination, m: &Manifest, f: &FileManifest) -> Result<Bytes> {
    let rel = format!("{}/{}", Manifest::dir_of(m.version), f.path);
    fetch_checked(dest, &rel, "range file", "the manifest says", f.size, &f.blake3).await
}

/// Fetches `rel` and checks it is there, `size` bytes long and hashes to `blake3`;
/// errors name it as `what` and say which record (`claim`) disagrees.
pub(crate) async fn fetch_checked(
    dest: &Destination,
    rel: &str,
    what: &str,
    claim: &str,
    size: u64,
    blake3: &str,
) -> Result<Bytes> {
    let name = dest.name(rel);
    let Some(bytes) = dest.get(rel).await? else {
        return Err(Error::InvalidData(format!("{what} {name} is missing")));
    };
    if bytes.len() as u64 != size {
        return Err(Error::InvalidData(format!(
            "{what} {name} is {} bytes, {claim} {size} (truncated or replaced)",
            bytes.len()
        )));
    }
    let b = bytes.clone();
    let hash = tokio::task::spawn_blocking(move || blake3::hash(&b).to_hex().to_string())
        .await
        .map_err(|e| Error::Internal(format!("hash worker: {e}")))?;
    if hash != blake3 {
        return Err(Error::InvalidData(format!("{what} {name} does not match its blake3 hash (corrupted)")));
    }
    Ok(bytes)
}

/// One decoded block: entries as (prefix number, key, value).
pub type Entries = Vec<(usize, Vec<u8>, Vec<u8>)>;

/// Decodes every block of a file, checking that its keys lie under the table's prefixes
/// and inside the key range the manifest records.
fn decode_file_blocks(
    bytes: Bytes,
    f: &FileManifest,
    name: String,
    prefixes: Vec<Vec<u8>>,
    parallelism: usize,
    cipher: Option<Cipher>,
) -> Result<impl Stream<Item = Result<Entries>> + use<>> {
    let index = read_index(&bytes, &name, cipher.as_ref())?;
    let total: u64 = index.iter().map(|b| u64::from(b.entries)).sum();
    if index.len() != f.blocks as usize || total != f.entries {
        return Err(Error::InvalidData(format!(
            "range file {name} holds {} blocks / {total} entries, the manifest says {} / {}",
            index.len(),
            f.blocks,
            f.entries
        )));
    }
    let (first, last) = (from_hex(&f.first_key)?, from_hex(&f.last_key)?);
    if index.first().map(|b| &b.first_key) != Some(&first) || index.last().map(|b| &b.last_key) != Some(&last) {
        return Err(Error::InvalidData(format!("range file {name}: key range disagrees with the manifest")));
    }
    Ok(stream::iter(index)
        .map(move |b| {
            let bytes = bytes.clone();
            let name = name.clone();
            let prefixes = prefixes.clone();
            let cipher = cipher.clone();
            async move {
                tokio::task::spawn_blocking(move || -> Result<Entries> {
                    let raw = decode_block(&bytes, &b, &name, cipher.as_ref())?;
                    let mut out = Vec::with_capacity(b.entries as usize);
                    for e in entries(&raw) {
                        let (k, v) = e?;
                        let Some(pi) = prefixes.iter().position(|p| k.starts_with(p)) else {
                            return Err(Error::InvalidData(format!(
                                "range file {name}: a key lies outside the table's key prefixes"
                            )));
                        };
                        out.push((pi, k.to_vec(), v.to_vec()));
                    }
                    Ok(out)
                })
                .await
                .map_err(|e| Error::Internal(format!("decode worker: {e}")))?
            }
        })
        .buffered(parallelism.max(1)))
}

/// Every entry of one table, in key order, as a stream of decoded blocks. Files are
/// fetched two at a time and checked against the manifest before any block is decoded;
/// blocks are decoded by `parallelism` workers.
pub fn table_blocks<'a>(
    dest: &'a Destination,
    snap: &'a Snapshot,
    t: &'a TableManifest,
    parallelism: usize,
) -> impl Stream<Item = Result<Entries>> + 'a {
    let m = &snap.manifest;
    let prefixes = t.prefix_bytes();
    stream::iter(t.files.iter().map(move |&i| &m.files[i]))
        .map(move |f| async move { fetch_file(dest, m, f).await.map(|b| (f, b)) })
        .buffered(2)
        .map(move |r| -> Result<_> {
            let (f, bytes) = r?;
            let name = dest.name(&format!("{}/{}", Manifest::dir_of(m.version), f.path));
            let prefixes = prefixes.clone()?;
            decode_file_blocks(bytes, f, name, prefixes, parallelism, snap.cipher.clone())
        })
        .flat_map(|r| match r {
            Ok(s) => s.left_stream(),
            Err(e) => stream::once(async move { Err(e) }).right_stream(),
        })
}
