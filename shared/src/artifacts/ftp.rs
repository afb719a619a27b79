//! The FTP backend (plain or explicit FTPS) behind [`super::ArtifactStore`]. Operations borrow a logged-in binary-mode
//! connection from a small pool; a connection that saw any error is dropped, never reused. Uploads go to a
//! temporary name and are renamed into place, so a crash mid-upload never leaves a partial file under the real name.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream, TransferStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use super::{clamp, hex_digest, Download, StoreError, StoreKey, READ_CHUNK};
use crate::config::TargetConfig;

type Conn = AsyncRustlsFtpStream;
type Transfer = TransferStream<suppaftp::tokio::AsyncRustlsStream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle logged-in connections kept for reuse.
const POOL: usize = 4;

pub(super) struct FtpStore {
    host: String,
    port: u16,
    user: String,
    password: String,
    /// Directory all keys live under, without a trailing `/` (empty: the login directory's root `/`).
    base: String,
    passive: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<Conn>>,
    /// How the store is named in messages and record locations: `ftp://user@host:port/base`.
    pub(super) url: String,
}

impl FtpStore {
    pub(super) fn new(cfg: &TargetConfig) -> Result<Self, StoreError> {
        let tls = cfg
            .ftp_tls
            .then(|| tls_config(&cfg.ftp_ca_file))
            .transpose()?;
        let base = format!("/{}", cfg.ftp_base_path.trim_matches('/'))
            .trim_end_matches('/')
            .to_string();
        let user = if cfg.ftp_user.is_empty() || cfg.ftp_user == "anonymous" {
            String::new()
        } else {
            format!("{}@", url_encode(&cfg.ftp_user))
        };
        let scheme = if cfg.ftp_tls { "ftps" } else { "ftp" };
        Ok(Self {
            url: format!(
                "{scheme}://{user}{}:{}{}",
                cfg.ftp_host,
                cfg.ftp_port,
                url_encode(&base)
            ),
            host: cfg.ftp_host.clone(),
            port: cfg.ftp_port,
            user: if cfg.ftp_user.is_empty() {
                "anonymous".into()
            } else {
                cfg.ftp_user.clone()
            },
            password: cfg.ftp_password.clone(),
            base,
            passive: cfg.ftp_passive,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn err(&self, source: FtpError) -> StoreError {
        StoreError::Ftp {
            store: self.url.clone(),
            source,
        }
    }

    /// The server path of `key`: the file's real name, not object_store's percent-encoded form of it.
    pub(super) fn path(&self, key: &StoreKey) -> String {
        format!("{}/{}", self.base, raw_name(key))
    }

    /// The record location of `key`: a URL the seed systems' users can open with any FTP client.
    pub(super) fn location(&self, key: &StoreKey) -> String {
        format!("{}/{}", self.url, url_encode(&raw_name(key)))
    }

    async fn connect(&self) -> Result<Conn, FtpError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                FtpError::ConnectionError(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} took over {CONNECT_TIMEOUT:?}"),
                ))
            })?
            .map_err(FtpError::ConnectionError)?;
        tcp.set_nodelay(true).map_err(FtpError::ConnectionError)?;
        let mut conn = Conn::connect_with_stream(tcp).await?;
        if let Some(tls) = &self.tls {
            let connector =
                AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(tls.clone()));
            conn = conn.into_secure(connector, &self.host).await?;
        }
        if !self.passive {
            conn = conn.active_mode(Duration::from_secs(30));
        }
        conn.login(self.user.as_str(), self.password.as_str())
            .await?;
        // suppaftp starts in ASCII mode, which would rewrite line endings (and some servers refuse SIZE in it).
        conn.transfer_type(FileType::Binary).await?;
        Ok(conn)
    }

    /// A pooled connection that still answers, or a new one.
    async fn checkout(&self) -> Result<Conn, StoreError> {
        loop {
            let pooled = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            let Some(mut conn) = pooled else { break };
            if conn.noop().await.is_ok() {
                return Ok(conn);
            }
        }
        self.connect().await.map_err(|e| self.err(e))
    }

    fn checkin(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < POOL {
                idle.push(conn);
            }
        }
    }

    /// Stores `source` under `key`: its size and SHA-256.
    pub(super) async fn upload(
        &self,
        key: &StoreKey,
        source: &super::Source,
    ) -> Result<(u64, String), StoreError> {
        let read_err = |e| StoreError::Read {
            store: self.url.clone(),
            path: source.label().to_string(),
            source: e,
        };
        let target = self.path(key);
        let dir = target.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let partial = format!("{dir}/.{}.partial", uuid::Uuid::now_v7());
        let mut conn = self.checkout().await?;
        let mut file = source.async_reader().await.map_err(read_err)?;
        let mut transfer = match conn.put_with_stream(&partial).await {
            Ok(t) => t,
            // The job's directory does not exist yet: create it and try once more.
            Err(e) if is_unavailable(&e) => {
                self.make_dirs(&mut conn, dir).await?;
                conn.put_with_stream(&partial)
                    .await
                    .map_err(|e| self.err(e))?
            }
            Err(e) => return Err(self.err(e)),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            transfer
                .write_all(&buf[..n])
                .await
                .map_err(|e| self.err(FtpError::ConnectionError(e)))?;
        }
        transfer.finish().await.map_err(|e| self.err(e))?;
        if let Err(e) = conn.rename(&partial, &target).await {
            // Cleanup of a failed upload; the failure itself is what is reported.
            let _ = conn.rm(&partial).await;
            return Err(self.err(e));
        }
        self.checkin(conn);
        Ok((size, hex_digest(hasher)))
    }

    /// `MKD` for every level of `dir`, the base path included; levels that already exist answer 550, which is
    /// fine (a real problem shows when the upload is retried).
    async fn make_dirs(&self, conn: &mut Conn, dir: &str) -> Result<(), StoreError> {
        let mut at = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            at = format!("{at}/{part}");
            match conn.mkdir(&at).await {
                Ok(()) => {}
                Err(e) if is_unavailable(&e) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(())
    }

    pub(super) async fn check(&self) -> Result<(), StoreError> {
        let conn = self.checkout().await?;
        self.checkin(conn);
        Ok(())
    }

    pub(super) async fn size(&self, key: &StoreKey) -> Result<u64, StoreError> {
        let mut conn = self.checkout().await?;
        let size = conn.size(self.path(key)).await.map_err(|e| self.err(e))?;
        self.checkin(conn);
        Ok(size as u64)
    }

    pub(super) async fn download(
        self: &Arc<Self>,
        key: &StoreKey,
        range: Option<Range<u64>>,
    ) -> Result<Download, StoreError> {
        let path = self.path(key);
        let mut conn = self.checkout().await?;
        let size = conn.size(&path).await.map_err(|e| self.err(e))? as u64;
        let range = clamp(range, size);
        if range.start > 0 {
            conn.resume_transfer(range.start as usize)
                .await
                .map_err(|e| self.err(e))?;
        }
        let transfer = conn.retr_as_stream(&path).await.map_err(|e| self.err(e))?;
        let state = Reading {
            store: self.clone(),
            conn,
            transfer: Some(transfer),
            left: range.end - range.start,
        };
        let body = futures::stream::unfold(state, Reading::next).boxed();
        Ok(Download { size, range, body })
    }

    /// Deletes the file at `key`; one already gone is no error.
    pub(super) async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let mut conn = self.checkout().await?;
        match conn.rm(self.path(key)).await {
            Ok(()) => {}
            Err(e) if is_unavailable(&e) => {}
            Err(e) => return Err(self.err(e)),
        }
        self.checkin(conn);
        Ok(())
    }

    /// Deletes files under `dir` (a key prefix) last modified before `cutoff`, and the directories that leaves
    /// empty. Safe beside other sweepers: whatever another one removed first is skipped.
    pub(super) async fn delete_older_than(
        &self,
        dir: &str,
        cutoff: SystemTime,
    ) -> Result<usize, StoreError> {
        let mut conn = self.checkout().await?;
        let root = format!("{}/{}", self.base, dir.trim_matches('/'));
        let mut deleted = 0;
        // Depth-first, children before parents, so emptied directories can be removed on the way back.
        let mut stack = vec![(root.clone(), false)];
        while let Some((dir, visited)) = stack.pop() {
            if visited {
                if dir != root {
                    // A directory still holding files stays; that is the point of trying.
                    let _ = conn.rmdir(&dir).await;
                }
                continue;
            }
            let lines = match conn.mlsd(Some(&dir)).await {
                Ok(lines) => lines,
                Err(e) if is_unavailable(&e) => continue,
                Err(e) => return Err(self.err(e)),
            };
            stack.push((dir.clone(), true));
            for line in lines {
                let Ok(entry) = suppaftp::list::ListParser::parse_mlsd(&line) else {
                    continue;
                };
                let path = format!("{dir}/{}", entry.name());
                if entry.is_directory() {
                    stack.push((path, false));
                } else if entry.is_file() && entry.modified() < cutoff {
                    match conn.rm(&path).await {
                        Ok(()) => deleted += 1,
                        Err(e) if is_unavailable(&e) => {}
                        Err(e) => return Err(self.err(e)),
                    }
                }
            }
        }
        self.checkin(conn);
        Ok(deleted)
    }
}

