//! Capturing one output stream of an agent: the first `cap` bytes are kept for the record, the total is
//! counted, and whenever the record's copy would not be the exact output — more than `cap` bytes, or bytes that
//! are not UTF-8 — every byte also goes to the full log file. Most jobs need no file at all. Reads are bounded
//! chunks, so a flood of output costs a fixed amount of memory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest read; the buffer starts small and grows to this only for streams that fill it, so the common tiny
/// output costs no fresh pages.
const CHUNK: usize = 64 * 1024;
const FIRST_CHUNK: usize = 4 * 1024;

#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// The first `cap` bytes, raw.
    pub head: Vec<u8>,
    /// Every byte the stream carried.
    pub total: u64,
    /// A full log file was written for this stream.
    pub logged: bool,
    /// The full log, kept open: it is stored from this descriptor, never reopened by path.
    pub log: Option<Arc<File>>,
    /// The full log stopped at its size limit (it ends with a line saying so).
    pub log_truncated: bool,
}

impl Captured {
    pub fn truncated_bytes(&self) -> u64 {
        self.total - self.head.len() as u64
    }

    /// The kept bytes as text: invalid UTF-8 becomes U+FFFD, and a character cut by the cap is dropped rather
    /// than shown as garbage.
    pub fn lossy_text(&self) -> String {
        let mut bytes = self.head.as_slice();
        if self.truncated_bytes() > 0 {
            if let Err(e) = std::str::from_utf8(bytes) {
                if e.error_len().is_none() {
                    bytes = &bytes[..e.valid_up_to()];
                }
            }
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Where a stream's full log goes and how large it may grow.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub path: PathBuf,
    /// The per-file artifact limit: a log is a stored file like any other.
    pub max_bytes: u64,
}

/// The full log of one stream, opened only once it is needed.
struct LazyLog {
    target: Option<LogTarget>,
    file: Option<Arc<File>>,
    written: u64,
    /// Writing failed (disk full): the record keeps its capped copy, logging stops.
    broken: bool,
    /// The limit was reached and the marker written.
    truncated: bool,
}

/// Creates the log where nothing may exist yet: a link, FIFO or file planted under its name fails the open
/// rather than being followed, blocked on or overwritten.
pub fn create_log(path: &std::path::Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

impl LazyLog {
    fn new(target: Option<LogTarget>) -> Self {
        Self {
            target,
            file: None,
            written: 0,
            broken: false,
            truncated: false,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.broken || self.truncated {
            return;
        }
        let Some(target) = &self.target else { return };
        if self.file.is_none() {
            match create_log(&target.path) {
                Ok(f) => self.file = Some(Arc::new(f)),
                Err(e) => {
                    tracing::warn!(error = %e, path = %target.path.display(), "cannot create the full log");
                    self.broken = true;
                    return;
                }
            }
        }
        let room = target.max_bytes.saturating_sub(self.written);
        let kept = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        let marker = (kept.len() < bytes.len()).then(|| {
            format!(
                "\n[fleet: the log stops here, at the per-file limit of {} bytes]\n",
                target.max_bytes
            )
        });
        // Page-cache writes of one chunk to a regular file the worker just created are short; a blocking call
        // here is cheaper than a thread hop.
        let Some(mut file) = self.file.as_deref() else {
            return;
        };
        let wrote = file.write_all(kept).and_then(|()| {
            marker
                .as_ref()
                .map_or(Ok(()), |m| file.write_all(m.as_bytes()))
        });
        self.written += kept.len() as u64;
        self.truncated = marker.is_some();
        if let Err(e) = wrote {
            tracing::warn!(error = %e, "writing the full log failed; the record keeps the capped copy");
            self.broken = true;
        }
    }

    fn is_open(&self) -> bool {
        self.file.is_some() || self.broken
    }

    /// Keeps `captured` current after every write, so what was logged is known even if the capture is cut off.
    fn note_in(&self, captured: &mut Captured) {
        captured.log_truncated = self.truncated;
        if captured.log.is_none() && !self.broken {
            captured.log = self.file.clone();
        }
        if self.broken {
            captured.log = None;
        }
    }
}

/// Where output goes as it is read, besides the record's copy and the full log: the job's live events.
pub trait OutputSink {
    fn chunk(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = ()> + Send;
    /// The stream ended.
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Output seen by nobody else.
pub struct NoSink;

impl OutputSink for NoSink {
    async fn chunk(&mut self, _: &[u8]) {}
    async fn finish(&mut self) {}
}

/// Reads `source` to its end into `captured`, which holds what was read so far even if this future is dropped
/// early. Log write failures never stop the reading, so the agent is never blocked on a full pipe.
pub async fn capture(
    mut source: impl AsyncRead + Unpin,
    log_target: Option<LogTarget>,
    cap: usize,
    captured: &mut Captured,
    sink: &mut impl OutputSink,
) {
    let mut log = LazyLog::new(log_target);
    let mut buf = vec![0u8; FIRST_CHUNK];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pseudo-terminal's master reads EIO once every slave end is closed: its end of file.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!(error = %e, "reading agent output failed");
                break;
            }
        };
        if n == buf.len() && buf.len() < CHUNK {
            buf.resize(CHUNK, 0);
        }
        let chunk = &buf[..n];
        captured.total += n as u64;
        captured.logged = captured.logged || n > cap.saturating_sub(captured.head.len());
        let room = cap.saturating_sub(captured.head.len());
        let kept = room.min(n);
        captured.head.extend_from_slice(&chunk[..kept]);
        if kept < n {
            if !log.is_open() {
                // The log starts with what the head already holds, so it is the whole stream.
                let head_before = captured.head.len() - kept;
                log.write(&captured.head[..head_before]);
                log.write(&chunk[..kept]);
            }
            log.write(&chunk[kept..]);
            log.note_in(captured);
        }
        sink.chunk(chunk).await;
    }
    sink.finish().await;
    if !log.is_open() && std::str::from_utf8(&captured.head).is_err() {
        captured.logged = true;
        log.write(&captured.head);
        log.note_in(captured);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_at(path: &std::path::Path) -> Option<LogTarget> {
        Some(LogTarget {
            path: path.to_path_buf(),
            max_bytes: 1 << 30,
        })
    }

    #[tokio::test]
    async fn keeps_a_capped_head_and_counts_everything_while_logging_all() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut c = Captured::default();
        capture(&data[..], log_at(&path), 1000, &mut c, &mut NoSink).await;
        assert!(c.logged);
        assert_eq!(c.total, 200_000);
        assert_eq!(c.head, &data[..1000]);
        assert_eq!(c.truncated_bytes(), 199_000);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn short_valid_output_needs_no_log_but_invalid_bytes_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut c = Captured::default();
        capture(&b"hello\n"[..], log_at(&path), 1000, &mut c, &mut NoSink).await;
        assert_eq!(c.head, b"hello\n");
        assert!(!path.exists() && !c.logged);
        let raw = b"ok \xff\n";
        let mut c = Captured::default();
        capture(&raw[..], log_at(&path), 1000, &mut c, &mut NoSink).await;
        assert!(c.logged);
        assert_eq!(c.head, raw);
        assert_eq!(std::fs::read(&path).unwrap(), raw);
    }

    #[test]
    fn lossy_text_replaces_invalid_bytes_and_drops_a_cut_character() {
        let c = Captured {
            head: b"ok\xffok".to_vec(),
            total: 5,
            ..Default::default()
        };
        assert_eq!(c.lossy_text(), "ok\u{fffd}ok");
        // "é" is two bytes; the cap kept only the first.
        let c = Captured {
            head: b"ab\xc3".to_vec(),
            total: 4,
            ..Default::default()
        };
        assert_eq!(c.lossy_text(), "ab");
    }
}
