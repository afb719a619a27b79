//! hyper answers a request it cannot parse (headers past its buffer, a malformed request line) itself, before
//! any handler runs, with a bare status and an empty body. This wraps each connection's socket and turns exactly
//! those answers into the gateway's problem bodies, so every refusal a client gets carries a stable code. hyper
//! writes such an answer as one head with `content-length: 0` and no content type, which no answer of the
//! gateway's own has (every error of ours is a JSON problem body).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use fleet_shared::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's socket whose parse-error answers become problem bodies.
pub struct ProblemIo<T> {
    inner: T,
    /// A rewritten answer still being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ProblemIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The problem body for a bare parse-error head of hyper's, if `head` is one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, rest) = text.split_once("\r\n")?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let (code, message) = match status.split(' ').next()? {
        "431" => (
            ErrorCode::HeadersTooLarge,
            "the request's headers are larger than the gateway takes",
        ),
        "400" => (
            ErrorCode::MalformedRequest,
            "the request is not well-formed HTTP",
        ),
        _ => return None,
    };
    let headers = rest
        .strip_suffix("\r\n\r\n")
        .or_else(|| (rest == "\r\n").then_some(""))?;
    let lower = headers.to_ascii_lowercase();
    let bare = lower.lines().any(|l| l.trim() == "content-length: 0")
        && !lower.lines().any(|l| l.starts_with("content-type:"));
    if !bare {
        return None;
    }
    let body = serde_json::to_vec(&crate::http::error::Problem {
        code,
        message: message.to_string(),
        request_id: uuid::Uuid::now_v7().to_string(),
        error: None,
    })
    .ok()?;
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes what is left of a rewritten answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.pending {
            if *sent == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(rewritten) = rewrite(buf) {
            self.pending = Some((rewritten, 0));
            // The caller's bytes are taken; the answer in their place goes out before anything else.
            // Pending bytes are written by the next poll; only an error matters now.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        // A parse-error answer is a head alone: one slice.
        if let [only] = bufs {
            if let Some(rewritten) = rewrite(only) {
                self.pending = Some((rewritten, 0));
                // Pending bytes are written by the next poll; only an error matters now.
                let _ = self.drain(cx)?;
                return Poll::Ready(Ok(only.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_parse_error_heads_become_problem_bodies_and_nothing_else_changes() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains("date: x"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "headers_too_large");
        // The gateway's own answers, and other statuses, pass untouched.
        for own in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 12\r\n\r\n",
        ] {
            assert_eq!(rewrite(own), None);
        }
    }
}
