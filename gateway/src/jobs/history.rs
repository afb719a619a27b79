//! The job history this gateway serves lists and counts from: an [`Index`] kept in step with the jobs bucket by a
//! watch from its first record, swept of records the bucket's max age has expired. Until the watch has read
//! the bucket to its end, `ready` is false and the callers fall back to scanning the bucket.

use std::sync::Arc;
use std::time::Duration;

use fleet_shared::codec::{decode, Format};
use uuid::Uuid;

use crate::jobs::followed::{Followed, Follows};
use crate::jobs::index::{Index, Indexed};

pub type History = Followed<Index>;

impl Follows for Index {
    const KEYS: &'static str = ">";
    const WHAT: &'static str = "job history";

    fn put(&mut self, key: &str, value: &[u8]) {
        let Ok(id) = Uuid::parse_str(key) else {
            return;
        };
        match decode::<Indexed>(value, Format::MessagePack) {
            Ok(record) => self.take(&record),
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "unreadable job record left out of the history")
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(id) = Uuid::parse_str(key) {
            Index::remove(self, &id);
        }
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

impl History {
    /// A job the index lists whose record is gone (expired between sweeps).
    pub fn forget(&self, id: &Uuid) {
        self.write().remove(id);
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
