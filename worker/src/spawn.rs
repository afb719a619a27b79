//! Starting an agent's process: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, then in the child its setup and
//! `execve`. The child borrows the calling thread's memory and a stack kept for the thread, so no page tables are
//! copied (as `fork` does, which the standard library uses whenever a hook must run in the child) and no stack is
//! mapped and unmapped (as glibc's `posix_spawn` does on every call); the pidfd comes with the process.
//!
//! The child runs in the caller's address space until `execve`: it makes plain system calls only, on values
//! prepared before the clone, never allocates, and reports a failure through memory it shares with the parent.
//! It dies with the thread that started it (`PR_SET_PDEATHSIG`): the runtime's threads live as long as the
//! worker, so an agent does not outlive a worker killed with SIGKILL.

use std::cell::Cell;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// Where a program is searched for when its environment gives no `PATH` (and the worker has none either).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The child's stack: its setup and the hook's system calls need a few KiB; a guard page below catches the rest.
const STACK_BYTES: usize = 256 * 1024;
const GUARD_BYTES: usize = 4096;

/// What the child runs, prepared before the clone so that the child only reads it.
pub struct Program {
    paths: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

impl Program {
    /// `argv[0]` is found as `execvp` finds it, by the child: as given when it holds a `/`, else in the `PATH` of
    /// `env` (or the worker's own when `env` has none).
    pub fn new(argv: &[String], env: &[(String, String)], cwd: &Path) -> io::Result<Self> {
        let first = argv.first().ok_or_else(|| invalid("an empty command"))?;
        let search = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok());
        Ok(Self {
            paths: candidates(first, search.as_deref().unwrap_or(DEFAULT_PATH))?,
            argv: argv
                .iter()
                .map(|a| c_string(OsStr::new(a)))
                .collect::<io::Result<_>>()?,
            envp: env
                .iter()
                .map(|(k, v)| c_string(OsStr::new(&format!("{k}={v}"))))
                .collect::<io::Result<_>>()?,
            cwd: c_string(cwd.as_os_str())?,
        })
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| invalid("a NUL byte in the command, its environment or its directory"))
}

/// Where `execve` is tried, in order: `program` itself when it holds a `/`, else it in each `search` directory.
/// The child tries them as the agent's user, so a directory only the worker may read is passed over.
fn candidates(program: &str, search: &str) -> io::Result<Vec<CString>> {
    if program.contains('/') {
        return Ok(vec![c_string(OsStr::new(program))?]);
    }
    search
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .map(|candidate| c_string(candidate.as_os_str()))
        .collect()
}

/// The child's standard streams: the fds that become its 0, 1 and 2.
pub struct Stdio<'a> {
    pub stdin: &'a OwnedFd,
    pub stdout: &'a OwnedFd,
    pub stderr: &'a OwnedFd,
}

/// Run in the child after its streams, process group and directory are set, before `execve`. It must make only
/// async-signal-safe system calls that change nothing of the parent's (the memory is shared): setrlimit,
/// raw set*id calls, a write to a cgroup's `cgroup.procs`.
pub type Hook<'a> = &'a dyn Fn() -> io::Result<()>;

/// A started process: its pid, and a pidfd that becomes readable when it exits.
pub struct Started {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// Everything the child reads, and where it writes its error.
struct Child<'a> {
    paths: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    hook: Option<Hook<'a>>,
    /// The worker's pid, to tell whether it died before the child asked to die with it.
    parent: libc::pid_t,
    /// The errno of the step that failed; 0 once `execve` succeeded (the parent resumes only then).
    errno: AtomicI32,
}

