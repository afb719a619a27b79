//! `fleet bench --history --pg-sink URL`: the PostgreSQL sink at each history size. How long a sink started on an
//! empty database takes to hold the whole bucket, and how far it trails the bucket while jobs flow at 500/s.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_history::keep_jobs_flowing;

pub struct SinkBench<'a> {
    /// The database, whose sink tables are dropped before each measure.
    pub url: String,
    /// Starts `fleet pg-sink` on the bench fleet, writing to `url`.
    pub spawn: &'a dyn Fn() -> Result<Child>,
}

pub async fn measure(
    s: &SinkBench<'_>,
    records: &async_nats::jetstream::kv::Store,
    base: &str,
) -> Result<()> {
    let db = connect(&s.url).await?;
    db.batch_execute(
        "SET client_min_messages = warning; \
         DROP TABLE IF EXISTS fleet_jobs; DROP TABLE IF EXISTS fleet_sink_position",
    )
    .await?;
    let end = last_sequence(records).await?;
    let started = Instant::now();
    let mut sink = (s.spawn)()?;
    let result = async {
        wait_position(&db, end).await?;
        let took = started.elapsed().as_secs_f64();
        let rows: i64 = db
            .query_one("SELECT count(*) FROM fleet_jobs", &[])
            .await?
            .get(0);
        println!(
            "  pg-sink from an empty database: {rows} rows in {took:.1} s ({:.0} rows/s)",
            rows as f64 / took
        );
        let worst = trailing(&db, records, base).await?;
        println!(
            "  pg-sink while 500 jobs/s flow: at most {worst} entries behind the bucket (every 100 ms for 5 s)"
        );
        Ok(())
    }
    .await;
    let _ = sink.kill();
    let _ = sink.wait();
    result
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to --pg-sink's database")?;
    tokio::spawn(connection);
    Ok(db)
}

async fn last_sequence(records: &async_nats::jetstream::kv::Store) -> Result<u64> {
    let mut stream = records.stream.clone();
    Ok(stream.info().await?.state.last_sequence)
}

/// The sink's committed position (0 before its first commit).
async fn position(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_opt(
            "SELECT revision FROM fleet_sink_position WHERE table_name = 'fleet_jobs'",
            &[],
        )
        .await;
    // The table does not exist until the sink has started.
    row.ok().flatten().map_or(0, |r| r.get::<_, i64>(0) as u64)
}

async fn wait_position(db: &tokio_postgres::Client, end: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while position(db).await < end {
        if Instant::now() > deadline {
            bail!("the sink never reached the bucket's entry {end}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The most entries the sink's position trails the bucket by while jobs flow.
async fn trailing(
    db: &tokio_postgres::Client,
    records: &async_nats::jetstream::kv::Store,
    base: &str,
) -> Result<u64> {
    let flowing = tokio::spawn(keep_jobs_flowing(base.to_string()));
    let mut worst = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let end = last_sequence(records).await?;
        worst = worst.max(end.saturating_sub(position(db).await));
    }
    flowing.abort();
    Ok(worst)
}
