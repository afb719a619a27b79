//! Reading job records from KV, and waiting for a job's terminal record.

use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use fleet_shared::codec::{decode, Format};
use fleet_shared::topology::OUTPUT_EVENTS_HEADER;
use fleet_shared::JobRecord;
use futures::StreamExt;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::state::AppState;

pub async fn get(state: &AppState, id: &Uuid) -> Result<Option<JobRecord>, ApiError> {
    Ok(read(state, id).await?.map(|(record, _)| record))
}

/// The record and its encoded size.
async fn read(state: &AppState, id: &Uuid) -> Result<Option<(JobRecord, usize)>, ApiError> {
    let entry = state
        .records
        .entry(state.topology.record_key(id))
        .await
        .map_err(|e| ApiError::unavailable("reading the job record failed", e))?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Ok(None);
    };
    match decode(&entry.value, Format::MessagePack) {
        Ok(record) => Ok(Some((record, entry.value.len()))),
        Err(e) => {
            // Not a record any fleet version wrote (or a newer one's): the job is answered as not found, and
            // the operator is told why.
            tracing::error!(job_id = %id, revision = entry.revision, error = %e, "unreadable job record");
            Ok(None)
        }
    }
}

/// [`get_or_404`] for the file routes, which may use a completed record this gateway read lately: a job's files
/// are often fetched one request each, and each would otherwise read the whole record listing them all.
pub async fn get_for_files(
    state: &AppState,
    caller: &Caller,
    id: &Uuid,
) -> Result<std::sync::Arc<JobRecord>, ApiError> {
    let record = match state.completed.get(id) {
        Some(record) => record,
        None => {
            let (record, bytes) = read(state, id)
                .await?
                .ok_or_else(|| ApiError::job_not_found(id))?;
            let record = std::sync::Arc::new(record);
            state.completed.offer(&record, bytes);
            record
        }
    };
    Some(record)
        .filter(|r| caller.may_read(r))
        .ok_or_else(|| ApiError::job_not_found(id))
}

/// The job's record, if it exists and the caller may see it: others' jobs are not found, not forbidden, so ids
/// reveal nothing.
pub async fn get_or_404(
    state: &AppState,
    caller: &Caller,
    id: &Uuid,
) -> Result<JobRecord, ApiError> {
    get(state, id)
        .await?
        .filter(|r| caller.may_read(r))
        .ok_or_else(|| ApiError::job_not_found(id))
}

/// First look for a lost done notice, and the longest gap between looks.
const RECHECK_FIRST: Duration = Duration::from_secs(1);
const RECHECK_MAX: Duration = Duration::from_secs(8);

/// How this gateway learned that a job ended.
pub struct JobEnd {
    pub record: JobRecord,
    /// From the done notice: whether the job's events went live (then its `end` event is in the events stream).
    /// `None` when the record was read because no notice came.
    pub events_live: Option<bool>,
}

/// Watches for a job's end. The done notice is core NATS: at most once, and one in flight is lost when the server
/// carrying it dies. So while waiting, the record is also re-read at growing intervals (1 s, doubling to 8 s):
/// a lost notice delays a waiter by seconds, never leaves it hanging.
pub struct EndWatch {
    state: AppState,
    id: Uuid,
    notices: Option<async_nats::Subscriber>,
    next_check: tokio::time::Instant,
    gap: Duration,
}

enum Heard {
    Notice(Option<async_nats::Message>),
    Recheck,
}

impl EndWatch {
    /// Waits for the job's end (until dropped: callers bound it with their own timeout).
    pub async fn next(&mut self) -> JobEnd {
        loop {
            let heard = tokio::select! {
                m = async {
                    match &mut self.notices {
                        Some(notices) => notices.next().await,
                        None => std::future::pending().await,
                    }
                } => Heard::Notice(m),
                _ = tokio::time::sleep_until(self.next_check) => Heard::Recheck,
            };
            match heard {
                Heard::Notice(Some(m)) => {
                    let events_live = m
                        .headers
                        .as_ref()
                        .is_some_and(|h| h.get(OUTPUT_EVENTS_HEADER).is_some());
                    if let Ok(record) = decode::<JobRecord>(&m.payload, Format::MessagePack) {
                        return JobEnd {
                            record,
                            events_live: Some(events_live),
                        };
                    }
                }
                // The subscription ended (the client is closing): the re-reads carry on alone.
                Heard::Notice(None) => self.notices = None,
                Heard::Recheck => {
                    self.gap = (self.gap * 2).min(RECHECK_MAX);
                    self.next_check = tokio::time::Instant::now() + self.gap;
                    if let Ok(Some(record)) = get(&self.state, &self.id).await {
                        if record.status.is_terminal() {
                            return JobEnd {
                                record,
                                events_live: None,
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Starts watching for the job's end. Watch before publishing the job (or before reading the record), so the
/// notice cannot slip by unseen.
pub async fn watch_end(state: &AppState, id: &Uuid) -> Result<EndWatch, ApiError> {
    let notices = state
        .client
        .subscribe(state.topology.done_subject(id))
        .await
        .map_err(|e| ApiError::unavailable("subscribing failed", e))?;
    Ok(EndWatch {
        state: state.clone(),
        id: *id,
        notices: Some(notices),
        next_check: tokio::time::Instant::now() + RECHECK_FIRST,
        gap: RECHECK_FIRST,
    })
}

/// Waits up to `limit` for job `id` to end, then returns its record as it stands.
pub async fn wait_terminal(
    state: &AppState,
    caller: &Caller,
    mut watch: EndWatch,
    id: &Uuid,
    limit: Duration,
) -> Result<JobRecord, ApiError> {
    match tokio::time::timeout(limit, watch.next()).await {
        Ok(end) if caller.may_read(&end.record) => Ok(end.record),
        _ => get_or_404(state, caller, id).await,
    }
}

/// Waits for a job that may already have ended: subscribes first, then reads, so no ending is missed.
pub async fn wait_existing(
    state: &AppState,
    caller: &Caller,
    id: &Uuid,
    limit: Duration,
) -> Result<JobRecord, ApiError> {
    if limit.is_zero() {
        // A plain read (the polling path): no subscription needed.
        return get_or_404(state, caller, id).await;
    }
    let watch = watch_end(state, id).await?;
    let record = get_or_404(state, caller, id).await?;
    if record.status.is_terminal() {
        return Ok(record);
    }
    wait_terminal(state, caller, watch, id, limit).await
}
