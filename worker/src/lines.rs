//! A byte stream cut into lines, each at most a bounded length, so a hostile model server or agent cannot make
//! the worker hold an endless line.

/// Longest line taken whole (an event or a JSON line).
pub const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The lines `chunk` completes (without their `\n` or `\r\n`), as text (invalid UTF-8 becomes U+FFFD).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..at]);
            out.push(self.take());
            rest = &rest[at + 1..];
        }
        self.pending.extend_from_slice(rest);
        out
    }

    /// The line begun so far is longer than [`MAX_LINE`]: the reader gives it up ([`Lines::drain`]) or fails.
    pub fn is_too_long(&self) -> bool {
        self.pending.len() > MAX_LINE
    }

    /// The bytes of the line begun so far, given up (a line too long to take whole).
    pub fn drain(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
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
        assert_eq!(lines.push(b"data: a\r\nda"), vec!["data: a"]);
        assert_eq!(lines.push(b"ta: b\n\nlast"), vec!["data: b", ""]);
        assert_eq!(lines.finish().as_deref(), Some("last"));
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut lines = Lines::default();
        let big = vec![b'x'; MAX_LINE / 2 + 1];
        assert_eq!(lines.push(b"whole\n").len(), 1);
        lines.push(&big);
        assert!(!lines.is_too_long());
        let mut tail = b"done\n".to_vec();
        tail.extend_from_slice(&big);
        tail.extend_from_slice(&big);
        assert_eq!(
            lines.push(&tail).len(),
            1,
            "lines before the long one are kept"
        );
        assert!(lines.is_too_long());
        assert_eq!(lines.drain().len(), big.len() * 2);
        assert!(!lines.is_too_long());
    }
}
