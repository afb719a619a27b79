//! What confines an agent besides its scrubbed environment: rlimits, another user, no network. Applied in the
//! child between fork and exec (only for agents that ask for any of it: the others keep the cheaper spawn path),
//! and read back after the run to name the limit a failed job hit.

use fleet_shared::lifecycle::Killed;
use std::ffi::CString;
use std::io;

use fleet_shared::config::{AgentConfig, AgentLimits};

use crate::output::Captured;
use crate::supervisor::Ending;

/// The confinement of one run, resolved before the fork (the child may only make async-signal-safe calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub limits: AgentLimits,
    /// uid and gid to run as.
    pub user: Option<(libc::uid_t, libc::gid_t)>,
    /// No other job runs as `user` meanwhile (a uid leased from the agent's range): every process of that user
    /// is this job's, which is how they are all ended where no cgroup is.
    pub sole_user: bool,
    pub no_network: bool,
}

impl Sandbox {
    /// The agent's confinement; with a uid range, `leased` is the uid this job holds from it.
    pub fn for_agent(agent: &AgentConfig, leased: Option<libc::uid_t>) -> io::Result<Self> {
        let user = match (leased, agent.run_as.as_deref()) {
            (Some(uid), _) => Some((uid, uid)),
            (None, None | Some("")) => None,
            (None, Some(name)) => Some(resolve_user(name)?),
        };
        Ok(Self {
            limits: agent.limits,
            user,
            sole_user: leased.is_some(),
            no_network: !agent.network,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Runs in the child before exec, which shares the worker's memory until then: only async-signal-safe
    /// system calls that change the calling process alone, no allocation.
    pub fn apply_in_child(&self) -> io::Result<()> {
        let set = |resource, value: Option<u64>, slack: u64| -> io::Result<()> {
            if let Some(v) = value {
                let limit = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v.saturating_add(slack) as libc::rlim_t,
                };
                // SAFETY: setrlimit with a valid struct is async-signal-safe.
                if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        let l = &self.limits;
        // The soft CPU limit sends SIGXCPU; the hard one, a little later, SIGKILL for agents that catch it.
        set(libc::RLIMIT_CPU, l.cpu_secs, 2)?;
        set(libc::RLIMIT_AS, l.memory_bytes, 0)?;
        set(libc::RLIMIT_FSIZE, l.file_bytes, 0)?;
        set(libc::RLIMIT_NOFILE, l.open_files, 0)?;
        set(libc::RLIMIT_NPROC, l.processes, 0)?;
        if self.no_network {
            // SAFETY: unshare is a plain system call.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid)) = self.user {
            // Group first: after setuid the process may no longer change it. Raw system calls, not glibc's
            // wrappers: those change every thread of a threaded process, and the child shares the worker's memory
            // (and so its thread list) until exec.
            // SAFETY: plain system calls with valid arguments, changing only the calling process.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setgid, gid) != 0
                    || libc::syscall(libc::SYS_setuid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// The limit a run that ended this way most likely hit, as recorded (`cpu_limit`, ...).
    pub fn limit_hit(
        &self,
        ending: Ending,
        cpu_ms: u64,
        stderr: &Captured,
        stdout: &Captured,
    ) -> Option<Killed> {
        let l = &self.limits;
        if l.is_empty() {
            return None;
        }
        let failed = ending != Ending::Exited(0);
        let said = |needles: &[&str]| {
            let text = |c: &Captured| String::from_utf8_lossy(&c.head).into_owned();
            let (err, out) = (text(stderr), text(stdout));
            needles.iter().any(|n| err.contains(n) || out.contains(n))
        };
        if let Some(cpu) = l.cpu_secs {
            let spent = cpu_ms + 50 >= cpu * 1000;
            if ending == Ending::Signaled(libc::SIGXCPU)
                || (ending == Ending::Signaled(libc::SIGKILL) && spent)
            {
                return Some(Killed::CpuLimit);
            }
        }
        if l.file_bytes.is_some()
            && (ending == Ending::Signaled(libc::SIGXFSZ)
                || ending == Ending::Exited(128 + libc::SIGXFSZ)
                || (failed && said(&["File too large"])))
        {
            return Some(Killed::FileSizeLimit);
        }
        if l.memory_bytes.is_some()
            && failed
            && said(&[
                "MemoryError",
                "Cannot allocate memory",
                "out of memory",
                "memory allocation of",
                "bad_alloc",
            ])
        {
            return Some(Killed::MemoryLimit);
        }
        if l.processes.is_some()
            && failed
            && said(&[
                "Resource temporarily unavailable",
                "BlockingIOError",
                "fork: retry",
                "Cannot fork",
            ])
        {
            return Some(Killed::ProcessLimit);
        }
        if l.open_files.is_some() && failed && said(&["Too many open files"]) {
            return Some(Killed::OpenFilesLimit);
        }
        None
    }
}

/// Ends every process of `uid` (the fallback where a job has no cgroup, for a uid only this job uses). A helper
/// child takes the uid and sends SIGKILL to every process it may signal, which is exactly that user's; the kernel
/// does it in one pass, and a process with SIGKILL pending can fork no more.
pub fn kill_every_process_of(uid: libc::uid_t) -> io::Result<()> {
    let mut helper = std::process::Command::new("/bin/true");
    // SAFETY: only async-signal-safe calls; the child exits in the hook and never execs.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut helper, move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(1);
            }
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0)
        });
    }
    let status = helper.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot take uid {uid} to end its processes"
        )))
    }
}

