//! `fleet bench --history`: the job history at size. Fills the jobs bucket to each size with completed records
//! of the shape workers write (put straight into the bucket, 256 at a time: the honest fast loader), then, while
//! jobs keep flowing at 500/s, times the list queries and `/stats` on the running gateway, and starts a second
//! gateway to time its index build and measure its memory.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_shared::codec::to_msgpack;
use fleet_shared::lifecycle::{Exit, RunEnd};
use fleet_shared::{JobRecord, JobRequest};
use futures::StreamExt;

use crate::bench::{Paths, Samples, AGENT};
use crate::bench_measure::verdict;

/// The list queries timed at each size.
const QUERIES: [(&str, &str); 4] = [
    ("GET /v1/jobs?limit=50", "/v1/jobs?limit=50"),
    (
        "…?agent&status=completed&limit=50",
        "/v1/jobs?agent=noop&status=completed&limit=50",
    ),
    (
        "…?status=failed&limit=50 (rare)",
        "/v1/jobs?status=failed&limit=50",
    ),
    ("GET /stats", "/stats"),
];

pub struct History<'a> {
    pub paths: &'a Paths<'a>,
    pub records: async_nats::jetstream::kv::Store,
    /// Starts a gateway on the given address.
    pub spawn_gateway: &'a dyn Fn(&str) -> Result<std::process::Child>,
    pub sizes: Vec<usize>,
    pub samples: usize,
    /// Also the PostgreSQL sink, at each size.
    pub sink: Option<crate::bench_pg_sink::SinkBench<'a>>,
}

pub async fn run(h: &History<'_>) -> Result<()> {
    let mut filled = 0;
    let mut met = Vec::new();
    for &size in &h.sizes {
        let started = Instant::now();
        fill(&h.records, filled, size).await?;
        println!();
        println!(
            "history at {size} records (loaded {} in {:.1} s)",
            size - filled,
            started.elapsed().as_secs_f64()
        );
        filled = size;
        wait_indexed(h.paths, size).await?;
        let flowing = tokio::spawn(keep_jobs_flowing(h.paths.base.to_string()));
        for (name, path) in QUERIES {
            let s = time_query(h.paths, path, h.samples).await?;
            println!(
                "  {name:<38} p50 {:>7.2} ms  p99 {:>7.2} ms",
                s.ms(0.5),
                s.ms(0.99)
            );
            if path.starts_with("/v1/jobs") {
                met.push((size, name, s.ms(0.5), s.ms(0.99)));
            }
        }
        flowing.abort();
        rebuild(h, size).await?;
        if let Some(sink) = &h.sink {
            crate::bench_pg_sink::measure(sink, size, h.paths.base).await?;
        }
    }
    println!();
    for (size, name, p50, p99) in met {
        let ok = p50 <= 20.0 && p99 <= 100.0;
        println!(
            "{} {name} at {size}: p50 ≤ 20 ms and p99 ≤ 100 ms",
            verdict(ok)
        );
    }
    Ok(())
}

/// Completed records numbered `from..to`, submitted a millisecond apart in the past, put 256 at a time.
async fn fill(records: &async_nats::jetstream::kv::Store, from: usize, to: usize) -> Result<()> {
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    let puts = futures::stream::iter(from..to).map(|i| {
        let submitted = base + chrono::Duration::microseconds(i as i64 * 3);
        let request = JobRequest::new(
            uuid::Uuid::now_v7(),
            AGENT,
            format!("history job {i}"),
            submitted,
        );
        let mut record = JobRecord::queued(request)
            .claimed("bench-history", submitted)
            .run_ended(RunEnd {
                exit: Exit::Code(0),
                stop: None,
            });
        record.stdout = "hi\n".into();
        record.stdout_bytes = 3;
        let key = record.id.to_string();
        let value = to_msgpack(&record);
        async move { records.put(key, value.into()).await }
    });
    let mut puts = puts.buffer_unordered(256);
    while let Some(put) = puts.next().await {
        put.context("loading the history")?;
    }
    Ok(())
}

/// Waits until the gateway's index counts at least `size` jobs.
async fn wait_indexed(p: &Paths<'_>, size: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if total(p.http, p.base).await? >= Some(size as u64) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the gateway never indexed {size} jobs")
}

/// The list's exact total, or `None` while the index is not ready (the bucket is scanned then).
async fn total(http: &reqwest::Client, base: &str) -> Result<Option<u64>> {
    let page: serde_json::Value = http
        .get(format!("{base}/v1/jobs?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    Ok(page["total"].as_u64())
}

async fn time_query(p: &Paths<'_>, path: &str, samples: usize) -> Result<Samples> {
    let url = format!("{}{path}", p.base);
    Samples::collect(samples, || async {
        let r = p.http.get(&url).send().await?;
        if !r.status().is_success() {
            bail!("{path}: {}", r.status());
        }
        r.bytes().await?;
        Ok(())
    })
    .await
}

/// Submits a job every 2 ms (500/s) until aborted.
pub(crate) async fn keep_jobs_flowing(base: String) {
    let http = reqwest::Client::new();
    let mut every = tokio::time::interval(Duration::from_millis(2));
    loop {
        every.tick().await;
        let send = http
            .post(format!("{base}/v1/jobs"))
            .json(&serde_json::json!({"agent": AGENT, "message": "flowing"}))
            .send();
        tokio::spawn(send);
    }
}

/// Starts another gateway and times how long until it lists from its index, and what that index costs it.
async fn rebuild(h: &History<'_>, size: usize) -> Result<()> {
    let addr = format!("127.0.0.1:{}", crate::local_nats::free_port()?);
    let mut child = (h.spawn_gateway)(&addr)?;
    let base = format!("http://{addr}");
    let started = Instant::now();
    let result = async {
        loop {
            if let Ok(Some(n)) = total(h.paths.http, &base).await {
                if n >= size as u64 {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the new gateway never indexed {size} jobs");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let rss = crate::bench::rss_kb(child.id());
    // The bench's own gateway: ended here, reaped so it leaves no zombie.
    let _ = child.kill();
    let _ = child.wait();
    let took = result?;
    println!(
        "  a new gateway lists from its index after {:.1} s; its RSS then {:.1} MB",
        took.as_secs_f64(),
        rss as f64 / 1024.0
    );
    Ok(())
}
