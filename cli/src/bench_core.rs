//! `fleet bench`'s core figures: sequential latency against the raw spawn and the worker's supervisor alone,
//! throughput rounds alternated with the raw spawn rate, CPU per job of every process with the ceiling it puts on
//! throughput ÷ raw, idle memory, and the hot path's targets with "met" or "missed".

use std::time::Duration;

use anyhow::Result;

use crate::bench::{BenchArgs, Paths};
use crate::bench_measure::{
    cpu_times, ended_children_cpu, median, own_cpu, rss_kb, verdict, Samples, HTTP_MAX_P99_OVER_MS,
    HTTP_MIN_RATIO, NATS_MAX_P99_OVER_MS, NATS_MIN_RATIO,
};
use crate::bench_paths::{http_job, http_throughput, nats_job, nats_throughput};
use crate::bench_spawn::{raw_spawn, raw_spawn_rate, supervised_confined_spawn, supervised_spawn};

/// CPU seconds used during some runs: by each of the fleet's processes (in the order of their pids), and by the
/// bench's own client.
#[derive(Default)]
struct CpuUse {
    processes: Vec<f64>,
    client: f64,
}

impl CpuUse {
    /// Runs `run`, adding the CPU every process used meanwhile.
    async fn count<T>(
        &mut self,
        pids: &[(&str, u32); 4],
        run: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let (before, client_before) = (cpu_times(pids), own_cpu());
        let out = run.await?;
        let after = cpu_times(pids);
        self.client += own_cpu() - client_before;
        self.processes.resize(after.len(), 0.0);
        for (used, (after, before)) in self.processes.iter_mut().zip(after.iter().zip(&before)) {
            *used += after - before;
        }
        Ok(out)
    }

    /// The worker's own CPU per job, in µs (the second of the bench's processes).
    fn worker_per_job(&self, jobs: f64) -> f64 {
        self.per_job(jobs).nth(1).unwrap_or_default()
    }

    /// All the CPU per job, in µs.
    fn total_per_job(&self, jobs: f64) -> f64 {
        self.per_job(jobs).sum()
    }

    /// Each process's CPU per job, the client's last, in µs.
    fn per_job(&self, jobs: f64) -> impl Iterator<Item = f64> + '_ {
        let us = move |seconds: f64| seconds / jobs * 1e6;
        self.processes
            .iter()
            .map(move |s| us(*s))
            .chain([us(self.client)])
    }
}

/// CPU seconds used in the raw-rate runs: by the commands, and by the threads spawning them.
#[derive(Default)]
struct RawCpu {
    commands: f64,
    spawners: f64,
}

impl RawCpu {
    /// Runs the raw spawns, adding the CPU they used.
    fn count<T>(&mut self, run: impl FnOnce() -> Result<T>) -> Result<T> {
        let (commands_before, spawners_before) = (ended_children_cpu(), own_cpu());
        let out = run()?;
        self.spawners += own_cpu() - spawners_before;
        self.commands += ended_children_cpu() - commands_before;
        Ok(out)
    }

    /// The command's and the spawning thread's CPU per spawn, in µs.
    fn per_spawn(&self, spawns: f64) -> [f64; 2] {
        [self.commands, self.spawners].map(|seconds| seconds / spawns * 1e6)
    }
}

/// The core figures: latencies, throughput rounds, CPU per job, idle memory.
pub(crate) struct Core {
    spawn_latency: Samples,
    supervised: Samples,
    /// The bench process's CPU per supervised spawn (one at a time), in µs: the supervisor's share of a job.
    supervisor_us: f64,
    supervised_confined: Samples,
    nats_latency: Samples,
    http_latency: Samples,
    rounds: Vec<Round>,
    /// CPU used in the NATS runs and in the HTTP runs.
    cpu: [CpuUse; 2],
    raw_cpu: RawCpu,
    gateway_rss: u64,
    worker_rss: u64,
}

