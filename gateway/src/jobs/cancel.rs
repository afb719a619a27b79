//! Cancelling a job, for `POST /v1/jobs/{id}/cancel` and the NATS request API on `fleet.cancel.<id>`. The cancel
//! request goes to the cancels bucket first, which every worker watches: a worker holding the job stops it and
//! records `cancelled` with the output and files it has; a worker pulling it later never starts it. A job still
//! `queued` is ended here at once (compare-and-set, so a race with a worker leaves one terminal record) and its
//! message taken off the queue.

use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use chrono::Utc;
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::wire::{CancelReply, CancelRequest, CancelState};
use fleet_shared::{ErrorCode, JobError, JobRecord, JobStatus};
use futures::StreamExt;
use uuid::Uuid;

use fleet_shared::record_store::{self, Replaced};

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::records;
use crate::jobs::unqueue;
use crate::state::AppState;

/// What a cancel achieved within the time the caller waited.
pub enum Outcome {
    /// The job has its terminal record (normally `cancelled`; a job that ended on its own first keeps its end).
    Ended(Box<JobRecord>),
    /// The request is in; the job is still stopping, or has not been seen by any worker yet.
    Pending,
}

/// Whether a cancel may name a job that has no record yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecorded {
    /// Over HTTP: a job is what has a record, as for every other route (so nobody fills the cancels bucket with
    /// made-up ids).
    NotFound,
    /// On NATS, whose clients may publish jobs straight to the queue: a job published moments ago has no record
    /// until a worker takes it. Only ids whose time (UUID v7) is not in the future are taken, so no job can be
    /// cancelled before it exists; the requests expire with the bucket's retention.
    IfPublished,
}

/// How far ahead of this gateway's clock a publisher's clock may be.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);

fn may_be_published(id: &Uuid) -> bool {
    let Some(ts) = id.get_timestamp() else {
        return false;
    };
    let (secs, nanos) = ts.to_unix();
    chrono::DateTime::from_timestamp(secs as i64, nanos)
        .is_some_and(|t| t <= Utc::now() + CLOCK_SKEW)
}

pub async fn cancel(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    wait: Duration,
    unrecorded: Unrecorded,
) -> Result<Outcome, ApiError> {
    caller.require(|s| s.cancel, "cancel or retry jobs")?;
    let key = state.topology.record_key(&id);
    let watch = records::watch_end(state, &id).await?;
    let mut requested = false;
    loop {
        let entry = state
            .records
            .entry(key.clone())
            .await
            .map_err(|e| ApiError::unavailable("reading the job record failed", e))?;
        let held = entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                Some((
                    decode::<JobRecord>(&e.value, Format::MessagePack).ok()?,
                    e.revision,
                ))
            });
        // A key holder cancels only jobs it can see; a job with no record yet cannot be shown to be its own.
        let visible = match (&held, caller) {
            (Some((record, _)), _) => caller.may_read(record),
            (None, Caller::Open) => {
                unrecorded == Unrecorded::IfPublished && (requested || may_be_published(&id))
            }
            (None, Caller::Authenticated { .. }) => false,
        };
        if !visible {
            return Err(ApiError::job_not_found(id));
        }
        if let Some((record, _)) = held.as_ref().filter(|(r, _)| r.status.is_terminal()) {
            // Ended since this call stored its request (a worker claimed the job and stopped it between our look
            // and our compare-and-set): that is this cancel's outcome, not a refusal.
            if requested {
                return Ok(Outcome::Ended(Box::new(record.clone())));
            }
            return Err(ApiError::new(
                ErrorCode::JobFinished,
                format!("job {id} already ended: {}", record.status.as_str()),
            ));
        }
        if !requested {
            let request = CancelRequest {
                requested_at: Some(Utc::now()),
                generation: held.as_ref().map_or(0, |(r, _)| r.generation()),
            };
            state
                .cancels
                .put(key.clone(), to_msgpack(&request).into())
                .await
                .map_err(|e| ApiError::unavailable("storing the cancel request failed", e))?;
            requested = true;
        }
        match held {
            // Published straight to NATS and not picked up yet: the worker that pulls it records the cancel.
            None => return Ok(Outcome::Pending),
            Some((record, revision)) if record.status == JobStatus::Queued => {
                if let Some(ended) = end_queued(state, &key, record, revision).await? {
                    return Ok(Outcome::Ended(Box::new(ended)));
                }
                // A worker claimed or ended it meanwhile: look again.
            }
            // Running: its worker stops it and records the end.
            Some(_) => return wait_for_end(state, caller, &id, watch, wait).await,
        }
    }
}

