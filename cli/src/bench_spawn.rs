//! The baselines the fleet's job latency and throughput are judged against: the bench's command spawned raw, and
//! run by the worker's own supervisor without NATS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::bench::COMMAND;

fn log_target(scratch: &Path, name: &str) -> fleet_worker::output::LogTarget {
    let path = scratch.join(name);
    // Logs are created where nothing exists yet; an earlier round's log would refuse the next.
    let _ = std::fs::remove_file(&path);
    fleet_worker::output::LogTarget {
        path,
        max_bytes: u64::MAX,
    }
}

/// The command run by the worker's own supervisor (process group, pidfd, output capture, full logs), without
/// NATS: the part of a job's latency that is process handling.
pub(crate) async fn supervised_spawn(scratch: &Path) -> Result<()> {
    supervised(scratch, Default::default()).await
}

/// As `supervised_spawn`, with a limit set in the child before exec, as for every confined agent (limits,
/// `run_as`, no network): a hook runs in the child, which with the standard library's `Command` meant a fork.
pub(crate) async fn supervised_confined_spawn(scratch: &Path) -> Result<()> {
    let mut sandbox = fleet_worker::sandbox::Sandbox::default();
    sandbox.limits.open_files = Some(256);
    supervised(scratch, sandbox).await
}

async fn supervised(scratch: &Path, sandbox: fleet_worker::sandbox::Sandbox) -> Result<()> {
    let spec = fleet_worker::supervisor::RunSpec {
        parse: None,
        sandbox,
        pty: false,
        events: None,
        cancel: tokio_util::sync::CancellationToken::new(),
        argv: COMMAND.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: scratch.to_path_buf(),
        timeout: Duration::from_secs(30),
        kill_grace: Duration::from_secs(1),
        output_cap: 65536,
        agent_dirs: Vec::new(),
        stdout_log: Some(log_target(scratch, "stdout.log")),
        stderr_log: Some(log_target(scratch, "stderr.log")),
    };
    let out = fleet_worker::supervisor::run(spec, tokio_util::sync::CancellationToken::new(), None)
        .await?;
    if out.stdout.head != b"hi\n" {
        bail!("supervised run printed {:?}", out.stdout.head);
    }
    Ok(())
}

pub(crate) fn raw_spawn() -> Result<()> {
    let out = Command::new(COMMAND[0])
        .args(&COMMAND[1..])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("{COMMAND:?} failed");
    }
    Ok(())
}

/// Spawns of the command per second with one spawning thread per CPU.
pub(crate) fn raw_spawn_rate(total: usize) -> Result<f64> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || -> Result<()> {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    raw_spawn()?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("spawn thread panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