pub(crate) async fn measure_core(
    args: &BenchArgs,
    p: &Paths<'_>,
    scratch: &std::path::Path,
    pids: &[(&str, u32); 4],
) -> Result<Core> {
    // Warm up every path once (page cache, connections, consumers).
    for _ in 0..50 {
        nats_job(p.client, p.js).await?;
        http_job(p.http, p.base).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (gateway_rss, worker_rss) = (rss_kb(pids[3].1), rss_kb(pids[1].1));
    let spawn_latency = Samples::collect(args.samples, || async { raw_spawn() }).await?;
    let before = own_cpu();
    let supervised = Samples::collect(args.samples, || supervised_spawn(scratch)).await?;
    let supervisor_us = (own_cpu() - before) / args.samples.max(1) as f64 * 1e6;
    let supervised_confined =
        Samples::collect(args.samples, || supervised_confined_spawn(scratch)).await?;
    let nats_latency = Samples::collect(args.samples, || nats_job(p.client, p.js)).await?;
    let http_latency = Samples::collect(args.samples, || http_job(p.http, p.base)).await?;
    let mut rounds = Vec::new();
    let ([mut nats_cpu, mut http_cpu], mut raw_cpu): ([CpuUse; 2], RawCpu) = Default::default();
    let (jobs, in_flight) = (args.throughput_jobs, args.in_flight);
    for _ in 0..args.rounds.max(1) {
        let raw = raw_cpu.count(|| raw_spawn_rate(jobs))?;
        let nats = nats_throughput(p.client, p.js, jobs, in_flight);
        let nats = nats_cpu.count(pids, nats).await?;
        let http = http_throughput(p.http, p.base, jobs, in_flight);
        let http = http_cpu.count(pids, http).await?;
        rounds.push(Round { raw, nats, http });
    }
    Ok(Core {
        spawn_latency,
        supervised,
        supervisor_us,
        supervised_confined,
        nats_latency,
        http_latency,
        rounds,
        cpu: [nats_cpu, http_cpu],
        raw_cpu,
        gateway_rss,
        worker_rss,
    })
}

impl Core {
    pub(crate) fn print(&self, args: &BenchArgs, pids: &[(&str, u32); 4]) {
        println!();
        println!(
            "{:<34} {:>9} {:>9} {:>9}",
            "sequential latency (ms)", "p50", "p95", "p99"
        );
        for (name, s) in [
            ("raw spawn of the command", &self.spawn_latency),
            ("the worker's supervisor alone", &self.supervised),
            (
                "  the same, confined (a limit set)",
                &self.supervised_confined,
            ),
            ("job over NATS (publish→reply)", &self.nats_latency),
            ("job over HTTP (POST ?wait)", &self.http_latency),
        ] {
            println!(
                "{name:<34} {:>9.3} {:>9.3} {:>9.3}",
                s.ms(0.50),
                s.ms(0.95),
                s.ms(0.99)
            );
        }
        println!();
        let rounds = &self.rounds;
        let nats_ratio = median(rounds.iter().map(|r| r.nats / r.raw));
        let http_ratio = median(rounds.iter().map(|r| r.http / r.raw));
        println!(
            "{:<34} {:>9}   (median of {} rounds)",
            "throughput (jobs/s)",
            "",
            rounds.len()
        );
        println!(
            "{:<34} {:>9.0}",
            "raw spawn rate",
            median(rounds.iter().map(|r| r.raw))
        );
        println!(
            "{:<34} {:>9.0}   ({nats_ratio:.2} × raw)",
            format!("NATS, {} in flight", args.in_flight),
            median(rounds.iter().map(|r| r.nats))
        );
        println!(
            "{:<34} {:>9.0}   ({http_ratio:.2} × raw)",
            format!("HTTP, {} in flight", args.in_flight),
            median(rounds.iter().map(|r| r.http))
        );
        let each: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.0}/{:.0}/{:.0}", r.raw, r.nats, r.http))
            .collect();
        println!("rounds (raw/NATS/HTTP jobs/s): {}", each.join(", "));
        println!();
        let jobs = (args.throughput_jobs * self.rounds.len()) as f64;
        self.print_cpu_and_memory(jobs, pids);
        let worker_us = self.cpu[0].worker_per_job(jobs);
        self.print_targets([nats_ratio, http_ratio], worker_us);
    }

    /// `jobs`: in all rounds of each path (and raw spawns in all raw-rate rounds).
    fn print_cpu_and_memory(&self, jobs: f64, pids: &[(&str, u32); 4]) {
        let names: Vec<&str> = pids
            .iter()
            .map(|(name, _)| *name)
            .chain(["bench client"])
            .collect();
        for (path, cpu) in ["NATS", "HTTP"].iter().zip(&self.cpu) {
            print!("CPU per job in the {path} runs (µs):");
            for (name, us) in names.iter().zip(cpu.per_job(jobs)) {
                print!("  {name} {us:.0}");
            }
            println!();
        }
        let raw = self.raw_cpu.per_spawn(jobs);
        println!(
            "CPU per raw spawn (µs):  command {:.0}  spawning thread {:.0};  the worker's supervisor alone, one at a \
             time: {:.0}",
            raw[0], raw[1], self.supervisor_us
        );
        self.print_cpu_bound(jobs);
        println!();
        println!(
            "idle RSS: gateway {:.1} MB, worker {:.1} MB",
            self.gateway_rss as f64 / 1024.0,
            self.worker_rss as f64 / 1024.0
        );
        println!();
    }

    /// On a machine the runs keep busy, throughput ÷ raw is at most a raw spawn's CPU ÷ a job's CPU (all
    /// processes): the ceiling the measured ratio stands under, and what it would be without the worker's share.
    fn print_cpu_bound(&self, jobs: f64) {
        let raw: f64 = self.raw_cpu.per_spawn(jobs).iter().sum();
        let bound = |cpu: &CpuUse, less: f64| raw / (cpu.total_per_job(jobs) - less);
        let [nats, http] = &self.cpu;
        println!(
            "CPU-bound ceiling (raw spawn's CPU ÷ a job's): NATS {:.2} ×, HTTP {:.2} ×; \
             were the worker's own CPU zero: NATS {:.2} ×, HTTP {:.2} ×",
            bound(nats, 0.0),
            bound(http, 0.0),
            bound(nats, nats.worker_per_job(jobs)),
            bound(http, http.worker_per_job(jobs)),
        );
    }

    /// The hot path's targets (issue 18's, against the raw spawn measured in the same run) and memory's.
    fn print_targets(&self, [nats_ratio, http_ratio]: [f64; 2], worker_us: f64) {
        let (raw_p50, raw_p99) = (self.spawn_latency.ms(0.5), self.spawn_latency.ms(0.99));
        let targets = [
            (
                format!(
                    "throughput over NATS ≥ {NATS_MIN_RATIO} × raw spawn rate ({nats_ratio:.2} ×)"
                ),
                nats_ratio >= NATS_MIN_RATIO,
            ),
            (
                format!(
                    "throughput over HTTP ≥ {HTTP_MIN_RATIO} × raw spawn rate ({http_ratio:.2} ×)"
                ),
                http_ratio >= HTTP_MIN_RATIO,
            ),
            (
                "NATS p50 ≤ raw spawn p50 + 1 ms".to_string(),
                self.nats_latency.ms(0.5) <= raw_p50 + 1.0,
            ),
            (
                "HTTP p50 ≤ raw spawn p50 + 1.5 ms".to_string(),
                self.http_latency.ms(0.5) <= raw_p50 + 1.5,
            ),
            (
                format!("NATS p99 ≤ raw spawn p99 + {NATS_MAX_P99_OVER_MS} ms"),
                self.nats_latency.ms(0.99) <= raw_p99 + NATS_MAX_P99_OVER_MS,
            ),
            (
                format!("HTTP p99 ≤ raw spawn p99 + {HTTP_MAX_P99_OVER_MS} ms"),
                self.http_latency.ms(0.99) <= raw_p99 + HTTP_MAX_P99_OVER_MS,
            ),
            (
                format!("the worker's own CPU per job ≤ 120 µs ({worker_us:.0} µs)"),
                worker_us <= 120.0,
            ),
            (
                "gateway idle RSS ≤ 20 MB".to_string(),
                self.gateway_rss <= 20 * 1024,
            ),
            (
                "worker idle RSS ≤ 20 MB".to_string(),
                self.worker_rss <= 20 * 1024,
            ),
        ];
        for (target, met) in targets {
            println!("{} {target}", verdict(met));
        }
    }
}

/// Rates of one round of throughput runs, jobs/s.
struct Round {
    raw: f64,
    nats: f64,
    http: f64,
}
