//! A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands in on
//! fd 3, answers and events out on fd 4, each a JSON text ended by NUL). Enough of the protocol for the bench to
//! time a page load the way a person meets it; no websocket client, no Node.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct Browser {
    child: Child,
    commands: std::fs::File,
    messages: Receiver<Value>,
    /// Events read while waiting for an answer, oldest first.
    events: Vec<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// One tab in a browser context of its own (no cache, cookies or storage shared with any other).
pub struct Tab {
    context: String,
    session: String,
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile.
    pub fn launch(chromium: &Path) -> Result<Self> {
        let profile = tempfile::tempdir()?;
        let (to_browser_read, to_browser) = pipe()?;
        let (from_browser, from_browser_write) = pipe()?;
        // Above the descriptors being placed, so neither `dup2` below overwrites the other's source.
        let inbound = high_duplicate(to_browser_read.as_raw_fd())?;
        let outbound = high_duplicate(from_browser_write.as_raw_fd())?;
        let (inbound_fd, outbound_fd) = (inbound.as_raw_fd(), outbound.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || place(inbound_fd, 3).and_then(|()| place(outbound_fd, 4)));
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", chromium.display()))?;
        drop((to_browser_read, from_browser_write, inbound, outbound));
        Ok(Self {
            child,
            commands: std::fs::File::from(to_browser),
            messages: read_messages(from_browser),
            events: Vec::new(),
            next_id: 0,
            _profile: profile,
        })
    }

    /// Sends `method` (to the page of `session`, or to the browser) and waits for its answer.
    pub fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        within: Duration,
    ) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut text = serde_json::to_vec(&message)?;
        text.push(0);
        self.commands
            .write_all(&text)
            .context("Chromium closed its pipe")?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut message = match self.messages.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => bail!("{method}: no answer within {within:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("{method}: Chromium exited"),
            };
            if message["id"].as_u64() != Some(id) {
                self.events.push(message);
                continue;
            }
            if let Some(error) = message.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(message["result"].take());
        }
    }

    /// The events received so far, emptied.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// A blank tab in a new browser context, attached so its page can be driven.
    pub fn open_tab(&mut self) -> Result<Tab> {
        let second = Duration::from_secs(10);
        let context = self.call(None, "Target.createBrowserContext", json!({}), second)?
            ["browserContextId"]
            .as_str()
            .context("no browser context id")?
            .to_string();
        let params = json!({ "url": "about:blank", "browserContextId": context });
        let target = self.call(None, "Target.createTarget", params, second)?["targetId"].take();
        let params = json!({ "targetId": target, "flatten": true });
        let session = self.call(None, "Target.attachToTarget", params, second)?["sessionId"]
            .as_str()
            .context("no session id")?
            .to_string();
        Ok(Tab { context, session })
    }

    /// Closes `tab` and forgets its context.
    pub fn close_tab(&mut self, tab: Tab) -> Result<()> {
        let params = json!({ "browserContextId": tab.context });
        self.call(
            None,
            "Target.disposeBrowserContext",
            params,
            Duration::from_secs(10),
        )?;
        Ok(())
    }
}

impl Tab {
    pub fn session(&self) -> &str {
        &self.session
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killed, not asked: its renderer processes go with it, and nothing it holds needs saving.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NUL-separated JSON texts from `pipe`, parsed on a thread of their own.
fn read_messages(pipe: OwnedFd) -> Receiver<Value> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(std::fs::File::from(pipe));
        let mut text = Vec::new();
        while reader.read_until(0, &mut text).is_ok_and(|n| n > 0) {
            if text.last() == Some(&0) {
                text.pop();
            }
            let parsed = serde_json::from_slice(&text);
            text.clear();
            // A text that does not parse is not an answer anyone waits for.
            let Ok(message) = parsed else { continue };
            if send.send(message).is_err() {
                return;
            }
        }
    });
    receive
}

/// A pipe's (read, write) ends, both closed on exec.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both were just opened and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn high_duplicate(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: `fd` is open; the duplicate is owned by the value returned.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `copy` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// In the child: `from` becomes descriptor `to`, kept across exec.
fn place(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 is async-signal-safe; the new descriptor has no close-on-exec flag.
    match unsafe { libc::dup2(from, to) } {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    }
}
