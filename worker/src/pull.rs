//! The pull loop of one agent: asks its durable consumer for at most as many jobs as there are free run slots
//! (a fetched job's ack timer is running, so nothing is fetched that cannot start at once), and hands each to
//! [`crate::job::handle`].

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
    consumer: Consumer<pull::Config>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            biased;
            _ = shared.stop_pulling.cancelled() => return,
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(first) = first else { return };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
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
                    let Some(permit) = permits.pop() else {
                        // The server never sends more than asked; hand back anything extra untouched.
                        let _ = msg
                            .ack_with(async_nats::jetstream::AckKind::Nak(None))
                            .await;
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
