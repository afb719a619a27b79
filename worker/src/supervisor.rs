//! The child supervisor: starts an agent from an argv list in its own process group with a scrubbed environment,
//! feeds stdin, captures output, and ends it on timeout or request — SIGTERM to the whole group, SIGKILL after the
//! grace period. Exit is observed through a pidfd and reaped with `wait4`, which also yields the resource use.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::time::{Duration, Instant};

use fleet_shared::wire::OutputStream;
use fleet_shared::Resources;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::cgroup::JobCgroup;
use crate::output::{capture, Captured, LogTarget, NoSink};
use crate::presets::{self, ParsingSink};
use crate::report::Report;
use crate::spawn;

/// How long output pipes may stay open after the process group is gone (a process that left the group with
/// `setsid` could hold them forever).
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// Everything needed to run one agent process.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub stdin: Option<Vec<u8>>,
    /// The complete environment of the child; nothing is inherited from the worker.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Directories handed to the agent's user when it runs as another one (its workspace and TMPDIR).
    pub agent_dirs: Vec<PathBuf>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub output_cap: usize,
    /// Where the full stdout and stderr logs are written (outside the workspace) when the record's capped copy
    /// is not the exact output.
    pub stdout_log: Option<LogTarget>,
    pub stderr_log: Option<LogTarget>,
    /// Cancelled when the job is cancelled: the process group is ended as for a timeout.
    pub cancel: CancellationToken,
    /// Stdout and stderr on a pseudo-terminal (merged) instead of pipes.
    pub pty: bool,
    /// Where output is published as it is read (none for runs nobody watches).
    pub events: Option<std::sync::Arc<crate::events::Events>>,
    /// rlimits, user and network of the agent's processes.
    pub sandbox: crate::sandbox::Sandbox,
    /// A CLI preset whose stdout is read by its parser (typed events and the run's report).
    pub parse: Option<fleet_shared::config::AgentKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
    /// No process ran (a model agent).
    NoProcess,
}

/// Why the supervisor ended the process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    Timeout,
    /// The job was cancelled.
    Cancelled,
    /// The worker asked (shutdown past its grace period, or another writer already ended the job).
    Requested,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub ending: Ending,
    pub killed: Option<KillReason>,
    /// The resource limit the agent most likely hit (`cpu_limit`, `memory_limit`, ...), if it failed on one.
    pub limit: Option<fleet_shared::lifecycle::Killed>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub resources: Resources,
    /// What an agent the fleet understands said it did (answer, usage, ...); empty for a plain command.
    pub report: crate::report::Report,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start `{program}`: {source}")]
    Start { program: String, source: io::Error },
    #[error("cannot watch the agent process: {0}")]
    Watch(io::Error),
    #[error("empty command")]
    EmptyCommand,
    #[error("cannot prepare the job's workspace: {0}")]
    Workspace(io::Error),
    /// An input file could not be provided (the job's fault, not the worker's).
    #[error("{0}")]
    Input(String),
    /// A session's workspace could not be restored for its turn.
    #[error("restoring the session's workspace failed: {0}")]
    SessionWorkspace(String),
}

/// Runs the agent to its end. `stop` asks for the process group to be terminated early. With a `cgroup`, every
/// process the agent starts is in it, and all of them are gone when this returns.
pub async fn run(
    mut spec: RunSpec,
    stop: CancellationToken,
    cgroup: Option<&JobCgroup<'_>>,
) -> Result<RunOutcome, SpawnError> {
    if spec.argv.is_empty() {
        return Err(SpawnError::EmptyCommand);
    }
    let started = Instant::now();
    let Launched { pid, exit, streams } = launch(&spec, cgroup)?;
    let (mut out, mut err) = (Captured::default(), Captured::default());
    let mut report = Report::default();
    let sandbox = spec.sandbox;
    let limits = Limits {
        timeout: spec.timeout,
        kill_grace: spec.kill_grace,
        cancel: spec.cancel.clone(),
    };
    let control = async {
        let killed = wait_or_end(pid, &exit, &limits, &stop).await;
        // The leader is a zombie now, so its pid (and the group id) cannot be reused: clear out what it left,
        // and with a cgroup also whatever left the group.
        signal_group(pid, libc::SIGKILL);
        end_the_rest(cgroup, &sandbox).await;
        let (ending, mut resources) = reap(pid);
        resources.wall_ms = started.elapsed().as_millis() as u64;
        (ending, resources, killed)
    };
    let io = serve_io(&mut spec, streams, &mut out, &mut err, &mut report);
    let (ending, resources, killed) = until_ended(pin!(control), pin!(io)).await;
    let cpu_ms = resources.user_cpu_ms + resources.system_cpu_ms;
    let limit = match killed {
        // Ended by us (timeout, cancel): not a limit of its own.
        Some(_) => None,
        None => sandbox.limit_hit(ending, cpu_ms, &err, &out),
    };
    Ok(RunOutcome {
        ending,
        killed,
        limit,
        stdout: out,
        stderr: err,
        resources,
        report,
    })
}

