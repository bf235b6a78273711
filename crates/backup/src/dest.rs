//! Destinations: where a backup's objects live (a local directory or an S3 prefix).
//!
//! Every backup object is addressed by a path relative to the destination, so the same
//! code writes, lists and reads a backup on a local disk and on S3. Errors always name
//! the full object (`<destination>/<relative path>`), because "file not found" without
//! the file is useless at 3 a.m.

use amberdb_error::{Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// S3 connection settings (from the config file's `[s3]` table or `AMBERDB_S3_*`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server (e.g. `http://127.0.0.1:9000`); unset
    /// means AWS. Setting it switches to path-style requests.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id; unset means anonymous/unsigned requests are not attempted and
    /// the AWS environment is consulted by object_store.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

/// Who names the destination: SQL statements are confined to the backup root; the CLI,
/// run by the operator on the machine, may also name absolute paths and `file://` URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A SQL statement (untrusted path: must stay under the backup root).
    Sql,
    /// The command line.
    Cli,
}

/// How destinations are resolved.
#[derive(Debug, Clone)]
pub struct DestConfig {
    /// Directory that bare and relative destination paths resolve under.
    pub backup_root: PathBuf,
    /// S3 settings for `s3://` destinations.
    pub s3: S3Config,
}

/// An opened destination.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Installs rustls' ring provider once per process (object_store's HTTP client is built
/// without a compiled-in provider to avoid a C crypto build).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Resolves `rel` under `root` lexically, refusing any path that climbs out of it.
fn under_root(root: &Path, rel: &Path, spec: &str, allow_root: bool) -> Result<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(Error::InvalidInput(format!(
                        "backup destination '{spec}' escapes the backup root {}",
                        root.display()
                    )));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::InvalidInput(format!(
                    "backup destination '{spec}' escapes the backup root {}",
                    root.display()
                )))
            }
        }
    }
    if parts.is_empty() && !allow_root {
        return Err(Error::InvalidInput(format!("backup destination '{spec}' names the backup root itself")));
    }
    Ok(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn absolute_root(root: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root.display(), format!("create backup root: {e}")))?;
    root.canonicalize().map_err(|e| Error::io(root.display(), e))
}

impl Destination {
    /// Opens a destination named by `spec`: `s3://bucket/prefix`, `file:///abs/path`
    /// (CLI only), an absolute path (CLI only, or inside the root), or a path relative to
    /// the backup root.
    pub fn open(spec: &str, cfg: &DestConfig, origin: Origin) -> Result<Self> {
        Self::open_inner(spec, cfg, origin, false)
    }

    /// Opens a directory of backups for listing: like [`Destination::open`], but the
    /// backup root itself (`.`) may be named.
    pub fn open_listing(spec: &str, cfg: &DestConfig, origin: Origin) -> Result<Self> {
        Self::open_inner(spec, cfg, origin, true)
    }

