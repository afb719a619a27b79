//! A file to store, opened and checked once. Uploads read from this descriptor and never from its path again, and
//! never more than the size that was checked: a job's leftover process cannot swap the file for a link between
//! the check and the read, nor grow it past the caps it passed.

use std::fs::File;
use std::io::{self, Read, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(Debug, Clone)]
pub struct Source {
    file: Arc<File>,
    size: u64,
    /// What the file is, for error messages (a workspace-relative name or a path of the fleet's own).
    label: String,
}

impl Source {
    /// `file` is already checked to be a regular file; at most `size` bytes of it are stored.
    pub fn new(file: File, size: u64, label: impl Into<String>) -> Self {
        Self {
            file: Arc::new(file),
            size,
            label: label.into(),
        }
    }

    /// A file of the fleet's own (a spooled upload): opened by path, which only the fleet writes.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self::new(file, size, path.display().to_string()))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The checked bytes from the start, for blocking code.
    pub(crate) fn reader(&self) -> impl Read {
        Positional {
            file: self.file.clone(),
            pos: 0,
            end: self.size,
        }
    }

    /// The checked bytes from the start, for async code (each call starts over, so a retried upload is whole).
    pub(crate) async fn async_reader(&self) -> io::Result<impl tokio::io::AsyncRead + Unpin> {
        let mut file = tokio::fs::File::from_std(self.file.try_clone()?);
        file.seek(SeekFrom::Start(0)).await?;
        Ok(file.take(self.size))
    }
}

/// Reads by offset, so readers of one descriptor never move each other's position.
struct Positional {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Positional {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