/// A uid per running job, from the agent's `run_as` range.
#[derive(Default)]
pub struct UidPool {
    in_use: std::sync::Mutex<std::collections::HashSet<libc::uid_t>>,
}

/// A uid this job holds; given back when dropped.
pub struct UidLease<'a> {
    pool: &'a UidPool,
    pub uid: libc::uid_t,
}

impl UidPool {
    /// A uid of `range` no running job holds. Validation makes every range at least `max_concurrent` long, so
    /// one is always free.
    pub fn lease(&self, range: std::ops::RangeInclusive<u32>) -> io::Result<UidLease<'_>> {
        let mut in_use = self
            .in_use
            .lock()
            .map_err(|_| io::Error::other("uid pool poisoned"))?;
        let uid = range
            .into_iter()
            .find(|uid| !in_use.contains(uid))
            .ok_or_else(|| io::Error::other("every uid of the agent's run_as range is in use"))?;
        in_use.insert(uid);
        Ok(UidLease { pool: self, uid })
    }
}

impl Drop for UidLease<'_> {
    fn drop(&mut self) {
        if let Ok(mut in_use) = self.pool.in_use.lock() {
            in_use.remove(&self.uid);
        }
    }
}

/// `name` or `uid[:gid]` → uid and gid.
fn resolve_user(spec: &str) -> io::Result<(libc::uid_t, libc::gid_t)> {
    if let Some((uid, gid)) = spec.split_once(':') {
        if let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) {
            return Ok((uid, gid));
        }
    }
    if let Ok(uid) = spec.parse::<libc::uid_t>() {
        return Ok((uid, uid));
    }
    let name = CString::new(spec)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad user name"))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once, before any other call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("run_as: no user `{spec}` on this machine"),
        ));
    }
    // SAFETY: non-null pointer to a passwd entry.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok((uid, gid))
}

/// Hands the job's directories to the agent's user, so it can write its workspace and temporary files.
pub fn give_dirs(user: (libc::uid_t, libc::gid_t), dirs: &[std::path::PathBuf]) -> io::Result<()> {
    for dir in dirs {
        std::os::unix::fs::chown(dir, Some(user.0), Some(user.1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_of_a_leased_uid_is_ended_without_a_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // Taking another uid needs root; CI runs as root.
        }
        let uid = 61_987;
        let mut daemon = std::process::Command::new("sleep");
        daemon.arg("60");
        // SAFETY: async-signal-safe calls only.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut daemon, move || {
                libc::setsid();
                if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = daemon.spawn().unwrap();
        kill_every_process_of(uid).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn leased_uids_are_distinct_until_given_back() {
        let pool = UidPool::default();
        let a = pool.lease(100..=101).unwrap();
        let b = pool.lease(100..=101).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(pool.lease(100..=101).is_err());
        drop(a);
        assert!(pool.lease(100..=101).is_ok());
    }
}
