//! `fleet bench --events`: how fast a line the agent writes reaches an SSE client (the agent prints the time; the
//! client compares it with its own clock on the same machine), and what 100 live SSE listeners cost the job
//! throughput (rounds with and without them, alternated, medians compared).

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::bench_measure::verdict;

/// The agent that prints timestamps: `fleet tick "COUNT INTERVAL_MS"`.
pub const TICK_AGENT: &str = "ticker";

/// `fleet tick`: waits 300 ms (so a listener can connect), then prints the time in µs COUNT times.
pub fn tick(spec: &str) -> Result<()> {
    let (count, interval) = spec
        .split_once(' ')
        .context("tick takes \"COUNT INTERVAL_MS\"")?;
    let (count, interval): (u64, u64) = (count.parse()?, interval.parse()?);
    std::thread::sleep(Duration::from_millis(300));
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        writeln!(out, "{}", now_us())?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(interval));
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn submit(http: &reqwest::Client, base: &str, message: &str) -> Result<String> {
    let r: serde_json::Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&serde_json::json!({"agent": TICK_AGENT, "message": message}))
        .send()
        .await?
        .json()
        .await?;
    r["job_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no job id in {r}"))
}

/// Follows a job's SSE stream to its end; calls `on_line` with each stdout line and the time it arrived (µs).
async fn follow(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    mut on_line: impl FnMut(&str, u64),
) -> Result<()> {
    let mut r = http
        .get(format!("{base}/v1/jobs/{id}/events"))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("events of {id}: {}", r.status());
    }
    let mut buf = String::new();
    while let Some(chunk) = r.chunk().await? {
        let arrived = now_us();
        buf.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let event: serde_json::Value = serde_json::from_str(data)?;
            match event["type"].as_str() {
                Some("output") if event["stream"] == "stdout" => {
                    for line in event["text"].as_str().unwrap_or("").lines() {
                        on_line(line, arrived);
                    }
                }
                Some("end") => return Ok(()),
                _ => {}
            }
        }
    }
    Ok(())
}

pub async fn run(
    http: &reqwest::Client,
    base: &str,
    throughput: impl AsyncFn() -> Result<f64>,
    rounds: usize,
) -> Result<()> {
    let p50 = event_latency(http, base).await?;
    let loss = listener_cost(http, base, throughput, rounds).await?;
    println!();
    println!("{} event latency p50 ≤ 5 ms", verdict(p50 <= 5.0));
    println!(
        "{} throughput loss with 100 listeners ≤ 10%",
        verdict(loss <= 0.10)
    );
    Ok(())
}

/// Prints how long an agent's line takes to reach an SSE client; returns the median, in ms.
async fn event_latency(http: &reqwest::Client, base: &str) -> Result<f64> {
    // 5 jobs of 40 lines, 10 ms apart, each followed from before its first line.
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let id = submit(http, base, "40 10").await?;
        follow(http, base, &id, |line, arrived| {
            if let Ok(sent) = line.parse::<u64>() {
                latencies.push(arrived.saturating_sub(sent));
            }
        })
        .await?;
    }
    if latencies.is_empty() {
        bail!("no output events arrived");
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!();
    println!(
        "event latency, agent line → SSE client (ms, {} lines): p50 {:.2}  p95 {:.2}  p99 {:.2}",
        latencies.len(),
        pct(0.5),
        pct(0.95),
        pct(0.99)
    );
    Ok(pct(0.5))
}

/// Prints what 100 live listeners on a chatty job cost the job throughput; returns the loss (0.05 = 5%).
async fn listener_cost(
    http: &reqwest::Client,
    base: &str,
    throughput: impl AsyncFn() -> Result<f64>,
    rounds: usize,
) -> Result<f64> {
    // A chatty job runs throughout; rounds alternate without and with 100 listeners on it.
    let chatty = submit(http, base, "1000000 10").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        quiet.push(throughput().await?);
        let listeners: Vec<_> = (0..100)
            .map(|_| {
                let (http, base, id) = (http.clone(), base.to_string(), chatty.clone());
                tokio::spawn(async move { follow(&http, &base, &id, |_, _| {}).await })
            })
            .collect();
        // Let every listener replay and reach the live tail before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        busy.push(throughput().await?);
        for l in &listeners {
            l.abort();
        }
        if started.elapsed() < Duration::from_millis(10) {
            bail!("throughput run ended too soon");
        }
    }
    // The bench's fleet is stopped next anyway; the cancel only spares it the work.
    let _ = http
        .post(format!("{base}/v1/jobs/{chatty}/cancel"))
        .send()
        .await;
    let (q, b) = (
        crate::bench::median(quiet.into_iter()),
        crate::bench::median(busy.into_iter()),
    );
    let loss = 1.0 - b / q;
    println!(
        "NATS throughput beside a chatty job: {q:.0} jobs/s alone, {b:.0} jobs/s with 100 SSE listeners on it ({:.1}% loss)",
        loss * 100.0
    );
    Ok(loss)
}