/// The agent's process, started, with the async ends of its streams and the pidfd that tells its exit.
struct Launched {
    pid: libc::pid_t,
    exit: PidFd,
    streams: Streams,
}

/// Starts the agent from its argv in its own process group with a scrubbed environment, confined (and joining
/// its cgroup) before exec when it must be, its output to pipes or a terminal. From a successful return the
/// child exists and every path must reap it.
fn launch(spec: &RunSpec, cgroup: Option<&JobCgroup<'_>>) -> Result<Launched, SpawnError> {
    let start_err = |source| SpawnError::Start {
        program: spec.argv[0].clone(),
        source,
    };
    let program = spawn::Program::new(&spec.argv, &spec.env, &spec.cwd).map_err(start_err)?;
    let sandbox = spec.sandbox;
    if let Some(user) = sandbox.user {
        crate::sandbox::give_dirs(user, &spec.agent_dirs).map_err(start_err)?;
    }
    let ends = ChildEnds::open(spec).map_err(start_err)?;
    let join_fd = cgroup.map(JobCgroup::procs_fd);
    // Into the job's cgroup first, before anything of the agent runs; then its confinement.
    let hook = move || {
        if let Some(fd) = join_fd {
            // SAFETY: a write of one byte from a static buffer to an fd the parent keeps open.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        sandbox.apply_in_child()
    };
    // Every agent gets the hook: unconfined, it does nothing, and it no longer costs a fork.
    let started = spawn::spawn(&program, ends.child_stdio(), Some(&hook)).map_err(start_err)?;
    // The child's ends close here: a reader sees end of file once the agent's copies are closed too.
    let streams = ends.streams;
    match PidFd::watch(started.pidfd) {
        Ok(exit) => Ok(Launched {
            pid: started.pid,
            exit,
            streams,
        }),
        Err(e) => {
            signal_group(started.pid, libc::SIGKILL);
            // Reaped so it leaves no zombie; its status says nothing more than the error does.
            let _ = reap(started.pid);
            Err(SpawnError::Watch(e))
        }
    }
}

type Output = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// The child's standard streams as async pipes (stdout from the terminal's master end under a pty).
struct Streams {
    stdin: Option<pipe::Sender>,
    stdout: Option<Output>,
    stderr: Option<pipe::Receiver>,
}

/// Both ends of the child's streams until it is started: the child's (`/dev/null` for no input, one terminal
/// for both outputs under a pty), and ours, already async.
struct ChildEnds {
    stdin: Option<OwnedFd>,
    null: &'static OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    streams: Streams,
}

/// Our ends of fresh pipes, made non-blocking and async without tokio's checks (an `fstat` and a flags read).
fn receiver(read: OwnedFd) -> io::Result<pipe::Receiver> {
    spawn::set_nonblocking(&read)?;
    pipe::Receiver::from_owned_fd_unchecked(read)
}

fn sender(write: OwnedFd) -> io::Result<pipe::Sender> {
    spawn::set_nonblocking(&write)?;
    pipe::Sender::from_owned_fd_unchecked(write)
}

impl ChildEnds {
    fn open(spec: &RunSpec) -> io::Result<Self> {
        let (stdin, writer) = match spec.stdin {
            Some(_) => {
                let (read, write) = spawn::pipe()?;
                (Some(read), Some(sender(write)?))
            }
            None => (None, None),
        };
        let (stdout, stderr, out, err): (_, _, Output, _) = if spec.pty {
            let (master, slave) = open_pty()?;
            let master = tokio::fs::File::from_std(std::fs::File::from(master));
            (slave, None, Box::new(master), None)
        } else {
            let (out_read, out_write) = spawn::pipe()?;
            let (err_read, err_write) = spawn::pipe()?;
            let out = receiver(out_read)?;
            let err = receiver(err_read)?;
            (out_write, Some(err_write), Box::new(out), Some(err))
        };
        Ok(Self {
            stdin,
            null: spawn::dev_null()?,
            stdout,
            stderr,
            streams: Streams {
                stdin: writer,
                stdout: Some(out),
                stderr: err,
            },
        })
    }

    fn child_stdio(&self) -> spawn::Stdio<'_> {
        spawn::Stdio {
            stdin: self.stdin.as_ref().unwrap_or(self.null),
            stdout: &self.stdout,
            stderr: self.stderr.as_ref().unwrap_or(&self.stdout),
        }
    }
}

