//! What the benchmark measures with: latency samples and their quantiles, medians, and the CPU time and memory of
//! processes as Linux's `/proc` and `getrusage` report them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Issue 18's hot-path targets, against the raw spawn measured in the same run: throughput as a share of the raw
/// spawn rate, and p99 latency over the raw p99 (ms). The core bench and the deployed one print them both.
pub(crate) const NATS_MIN_RATIO: f64 = 0.85;
pub(crate) const HTTP_MIN_RATIO: f64 = 0.8;
pub(crate) const NATS_MAX_P99_OVER_MS: f64 = 1.0;
pub(crate) const HTTP_MAX_P99_OVER_MS: f64 = 1.5;

/// The word printed before a target: whether the figure beside it met it.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met    "
    } else {
        "MISSED "
    }
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    pub(crate) async fn collect<F, Fut>(n: usize, mut one: F) -> Result<Self>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            one().await?;
            v.push(t.elapsed());
        }
        v.sort();
        Ok(Self(v))
    }

    pub(crate) fn ms(&self, quantile: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * quantile).round() as usize;
        self.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

/// CPU seconds (user + system) of each process; a pid of 0 stands for the previous process's waited-for
/// children (the agents a worker ran).
pub(crate) fn cpu_times(pids: &[(&str, u32)]) -> Vec<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut last_children = 0.0;
    pids.iter()
        .map(|(_, pid)| {
            if *pid == 0 {
                return last_children;
            }
            // A process already gone reads as no CPU used.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The fields after the command name, which ends with ')': utime, stime, cutime, cstime are 11-14.
            let fields: Vec<f64> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            let get = |i: usize| fields.get(i).copied().unwrap_or(0.0) / ticks;
            last_children = get(13) + get(14);
            get(11) + get(12)
        })
        .collect()
}

/// CPU seconds (user + system) this bench process has used.
pub(crate) fn own_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU seconds (user + system) used by this bench process's children that have ended and been waited for: the
/// raw spawns' commands (the fleet's processes run until the bench ends).
pub(crate) fn ended_children_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain old data, fully written by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local.
    unsafe { libc::getrusage(who, &mut usage) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

pub(crate) fn rss_kb(pid: u32) -> u64 {
    // A process already gone reads as no memory.
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
