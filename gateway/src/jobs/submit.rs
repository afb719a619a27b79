//! Submitting a job, shared by every endpoint that creates one: check the agent, resolve the idempotency key,
//! write the `queued` record, publish to the agent's subject with the job id as `Nats-Msg-Id`. A publish that
//! JetStream refuses removes the record again, so a rejected request leaves nothing behind.

use std::collections::BTreeMap;
use tracing::Instrument;

use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use fleet_shared::codec::{to_msgpack, CONTENT_TYPE_HEADER, MSGPACK};
use fleet_shared::topology::{
    GENERATION_HEADER, MSG_ID_HEADER, RECORD_REVISION_HEADER, RECORD_SEAL_HEADER,
};
use fleet_shared::{ErrorCode, JobRecord, JobRequest, Topology};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use fleet_shared::record_store::{self, Replaced};

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::records;
use crate::state::AppState;

/// What an endpoint asks to run; endpoints fill it from their own request shapes.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub id: Option<Uuid>,
    pub agent: String,
    pub message: String,
    pub context: Option<String>,
    pub timeout: Option<f64>,
    pub return_files: bool,
    pub input_files: Vec<fleet_shared::wire::InputFile>,
    pub artifact_target: Option<String>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub idempotency_key: Option<String>,
    /// A conversation for a model agent (the OpenAI front door).
    pub chat: Vec<fleet_shared::chat::ChatMessage>,
    pub sampling: fleet_shared::chat::Sampling,
    /// The session turn this job is (set by the sessions service only).
    pub session: Option<fleet_shared::session::SessionTurn>,
    /// The conversation exchange this job is (set by the conversations service only).
    pub conversation: Option<fleet_shared::conversation::ConversationStep>,
}

pub struct Submitted {
    pub record: JobRecord,
    /// False when the id (or idempotency key) named a job that already existed.
    pub created: bool,
}

/// What the idempotency bucket remembers about a key.
#[derive(Serialize, Deserialize)]
struct IdempotencyEntry {
    job_id: Uuid,
    /// Hash of the request, so the same key with a different request is refused instead of silently ignored.
    fingerprint: String,
}

pub async fn submit(
    state: &AppState,
    caller: &Caller,
    sub: Submission,
) -> Result<Submitted, ApiError> {
    // Checked before anything else: a forbidden agent queues nothing and reveals nothing about the fleet.
    caller.may_run(&sub.agent)?;
    let mut request = JobRequest {
        id: sub.id.unwrap_or_else(fleet_shared::wire::new_job_id),
        agent: sub.agent,
        message: sub.message,
        context: sub.context,
        timeout: sub.timeout,
        return_files: sub.return_files,
        input_files: sub.input_files,
        artifact_target: sub.artifact_target,
        reply_to: None,
        metadata: sub.metadata,
        submitted_at: Utc::now(),
        traceparent: None,
        owner: caller.owner(),
        owner_name: caller.principal().map(|p| p.name.clone()),
        chat: sub.chat,
        sampling: sub.sampling,
        session: sub.session,
        conversation: sub.conversation,
    };
    check_request(state, caller, &request).await?;
    if let Some(key) = &sub.idempotency_key {
        request.id = resolve_idempotency_key(state, caller, key, &request).await?;
    }

    let key = state.topology.record_key(&request.id);
    // The record keeps input names and sizes; their content travels only in the job message.
    let record = JobRecord::queued(request.without_inline_data());
    fits_in_a_message(state, to_msgpack(&record).len())?;
    fits_in_a_message(state, to_msgpack(&request).len())?;
    let request_with_inputs = request;
    if let Err(over) = within_queue_cap(state, caller).await {
        // A repeated submission of a job that exists creates nothing, so the cap does not stand in its way.
        return match records::get(state, &record.id).await? {
            Some(existing) if caller.may_read(&existing) => Ok(Submitted {
                record: existing,
                created: false,
            }),
            _ => Err(over),
        };
    }
    let revision = match create_record(state, caller, &key, &record).await? {
        Created::Revision(revision) => revision,
        Created::Existing(existing) => {
            return Ok(Submitted {
                record: *existing,
                created: false,
            })
        }
    };

    if let Err(e) = publish(state, &request_with_inputs, revision, 0).await {
        // Nothing was queued: take the record back so the job does not look accepted.
        if let Err(undo) = state
            .records
            .delete_expect_revision(&key, Some(revision))
            .await
        {
            tracing::warn!(job_id = %record.id, error = %undo, "taking back the record of an unpublished job failed; it stays queued until the retention sweep");
        }
        return Err(e);
    }
    tracing::info!(job_id = %record.id, agent = %record.request.agent, "job queued");
    state.metrics.submitted(&record.request.agent);
    Ok(Submitted {
        record,
        created: true,
    })
}

