//! Where job artifacts live: one interface over local disk, S3-compatible servers and memory (tests) through
//! `object_store`, and FTP through suppaftp ([`ftp`]). Layout: `<prefix>/<job_id>/<name>`, with the job's full logs
//! under `<prefix>/<job_id>/_logs/`.

mod ftp;
mod source;
pub mod targets;

pub use source::Source;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::config::TargetConfig;

/// A key in an artifact store.
pub type StoreKey = StorePath;

/// Files up to this size are uploaded in one request; larger ones in parts of this size (S3's minimum is 5 MiB).
const PART: usize = 8 * 1024 * 1024;
/// Parts of one file in flight at once: memory per upload stays near PART × (this + 1), whatever the size.
const PARTS_IN_FLIGHT: usize = 2;
/// Read size while hashing and feeding multipart uploads.
pub(crate) const READ_CHUNK: usize = 1024 * 1024;
/// Read size of local-store downloads.
const LOCAL_READ_CHUNK: usize = 256 * 1024;
/// Folder, beside the job's files, holding its full logs.
pub const LOGS_DIR: &str = "_logs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("artifact store `{store}`: {source}")]
    Store {
        store: String,
        source: object_store::Error,
    },
    #[error("artifact store `{store}`: reading {path}: {source}")]
    Read {
        store: String,
        path: String,
        source: std::io::Error,
    },
    #[error("artifact store `{store}`: {source}")]
    Ftp {
        store: String,
        source: suppaftp::FtpError,
    },
    #[error("artifact store misconfigured: {0}")]
    Config(String),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Store { source, .. } => matches!(source, object_store::Error::NotFound { .. }),
            Self::Ftp { source, .. } => ftp::is_not_found(source),
            _ => false,
        }
    }
}

/// What an upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
    pub location: String,
}

