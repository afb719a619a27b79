//! `fleet bench --history --pg-sink URL`: the PostgreSQL sink at each history size. How long a sink writing a new
//! table takes to hold the whole bucket, and how far it trails the bucket while jobs flow at 500/s. Read through
//! `fleet pg-sink --status`, so the database client stays out of `fleet` itself.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_history::keep_jobs_flowing;

pub struct SinkBench<'a> {
    /// Starts `fleet pg-sink` on the bench fleet, writing the table named.
    pub spawn: &'a dyn Fn(&str) -> Result<Child>,
    /// `fleet pg-sink --status` for the table named, with these arguments added (`--count`).
    pub status: &'a dyn Fn(&str, &[&str]) -> Result<String>,
}

/// What `--status` says: the sink's position and the bucket's last entry.
struct Status {
    at: u64,
    end: u64,
}

impl Status {
    fn read(s: &SinkBench<'_>, table: &str) -> Result<Self> {
        let line = (s.status)(table, &[])?;
        // "TABLE: at entry AT of the bucket's END (N behind)"
        let numbers = numbers(line.rsplit(':').next().unwrap_or(""));
        match numbers[..] {
            [at, end, _behind] => Ok(Self { at, end }),
            _ => bail!("unexpected `fleet pg-sink --status`: {line}"),
        }
    }
}

fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The table's rows, from `--status --count`'s second line ("ROWS rows").
fn rows(s: &SinkBench<'_>, table: &str) -> Result<u64> {
    let out = (s.status)(table, &["--count"])?;
    let line = out.lines().nth(1).unwrap_or("");
    numbers(line)
        .first()
        .copied()
        .with_context(|| format!("unexpected `fleet pg-sink --status --count`: {out}"))
}

pub async fn measure(s: &SinkBench<'_>, size: usize, base: &str) -> Result<()> {
    // A table of this run's own: a table an earlier run left holds its rows and position already.
    let table = format!("bench_jobs_{size}_{}", std::process::id());
    let started = Instant::now();
    let mut sink = (s.spawn)(&table)?;
    let result = async {
        wait_caught_up(s, &table).await?;
        let took = started.elapsed().as_secs_f64();
        let rows = rows(s, &table)?;
        println!(
            "  pg-sink into a new table: {rows} rows in {took:.1} s ({:.0} rows/s)",
            rows as f64 / took
        );
        let worst = trailing(s, &table, base).await?;
        println!(
            "  pg-sink while 500 jobs/s flow: at most {worst} entries behind the bucket (every 250 ms for 5 s)"
        );
        Ok(())
    }
    .await;
    let _ = sink.kill();
    let _ = sink.wait();
    result
}

/// Waits until the sink's position reaches the bucket's last entry as it was when the wait began.
async fn wait_caught_up(s: &SinkBench<'_>, table: &str) -> Result<()> {
    let end = Status::read(s, table)?.end;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = Status::read(s, table).context("reading the sink's status")?;
        if status.at >= end {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the sink never reached the bucket's entry {end}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The most entries the sink's position trails the bucket by while jobs flow.
async fn trailing(s: &SinkBench<'_>, table: &str, base: &str) -> Result<u64> {
    let flowing = tokio::spawn(keep_jobs_flowing(base.to_string()));
    let mut worst = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let status = Status::read(s, table)?;
        worst = worst.max(status.end.saturating_sub(status.at));
    }
    flowing.abort();
    Ok(worst)
}
