//! The pull loop of one agent. A worker serving several agents shares its run slots among their loops, so no loop
//! may hold slots while it merely waits for work: that would starve the other agents until its pull expired.
//! Instead a loop waits until some slot is free, asks its durable consumer for as many jobs as slots are free,
//! and takes a slot for each job as it arrives; a job that finds every slot taken by another agent's jobs meanwhile
//! is handed straight back for any worker with room. Each job goes to [`crate::job::handle`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Consumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::Shared;

/// How long one pull request waits for jobs before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

pub async fn pull_loop(
    shared: Arc<Shared>,
    agent: String,
    consumer: Consumer<pull::Config>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Wait for room without keeping it: the slot is taken only when a job arrives.
        let room = tokio::select! {
            biased;
            _ = shared.stop_pulling.cancelled() => return,
            p = slots.acquire() => p,
        };
        let Ok(room) = room else { return };
        drop(room);
        let wanted = slots.available_permits().max(1);
        let batch = consumer
            .batch()
            .max_messages(wanted)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => {
                backoff = Duration::from_millis(100);
                b
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "pull request failed");
                tokio::select! {
                    _ = shared.stop_pulling.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = shared.stop_pulling.cancelled() => None,
                m = batch.next() => m,
            };
            match next {
                Some(Ok(msg)) => {
                    if let Ok(info) = msg.info() {
                        shared.metrics.delivered(&agent, info.delivered);
                    }
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Other agents' jobs took the free slots since this pull was asked for.
                        shared.metrics.handed_back(&agent, "no_free_slot");
                        crate::job::settle(&msg, crate::job::Settle::Retry(None)).await;
                        continue;
                    };
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        crate::job::handle(shared, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull batch ended with an error");
                    break;
                }
                None => break,
            }
        }
        if shared.stop_pulling.is_cancelled() {
            return;
        }
    }
}
