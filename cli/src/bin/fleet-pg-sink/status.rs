//! `fleet pg-sink --status [--count]`: how far the sink's table is behind the bucket, for operators (and the
//! bench), and how many rows it holds.

use anyhow::Result;
use async_nats::jetstream::kv;

use crate::sink::{connect, last_entry, position, Table};

pub async fn print(url: &str, table: &Table, bucket: &kv::Store, count: bool) -> Result<()> {
    let db = connect(url).await?;
    let at = position(&db, &bucket.name, &table.0).await?;
    let end = last_entry(bucket).await?;
    println!(
        "{}: at entry {at} of the bucket's {end} ({} behind)",
        table.0,
        end.saturating_sub(at)
    );
    if count {
        let counted = db
            .query_one(&format!("SELECT count(*) FROM {}", table.0), &[])
            .await;
        // No table yet: the sink has not started.
        println!("{} rows", counted.map_or(0, |row| row.get::<_, i64>(0)));
    }
    Ok(())
}
