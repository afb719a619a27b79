//! A cgroup v2 per running job, so a job's processes end with the job whatever they did to get away
//! (`setsid`, double forks, re-parenting to init): the process group misses those, the cgroup does not.
//! The child joins its cgroup itself before exec, so nothing of the agent ever runs outside it. Only confined
//! agents get one (moving a process into a cgroup took about 0.5 ms here, half a spawn; unconfined agents run as
//! the worker's own user, so the worker is not what they could be contained from). At the job's end
//! `cgroup.kill` ends every member, and the worker waits until the cgroup is empty before it reads the workspace.
//! Where no writable cgroup v2 hierarchy with `cgroup.kill` exists, jobs run without one and the worker says so
//! once at start-up.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Longest wait for the members of a killed cgroup to be gone.
const EMPTY_DEADLINE: Duration = Duration::from_secs(5);

/// The worker's own subtree, under which each job gets a cgroup.
pub struct Cgroups {
    base: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

/// One job's cgroup. Dropping it kills what is left in it and gives the directory back for reuse.
pub struct JobCgroup<'a> {
    owner: &'a Cgroups,
    dir: PathBuf,
    procs: File,
}

impl Cgroups {
    /// The subtree for this worker, under the cgroup the worker itself is in; `None` where there is none to use.
    pub fn find() -> Option<Self> {
        let mount = cgroup2_mount()?;
        let own = own_cgroup()?;
        static WORKERS: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "fleet-{}-{}",
            std::process::id(),
            WORKERS.fetch_add(1, Ordering::Relaxed)
        );
        let parent = mount.join(own.trim_start_matches('/'));
        end_stale(&parent);
        let base = parent.join(name);
        std::fs::create_dir(&base).ok()?;
        if !base.join("cgroup.kill").exists() {
            // Before Linux 5.14: no cgroup.kill.
            let _ = std::fs::remove_dir(&base);
            return None;
        }
        Some(Self {
            base,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.base
    }

    /// A cgroup for one job: empty, ready to take its processes.
    pub fn lease(&self) -> io::Result<JobCgroup<'_>> {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let dir = match reused {
            Some(dir) => dir,
            None => {
                let dir = self
                    .base
                    .join(format!("job-{}", self.next.fetch_add(1, Ordering::Relaxed)));
                std::fs::create_dir(&dir)?;
                dir
            }
        };
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(JobCgroup {
            owner: self,
            dir,
            procs,
        })
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // A poisoned pool leaves its directories to the next worker's start-up sweep.
        let dirs: Vec<PathBuf> = self.free.lock().map(|f| f.clone()).unwrap_or_default();
        for dir in dirs {
            // Empty by construction (killed and waited for); a failure leaves an empty cgroup behind.
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}

impl JobCgroup<'_> {
    /// The descriptor the child writes `0` to (itself) before exec.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Kills every process in the cgroup and waits until none is left.
    pub async fn kill_all(&self) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.kill"), b"1")?;
        let mut pause = Duration::from_micros(200);
        let deadline = tokio::time::Instant::now() + EMPTY_DEADLINE;
        while self.is_populated()? {
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "processes still in the job's cgroup after cgroup.kill",
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(())
    }

    fn is_populated(&self) -> io::Result<bool> {
        let events = std::fs::read_to_string(self.dir.join("cgroup.events"))?;
        Ok(events
            .lines()
            .any(|l| l.split_once(' ') == Some(("populated", "1"))))
    }
}

impl Drop for JobCgroup<'_> {
    fn drop(&mut self) {
        // Normally already empty; if not (a run cut short), nothing of the job may outlive it.
        if self.is_populated().unwrap_or(true) {
            let _ = std::fs::write(self.dir.join("cgroup.kill"), b"1");
            // A cgroup still emptying is not reused; it is removed when the worker stops.
            return;
        }
        if let Ok(mut free) = self.owner.free.lock() {
            free.push(self.dir.clone());
        }
    }
}

/// Ends what jobs of workers that died without cleaning up (SIGKILL) left behind: their agents were still
/// running in the dead worker's cgroups.
fn end_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fleet-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Ok(jobs) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for job in jobs.flatten().filter(|j| j.path().is_dir()) {
            // Best effort: a cgroup that will not empty stays, and is tried again at the next start.
            let _ = std::fs::write(job.path().join("cgroup.kill"), b"1");
            for _ in 0..50 {
                if std::fs::remove_dir(job.path()).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if std::fs::remove_dir(entry.path()).is_ok() {
            tracing::info!(cgroup = %entry.path().display(), "ended the leftovers of a worker that died");
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` in hybrid mode).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}
