//! Capturing one output stream of an agent: every byte goes to the full log file (lossless), the first
//! `cap` bytes are kept for the record, and the total is counted. Reads are bounded chunks, so a flood of output
//! costs a fixed amount of memory.

use std::fs::File;
use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};

const CHUNK: usize = 64 * 1024;

#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// The first `cap` bytes, raw.
    pub head: Vec<u8>,
    /// Every byte the stream carried.
    pub total: u64,
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

/// Reads `source` to its end. Log write failures (disk full) stop logging but never the reading, so the agent is
/// never blocked on a full pipe.
pub async fn capture(
    mut source: impl AsyncRead + Unpin,
    mut log: Option<File>,
    cap: usize,
) -> Captured {
    let mut captured = Captured::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading agent output failed");
                break;
            }
        };
        let chunk = &buf[..n];
        captured.total += n as u64;
        let room = cap.saturating_sub(captured.head.len());
        captured.head.extend_from_slice(&chunk[..room.min(n)]);
        if let Some(file) = log.as_mut() {
            // Page-cache writes of one chunk are short; a blocking call here is cheaper than a thread hop.
            if let Err(e) = file.write_all(chunk) {
                tracing::warn!(error = %e, "writing the full log failed; the record keeps the capped copy");
                log = None;
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_a_capped_head_and_counts_everything_while_logging_all() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let c = capture(&data[..], Some(File::create(&path).unwrap()), 1000).await;
        assert_eq!(c.total, 200_000);
        assert_eq!(c.head, &data[..1000]);
        assert_eq!(c.truncated_bytes(), 199_000);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn lossy_text_replaces_invalid_bytes_and_drops_a_cut_character() {
        let c = Captured {
            head: b"ok\xffok".to_vec(),
            total: 5,
        };
        assert_eq!(c.lossy_text(), "ok\u{fffd}ok");
        // "é" is two bytes; the cap kept only the first.
        let c = Captured {
            head: b"ab\xc3".to_vec(),
            total: 4,
        };
        assert_eq!(c.lossy_text(), "ab");
    }
}