/// A readable slice of a stored object.
pub struct Download {
    pub size: u64,
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

#[derive(Clone)]
pub struct ArtifactStore {
    backend: Backend,
    /// Where objects are, as a URL prefix for records (`file:///…`, `s3://bucket`, `ftp://host:21/base`, `memory://`).
    base_url: String,
    prefix: String,
}

#[derive(Clone)]
enum Backend {
    Object {
        inner: Arc<dyn ObjectStore>,
        /// The same store when it is a local directory: files are then copied by the kernel, not buffered.
        local: Option<Arc<object_store::local::LocalFileSystem>>,
        /// The same store when it can hand out presigned URLs (S3).
        signer: Option<Arc<object_store::aws::AmazonS3>>,
    },
    Ftp(Arc<ftp::FtpStore>),
}

impl ArtifactStore {
    /// A store for `target`, with keys under `prefix`.
    pub fn new(target: &TargetConfig, prefix: &str) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/').to_string();
        let mut local = None;
        let mut signer = None;
        let (inner, base_url): (Arc<dyn ObjectStore>, String) = match target.backend.as_str() {
            "local" => {
                std::fs::create_dir_all(&target.local_dir).map_err(|e| {
                    StoreError::Config(format!("{}: {e}", target.local_dir.display()))
                })?;
                let dir = std::fs::canonicalize(&target.local_dir)
                    .map_err(|e| StoreError::Config(e.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StoreError::Config(e.to_string()))?;
                let store = Arc::new(store);
                local = Some(store.clone());
                (store, format!("file://{}", dir.display()))
            }
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&target.s3_bucket)
                    .with_region(&target.s3_region)
                    .with_virtual_hosted_style_request(!target.s3_path_style);
                if !target.s3_endpoint.is_empty() {
                    b = b
                        .with_endpoint(&target.s3_endpoint)
                        .with_allow_http(target.s3_endpoint.starts_with("http://"));
                }
                if !target.s3_access_key_id.is_empty() {
                    b = b
                        .with_access_key_id(&target.s3_access_key_id)
                        .with_secret_access_key(&target.s3_secret_access_key);
                }
                let store = Arc::new(b.build().map_err(|e| StoreError::Config(e.to_string()))?);
                signer = Some(store.clone());
                (store, format!("s3://{}", target.s3_bucket))
            }
            "ftp" => {
                let store = ftp::FtpStore::new(target)?;
                return Ok(Self {
                    base_url: store.url.clone(),
                    backend: Backend::Ftp(Arc::new(store)),
                    prefix,
                });
            }
            "memory" => (
                Arc::new(object_store::memory::InMemory::new()),
                "memory://".to_string(),
            ),
            other => return Err(StoreError::Config(format!("unknown backend `{other}`"))),
        };
        Ok(Self {
            backend: Backend::Object {
                inner,
                local,
                signer,
            },
            base_url,
            prefix,
        })
    }

    /// The fleet's default store as configured in `[artifacts]`.
    pub fn from_config(cfg: &crate::config::ArtifactsConfig) -> Result<Self, StoreError> {
        Self::new(&cfg.default_target(), &cfg.prefix)
    }

    fn err(&self, source: object_store::Error) -> StoreError {
        StoreError::Store {
            store: self.base_url.clone(),
            source,
        }
    }

    /// The store's name in messages and records.
    pub fn name(&self) -> &str {
        &self.base_url
    }

    /// Key of artifact `name` (a relative path with `/` separators) of job `id`.
    pub fn key(&self, id: &Uuid, name: &str) -> StorePath {
        let mut parts: Vec<String> = Vec::new();
        if !self.prefix.is_empty() {
            parts.extend(self.prefix.split('/').map(str::to_string));
        }
        parts.push(id.to_string());
        parts.extend(name.split('/').map(str::to_string));
        StorePath::from_iter(
            parts
                .iter()
                .map(|p| object_store::path::PathPart::from(p.as_str())),
        )
    }

    pub fn location(&self, key: &StorePath) -> String {
        match &self.backend {
            Backend::Ftp(ftp) => ftp.location(key),
            Backend::Object { .. } => format!("{}/{}", self.base_url, key),
        }
    }

    /// Stores the file at `path` (one of the fleet's own, such as a spooled upload) under `key`.
    pub async fn upload_file(&self, key: &StorePath, path: &Path) -> Result<Uploaded, StoreError> {
        let opening = path.to_path_buf();
        let source = tokio::task::spawn_blocking(move || Source::open(&opening))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| StoreError::Read {
                store: self.base_url.clone(),
                path: path.display().to_string(),
                source,
            })?;
        self.upload(key, &source).await
    }

    /// Stores `source` under `key` and returns its size and SHA-256. Memory stays bounded whatever the file's
    /// size: a local store gets one blocking copy, a remote one a multipart upload with few parts in flight.
    pub async fn upload(&self, key: &StorePath, source: &Source) -> Result<Uploaded, StoreError> {
        let read_err = |e| StoreError::Read {
            store: self.base_url.clone(),
            path: source.label().to_string(),
            source: e,
        };
        if let Backend::Object {
            local: Some(local), ..
        } = &self.backend
        {
            let (size, sha256) = self.copy_local(local, key, source).await?;
            return Ok(Uploaded {
                size,
                sha256,
                location: self.location(key),
            });
        }
        let (size, sha256) = match &self.backend {
            Backend::Ftp(ftp) => ftp.upload(key, source).await?,
            Backend::Object { inner, .. } if source.size() <= PART as u64 => {
                let mut data = Vec::with_capacity(source.size() as usize);
                let mut reader = source.async_reader().await.map_err(read_err)?;
                reader.read_to_end(&mut data).await.map_err(read_err)?;
                let sha = hex_digest(Sha256::new_with_prefix(&data));
                let size = data.len() as u64;
                inner
                    .put(key, PutPayload::from(data))
                    .await
                    .map_err(|e| self.err(e))?;
                (size, sha)
            }
            Backend::Object { inner, .. } => self.put_in_parts(inner, key, source).await?,
        };
        Ok(Uploaded {
            size,
            sha256,
            location: self.location(key),
        })
    }

    /// Copies a file into a local store in one blocking step (each `tokio::fs` call is a trip to the blocking
    /// pool, and a small file used to take seven): its size and SHA-256.
    async fn copy_local(
        &self,
        local: &object_store::local::LocalFileSystem,
        key: &StorePath,
        source: &Source,
    ) -> Result<(u64, String), StoreError> {
        let target = local.path_to_filesystem(key).map_err(|e| self.err(e))?;
        let from = source.clone();
        let copied = tokio::task::spawn_blocking(move || copy_and_hash(&from, &target))
            .await
            .unwrap_or_else(|e| Err(LocalCopyError::Target(std::io::Error::other(e))));
        copied.map_err(|e| match e {
            LocalCopyError::Source(e) => StoreError::Read {
                store: self.base_url.clone(),
                path: source.label().to_string(),
                source: e,
            },
            LocalCopyError::Target(e) => StoreError::Read {
                store: self.base_url.clone(),
                path: key.to_string(),
                source: e,
            },
        })
    }

    async fn put_in_parts(
        &self,
        inner: &Arc<dyn ObjectStore>,
        key: &StorePath,
        source: &Source,
    ) -> Result<(u64, String), StoreError> {
        let read_err = |e| StoreError::Read {
            store: self.base_url.clone(),
            path: source.label().to_string(),
            source: e,
        };
        let mut file = source.async_reader().await.map_err(read_err)?;
        let upload = inner.put_multipart(key).await.map_err(|e| self.err(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // The read error is the one to report; a failed abort only leaves parts the store expires.
                    let _ = writer.abort().await;
                    return Err(read_err(e));
                }
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(self.err(e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| self.err(e))?;
        Ok((size, hex_digest(hasher)))
    }

    /// Reads `key`, or the byte range of it given (`start..end`, end exclusive, clamped to the object).
    pub async fn download(
        &self,
        key: &StorePath,
        range: Option<Range<u64>>,
    ) -> Result<Download, StoreError> {
        let inner = match &self.backend {
            Backend::Ftp(ftp) => return ftp.download(key, range).await,
            Backend::Object {
                local: Some(local), ..
            } => return self.read_local(local, key, range).await,
            Backend::Object { inner, .. } => inner,
        };
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = inner
            .get_opts(key, options)
            .await
            .map_err(|e| self.err(e))?;
        let size = got.meta.size;
        let range = got.range.clone();
        let store = self.base_url.clone();
        let body = got
            .into_stream()
            .map(move |r| {
                r.map_err(|source| StoreError::Store {
                    store: store.clone(),
                    source,
                })
            })
            .boxed();
        Ok(Download { size, range, body })
    }

    /// A local file read in large chunks: object_store's local reads are 8 KiB each, a thread hand-off apiece,
    /// which halved the gateway's download rate of large files. A range of up to one chunk is read whole in the
    /// same blocking step that opens the file: a hand-off each for open, stat, read and end of file were most of
    /// a small file's download time.
    async fn read_local(
        &self,
        local: &object_store::local::LocalFileSystem,
        key: &StorePath,
        range: Option<Range<u64>>,
    ) -> Result<Download, StoreError> {
        let path = local.path_to_filesystem(key).map_err(|e| self.err(e))?;
        let io_err = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => self.err(object_store::Error::NotFound {
                path: key.to_string(),
                source: Box::new(source),
            }),
            _ => StoreError::Read {
                store: self.base_url.clone(),
                path: key.to_string(),
                source,
            },
        };
        let opened = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            let range = clamp(range, size);
            if range.start > 0 {
                file.seek(std::io::SeekFrom::Start(range.start))?;
            }
            let len = range.end - range.start;
            let whole = if len <= LOCAL_READ_CHUNK as u64 {
                let mut data = vec![0; len as usize];
                file.read_exact(&mut data)?;
                Some(Bytes::from(data))
            } else {
                None
            };
            Ok((file, size, range, whole))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let (file, size, range, whole) = opened.map_err(io_err)?;
        if let Some(data) = whole {
            let body = futures::stream::once(async move { Ok(data) }).boxed();
            return Ok(Download { size, range, body });
        }
        let store = self.base_url.clone();
        let name = key.to_string();
        let file = tokio::fs::File::from_std(file);
        let reader = tokio::io::AsyncReadExt::take(file, range.end - range.start);
        let body = tokio_util::io::ReaderStream::with_capacity(reader, LOCAL_READ_CHUNK)
            .map(move |r| {
                r.map_err(|source| StoreError::Read {
                    store: store.clone(),
                    path: name.clone(),
                    source,
                })
            })
            .boxed();
        Ok(Download { size, range, body })
    }

    /// Deletes every stored object under the prefix last modified before `cutoff`; returns how many. Safe to run
    /// from many processes at once: an object another sweeper removed first is simply gone.
    pub async fn delete_older_than(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, StoreError> {
        self.delete_in(&self.prefix, cutoff).await
    }

    /// Deletes every object kept under `id` (`<prefix>/<id>/…`); returns how many.
    pub async fn delete_under(&self, id: &Uuid) -> Result<usize, StoreError> {
        let dir = match self.prefix.as_str() {
            "" => id.to_string(),
            prefix => format!("{prefix}/{id}"),
        };
        let everything = chrono::Utc::now() + chrono::Duration::days(1);
        let deleted = self.delete_in(&dir, everything).await?;
        if let Backend::Object {
            local: Some(local), ..
        } = &self.backend
        {
            if let Ok(path) = local.path_to_filesystem(&StorePath::from(dir.as_str())) {
                // A local disk's directories are its own: those the deletion emptied go too. (Not in the
                // sweeper's deletions: an upload may be about to write into a directory found empty.)
                let _ = tokio::task::spawn_blocking(move || remove_empty_dirs(&path)).await;
            }
        }
        Ok(deleted)
    }

    async fn delete_in(
        &self,
        dir: &str,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, StoreError> {
        let inner = match &self.backend {
            Backend::Ftp(ftp) => return ftp.delete_older_than(dir, cutoff.into()).await,
            Backend::Object { inner, .. } => inner,
        };
        let prefix = (!dir.is_empty()).then(|| StorePath::from(dir));
        let mut listing = inner.list(prefix.as_ref());
        let mut deleted = 0;
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.err(e)),
            };
            if meta.last_modified >= cutoff {
                continue;
            }
            match inner.delete(&meta.location).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(deleted)
    }

    /// Deletes the object at `key`; one already gone is no error.
    pub async fn delete(&self, key: &StorePath) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Ftp(ftp) => ftp.delete(key).await,
            Backend::Object { inner, .. } => match inner.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err(e)),
            },
        }
    }

    /// A URL that lets its holder GET `key` straight from the store for `expires_in`; `None` when the store
    /// cannot sign (local disk, memory).
    pub async fn presigned_get(
        &self,
        key: &StorePath,
        expires_in: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        use object_store::signer::Signer;
        let Backend::Object {
            signer: Some(signer),
            ..
        } = &self.backend
        else {
            return Ok(None);
        };
        let url = signer
            .signed_url(object_store::signer::Method::GET, key, expires_in)
            .await
            .map_err(|e| self.err(e))?;
        Ok(Some(url.to_string()))
    }

    /// Proves the store is reachable and the credentials work (an FTP login, an S3 listing, a local directory
    /// that exists), without writing anything.
    pub async fn check(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Ftp(ftp) => ftp.check().await,
            Backend::Object { inner, .. } => {
                let prefix = StorePath::from(self.prefix.as_str());
                inner
                    .list_with_delimiter(Some(&prefix))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.err(e))
            }
        }
    }

    /// Size of `key`.
    pub async fn size(&self, key: &StorePath) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Ftp(ftp) => ftp.size(key).await,
            Backend::Object { inner, .. } => {
                Ok(inner.head(key).await.map_err(|e| self.err(e))?.size)
            }
        }
    }
}

