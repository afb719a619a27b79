//! Cancel requests, as every worker sees them: a watch on the cancels bucket keeps a local set of cancelled job ids
//! (no NATS round trip on any job's path), and a running job registered here is stopped the moment its cancel
//! arrives. A job delivered after its cancel never starts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use fleet_shared::codec::{decode, Format};
use fleet_shared::wire::CancelRequest;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Default)]
pub struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Cancelled job ids, the run (generation) each cancel was for, and when this worker learnt of it.
    requested: HashMap<Uuid, (u32, Instant)>,
    running: HashMap<Uuid, CancellationToken>,
}

/// A running job's registration; dropping it unregisters the job.
pub struct Registration<'a> {
    cancels: &'a Cancels,
    id: Uuid,
    pub token: CancellationToken,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.cancels.inner.lock() {
            inner.running.remove(&self.id);
        }
    }
}

impl Cancels {
    /// Was run `generation` of job `id` cancelled? (A cancel of an earlier run does not stop a retry.)
    pub fn is_requested(&self, id: &Uuid, generation: u32) -> bool {
        self.inner.lock().is_ok_and(|inner| {
            inner
                .requested
                .get(id)
                .is_some_and(|(g, _)| *g >= generation)
        })
    }

    /// Registers run `generation` of a job about to run; its token is cancelled when (or if already) that run
    /// is cancelled.
    pub fn register(&self, id: Uuid, generation: u32) -> Registration<'_> {
        let token = CancellationToken::new();
        if let Ok(mut inner) = self.inner.lock() {
            if inner
                .requested
                .get(&id)
                .is_some_and(|(g, _)| *g >= generation)
            {
                token.cancel();
            }
            inner.running.insert(id, token.clone());
        }
        Registration {
            cancels: self,
            id,
            token,
        }
    }

    fn requested(&self, id: Uuid, generation: u32, retention: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        // The bucket forgets requests after the retention; so does this set (checked as it grows).
        if inner.requested.len() % 1024 == 1023 {
            inner
                .requested
                .retain(|_, (_, at)| at.elapsed() < retention);
        }
        inner.requested.insert(id, (generation, Instant::now()));
        if let Some(token) = inner.running.get(&id) {
            tracing::info!(job_id = %id, "cancel requested; stopping the running job");
            token.cancel();
        }
    }

    /// Follows the cancels bucket from its start for as long as the connection lasts.
    pub async fn follow(
        &self,
        bucket: &kv::Store,
        retention: Duration,
    ) -> Result<(), async_nats::Error> {
        let mut watch = bucket.watch_with_history(">").await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            if entry.operation != kv::Operation::Put {
                continue;
            }
            if let Ok(id) = Uuid::parse_str(&entry.key) {
                let request: CancelRequest =
                    // An unreadable request still cancels the job's first run.
                    decode(&entry.value, Format::MessagePack).unwrap_or_default();
                self.requested(id, request.generation, retention);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_stops_a_registered_job_and_marks_later_ones() {
        let cancels = Cancels::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let running = cancels.register(a, 0);
        assert!(!running.token.is_cancelled());
        cancels.requested(a, 0, Duration::from_secs(60));
        assert!(running.token.is_cancelled());
        drop(running);
        cancels.requested(b, 0, Duration::from_secs(60));
        assert!(cancels.is_requested(&b, 0));
        assert!(cancels.register(b, 0).token.is_cancelled());
        // A retry (run 1) is not stopped by the cancel of run 0.
        assert!(!cancels.is_requested(&b, 1));
        assert!(!cancels.register(b, 1).token.is_cancelled());
        assert!(cancels.inner.lock().unwrap().running.is_empty());
    }
}
