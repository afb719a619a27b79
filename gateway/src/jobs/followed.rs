//! A bucket followed into an in-memory index: a watch from the bucket's first entry keeps the index in step
//! with it (after NATS trouble the bucket is read again from its start, the old index served meanwhile). Until
//! the watch has read to the bucket's end, `is_ready` is false and readers fall back to reading the bucket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};

/// What an index takes from its bucket.
pub trait Follows: Default + Send + Sync + 'static {
    /// What the index holds, for the log.
    const WHAT: &'static str;
    /// The keys it follows (a KV key filter): `>` for every key, `*` for one-token keys only.
    const KEYS: &'static str;
    /// A value written at `key` (ignored where the key is not the index's).
    fn put(&mut self, key: &str, value: &[u8]);
    /// `key` deleted or purged.
    fn remove(&mut self, key: &str);
    /// How many entries it holds (for the log).
    fn entries(&self) -> usize;
}

#[derive(Default)]
pub struct Followed<I> {
    index: RwLock<I>,
    ready: AtomicBool,
    /// The bucket's stream sequence of the last entry taken in.
    applied: AtomicU64,
    changed: tokio::sync::Notify,
    /// A last sequence the watch cannot reach (its entry expired before it was read): not waited for again.
    unreachable: AtomicU64,
}

/// How long a read waits for the index to take in what the bucket already holds.
const CATCH_UP: Duration = Duration::from_millis(250);

impl<I: Follows> Followed<I> {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The index, for reading (a poisoned lock still holds a consistent index: every write is one change).
    pub fn read(&self) -> RwLockReadGuard<'_, I> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, I> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the index holds every entry written before this call (its watch trails the bucket by
    /// moments), so what this or another gateway has just written is read as it is.
    pub async fn catch_up(&self, bucket: &kv::Store) {
        let Some(last) = last_written::<I>(bucket).await else {
            // NATS unreachable, or nothing written: serve what the index holds.
            return;
        };
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

    /// Follows the bucket for as long as the gateway runs.
    pub async fn follow(self: Arc<Self>, bucket: kv::Store) {
        loop {
            if let Err(e) = self.read_bucket(&bucket).await {
                tracing::warn!(error = %e, what = I::WHAT, "following a bucket failed; reading it again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn read_bucket(&self, bucket: &kv::Store) -> Result<(), async_nats::Error> {
        use futures::StreamExt;
        let started = Instant::now();
        // Nothing to read (the watch would wait for a first entry to say so).
        if last_written::<I>(bucket).await.is_none() {
            self.mark_ready(started);
        }
        let mut watch = bucket.watch_with_history(I::KEYS).await?;
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
        match entry.operation {
            Operation::Put => self.write().put(&entry.key, &entry.value),
            Operation::Delete | Operation::Purge => self.write().remove(&entry.key),
        }
        self.applied.fetch_max(entry.revision, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn mark_ready(&self, started: Instant) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(
                entries = self.read().entries(),
                secs = started.elapsed().as_secs_f64(),
                "{} indexed",
                I::WHAT
            );
        }
    }
}

/// The stream sequence of the last entry written under the index's keys, None when there is none, asked of the
/// server each time (`kv::Store::status` gives the stream's state as it was when the handle was opened): for every
/// key, the stream's last (its state is kept, so this is cheap at any size); for some, the last message on their
/// subject filter.
async fn last_written<I: Follows>(bucket: &kv::Store) -> Option<u64> {
    if I::KEYS == ">" {
        let mut stream = bucket.stream.clone();
        let state = &stream.info().await.ok()?.state;
        return (state.messages > 0).then_some(state.last_sequence);
    }
    let filter = format!("{}{}", bucket.prefix, I::KEYS);
    let last = bucket.stream.raw_message_builder().last_by_subject(filter);
    last.send().await.ok().map(|m| m.sequence)
}