/// The byte range to serve of an object of `size` bytes: the one asked for, clamped to the object (as
/// object_store does; the gateway has already refused ranges outside it), or all of it.
pub(crate) fn clamp(range: Option<Range<u64>>, size: u64) -> Range<u64> {
    match range {
        Some(r) => {
            let start = r.start.min(size);
            start..r.end.clamp(start, size)
        }
        None => 0..size,
    }
}

enum LocalCopyError {
    Source(std::io::Error),
    Target(std::io::Error),
}

/// Copies `source` to `target` under a temporary name and renames it, so a crash never leaves a partial file under
/// the real name. Returns the size and SHA-256 of what was copied (read once, hashed as it is written).
fn copy_and_hash(source: &Source, target: &Path) -> Result<(u64, String), LocalCopyError> {
    use std::io::{Read, Write};
    use LocalCopyError::{Source as Src, Target};
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(Target)?;
    }
    let partial = target.with_file_name(format!(".{}.partial", Uuid::now_v7()));
    let copied = (|| {
        let mut reader = source.reader();
        let mut out = std::fs::File::create(&partial).map_err(Target)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; LOCAL_READ_CHUNK.min(source.size() as usize).max(1)];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Src(e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(Target)?;
            size += n as u64;
        }
        std::fs::rename(&partial, target).map_err(Target)?;
        Ok((size, hex_digest(hasher)))
    })();
    if copied.is_err() {
        // The copy's own error is the one to report; the partial file may not even exist.
        let _ = std::fs::remove_file(&partial);
    }
    copied
}