/// A download in progress: the connection comes back to the pool only if the transfer completed cleanly.
struct Reading {
    store: Arc<FtpStore>,
    conn: Conn,
    transfer: Option<Transfer>,
    left: u64,
}

impl Reading {
    async fn next(mut self) -> Option<(Result<Bytes, StoreError>, Self)> {
        let mut transfer = self.transfer.take()?;
        if self.left == 0 {
            // A range that ends before the file does leaves the server mid-send: that connection is dropped.
            let mut probe = [0u8; 1];
            if matches!(transfer.read(&mut probe).await, Ok(0)) && transfer.finish().await.is_ok() {
                self.store.checkin(self.conn);
            }
            return None;
        }
        let want = self.left.min(READ_CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        match transfer.read(&mut buf).await {
            Ok(0) => {
                let err = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the server ended the transfer {} bytes early", self.left),
                );
                Some((Err(self.store.err(FtpError::ConnectionError(err))), self))
            }
            Ok(n) => {
                buf.truncate(n);
                self.left -= n as u64;
                self.transfer = Some(transfer);
                Some((Ok(buf.freeze()), self))
            }
            Err(e) => Some((Err(self.store.err(FtpError::ConnectionError(e))), self)),
        }
    }
}

/// 550: no such file or directory (or it exists already, for MKD).
fn is_unavailable(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r) if r.status == Status::FileUnavailable)
}

pub(super) fn is_not_found(e: &FtpError) -> bool {
    is_unavailable(e)
}

fn tls_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        if let Err(e) = roots.add(cert) {
            tracing::debug!(error = %e, "a system certificate rustls cannot use is left out");
        }
    }
    if !ca_file.is_empty() {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| StoreError::Config(format!("ftp_ca_file {ca_file}: {e}")))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| StoreError::Config(format!("ftp_ca_file {ca_file}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| StoreError::Config(format!("ftp_ca_file {ca_file}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("FTPS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `key` with each part percent-decoded (object_store encodes non-ASCII and a few reserved characters).
fn raw_name(key: &StoreKey) -> String {
    key.parts()
        .map(|part| percent_decode(part.as_ref()))
        .collect::<Vec<_>>()
        .join("/")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes what may not appear raw in a URL path (keeps `/` and unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn locations_are_valid_urls_and_paths_are_real_names() {
        assert_eq!(super::url_encode("/a b/ü.txt"), "/a%20b/%C3%BC.txt");
        let key = super::StoreKey::from_iter(["jobs", "ü 100%.txt"]);
        assert_eq!(super::raw_name(&key), "jobs/ü 100%.txt");
    }
}
