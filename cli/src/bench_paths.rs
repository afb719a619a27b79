//! The two ways into the fleet the bench drives: a job published straight to JetStream and waited for on its
//! reply subject, and a job posted over HTTP and waited for; one at a time (latency) or many in flight
//! (throughput).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::{JobRecord, JobStatus};
use futures::StreamExt;

use crate::bench::{jobs_subject, AGENT};

pub(crate) async fn wait_until_agent_known(http: &reqwest::Client, base: &str) -> Result<()> {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/v1/agents")).send().await {
            if r.text()
                .await
                .is_ok_and(|t| t.contains(&format!("\"{AGENT}\"")))
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the fleet did not come up")
}

fn job_payload(reply_to: &str) -> Vec<u8> {
    let body =
        serde_json::json!({"id": uuid::Uuid::now_v7(), "message": "bench", "reply_to": reply_to});
    to_msgpack(&body)
}

fn check(record: &JobRecord) -> Result<()> {
    if record.status != JobStatus::Completed || record.stdout != "hi\n" {
        bail!(
            "job {} ended {:?}: {:?}",
            record.id,
            record.status,
            record.error
        );
    }
    Ok(())
}

/// One job published straight to JetStream, waited for on its reply subject.
pub(crate) async fn nats_job(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> Result<()> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    js.publish(jobs_subject(AGENT), job_payload(&inbox).into())
        .await?
        .await?;
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await?
        .context("reply subscription closed")?;
    check(&decode(&msg.payload, Format::MessagePack)?)
}

pub(crate) async fn http_job(http: &reqwest::Client, base: &str) -> Result<()> {
    let r = http
        .post(format!("{base}/v1/jobs?wait=30"))
        .json(&serde_json::json!({"agent": AGENT, "message": "bench"}))
        .send()
        .await?;
    let body: serde_json::Value = r.json().await?;
    if body["status"] != "completed" || body["record"]["stdout"] != "hi\n" {
        bail!("job ended badly: {body}");
    }
    Ok(())
}

/// Jobs per second over NATS with `in_flight` outstanding: one reply subscription, a new job per reply.
pub(crate) async fn nats_throughput(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    total: usize,
    in_flight: usize,
) -> Result<f64> {
    nats_throughput_of(client, js, AGENT, total, in_flight).await
}

/// Jobs per second of `agent` over NATS with `in_flight` jobs published ahead of their results.
pub(crate) async fn nats_throughput_of(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    agent: &str,
    total: usize,
    in_flight: usize,
) -> Result<f64> {
    let prefix = client.new_inbox();
    let mut replies = client.subscribe(format!("{prefix}.*")).await?;
    let start = Instant::now();
    let mut sent = 0usize;
    let mut done = 0usize;
    while sent < in_flight.min(total) {
        js.publish(
            jobs_subject(agent),
            job_payload(&format!("{prefix}.{sent}")).into(),
        )
        .await?;
        sent += 1;
    }
    while done < total {
        let msg = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await?
            .context("replies closed")?;
        check(&decode(&msg.payload, Format::MessagePack)?)?;
        done += 1;
        if sent < total {
            js.publish(
                jobs_subject(agent),
                job_payload(&format!("{prefix}.{sent}")).into(),
            )
            .await?;
            sent += 1;
        }
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Jobs per second over HTTP with `in_flight` concurrent `POST /v1/jobs?wait` requests.
pub(crate) async fn http_throughput(
    http: &reqwest::Client,
    base: &str,
    total: usize,
    in_flight: usize,
) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (http, base, next) = (http.clone(), base.to_string(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    http_job(&http, &base).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