/// Everything about a request that can be refused before anything is written: its shape, the files it names,
/// its artifact target, and an agent some worker runs.
async fn check_request(
    state: &AppState,
    caller: &Caller,
    request: &JobRequest,
) -> Result<(), ApiError> {
    state
        .topology
        .validate_request(request)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    check_references(state, caller, request).await?;
    if let Some(target) = &request.artifact_target {
        if !state.stores.is_known_name(target) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("artifact_target `{target}` is not `default` or a target configured under [artifacts.targets]"),
            ));
        }
    }
    if !state.agents.exists(&request.agent).await? {
        return Err(ApiError::new(
            ErrorCode::UnknownAgent,
            format!("no worker in the fleet runs agent `{}`", request.agent),
        ));
    }
    Ok(())
}

/// What writing a new job's `queued` record found.
enum Created {
    Revision(u64),
    /// The caller's own job with this id already exists (a repeated submission).
    Existing(Box<JobRecord>),
}

/// Creates the `queued` record; an id that is taken is the caller's repeated submission, or someone else's job,
/// which is refused without showing it.
async fn create_record(
    state: &AppState,
    caller: &Caller,
    key: &str,
    record: &JobRecord,
) -> Result<Created, ApiError> {
    match state.records.create(key, to_msgpack(record).into()).await {
        Ok(revision) => Ok(Created::Revision(revision)),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
            let existing = records::get(state, &record.id)
                .await?
                .ok_or_else(|| ApiError::job_not_found(record.id))?;
            if !caller.may_read(&existing) {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    format!("job id {} is taken", record.id),
                ));
            }
            Ok(Created::Existing(Box::new(existing)))
        }
        Err(e) => Err(ApiError::unavailable("creating the job record failed", e)),
    }
}

/// Refuses a caller that already has its `max_queued` jobs waiting or running. Counted by the gateway's job
/// history (no request on the submission's path); until it is ready, from the jobs stream, where every job of an
/// owner sits under the owner's subject until its run ends. Both are shared by all gateways and survive crashes;
/// simultaneous submissions may overshoot by the number racing (and the history by the moments it trails).
async fn within_queue_cap(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Some(owner) = caller.owner() else {
        return Ok(());
    };
    let cap = caller
        .scopes()
        .max_queued
        .unwrap_or(state.config.auth.max_queued_per_caller);
    if cap == 0 {
        return Ok(());
    }
    let unfinished = match state.history.is_ready() {
        true => unfinished_in_history(state, &owner, cap).await,
        false => unfinished_in_stream(state, &owner).await?,
    };
    if unfinished >= u64::from(cap) {
        return Err(ApiError::new(
            ErrorCode::TooManyJobs,
            format!(
                "`{owner}` already has {unfinished} jobs waiting or running, its limit (max_queued {cap}); \
                 retry when some have ended"
            ),
        )
        .retry_after(5));
    }
    Ok(())
}

/// How far below its cap a caller is counted from the history as it stands; nearer, the history first takes in
/// everything written so far (one request), so a caller at its cap is refused exactly.
const NEAR_CAP: u64 = 64;

async fn unfinished_in_history(state: &AppState, owner: &str, cap: u32) -> u64 {
    let unfinished = state.history.read().unfinished_of(owner);
    if unfinished + NEAR_CAP < u64::from(cap) {
        return unfinished;
    }
    state.history.catch_up(&state.records).await;
    state.history.read().unfinished_of(owner)
}

/// The owner's jobs in the jobs stream: queued, or running and not yet acknowledged.
async fn unfinished_in_stream(state: &AppState, owner: &str) -> Result<u64, ApiError> {
    let counting = async {
        let mut subjects = state
            .jobs
            .info_with_subjects(state.topology.owner_jobs_filter(owner))
            .await?;
        let mut unfinished = 0u64;
        while let Some((_, count)) = subjects.try_next().await? {
            unfinished += count as u64;
        }
        Ok::<_, async_nats::Error>(unfinished)
    };
    counting
        .await
        .map_err(|e| ApiError::unavailable("counting the caller's jobs failed", e))
}

/// Room kept for a job message's headers below NATS's message size.
const HEADER_ROOM: usize = 4096;

/// NATS refuses a message (a job, a record) over its size limit, and no retry would change that: 413, not 503.
fn fits_in_a_message(state: &AppState, encoded: usize) -> Result<(), ApiError> {
    // Kept by the client as servers tell it, without copying their whole INFO.
    let limit = state.client.max_payload().saturating_sub(HEADER_ROOM);
    if encoded <= limit {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the job is {encoded} bytes as queued and NATS takes at most {limit}; send large content as input files (multipart/form-data)"
        ),
    ))
}