/// Waits up to `wait` for the worker holding the job to record its end.
async fn wait_for_end(
    state: &AppState,
    caller: &Caller,
    id: &Uuid,
    mut watch: records::EndWatch,
    wait: Duration,
) -> Result<Outcome, ApiError> {
    match tokio::time::timeout(wait, watch.next()).await {
        Ok(_) => Ok(Outcome::Ended(Box::new(
            records::get_or_404(state, caller, id).await?,
        ))),
        Err(_) => Ok(Outcome::Pending),
    }
}

/// Records a job that no worker has claimed as cancelled (compare-and-set on `revision`), takes it off the queue
/// and tells waiting gateways. `None`: the record changed meanwhile (a worker claimed or ended it).
async fn end_queued(
    state: &AppState,
    key: &str,
    record: JobRecord,
    revision: u64,
) -> Result<Option<JobRecord>, ApiError> {
    let ended = record.cancelled_before_start();
    match record_store::replace(&state.records, key, &ended, revision).await {
        Ok(Replaced::Written(_)) => {}
        Ok(Replaced::Moved) => return Ok(None),
        Err(e) => return Err(ApiError::unavailable("recording the cancel failed", e)),
    }
    take_off_the_queue(state, &ended).await;
    // Jobs submitted over HTTP have no reply subject; gateways waiting on or following the job hear this (it
    // never went live, so it has no events).
    let notice = state.topology.done_subject(&ended.id);
    if let Err(e) = state
        .client
        .publish(notice, to_msgpack(&ended).into())
        .await
    {
        tracing::warn!(job_id = %ended.id, error = %e, "publishing the done notice failed");
    }
    Ok(Some(ended))
}

/// Removes the cancelled job's message so it stops counting as queued; a failure only leaves it to the worker
/// that pulls it, which drops it.
async fn take_off_the_queue(state: &AppState, ended: &JobRecord) {
    match unqueue::remove(state, ended).await {
        Ok(true) => tracing::debug!(job_id = %ended.id, "cancelled job taken off the queue"),
        Ok(false) => tracing::debug!(job_id = %ended.id, "cancelled job's message already gone"),
        Err(e) => {
            tracing::warn!(job_id = %ended.id, error = %e, "taking the cancelled job off the queue failed")
        }
    }
}

/// Answers cancel requests published on `fleet.cancel.<id>` (any gateway replica; a queue group shares them):
/// the reply is JSON, `{job_id, status}` or `{job_id, error: {code, message}}`.
pub async fn serve_nats(state: AppState) {
    let subject = state.topology.cancel_subject_wildcard();
    let mut requests = match state
        .client
        .queue_subscribe(subject.clone(), state.topology.gateway_queue_group())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, subject, "cannot listen for cancel requests");
            return;
        }
    };
    while let Some(msg) = requests.next().await {
        let state = state.clone();
        tokio::spawn(async move {
            let Some(reply) = msg.reply.clone() else {
                return;
            };
            let id = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|s| Uuid::parse_str(s).ok());
            let answer = match id {
                None => CancelReply {
                    job_id: None,
                    status: None,
                    error: Some(JobError::new(
                        ErrorCode::InvalidRequest,
                        "the subject's last token must be a job id",
                    )),
                },
                Some(id) => reply_for(id, cancel_over_nats(&state, id).await),
            };
            // Ids, strings and enums always serialize.
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = state.client.publish(reply, body.into()).await {
                tracing::warn!(error = %e, "answering a cancel request failed");
            }
        });
    }
}

async fn cancel_over_nats(state: &AppState, id: Uuid) -> Result<Outcome, ApiError> {
    cancel(
        state,
        &Caller::Open,
        id,
        Duration::ZERO,
        Unrecorded::IfPublished,
    )
    .await
}

fn reply_for(id: Uuid, outcome: Result<Outcome, ApiError>) -> CancelReply {
    let (status, error) = match outcome {
        Ok(Outcome::Ended(r)) => (Some(CancelState::of(r.status)), None),
        Ok(Outcome::Pending) => (Some(CancelState::Cancelling), None),
        Err(e) => (None, Some(JobError::new(e.code, e.message))),
    };
    CancelReply {
        job_id: Some(id),
        status,
        error,
    }
}