/// Starts `program` in its own process group with `stdio`, running `hook` in the child before `execve`. Returns
/// once the child has executed the program, or with the error of the step that failed (the child is reaped).
pub fn spawn(program: &Program, stdio: Stdio<'_>, hook: Option<Hook<'_>>) -> io::Result<Started> {
    let pointers = |list: &[CString]| -> Vec<*const libc::c_char> {
        list.iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let (argv, envp) = (pointers(&program.argv), pointers(&program.envp));
    let paths: Vec<*const libc::c_char> = program.paths.iter().map(|c| c.as_ptr()).collect();
    // Sources at 3 and above, so that putting one on 0, 1 or 2 never overwrites another still to be placed.
    let [stdin, stdout, stderr] = [stdio.stdin, stdio.stdout, stdio.stderr].map(above_stdio);
    let fds = [stdin?, stdout?, stderr?];
    let child = Child {
        paths: &paths,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: program.cwd.as_ptr(),
        fds: fds.each_ref().map(|f| f.as_raw_fd()),
        hook,
        errno: AtomicI32::new(0),
        parent: worker_pid(),
    };
    let (pid, pidfd) = STACK.with(|stack| clone_child(stack, &child))?;
    // SAFETY: CLONE_PIDFD handed us this new fd; we are its only owner.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    match child.errno.load(Ordering::Acquire) {
        0 => Ok(Started { pid, pidfd }),
        errno => {
            // The child has exited (CLONE_VFORK resumed us): reap it, its status says nothing more.
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// `fd` itself when it is above 2, else a close-on-exec duplicate that is.
fn above_stdio(fd: &OwnedFd) -> io::Result<FdRef<'_>> {
    if fd.as_raw_fd() > 2 {
        return Ok(FdRef::Borrowed(fd));
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd or -1.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd.
    Ok(FdRef::Owned(unsafe { OwnedFd::from_raw_fd(dup) }))
}

enum FdRef<'a> {
    Borrowed(&'a OwnedFd),
    Owned(OwnedFd),
}

impl AsRawFd for FdRef<'_> {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            FdRef::Borrowed(fd) => fd.as_raw_fd(),
            FdRef::Owned(fd) => fd.as_raw_fd(),
        }
    }
}

/// Clones the child onto this thread's stack with every signal blocked (no handler of the worker's may run in a
/// child sharing its memory), and restores the mask once the child has executed or exited.
fn clone_child(stack: &ChildStack, child: &Child<'_>) -> io::Result<(libc::pid_t, RawFd)> {
    let top = stack.top()?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: sigset_t is plain data, filled by sigfillset; the masks are the calling thread's own.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: `top` is the 16-byte aligned top of a mapped stack only this thread's children use, one at a time
    // (CLONE_VFORK suspends this thread until the child has executed or exited). `child` outlives the child's
    // use of it for the same reason. With CLONE_PIDFD the pidfd is written where the parent-tid pointer points.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            flags,
            child as *const Child<'_> as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let cloned = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((pid, pidfd))
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    cloned
}

/// The child, in the parent's memory: plain system calls only, then `execve`, or `_exit` with the errno kept.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` the parent keeps alive while suspended in clone.
    let child = unsafe { &*(arg as *const Child<'_>) };
    let failed = |errno: i32| -> ! {
        child.errno.store(errno.max(1), Ordering::Release);
        // SAFETY: _exit ends only this process, running no handlers or destructors.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on values prepared by the parent.
    unsafe {
        reset_signals();
        if libc::setpgid(0, 0) != 0 {
            failed(last_errno());
        }
        for (target, &fd) in child.fds.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                failed(last_errno());
            }
        }
        if libc::chdir(child.cwd) != 0 {
            failed(last_errno());
        }
        if let Some(hook) = child.hook {
            if let Err(e) = hook() {
                failed(e.raw_os_error().unwrap_or(libc::EPERM));
            }
        }
        // Killed when the worker thread that started it ends (a worker killed with SIGKILL too). Set after the
        // hook: a change of user clears it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            failed(last_errno());
        }
        // The worker died before that: the signal would never come.
        if libc::getppid() != child.parent {
            failed(libc::ESRCH);
        }
        failed(exec(child))
    }
}

