//! Retention: removes stored artifacts older than `queue.retention_hours` (CLEANUP_AFTER_HOURS), as the jobs
//! bucket's max age removes their records. Every worker runs it; concurrent sweeps only race to delete the
//! same objects, which is harmless.

use std::sync::Arc;

use crate::Shared;

pub async fn run(shared: Arc<Shared>) {
    let every = shared.config.artifacts.sweep_interval();
    let retention = chrono::Duration::from_std(shared.config.queue.retention())
        .unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            biased;
            _ = shared.stop_pulling.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cutoff = chrono::Utc::now() - retention;
        for store in shared.stores.sweepable() {
            match store.delete_older_than(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    store = store.name(),
                    "removed artifacts past retention"
                ),
                Err(e) => tracing::warn!(error = %e, "artifact retention sweep failed; will retry"),
            }
        }
    }
}