    fn open_inner(spec: &str, cfg: &DestConfig, origin: Origin, allow_root: bool) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::InvalidInput("backup destination is empty".into()));
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            return Self::open_s3(spec, rest, &cfg.s3, allow_root);
        }
        if spec.contains("://") && !spec.starts_with("file://") {
            return Err(Error::InvalidInput(format!(
                "backup destination '{spec}': unsupported scheme (use a path, file:///path or s3://bucket/prefix)"
            )));
        }
        let local = match spec.strip_prefix("file://") {
            Some(p) if !p.starts_with('/') => {
                return Err(Error::InvalidInput(format!("backup destination '{spec}': file:// needs an absolute path")))
            }
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(spec),
        };
        let path = if local.is_absolute() {
            let root = absolute_root(&cfg.backup_root)?;
            match (origin, local.strip_prefix(&root)) {
                (_, Ok(rel)) => under_root(&root, rel, spec, allow_root)?,
                (Origin::Cli, Err(_)) => {
                    under_root(Path::new("/"), local.strip_prefix("/").unwrap_or(&local), spec, false)?
                }
                (Origin::Sql, Err(_)) => {
                    return Err(Error::InvalidInput(format!(
                        "backup destination '{spec}' is outside the backup root {} (SQL may only name paths under it)",
                        root.display()
                    )))
                }
            }
        } else {
            under_root(&absolute_root(&cfg.backup_root)?, &local, spec, allow_root)?
        };
        let prefix = ObjPath::from_absolute_path(&path)
            .map_err(|e| Error::InvalidInput(format!("backup destination '{spec}': {e}")))?;
        let store = object_store::local::LocalFileSystem::new().with_fsync(true).with_automatic_cleanup(true);
        Ok(Self { store: Arc::new(store), prefix, url: path.display().to_string() })
    }

    fn open_s3(spec: &str, rest: &str, cfg: &S3Config, allow_root: bool) -> Result<Self> {
        install_crypto_provider();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidInput(format!("backup destination '{spec}': no bucket name")));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() && !allow_root {
            return Err(Error::InvalidInput(format!(
                "backup destination '{spec}': give a prefix inside the bucket (s3://{bucket}/name)"
            )));
        }
        let prefix =
            ObjPath::parse(prefix).map_err(|e| Error::InvalidInput(format!("backup destination '{spec}': {e}")))?;
        // Fail fast on an unreachable endpoint: the default retries for three minutes.
        let retry =
            object_store::RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(15), ..Default::default() };
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(cfg.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_retry(retry)
            .with_client_options(client);
        if let Some(ep) = &cfg.endpoint {
            b = b
                .with_endpoint(ep.clone())
                .with_virtual_hosted_style_request(false)
                .with_allow_http(ep.starts_with("http://"));
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k.clone());
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s.clone());
        }
        let store = b.build().map_err(|e| Error::InvalidInput(format!("backup destination '{spec}': {e}")))?;
        Ok(Self { store: Arc::new(store), prefix, url: spec.trim_end_matches('/').to_string() })
    }

    /// A destination nested inside this one.
    pub fn child(&self, rel: &str) -> Destination {
        Destination { store: self.store.clone(), prefix: self.path(rel), url: self.name(rel) }
    }

    /// The destination as the user should see it in messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full name of an object, for messages.
    pub fn name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    fn path(&self, rel: &str) -> ObjPath {
        rel.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.join(part))
    }

    fn err(&self, rel: &str, what: &str, e: object_store::Error) -> Error {
        let msg = format!("{} {}: {}", what, self.name(rel), e);
        match e {
            object_store::Error::NotFound { .. } => Error::InvalidData(msg),
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Error::InvalidInput(msg)
            }
            _ => Error::Io(msg),
        }
    }

    /// Writes (or replaces) an object.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.store.put(&self.path(rel), PutPayload::from_bytes(data)).await.map_err(|e| self.err(rel, "write", e))?;
        Ok(())
    }

    /// Writes an object that must not exist yet; an existing one is an error.
    pub async fn put_new(&self, rel: &str, data: Bytes) -> Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(rel), PutPayload::from_bytes(data), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(Error::InvalidInput(format!("{} already exists", self.name(rel))))
            }
            Err(e) => Err(self.err(rel, "write", e)),
        }
    }

    /// Reads a whole object; `None` if it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(rel, "read", e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, "read", e)),
        }
    }

    /// Reads bytes `range` of an object that must exist.
    pub async fn get_range(&self, rel: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        match self.store.get_range(&self.path(rel), range.clone()).await {
            Ok(b) if b.len() as u64 == range.end - range.start => Ok(b),
            Ok(b) => Err(Error::InvalidData(format!(
                "{}: read {} bytes at {}, got {} (truncated?)",
                self.name(rel),
                range.end - range.start,
                range.start,
                b.len()
            ))),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::InvalidData(format!("{} is missing", self.name(rel))))
            }
            Err(e) => Err(self.err(rel, "read", e)),
        }
    }

    /// Reads a whole object that must exist.
    pub async fn must_get(&self, rel: &str) -> Result<Bytes> {
        self.get(rel).await?.ok_or_else(|| Error::InvalidData(format!("{} is missing", self.name(rel))))
    }

    /// Lists objects under a relative prefix (recursively), as relative paths with sizes,
    /// in name order.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<(String, u64)>> {
        let base = self.path(rel_prefix);
        let items: Vec<object_store::ObjectMeta> = match self.store.list(Some(&base)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.err(rel_prefix, "list", e)),
        };
        let mut out: Vec<(String, u64)> = items
            .into_iter()
            .filter_map(|m| {
                let rel: Vec<String> = m.location.prefix_match(&self.prefix)?.map(|p| p.as_ref().to_string()).collect();
                Some((rel.join("/"), m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes an object; deleting a missing object is not an error (deletes are retried).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, "delete", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &Path) -> DestConfig {
        DestConfig { backup_root: root.to_path_buf(), s3: S3Config::default() }
    }

    #[test]
    fn relative_paths_stay_under_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path());
        let root = dir.path().canonicalize().expect("canonical");
        let d = Destination::open("a/b.backup", &c, Origin::Sql).expect("open");
        assert_eq!(d.url(), root.join("a/b.backup").display().to_string());
        for bad in ["../x", "a/../../x", "/etc", "file:///etc", ".", "", "ftp://x/y"] {
            assert!(Destination::open(bad, &c, Origin::Sql).is_err(), "{bad} must be refused");
        }
        assert!(Destination::open("file:///tmp/x", &c, Origin::Cli).is_ok());
        let inside = format!("{}/y", root.display());
        assert!(Destination::open(&inside, &c, Origin::Sql).is_ok());
    }

    #[test]
    fn s3_urls_need_bucket_and_prefix() {
        let c = cfg(Path::new("/tmp"));
        assert!(Destination::open("s3://", &c, Origin::Sql).is_err());
        assert!(Destination::open("s3://bucket", &c, Origin::Sql).is_err());
        assert!(Destination::open("s3://bucket/p", &c, Origin::Sql).is_ok());
    }
}
