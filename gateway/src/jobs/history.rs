//! The job history this gateway serves lists and counts from: an [`Index`] kept in step with the jobs bucket by a
//! watch from its first record, swept of records the bucket's max age has expired. Until the watch has read
//! the bucket to its end, `ready` is false and the callers fall back to scanning the bucket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use fleet_shared::codec::{decode, Format};
use uuid::Uuid;

use crate::jobs::index::{Index, Indexed};

#[derive(Default)]
pub struct History {
    index: RwLock<Index>,
    ready: AtomicBool,
    /// The bucket's stream sequence of the last record taken in.
    applied: AtomicU64,
    changed: tokio::sync::Notify,
    /// A last sequence the watch cannot reach (its record expired before it was read): not waited for again.
    unreachable: AtomicU64,
}

/// How long a read waits for the index to take in what the bucket already holds.
const CATCH_UP: Duration = Duration::from_millis(250);

impl History {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The index, for reading (a poisoned lock still holds a consistent index: every write is one `apply`).
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the index holds every record written before this call (its watch trails the bucket by
    /// moments), so a job this or another gateway has just queued or ended is listed as it is.
    pub async fn catch_up(&self, records: &kv::Store) {
        let Ok(status) = records.status().await else {
            // NATS unreachable: serve what the index holds.
            return;
        };
        let last = status.info.state.last_sequence;
        if self.applied.load(Ordering::Acquire) >= last
            || self.unreachable.load(Ordering::Acquire) == last
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let changed = self.changed.notified();
            if self.applied.load(Ordering::Acquire) >= last {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                self.unreachable.store(last, Ordering::Release);
                return;
            }
        }
    }

    /// A job the index lists whose record is gone (expired between sweeps).
    pub fn forget(&self, id: &Uuid) {
        self.write().remove(id);
    }

    /// Follows the bucket for as long as the gateway runs; after NATS trouble it reads the bucket again from its
    /// start (a rebuild), serving the old index meanwhile.
    pub async fn follow(self: Arc<Self>, records: kv::Store) {
        loop {
            if let Err(e) = self.read_bucket(&records).await {
                tracing::warn!(error = %e, "following the job records failed; reading them again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn read_bucket(&self, records: &kv::Store) -> Result<(), async_nats::Error> {
        use futures::StreamExt;
        let started = Instant::now();
        if records.status().await?.values() == 0 {
            self.mark_ready(started);
        }
        let mut watch = records.watch_with_history(">").await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            self.take(&entry);
            if entry.seen_current || entry.delta == 0 {
                self.mark_ready(started);
            }
        }
        Ok(())
    }

    fn take(&self, entry: &kv::Entry) {
        self.take_entry(entry);
        self.applied.fetch_max(entry.revision, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn take_entry(&self, entry: &kv::Entry) {
        let Ok(id) = Uuid::parse_str(&entry.key) else {
            return;
        };
        match entry.operation {
            Operation::Put => match decode::<Indexed>(&entry.value, Format::MessagePack) {
                Ok(record) => self.write().take(&record),
                Err(e) => {
                    tracing::error!(job_id = %id, error = %e, "unreadable job record left out of the history")
                }
            },
            Operation::Delete | Operation::Purge => self.write().remove(&id),
        }
    }

    fn mark_ready(&self, started: Instant) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(
                jobs = self.read().len(),
                secs = started.elapsed().as_secs_f64(),
                "job history indexed"
            );
        }
    }

    /// Drops entries whose records the bucket's max age has expired (expiry leaves no marker to watch).
    pub async fn sweep_expired(self: Arc<Self>, retention: Duration) {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Ok(age) = chrono::Duration::from_std(retention) else {
                return;
            };
            let swept = self.write().sweep(chrono::Utc::now() - age);
            if swept > 0 {
                tracing::debug!(swept, "expired jobs left the history");
            }
        }
    }
}
