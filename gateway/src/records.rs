//! Reading job records from KV, and waiting for a job's terminal record.

use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use fleet_shared::codec::{decode, Format};
use fleet_shared::JobRecord;
use futures::StreamExt;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
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
    Ok(entry
        .filter(|e| e.operation == Operation::Put)
        .and_then(|e| {
            decode(&e.value, Format::MessagePack)
                .ok()
                .map(|r| (r, e.value.len()))
        }))
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

/// Listens for the job's done notice. Subscribe before publishing the job (or before reading the record), so
/// the notice cannot slip by unseen.
pub async fn listen_done(state: &AppState, id: &Uuid) -> Result<async_nats::Subscriber, ApiError> {
    state
        .client
        .subscribe(state.topology.done_subject(id))
        .await
        .map_err(|e| ApiError::unavailable("subscribing failed", e))
}

/// Waits up to `limit` for the done notice of job `id`, then returns its record as it stands.
pub async fn wait_terminal(
    state: &AppState,
    caller: &Caller,
    mut done: async_nats::Subscriber,
    id: &Uuid,
    limit: Duration,
) -> Result<JobRecord, ApiError> {
    match tokio::time::timeout(limit, done.next()).await {
        Ok(Some(msg)) => match decode::<JobRecord>(&msg.payload, Format::MessagePack) {
            Ok(r) if caller.may_read(&r) => Ok(r),
            _ => get_or_404(state, caller, id).await,
        },
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
    let done = listen_done(state, id).await?;
    let record = get_or_404(state, caller, id).await?;
    if record.status.is_terminal() {
        return Ok(record);
    }
    wait_terminal(state, caller, done, id, limit).await
}
