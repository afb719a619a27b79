//! The lock `fleet up` holds on its data directory, so a second one there cannot start a second nats-server on
//! the same store or a second worker in the same work directory. The lock is `flock` on `fleet.lock`: the kernel
//! drops it when its holder dies, however it dies, so a stale lock is simply taken. The file says who holds it
//! (for the refusal message) and which nats-server it started (for the one that takes over after a crash).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::failure::failure;

pub struct DataLock {
    file: File,
    path: PathBuf,
    holder: Holder,
}

/// What the lock file says about the `fleet up` holding it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    #[serde(default)]
    pub nats_pid: Option<u32>,
    #[serde(default)]
    pub api: Option<String>,
}

/// What taking the lock found: a previous holder that died, and whether its nats-server had to be stopped.
pub struct Takeover {
    pub dead_pid: u32,
    pub stopped_nats: Option<u32>,
}

impl DataLock {
    /// Takes the lock on `dir`, or fails with `data_dir_in_use` naming the live holder.
    pub fn acquire(dir: &Path) -> Result<(Self, Option<Takeover>)> {
        let path = dir.join("fleet.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let previous = read_holder(&mut file);
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(in_use(dir, previous));
        }
        let takeover = previous.filter(|p| p.pid != 0).map(|p| Takeover {
            dead_pid: p.pid,
            stopped_nats: p.nats_pid.filter(|pid| stop_leftover_nats(*pid, dir)),
        });
        let mut lock = Self {
            file,
            path,
            holder: Holder {
                pid: std::process::id(),
                ..Default::default()
            },
        };
        lock.write()?;
        Ok((lock, takeover))
    }

    /// Records the managed nats-server's pid and the API's URL for whoever finds the lock next.
    pub fn record(&mut self, nats_pid: Option<u32>, api: &str) -> Result<()> {
        self.holder.nats_pid = nats_pid;
        self.holder.api = Some(api.to_string());
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        let text = serde_json::to_string(&self.holder)?;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Drop for DataLock {
    fn drop(&mut self) {
        // A clean stop leaves no holder behind, so the next start reports no takeover.
        let _ = self.file.set_len(0);
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn in_use(dir: &Path, holder: Option<Holder>) -> anyhow::Error {
    let who = match holder {
        Some(Holder {
            pid,
            api: Some(api),
            ..
        }) => format!("pid {pid}, API {api}"),
        Some(Holder { pid, .. }) => format!("pid {pid}"),
        None => "a process that is starting".into(),
    };
    failure(
        "data_dir_in_use",
        format!(
            "{} is in use by another `fleet up` ({who}); stop it, or give this one another --data-dir",
            dir.display()
        ),
    )
}

/// Stops a nats-server that a crashed `fleet up` left on this data directory; true if there was one. Only a
/// process that is nats-server with this directory's store is touched: a reused pid is left alone.
fn stop_leftover_nats(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let store = dir.join("nats");
    let is_ours = args.first().is_some_and(|a| a.ends_with(b"nats-server"))
        && args
            .iter()
            .any(|a| *a == store.as_os_str().as_encoded_bytes());
    if !is_ours {
        return false;
    }
    // SAFETY: signalling a process checked above to be our leftover nats-server.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    true
}