/// Tries each candidate path as `execvp` does: a missing or unreadable one is passed over, and the error is
/// "permission denied" if some candidate was denied, else the last one's.
///
/// # Safety
/// Only in the child: on success the process becomes the program.
unsafe fn exec(child: &Child<'_>) -> i32 {
    let mut denied = false;
    let mut errno = libc::ENOENT;
    for &path in child.paths {
        // SAFETY: NUL-terminated strings and NULL-terminated arrays the parent keeps alive.
        unsafe { libc::execve(path, child.argv, child.envp) };
        errno = last_errno();
        match errno {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
            _ => return errno,
        }
    }
    if denied {
        libc::EACCES
    } else {
        errno
    }
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Every signal the worker handles back to its default (handlers are the worker's code), SIGPIPE too (the
/// runtime ignores it, and an ignored signal stays ignored across exec), then an empty mask: the state a child of
/// the standard library's `Command` starts in.
///
/// # Safety
/// Only in the child, before `execve`: it changes the calling process's signal dispositions and mask.
unsafe fn reset_signals() {
    // SAFETY: sigaction and the mask calls on local, zero-initialised plain data (see the function's contract).
    unsafe {
        for signal in 1..=libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) != 0 {
                continue;
            }
            let handled =
                action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN;
            if handled || signal == libc::SIGPIPE {
                action.sa_sigaction = libc::SIG_DFL;
                action.sa_flags = 0;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

thread_local! {
    static STACK: ChildStack = const { ChildStack { base: Cell::new(std::ptr::null_mut()) } };
}

/// A stack for this thread's children, mapped on first use with a guard page below it, unmapped with the thread.
struct ChildStack {
    base: Cell<*mut libc::c_void>,
}

impl ChildStack {
    fn top(&self) -> io::Result<*mut libc::c_void> {
        if self.base.get().is_null() {
            self.base.set(map_stack()?);
        }
        // SAFETY: the mapping is GUARD_BYTES + STACK_BYTES long; its end is page-aligned, hence 16-byte aligned.
        Ok(unsafe { self.base.get().cast::<u8>().add(GUARD_BYTES + STACK_BYTES) }.cast())
    }
}

fn map_stack() -> io::Result<*mut libc::c_void> {
    let len = GUARD_BYTES + STACK_BYTES;
    // SAFETY: an anonymous private mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the first page of the mapping just made.
    if unsafe { libc::mprotect(base, GUARD_BYTES, libc::PROT_NONE) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: the mapping just made, used by nothing.
        unsafe { libc::munmap(base, len) };
        return Err(e);
    }
    Ok(base)
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        if !self.base.get().is_null() {
            // SAFETY: our own mapping; no child runs on it (a child runs only while this thread waits in clone).
            unsafe { libc::munmap(self.base.get(), GUARD_BYTES + STACK_BYTES) };
        }
    }
}

/// `/dev/null`, opened once: each child's stdin without input is a `dup2` of it, not a path lookup per job.
pub fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(NULL.get_or_init(|| file.into()))
}

/// This process's id, asked once: it never changes, as the worker never forks (its children exec at once).
fn worker_pid() -> libc::pid_t {
    static PID: std::sync::OnceLock<libc::pid_t> = std::sync::OnceLock::new();
    // SAFETY: getpid has no effects.
    *PID.get_or_init(|| unsafe { libc::getpid() })
}

/// Puts `fd` in non-blocking mode in one call (no read of its flags first): for the worker's end of a pipe.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int from a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &on) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us these fds; we are their only owner.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(
        argv: &[&str],
        env: &[(&str, &str)],
        hook: Option<Hook<'_>>,
    ) -> io::Result<(i32, String)> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let program = Program::new(&argv, &env, Path::new("/"))?;
        let (read, write) = pipe()?;
        let started = spawn(
            &program,
            Stdio {
                stdin: dev_null()?,
                stdout: &write,
                stderr: &write,
            },
            hook,
        )?;
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out)?;
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(started.pid, &mut status, 0) };
        Ok((libc::WEXITSTATUS(status), out))
    }

    #[test]
    fn the_child_gets_its_argv_environment_directory_group_and_default_signals() {
        let script = "echo \"$1 $GREETING $(pwd)\"; ps -o pgid= -p $$ | tr -d ' '; echo $$; \
                      grep -E '^Sig(Ign|Blk)' /proc/self/status";
        let (code, out) = run(
            &["sh", "-c", script, "sh", "hello"],
            &[("GREETING", "hi"), ("PATH", "/usr/bin:/bin")],
            None,
        )
        .unwrap();
        assert_eq!(code, 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hello hi /");
        assert_eq!(
            lines[1], lines[2],
            "the child leads its own process group: {out}"
        );
        let mask = |name: &str| {
            let line = lines
                .iter()
                .find(|l| l.starts_with(name))
                .expect("a mask line");
            u64::from_str_radix(line.split('\t').nth(1).expect("a mask"), 16).expect("hex")
        };
        // The test process ignores SIGPIPE (the Rust runtime does); its children must not.
        assert_eq!(
            mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {out}"
        );
        assert_eq!(mask("SigBlk:"), 0, "no signal blocked: {out}");
    }

    #[test]
    fn a_missing_program_a_bad_directory_and_a_failing_hook_are_errors_not_children() {
        let missing = run(
            &["no-such-program-here"],
            &[("PATH", "/usr/bin:/bin")],
            None,
        );
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let plain = tempfile::NamedTempFile::new().unwrap();
        let not_executable = run(&[plain.path().to_str().unwrap()], &[], None);
        assert_eq!(
            not_executable.unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let refusing: Hook<'_> = &|| Err(io::Error::from_raw_os_error(libc::EACCES));
        let hooked = run(&["true"], &[("PATH", "/usr/bin:/bin")], Some(refusing));
        assert_eq!(hooked.unwrap_err().raw_os_error(), Some(libc::EACCES));
        let argv = ["true".to_string()];
        let program = Program::new(&argv, &[], Path::new("/no/such/dir")).unwrap();
        let null = dev_null().unwrap();
        let started = spawn(
            &program,
            Stdio {
                stdin: null,
                stdout: null,
                stderr: null,
            },
            None,
        );
        assert_eq!(
            started.err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn the_hook_runs_in_the_child_only() {
        let hook: Hook<'_> = &|| {
            let limit = libc::rlimit {
                rlim_cur: 7,
                rlim_max: 7,
            };
            // SAFETY: setrlimit with a valid struct.
            match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        };
        let (code, out) = run(
            &["sh", "-c", "ulimit -n"],
            &[("PATH", "/usr/bin:/bin")],
            Some(hook),
        )
        .unwrap();
        assert_eq!((code, out.trim()), (0, "7"));
        let mut ours = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a local.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) };
        assert!(ours.rlim_cur > 7, "the worker's own limit is untouched");
    }

    #[test]
    fn a_path_directory_the_agents_user_cannot_read_is_passed_over() {
        // SAFETY: geteuid has no effects.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test changes user in the child: run it as root, as CI does");
        }
        let private = tempfile::tempdir().unwrap();
        // A link, not a script written here: a child another test starts meanwhile would hold the script open for
        // writing until it executes, and running the script would fail with "text file busy".
        std::os::unix::fs::symlink("/bin/false", private.path().join("true")).unwrap();
        std::fs::set_permissions(
            private.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let search = format!("{}:/usr/bin:/bin", private.path().display());
        let as_nobody: Hook<'_> = &|| {
            // SAFETY: raw set*id calls in the child, as the sandbox makes them.
            match unsafe {
                (
                    libc::syscall(libc::SYS_setgid, 65534),
                    libc::syscall(libc::SYS_setuid, 65534),
                )
            } {
                (0, 0) => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        };
        let (code, _) = run(&["true"], &[("PATH", &search)], Some(as_nobody)).unwrap();
        assert_eq!(
            code, 0,
            "the decoy the worker could read was not run; /usr/bin/true was"
        );
        let (code, _) = run(&["true"], &[("PATH", &search)], None).unwrap();
        assert_eq!(
            code, 1,
            "as the worker's own user, the first directory wins"
        );
    }

    #[test]
    fn the_child_dies_with_the_thread_that_started_it() {
        let pid = std::thread::spawn(|| {
            let argv = ["sleep".to_string(), "30".to_string()];
            let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
            let program = Program::new(&argv, &env, Path::new("/")).unwrap();
            let null = dev_null().unwrap();
            let stdio = Stdio {
                stdin: null,
                stdout: null,
                stderr: null,
            };
            spawn(&program, stdio, None).unwrap().pid
        })
        .join()
        .unwrap();
        let mut status = 0;
        // SAFETY: our own child, waited for once.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "ended by a signal: {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGKILL);
    }
}
