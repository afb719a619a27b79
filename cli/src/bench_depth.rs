//! `fleet bench --depth`: deep queues and many agents. Jobs for the `depth` agent are queued while no worker
//! runs it, then a worker is started and the drain timed (from its first result to its last), for a shallow and
//! a deep queue. Then a worker serving 200 agents (each its own consumer) is started beside one serving 3, and
//! their idle memory compared.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fleet_shared::codec::to_msgpack;
use futures::StreamExt;

use crate::bench::{jobs_subject, nats_throughput_of, rss_kb, Paths};
use crate::bench_measure::verdict;

/// The agent whose jobs the depth part queues (configured, but not run by the bench's worker).
pub const DEPTH_AGENT: &str = "depth";
/// Agents in the many-agents worker's configuration.
const MANY: usize = 200;

/// Starts a worker with a configuration file (the bench's when `None`) and settings added.
pub type SpawnWorker<'a> = &'a dyn Fn(Option<&std::path::Path>, &[(&str, String)]) -> Result<Child>;

pub struct Depth<'a> {
    pub paths: &'a Paths<'a>,
    pub spawn_worker: SpawnWorker<'a>,
    pub scratch: &'a std::path::Path,
    pub shallow: usize,
    pub deep: usize,
}

/// A worker serving only the depth agent.
fn depth_only() -> [(&'static str, String); 1] {
    [("FLEET_WORKER_AGENTS", DEPTH_AGENT.to_string())]
}

/// Gives the depth agent its consumer (a worker comes up for it and stops): jobs queued for it then wait,
/// rather than being ended by the janitor as an unknown agent's.
pub(crate) async fn declare(d: &Depth<'_>) -> Result<()> {
    stop(start_and_wait(d, None, &depth_only(), DEPTH_AGENT).await?);
    Ok(())
}

pub async fn run(d: &Depth<'_>) -> Result<()> {
    let depth_only = depth_only();
    declare(d).await?;
    let shallow = drain(d, &depth_only, d.shallow).await?;
    let deep = drain(d, &depth_only, d.deep).await?;
    println!();
    println!("deep queue (agent `{DEPTH_AGENT}`, queued before its worker starts)");
    println!(
        "  {:>8} queued: drained at {shallow:>7.0} jobs/s",
        d.shallow
    );
    println!("  {:>8} queued: drained at {deep:>7.0} jobs/s", d.deep);
    let ratio = deep / shallow;
    let [(few, few_rate), (many, many_rate)] = many_agents(d).await?;
    println!(
        "idle worker RSS: 3 agents {:.1} MB, {MANY} agents {:.1} MB",
        few as f64 / 1024.0,
        many as f64 / 1024.0
    );
    println!(
        "one busy agent: {few_rate:.0} jobs/s beside 2 idle ones, {many_rate:.0} jobs/s beside {} idle ones",
        MANY - 1
    );
    println!();
    println!(
        "{} a deep queue drains at ≥ 0.9 × a shallow one's rate ({ratio:.2} ×)",
        verdict(ratio >= 0.9)
    );
    let extra_mb = (many as f64 - few as f64) / 1024.0;
    println!(
        "{} {MANY} agents cost an idle worker ≤ 10 MB more than 3 ({extra_mb:.1} MB)",
        verdict(extra_mb <= 10.0)
    );
    let busy = many_rate / few_rate;
    println!(
        "{} a busy agent beside {} idle ones keeps ≥ 0.9 × its rate beside 2 ({busy:.2} ×)",
        verdict(busy >= 0.9),
        MANY - 1
    );
    Ok(())
}

/// Queues `n` jobs, starts a worker, and returns the rate from its first result to its last.
async fn drain(d: &Depth<'_>, settings: &[(&str, String)], n: usize) -> Result<f64> {
    let p = d.paths;
    let prefix = p.client.new_inbox();
    let mut replies = p.client.subscribe(format!("{prefix}.*")).await?;
    let publishes = futures::stream::iter(0..n).map(|i| {
        let body = serde_json::json!({"message": "depth", "reply_to": format!("{prefix}.{i}")});
        let js = p.js.clone();
        async move {
            let ack = js
                .publish(jobs_subject(DEPTH_AGENT), to_msgpack(&body).into())
                .await?;
            ack.await.map(drop).map_err(anyhow::Error::from)
        }
    });
    let mut publishes = publishes.buffer_unordered(512);
    while let Some(done) = publishes.next().await {
        done.context("queueing the depth jobs")?;
    }
    let worker = (d.spawn_worker)(None, settings)?;
    let wait = Duration::from_secs(120);
    tokio::time::timeout(wait, replies.next())
        .await?
        .context("replies closed")?;
    let first = Instant::now();
    for _ in 1..n {
        tokio::time::timeout(wait, replies.next())
            .await?
            .context("replies closed")?;
    }
    let rate = (n - 1) as f64 / first.elapsed().as_secs_f64();
    stop(worker);
    Ok(rate)
}

/// Starts a worker and waits until `agent`'s consumer has a pull waiting (the worker is up and asking).
async fn start_and_wait(
    d: &Depth<'_>,
    config: Option<&std::path::Path>,
    settings: &[(&str, String)],
    agent: &str,
) -> Result<Child> {
    let worker = (d.spawn_worker)(config, settings)?;
    let topology = fleet_shared::Topology::new(crate::bench::PREFIX);
    let stream = d.paths.js.get_stream(topology.jobs_stream()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(info) = stream.consumer_info(topology.agent_consumer(agent)).await {
            if info.num_waiting > 0 {
                return Ok(worker);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no worker for `{agent}` came up")
}

/// For a worker serving 3 agents, then one serving `MANY`: its idle RSS once its pulls are waiting, and the job
/// rate of one of its agents kept busy.
async fn many_agents(d: &Depth<'_>) -> Result<[(u64, f64); 2]> {
    // The bench fleet's prefix, so these workers join it.
    let nats = format!("[nats]\nprefix = \"{}\"\n\n", crate::bench::PREFIX);
    let mut few_agents = nats.clone();
    let mut many_agents = nats;
    for i in 0..MANY {
        let line = format!("[agents.many-{i}]\ncommand = [\"/bin/echo\", \"hi\"]\n\n");
        if i < 3 {
            few_agents.push_str(&line);
        }
        many_agents.push_str(&line);
    }
    let mut rss = Vec::new();
    for (name, toml, count) in [
        ("few.toml", few_agents, 3),
        ("many.toml", many_agents, MANY),
    ] {
        let file = d.scratch.join(name);
        std::fs::write(&file, toml)?;
        let names: Vec<String> = (0..count).map(|i| format!("many-{i}")).collect();
        let settings = [("FLEET_WORKER_AGENTS", names.join(","))];
        let last = format!("many-{}", count - 1);
        let worker = start_and_wait(d, Some(&file), &settings, &last).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss_kb(worker.id());
        let p = d.paths;
        // Warm, then measure.
        nats_throughput_of(p.client, p.js, "many-0", 200, 64).await?;
        let rate = nats_throughput_of(p.client, p.js, "many-0", 3000, 64).await?;
        rss.push((idle, rate));
        stop(worker);
    }
    Ok([rss[0], rss[1]])
}

fn stop(mut worker: Child) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(worker.id() as i32, libc::SIGTERM);
    }
    // Reaped so it leaves no zombie; how it stopped does not matter here.
    let _ = worker.wait();
}
