//! Cancel requests, as every worker sees them: a watch on the cancels bucket keeps a local set of cancelled job ids
//! (no NATS round trip on any job's path), and a running job registered here is stopped the moment its cancel
//! arrives. A job delivered after its cancel never starts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Default)]
pub struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Cancelled job ids and when this worker learnt of them.
    requested: HashMap<Uuid, Instant>,
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
    pub fn is_requested(&self, id: &Uuid) -> bool {
        self.inner
            .lock()
            .is_ok_and(|inner| inner.requested.contains_key(id))
    }

    /// Registers a job about to run; its token is cancelled when (or if already) the job is cancelled.
    pub fn register(&self, id: Uuid) -> Registration<'_> {
        let token = CancellationToken::new();
        if let Ok(mut inner) = self.inner.lock() {
            if inner.requested.contains_key(&id) {
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

    fn requested(&self, id: Uuid, retention: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        // The bucket forgets requests after the retention; so does this set (checked as it grows).
        if inner.requested.len() % 1024 == 1023 {
            inner.requested.retain(|_, at| at.elapsed() < retention);
        }
        inner.requested.insert(id, Instant::now());
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
                self.requested(id, retention);
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
        let running = cancels.register(a);
        assert!(!running.token.is_cancelled());
        cancels.requested(a, Duration::from_secs(60));
        assert!(running.token.is_cancelled());
        drop(running);
        cancels.requested(b, Duration::from_secs(60));
        assert!(cancels.is_requested(&b));
        assert!(cancels.register(b).token.is_cancelled());
        assert!(cancels.inner.lock().unwrap().running.is_empty());
    }
}
