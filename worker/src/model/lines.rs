//! A byte stream cut into lines, each at most a bounded length, so a hostile server cannot make the worker
//! hold an endless line.

/// Longest line taken from a model server (an event or NDJSON object).
pub const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

impl Lines {
    /// The lines `chunk` completes (without their `\n` or `\r\n`), as text (invalid UTF-8 becomes U+FFFD).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, TooLong> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..at]);
            out.push(self.take());
            rest = &rest[at + 1..];
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_LINE {
            return Err(TooLong);
        }
        Ok(out)
    }

    /// What is left after the stream's end: a last line without its newline.
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        let line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"data: a\r\nda").unwrap(), vec!["data: a"]);
        assert_eq!(lines.push(b"ta: b\n\nlast").unwrap(), vec!["data: b", ""]);
        assert_eq!(lines.finish().as_deref(), Some("last"));
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut lines = Lines::default();
        let big = vec![b'x'; MAX_LINE / 2 + 1];
        assert!(lines.push(&big).is_ok());
        assert_eq!(lines.push(&big), Err(TooLong));
    }
}