/// Publishes run `generation` of `request` (inline inputs included) for its `queued` record at `revision`.
async fn publish(
    state: &AppState,
    request: &JobRequest,
    revision: u64,
    generation: u32,
) -> Result<(), ApiError> {
    let mut headers = HeaderMap::new();
    let msg_id = Topology::message_id(&request.id, generation);
    headers.insert(MSG_ID_HEADER, msg_id.as_str());
    headers.insert(RECORD_REVISION_HEADER, revision.to_string().as_str());
    let seal = state.sealer.seal(&request.id, generation, revision);
    headers.insert(RECORD_SEAL_HEADER, seal.as_str());
    if generation > 0 {
        headers.insert(GENERATION_HEADER, generation.to_string().as_str());
    }
    headers.insert(CONTENT_TYPE_HEADER, MSGPACK);
    let subject = state.topology.subject_of(request);
    let span = tracing::info_span!("publish", otel.kind = "producer", subject = %subject);
    let payload: Bytes = to_msgpack(request).into();
    fits_in_a_message(state, payload.len())?;
    let publishing = async {
        // The worker's spans join the trace this message carries.
        fleet_shared::trace_context::inject(&mut headers);
        match state
            .js
            .publish_with_headers(subject, headers, payload)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        }
    };
    let published = publishing.instrument(span).await;
    match published {
        Ok(_) => Ok(()),
        Err(e) if is_queue_full(&e) => Err(ApiError::new(
            ErrorCode::QueueFull,
            "the job queue is full; retry later",
        )
        .retry_after(5)),
        Err(e) => Err(ApiError::unavailable("publishing the job failed", e)),
    }
}

/// Runs an ended job again: same request, a new run; the ended run moves to the record's `history`. Only jobs
/// that failed, timed out or were cancelled can be retried, and only if their inputs can be given again.
pub async fn retry(state: &AppState, caller: &Caller, id: &Uuid) -> Result<JobRecord, ApiError> {
    caller.require(|s| s.cancel, "cancel or retry jobs")?;
    let key = state.topology.record_key(id);
    loop {
        let entry = state
            .records
            .entry(key.clone())
            .await
            .map_err(|e| ApiError::unavailable("reading the job record failed", e))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
            .ok_or_else(|| ApiError::job_not_found(id))?;
        let ended: JobRecord =
            fleet_shared::codec::decode(&entry.value, fleet_shared::codec::Format::MessagePack)
                .map_err(|e| ApiError::unavailable("the job record is unreadable", e))?;
        if !caller.may_read(&ended) {
            return Err(ApiError::job_not_found(id));
        }
        let next = ended
            .retried()
            .map_err(|e| ApiError::new(ErrorCode::NotRetryable, e.to_string()))?;
        if ended
            .request
            .input_files
            .iter()
            .any(|f| f.from.is_none() && f.data_base64.is_none())
        {
            return Err(ApiError::new(
                ErrorCode::NotRetryable,
                "the job had inline input files, which are not kept; submit it again",
            ));
        }
        if ended.request.owner.is_some() && ended.request.owner == caller.owner() {
            within_queue_cap(state, caller).await?;
        }
        match record_store::replace(&state.records, &key, &next, entry.revision).await {
            Ok(Replaced::Written(revision)) => {
                return requeue(state, &key, ended, next, revision).await
            }
            // Changed meanwhile (another retry, most likely): look again.
            Ok(Replaced::Moved) => {}
            Err(e) => return Err(ApiError::unavailable("recording the retry failed", e)),
        }
    }
}

/// Publishes the retry recorded at `revision`, or puts the ended record back if that fails.
async fn requeue(
    state: &AppState,
    key: &str,
    ended: JobRecord,
    next: JobRecord,
    revision: u64,
) -> Result<JobRecord, ApiError> {
    let id = next.id;
    if let Err(e) = publish(state, &next.request, revision, next.generation()).await {
        // Nothing was queued: put the ended record back.
        if let Err(undo) = record_store::replace(&state.records, key, &ended, revision).await {
            tracing::warn!(job_id = %id, error = %undo, "restoring the ended record of an unpublished retry failed; it shows queued");
        }
        return Err(e);
    }
    tracing::info!(job_id = %id, generation = next.generation(), "job retried");
    state.metrics.retried(&next.request.agent);
    Ok(next)
}