/// What may end a run early.
struct Limits {
    timeout: Duration,
    kill_grace: Duration,
    /// The job's cancel.
    cancel: CancellationToken,
}

/// Waits for the leader `pid` to exit by itself, or ends its group on a stop, a cancel or the timeout (SIGTERM,
/// then SIGKILL after the grace); says which, if any, ended it.
async fn wait_or_end(
    pid: libc::pid_t,
    exit: &PidFd,
    limits: &Limits,
    stop: &CancellationToken,
) -> Option<KillReason> {
    let killed = tokio::select! {
        biased;
        _ = stop.cancelled() => Some(KillReason::Requested),
        _ = limits.cancel.cancelled() => Some(KillReason::Cancelled),
        _ = exit.exited() => None,
        _ = tokio::time::sleep(limits.timeout) => Some(KillReason::Timeout),
    };
    if killed.is_some() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(limits.kill_grace, exit.exited())
            .await
            .is_err()
        {
            signal_group(pid, libc::SIGKILL);
            exit.exited().await;
        }
    }
    killed
}

/// Feeds the input and captures both outputs, all inside one future (no extra tasks per job); a CLI preset's
/// stdout also goes through its parser, whose report lands in `report`.
async fn serve_io(
    spec: &mut RunSpec,
    streams: Streams,
    out: &mut Captured,
    err: &mut Captured,
    report: &mut Report,
) {
    let events = spec.events.clone();
    let cap = spec.output_cap;
    let stdout = Capture {
        log: spec.stdout_log.take(),
        cap,
        events: events.as_deref(),
        stream: OutputStream::Stdout,
    };
    let stderr = Capture {
        log: spec.stderr_log.take(),
        stream: OutputStream::Stderr,
        ..stdout.clone()
    };
    let parser = spec.parse.and_then(|kind| presets::parser(kind, cap));
    tokio::join!(
        feed(streams.stdin, spec.stdin.take()),
        async {
            match parser {
                Some(parser) => *report = stdout.parsed(streams.stdout, out, parser).await,
                None => stdout.run(streams.stdout, out).await,
            }
        },
        stderr.run(streams.stderr, err),
    );
}

/// Drives the process's end and its output together; once the process group is gone, the output gets a
/// deadline to drain (a pipe held open by something that escaped would otherwise hold the job forever).
/// Both come pinned by the caller, so this future does not hold a second copy of each (see `with_heartbeat`).
async fn until_ended<T>(
    mut control: Pin<&mut impl Future<Output = T>>,
    mut io: Pin<&mut impl Future<Output = ()>>,
) -> T {
    let mut io_done = false;
    let ended = loop {
        tokio::select! {
            ended = control.as_mut() => break ended,
            _ = io.as_mut(), if !io_done => io_done = true,
        }
    };
    if !io_done && tokio::time::timeout(DRAIN_DEADLINE, io).await.is_err() {
        tracing::warn!(
            "agent output pipe still open after its process group ended; output cut off"
        );
    }
    ended
}

/// Ends whatever the job left running: its cgroup's members, or, without one, every process of a uid only this
/// job uses.
async fn end_the_rest(cgroup: Option<&JobCgroup<'_>>, sandbox: &crate::sandbox::Sandbox) {
    if let Some(cgroup) = cgroup {
        if let Err(e) = cgroup.kill_all().await {
            tracing::warn!(error = %e, "cannot end every process of the job's cgroup");
        }
        return;
    }
    if let (true, Some((uid, _))) = (sandbox.sole_user, sandbox.user) {
        let killing =
            tokio::task::spawn_blocking(move || crate::sandbox::kill_every_process_of(uid));
        if let Ok(Err(e)) = killing.await {
            tracing::warn!(error = %e, "cannot end the processes of the job's uid");
        }
    }
}