pub(crate) fn hex_digest(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Content type from the file name; `application/octet-stream` when unknown.
pub fn content_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

/// Is `name` a safe relative artifact name: non-empty `/`-separated parts, none empty, `.` or `..`, no NUL or
/// backslash, not absolute?
/// Longest part of a stored name once the store has encoded it (object_store percent-encodes non-ASCII bytes
/// three for one): what file systems take for one name.
pub const MAX_STORED_PART: usize = 255;

/// Why `name` cannot be stored under its own name, if it cannot.
pub fn stored_name_problem(name: &str) -> Option<String> {
    name.split('/').find_map(|part| {
        let encoded = object_store::path::PathPart::from(part).as_ref().len();
        (encoded > MAX_STORED_PART).then(|| {
            format!("a part of the name is {encoded} bytes once encoded for storage; the limit is {MAX_STORED_PART}")
        })
    })
}

/// Names the fleet uses for itself beside a job's files (its logs, its manifest): never an input, never an
/// output of the job.
pub fn is_reserved_name(name: &str) -> bool {
    name == LOGS_DIR || name.starts_with(&format!("{LOGS_DIR}/"))
}

pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && !name.contains(['\0', '\\'])
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// Removes `dir` and every directory beneath it that holds nothing else; a directory still holding files stays.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    // Fails, as it should, while anything is left inside.
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> ArtifactStore {
        let cfg = crate::config::Config::load(
            &crate::config::Sources::default().with_override("artifacts.backend", "memory"),
        )
        .unwrap();
        ArtifactStore::from_config(&cfg.artifacts).unwrap()
    }

    fn local(dir: &Path) -> ArtifactStore {
        let sources = crate::config::Sources::default()
            .with_override("artifacts.local_dir", dir.to_string_lossy());
        ArtifactStore::from_config(&crate::config::Config::load(&sources).unwrap().artifacts)
            .unwrap()
    }

    #[tokio::test]
    async fn upload_hashes_and_ranges_read_back_in_every_backend() {
        let root = tempfile::tempdir().unwrap();
        for store in [memory(), local(root.path())] {
            check_round_trip(store).await;
        }
    }

    async fn check_round_trip(store: ArtifactStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(PART + 1000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let key = store.key(&Uuid::nil(), "sub dir/ünï code.bin");
        let up = store.upload_file(&key, &path).await.unwrap();
        assert_eq!(up.size, data.len() as u64);
        assert_eq!(up.sha256, hex_digest(Sha256::new_with_prefix(&data)));
        let d = store.download(&key, Some(10..20)).await.unwrap();
        let body: Vec<Bytes> = d.body.map(|b| b.unwrap()).collect().await;
        assert_eq!(body.concat(), &data[10..20]);
        assert_eq!((d.size, d.range), (data.len() as u64, 10..20));
        assert!(store
            .download(&store.key(&Uuid::nil(), "missing"), None)
            .await
            .err()
            .unwrap()
            .is_not_found());
    }

    #[tokio::test]
    async fn sweeping_deletes_only_what_is_older_than_the_cutoff() {
        let root = tempfile::tempdir().unwrap();
        let store = local(root.path());
        let file = root.path().join("src");
        std::fs::write(&file, b"x").unwrap();
        let old = store.key(&Uuid::nil(), "old.txt");
        store.upload_file(&old, &file).await.unwrap();
        let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let new = store.key(&Uuid::nil(), "new.txt");
        store.upload_file(&new, &file).await.unwrap();
        assert_eq!(store.delete_older_than(cutoff).await.unwrap(), 1);
        assert!(store.size(&old).await.err().unwrap().is_not_found());
        assert_eq!(store.size(&new).await.unwrap(), 1);
        // Twice is harmless.
        assert_eq!(store.delete_older_than(cutoff).await.unwrap(), 0);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "a/./b",
            "a\0b",
            "a\\..\\b",
            ".",
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        for good in [
            "report.pdf",
            "out/data 1.csv",
            "ünïcode/файл.txt",
            "..hidden",
            "a..b",
        ] {
            assert!(is_safe_name(good), "{good:?}");
        }
    }

    #[test]
    fn names_are_measured_as_the_store_encodes_them() {
        assert_eq!(stored_name_problem(&"a".repeat(255)), None);
        assert!(stored_name_problem(&"a".repeat(256)).is_some());
        // 124 bytes of two-byte characters: 372 once percent-encoded.
        assert!(stored_name_problem(&format!("dir/{}", "é".repeat(62))).is_some());
        assert_eq!(stored_name_problem(&"é".repeat(40)), None);
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("a.png"), "image/png");
        assert_eq!(content_type("a.unknownext"), "application/octet-stream");
    }
}