fn is_queue_full(e: &async_nats::jetstream::context::PublishError) -> bool {
    use std::error::Error;
    let api = e
        .source()
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
    // A stream over `max_messages` with the discard-new policy refuses the message as a failed store.
    api.is_some_and(|api| api.error_code() == async_nats::jetstream::ErrorCode::STREAM_STORE_FAILED)
}

fn fingerprint(r: &JobRequest) -> String {
    let mut h = Sha256::new();
    h.update(
        // Plain data always serializes.
        serde_json::to_vec(&(
            &r.agent,
            &r.message,
            &r.context,
            &r.timeout,
            &r.return_files,
            &r.metadata,
            &r.input_files,
            &r.artifact_target,
        ))
        .unwrap_or_default(),
    );
    hex::encode(h.finalize())
}

/// The job id an idempotency key stands for: the first request with the key decides it.
/// Every file a job names from another job must be one its caller may read: a job the caller may not see answers
/// exactly as a job that does not exist. Uploaded inputs (stored under a content-derived id, with no record, in
/// `_inputs/`) are referenced by whoever sent their content.
async fn check_references(
    state: &AppState,
    caller: &Caller,
    request: &JobRequest,
) -> Result<(), ApiError> {
    for from in request.input_files.iter().filter_map(|f| f.from.as_ref()) {
        let upload = from
            .name
            .starts_with(&format!("{}/", crate::jobs::upload::INPUTS_DIR));
        match records::get(state, &from.job_id).await? {
            Some(record) if caller.may_read(&record) => {}
            None if upload => {}
            _ => return Err(ApiError::job_not_found(from.job_id)),
        }
    }
    Ok(())
}

/// The bucket key of a caller's idempotency key: each owner has a space of its own, so two callers using the
/// same key get two jobs. Hashing keeps arbitrary client strings out of KV key syntax.
fn idempotency_kv_key(owner: Option<&str>, key: &str) -> String {
    match owner {
        // Open fleets keep the shape keys had before owners had spaces.
        None => hex::encode(Sha256::digest(key.as_bytes())),
        Some(owner) => hex::encode(
            Sha256::new()
                .chain_update(b"owner\0")
                .chain_update(owner.as_bytes())
                .chain_update(b"\0")
                .chain_update(key.as_bytes())
                .finalize(),
        ),
    }
}

/// A job an authenticated caller made under `key` before idempotency keys were scoped to owners (such entries
/// expire with the bucket's retention): used only if the job is the caller's own.
async fn legacy_idempotent_job(
    state: &AppState,
    caller: &Caller,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Uuid>, ApiError> {
    let Some(stored) = read_idempotency_entry(state, &idempotency_kv_key(None, key)).await? else {
        return Ok(None);
    };
    let owned = records::get(state, &stored.job_id)
        .await?
        .is_some_and(|r| caller.may_read(&r) && r.request.owner == caller.owner());
    Ok((owned && stored.fingerprint == fingerprint).then_some(stored.job_id))
}

async fn read_idempotency_entry(
    state: &AppState,
    kv_key: &str,
) -> Result<Option<IdempotencyEntry>, ApiError> {
    let stored = state
        .idempotency
        .get(kv_key)
        .await
        .map_err(|e| ApiError::unavailable("reading an idempotency key failed", e))?;
    Ok(stored.and_then(|b| serde_json::from_slice(&b).ok()))
}

async fn resolve_idempotency_key(
    state: &AppState,
    caller: &Caller,
    key: &str,
    request: &JobRequest,
) -> Result<Uuid, ApiError> {
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "Idempotency-Key must be 1-255 characters",
        ));
    }
    let owner = caller.owner();
    let kv_key = idempotency_kv_key(owner.as_deref(), key);
    let entry = IdempotencyEntry {
        job_id: request.id,
        fingerprint: fingerprint(request),
    };
    if owner.is_some() {
        if let Some(id) = legacy_idempotent_job(state, caller, key, &entry.fingerprint).await? {
            return Ok(id);
        }
    }
    // Strings and ids always serialize.
    let bytes = serde_json::to_vec(&entry).unwrap_or_default();
    match state.idempotency.create(&kv_key, bytes.into()).await {
        Ok(_) => Ok(request.id),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
            let stored = read_idempotency_entry(state, &kv_key)
                .await?
                .ok_or_else(|| {
                    ApiError::unavailable("idempotency key vanished", "entry expired while read")
                })?;
            if stored.fingerprint != entry.fingerprint {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    format!(
                        "Idempotency-Key was already used for job {} with a different request",
                        stored.job_id
                    ),
                ));
            }
            Ok(stored.job_id)
        }
        Err(e) => Err(ApiError::unavailable(
            "storing an idempotency key failed",
            e,
        )),
    }
}