/// Writes the stdin bytes, then closes the pipe. An agent that exits without reading its input closes the
/// pipe first: not an error of ours.
async fn feed(pipe: Option<pipe::Sender>, bytes: Option<Vec<u8>>) {
    if let (Some(mut pipe), Some(bytes)) = (pipe, bytes) {
        // An agent that stops reading its input closes the pipe (EPIPE): its business, not an error of ours.
        let _ = pipe.write_all(&bytes).await;
    }
}

/// How one output stream is captured.
#[derive(Clone)]
struct Capture<'a> {
    log: Option<LogTarget>,
    cap: usize,
    events: Option<&'a crate::events::Events>,
    stream: OutputStream,
}

impl Capture<'_> {
    async fn run(self, pipe: Option<impl tokio::io::AsyncRead + Unpin>, into: &mut Captured) {
        let Some(pipe) = pipe else { return };
        match self.events {
            Some(events) => {
                capture(
                    pipe,
                    self.log,
                    self.cap,
                    into,
                    &mut events.sink(self.stream),
                )
                .await
            }
            None => capture(pipe, self.log, self.cap, into, &mut NoSink).await,
        }
    }

    /// Like `run`, each line also read by `parser`; what it made of them all.
    async fn parsed(
        self,
        pipe: Option<impl tokio::io::AsyncRead + Unpin>,
        into: &mut Captured,
        parser: presets::Parser,
    ) -> Report {
        let Some(pipe) = pipe else {
            return parser.report();
        };
        match self.events {
            Some(events) => {
                let mut sink = ParsingSink::new(events.sink(self.stream), parser, Some(events));
                capture(pipe, self.log, self.cap, into, &mut sink).await;
                sink.into_report()
            }
            None => {
                let mut sink = ParsingSink::new(NoSink, parser, None);
                capture(pipe, self.log, self.cap, into, &mut sink).await;
                sink.into_report()
            }
        }
    }
}

