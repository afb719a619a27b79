//! Records of completed jobs this gateway read lately, for the file routes. A completed record never changes: only
//! failed, timed-out and cancelled jobs can be retried, and workers never rewrite a terminal record. Only the
//! retention sweep removes it, which an entry outlives by at most [`TTL`] (the files go with it, so a download
//! then answers 404 all the same). Without it every file request read and decoded the whole record, which lists
//! every file: for a job of 1,000 files that was most of a download's time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_shared::{JobRecord, JobStatus};
use uuid::Uuid;

/// How long an entry is trusted.
pub const TTL: Duration = Duration::from_secs(30);
/// Encoded size of all entries together; the oldest go first past it.
pub const BUDGET_BYTES: usize = 4 << 20;

#[derive(Default)]
pub struct CompletedRecords {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<Uuid, Entry>,
    /// Insertion order, for eviction; a pair whose entry was since replaced is skipped.
    order: VecDeque<(Uuid, Instant)>,
    bytes: usize,
}

struct Entry {
    record: Arc<JobRecord>,
    bytes: usize,
    stored: Instant,
}

impl CompletedRecords {
    pub fn get(&self, id: &Uuid) -> Option<Arc<JobRecord>> {
        let entries = self.lock();
        let entry = entries.by_id.get(id)?;
        (entry.stored.elapsed() < TTL).then(|| entry.record.clone())
    }

    /// Keeps `record` if it is completed; `bytes` is its encoded size.
    pub fn offer(&self, record: &Arc<JobRecord>, bytes: usize) {
        if record.status != JobStatus::Completed || bytes > BUDGET_BYTES / 4 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        entries.remove(&record.id);
        while entries.bytes + bytes > BUDGET_BYTES
            || entries
                .order
                .front()
                .is_some_and(|(_, at)| at.elapsed() >= TTL)
        {
            let Some((id, at)) = entries.order.pop_front() else {
                break;
            };
            if entries.by_id.get(&id).is_some_and(|e| e.stored == at) {
                entries.remove(&id);
            }
        }
        entries.bytes += bytes;
        entries.order.push_back((record.id, now));
        entries.by_id.insert(
            record.id,
            Entry {
                record: record.clone(),
                bytes,
                stored: now,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entries {
    fn remove(&mut self, id: &Uuid) {
        if let Some(old) = self.by_id.remove(id) {
            self.bytes -= old.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: JobStatus) -> Arc<JobRecord> {
        let request = serde_json::from_value(serde_json::json!({
            "id": fleet_shared::wire::new_job_id(), "agent": "echo", "message": "hi",
            "submitted_at": "2026-11-22T12:00:00Z"}))
        .unwrap();
        let mut r = JobRecord::queued(request);
        r.status = status;
        Arc::new(r)
    }

    #[test]
    fn keeps_only_completed_records() {
        let cache = CompletedRecords::default();
        for status in [JobStatus::Failed, JobStatus::Cancelled, JobStatus::Running] {
            let r = record(status);
            cache.offer(&r, 100);
            assert!(cache.get(&r.id).is_none(), "{status:?} was kept");
        }
        let done = record(JobStatus::Completed);
        cache.offer(&done, 100);
        assert_eq!(cache.get(&done.id).unwrap().id, done.id);
    }

    #[test]
    fn stays_within_its_budget_oldest_first() {
        let cache = CompletedRecords::default();
        let size = BUDGET_BYTES / 4;
        let records: Vec<_> = (0..6).map(|_| record(JobStatus::Completed)).collect();
        for r in &records {
            cache.offer(r, size);
        }
        assert!(cache.get(&records[0].id).is_none());
        assert!(cache.get(&records[1].id).is_none());
        for r in &records[2..] {
            assert!(cache.get(&r.id).is_some());
        }
        assert!(cache.lock().bytes <= BUDGET_BYTES);
        // Too large to keep at all.
        let big = record(JobStatus::Completed);
        cache.offer(&big, BUDGET_BYTES / 4 + 1);
        assert!(cache.get(&big.id).is_none());
        // Offering an entry again replaces it without counting it twice.
        cache.offer(&records[5], size);
        assert_eq!(cache.lock().bytes, 4 * size);
    }
}