/// A pseudo-terminal in raw mode (no `\n` → `\r\n`, no echo): (master, slave). The master is close-on-exec, so
/// agents never hold it.
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave): (libc::c_int, libc::c_int) = (-1, -1);
    // SAFETY: openpty writes two fds into the locals; the null pointers ask for no name and default settings.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us these fds; we are their only owner.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: plain fd and termios calls on fds we own; termios is plain old data filled by tcgetattr.
    unsafe {
        libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    Ok((master, slave))
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory effects; a group that is already gone answers ESRCH, which is fine.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Reaps the exited leader. Only called once the pidfd reported the exit, so it does not block.
fn reap(pid: libc::pid_t) -> (Ending, Resources) {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, fully written by wait4 on success.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    if r != pid {
        return (Ending::Signaled(libc::SIGKILL), Resources::default());
    }
    let ending = if libc::WIFEXITED(status) {
        Ending::Exited(libc::WEXITSTATUS(status))
    } else {
        Ending::Signaled(libc::WTERMSIG(status))
    };
    let ms = |tv: libc::timeval| (tv.tv_sec as u64) * 1000 + (tv.tv_usec as u64) / 1000;
    let resources = Resources {
        wall_ms: 0,
        user_cpu_ms: ms(usage.ru_utime),
        system_cpu_ms: ms(usage.ru_stime),
        max_rss_kb: usage.ru_maxrss.max(0) as u64,
    };
    (ending, resources)
}

/// A pidfd: becomes readable when the process exits, without reaping it.
struct PidFd(AsyncFd<OwnedFd>);

impl PidFd {
    fn watch(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: OwnedFd keeps the descriptor open and unchanged for as long as the AsyncFd lives.
        let registered =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        registered
            .map(Self)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    async fn exited(&self) {
        // Readiness is level-triggered for a pidfd: once the process exited it stays readable.
        let _ = self.0.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> RunSpec {
        RunSpec {
            parse: None,
            pty: false,
            sandbox: Default::default(),
            events: None,
            cancel: CancellationToken::new(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: std::env::temp_dir(),
            agent_dirs: Vec::new(),
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_millis(300),
            output_cap: 1024,
            stdout_log: None,
            stderr_log: None,
        }
    }

    #[tokio::test]
    async fn exit_code_output_and_stdin_are_captured() {
        let mut s = spec(&["sh", "-c", "cat; echo err >&2; exit 3"]);
        s.stdin = Some(b"from stdin".to_vec());
        let out = run(s, CancellationToken::new(), None).await.unwrap();
        assert_eq!(out.ending, Ending::Exited(3));
        assert_eq!(out.stdout.head, b"from stdin");
        assert_eq!(out.stderr.head, b"err\n");
        assert_eq!(out.killed, None);
    }

    #[tokio::test]
    async fn environment_is_only_what_the_spec_gives() {
        let out = run(spec(&["env"]), CancellationToken::new(), None)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout.head),
            "PATH=/usr/bin:/bin\n"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run(
            spec(&["/nonexistent/agent"]),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SpawnError::Start { .. }), "{err}");
    }

    #[tokio::test]
    async fn timeout_terms_then_kills_a_process_ignoring_sigterm() {
        let mut s = spec(&["sh", "-c", "trap '' TERM; sleep 30"]);
        s.timeout = Duration::from_millis(200);
        let t = Instant::now();
        let out = run(s, CancellationToken::new(), None).await.unwrap();
        assert_eq!(out.killed, Some(KillReason::Timeout));
        assert_eq!(out.ending, Ending::Signaled(libc::SIGKILL));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_pty_agent_sees_a_terminal_and_its_output_is_unchanged() {
        let probe = [
            "sh",
            "-c",
            "if test -t 1; then echo tty; else echo pipe; fi; echo err >&2",
        ];
        let out = run(spec(&probe), CancellationToken::new(), None)
            .await
            .unwrap();
        assert_eq!(
            (out.stdout.head.as_slice(), out.stderr.head.as_slice()),
            (&b"pipe\n"[..], &b"err\n"[..])
        );
        let mut on_tty = spec(&probe);
        on_tty.pty = true;
        let out = run(on_tty, CancellationToken::new(), None).await.unwrap();
        assert_eq!(out.stdout.head, b"tty\nerr\n");
        assert_eq!(out.ending, Ending::Exited(0));
    }

    #[tokio::test]
    async fn stop_request_ends_the_run() {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.cancel();
        });
        let out = run(spec(&["sleep", "30"]), stop, None).await.unwrap();
        assert_eq!(out.killed, Some(KillReason::Requested));
        assert_eq!(out.ending, Ending::Signaled(libc::SIGTERM));
    }

    #[tokio::test]
    async fn an_escaped_process_holding_stdout_cannot_hold_the_run_and_output_so_far_is_kept() {
        // `setsid` leaves the process group, so the group kill misses it and it keeps the pipe open.
        let s = spec(&["sh", "-c", "setsid sleep 4 & sleep 0.3; echo before"]);
        let t = Instant::now();
        let out = run(s, CancellationToken::new(), None).await.unwrap();
        assert_eq!(out.ending, Ending::Exited(0));
        assert_eq!(out.stdout.head, b"before\n");
        assert!(
            t.elapsed() < DRAIN_DEADLINE + Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn an_escaped_daemon_ends_with_the_run_when_it_has_a_cgroup() {
        let Some(cgroups) = crate::cgroup::Cgroups::find() else {
            // Only where a writable cgroup v2 hierarchy exists (CI runs as root and has one).
            assert_ne!(
                unsafe { libc::geteuid() },
                0,
                "root without a usable cgroup v2 hierarchy"
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("daemon.pid");
        let script = format!(
            "(setsid sh -c 'echo $$ > {}; exec sleep 60' &) ; sleep 0.2",
            pidfile.display()
        );
        let cgroup = cgroups.lease().unwrap();
        let out = run(
            spec(&["sh", "-c", &script]),
            CancellationToken::new(),
            Some(&cgroup),
        )
        .await
        .unwrap();
        assert_eq!(out.ending, Ending::Exited(0));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or a zombie its new parent has not reaped yet.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit(") ").next().and_then(|s| s.chars().next());
        assert!(
            matches!(state, None | Some('Z' | 'X')),
            "the daemon {pid} outlived its job: {state:?}"
        );
    }

    #[tokio::test]
    async fn cpu_time_is_recorded() {
        let out = run(
            spec(&[
                "sh",
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
            ]),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
        assert!(
            out.resources.user_cpu_ms + out.resources.system_cpu_ms > 0,
            "{:?}",
            out.resources
        );
        assert!(out.resources.max_rss_kb > 0);
        assert!(out.resources.wall_ms > 0);
    }
}
