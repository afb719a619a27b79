//! Native job API: submit, read, list.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fleet_shared::config::secs;
use fleet_shared::{ErrorCode, JobRecord, JobStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Path, Problem, Query};
use crate::jobs::index::Query as IndexQuery;
use crate::jobs::listing::{self, Cursor, Filters};
use crate::jobs::records;
use crate::jobs::submit::{submit, Submission};
use crate::jobs::upload::JobBody;
use crate::state::AppState;

/// Body of `POST /v1/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Your own UUID for the job, making the submission safe to retry.
    #[serde(default)]
    pub id: Option<Uuid>,
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub agent: String,
    #[schema(pattern = r"^[^\x00]*$")]
    pub message: String,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]*$")]
    pub context: Option<String>,
    /// Seconds.
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub timeout: Option<f64>,
    #[serde(default = "yes")]
    pub return_files: bool,
    /// Files written into the job's workspace before it starts: `{name, data_base64}` or
    /// `{name, from: {job_id, name}}` (a file another job stored).
    #[serde(default)]
    pub input_files: Vec<fleet_shared::wire::InputFile>,
    /// Where the job's files go: `default` or a name configured under `[artifacts.targets]`; absent: the fleet's
    /// current default (see `POST /configure-sharing`).
    #[serde(default)]
    pub artifact_target: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Send the message to this session instead: the job is its next turn (`agent` must be the session's).
    #[serde(default)]
    pub session_id: Option<Uuid>,
}

impl From<SubmitJob> for Submission {
    fn from(body: SubmitJob) -> Self {
        Submission {
            id: body.id,
            agent: body.agent,
            message: body.message,
            context: body.context,
            timeout: body.timeout,
            return_files: body.return_files,
            input_files: body.input_files,
            artifact_target: body.artifact_target,
            metadata: body.metadata,
            ..Default::default()
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Wait up to this many seconds for the job to end before answering (at most `http.max_wait_secs`).
    #[param(minimum = 0)]
    pub wait: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: Uuid,
    pub status: JobStatus,
    /// The full record, when the request waited (`?wait=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<JobRecord>,
}

pub fn wait_limit(state: &AppState, wait: Option<f64>) -> Result<Duration, ApiError> {
    match wait {
        None => Ok(Duration::ZERO),
        Some(w) if w.is_finite() && w >= 0.0 => Ok(secs(w.min(state.config.http.max_wait_secs))),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "wait must be a non-negative number of seconds",
        )),
    }
}

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be visible ASCII",
            )
        }),
    }
}

/// Submit a job, as JSON or as `multipart/form-data`: the job's fields as form fields (or one `job` field of
/// JSON) and input files as `file` parts (`curl -F agent=python -F message=@main.py -F file=@data.csv`).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content((SubmitJob = "application/json"), (SubmitJob = "multipart/form-data"))),
    params(WaitParams,
    ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key create one job")),
    responses(
        (status = 202, description = "Queued (or still running after `wait`)", body = JobAccepted),
        (status = 200, description = "Already existed, or ended within `wait`", body = JobAccepted),
        (status = 400, body = Problem), (status = 404, description = "`session_id` names no session", body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn submit_job(
    caller: Caller,
    State(state): State<AppState>,
    Query(params): Query<WaitParams>,
    headers: HeaderMap,
    JobBody(body): JobBody,
) -> Result<Response, ApiError> {
    let limit = wait_limit(&state, params.wait)?;
    if let Some(session_id) = body.session_id {
        return crate::routes::sessions::turn_from_job(&state, &caller, session_id, body, limit)
            .await;
    }
    let sub = Submission {
        idempotency_key: idempotency_key(&headers)?,
        ..body.into()
    };
    let (record, created) = submit_and_wait(&state, &caller, sub, limit).await?;
    let status = if record.status.is_terminal() || !created {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let waited = !limit.is_zero();
    let body = JobAccepted {
        job_id: record.id,
        status: record.status,
        record: waited.then_some(record),
    };
    Ok((status, Json(body)).into_response())
}

/// Submits, then waits up to `limit` for the terminal record. Returns the record and whether it was new.
pub async fn submit_and_wait(
    state: &AppState,
    caller: &Caller,
    sub: Submission,
    limit: Duration,
) -> Result<(JobRecord, bool), ApiError> {
    if limit.is_zero() {
        let s = submit(state, caller, sub).await?;
        return Ok((s.record, s.created));
    }
    // Subscribing needs the id before the job exists.
    let mut sub = sub;
    let id = *sub.id.get_or_insert_with(fleet_shared::wire::new_job_id);
    let watch = records::watch_end(state, &id).await?;
    let submitted = submit(state, caller, sub).await?;
    let id = submitted.record.id;
    let record = if submitted.created {
        records::wait_terminal(state, caller, watch, &id, limit).await?
    } else {
        drop(watch);
        records::wait_existing(state, caller, &id, limit).await?
    };
    Ok((record, submitted.created))
}

/// Read a job's record.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path), WaitParams),
    responses((status = 200, body = JobRecord), (status = 404, body = Problem)))]
pub async fn get_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<WaitParams>,
) -> Result<Json<JobRecord>, ApiError> {
    let limit = wait_limit(&state, params.wait)?;
    Ok(Json(
        records::wait_existing(&state, &caller, &id, limit).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub agent: Option<String>,
    /// queued, running, completed, failed, timeout or cancelled.
    pub status: Option<JobStatus>,
    /// At most this many jobs (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `newest` (the default) or `oldest` first, by submission time.
    pub order: Option<ListOrder>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Submitted after this time (RFC 3339).
    pub submitted_after: Option<DateTime<Utc>>,
    /// Submitted before this time (RFC 3339).
    pub submitted_before: Option<DateTime<Utc>>,
    /// Ended after this time (RFC 3339).
    pub finished_after: Option<DateTime<Utc>>,
    /// Ended before this time (RFC 3339).
    pub finished_before: Option<DateTime<Utc>>,
    /// Text the message or the error contains (case-insensitive).
    pub q: Option<String>,
    /// `key:value`: a metadata entry with this value.
    pub metadata: Option<String>,
    /// Only jobs of this owner (`key:<id>` or `user:<name>`, as records name it), among those the caller may read.
    pub owner: Option<String>,
    /// Only the turns of this session.
    pub session: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    Newest,
    Oldest,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
    /// Jobs on this page.
    pub count: usize,
    /// Pass as `cursor` for the next page; absent on the last one. Stable while jobs are added or end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many jobs match in all, when known exactly (not with `q`, `metadata`, `session` or time windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl ListParams {
    fn filters(self) -> Result<Filters, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
        let limit = match self.limit {
            None => 50,
            Some(n @ 1..=1000) => n as usize,
            Some(n) => return Err(invalid(format!("limit must be 1 to 1000, not {n}"))),
        };
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(
                Cursor::parse(c)
                    .ok_or_else(|| invalid(format!("cursor `{c}` is not one a listing gave")))?,
            ),
        };
        let metadata = match &self.metadata {
            None => None,
            Some(m) => {
                let (k, v) = m
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("metadata `{m}` is not key:value")))?;
                Some((k.to_string(), v.to_string()))
            }
        };
        Ok(Filters {
            query: IndexQuery {
                agent: self.agent,
                status: self.status,
                owners: self.owner.filter(|o| !o.is_empty()).map(|o| vec![o]),
                submitted_after: self.submitted_after,
                submitted_before: self.submitted_before,
                finished_after: self.finished_after,
                finished_before: self.finished_before,
                oldest_first: self.order == Some(ListOrder::Oldest),
                after: cursor.map(|c: Cursor| c.0),
                limit,
            },
            text: self.q.filter(|q| !q.is_empty()),
            metadata,
            session: self.session,
        })
    }
}

/// List jobs, newest (or oldest) first by submission time, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = JobList), (status = 400, body = Problem)))]
pub async fn list_jobs(
    caller: Caller,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<JobList>, ApiError> {
    let filters = params.filters()?;
    let listing = listing::list(&state, &caller, &filters).await?;
    Ok(Json(JobList {
        count: listing.jobs.len(),
        jobs: listing.jobs,
        next_cursor: listing.next.map(|c| c.to_string()),
        total: listing.total,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CancelParams {
    /// Seconds to wait for a running job to stop (default: the kill grace period plus 5 s).
    #[param(minimum = 0)]
    pub wait: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelAnswer {
    pub job_id: Uuid,
    /// `cancelled` (or the end the job reached first), or `cancelling` while it stops or until a worker sees it.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<JobRecord>,
}

/// Cancel a job: a queued one never starts; a running one gets SIGTERM (SIGKILL after the grace period) and ends
/// `cancelled` with the output and files it produced.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path), CancelParams),
    responses((status = 200, description = "The job has ended", body = CancelAnswer),
        (status = 202, description = "Cancel requested; the job is still stopping", body = CancelAnswer),
        (status = 409, description = "The job had already ended", body = Problem),
        (status = 503, body = Problem)))]
pub async fn cancel_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<CancelParams>,
) -> Result<Response, ApiError> {
    let wait = match params.wait {
        Some(w) => wait_limit(&state, Some(w))?,
        None => secs(state.config.worker.kill_grace_secs + 5.0),
    };
    let answer = match crate::jobs::cancel::cancel(
        &state,
        &caller,
        id,
        wait,
        crate::jobs::cancel::Unrecorded::NotFound,
    )
    .await?
    {
        crate::jobs::cancel::Outcome::Ended(record) => (
            StatusCode::OK,
            CancelAnswer {
                job_id: id,
                status: record.status.as_str().to_string(),
                record: Some(*record),
            },
        ),
        crate::jobs::cancel::Outcome::Pending => (
            StatusCode::ACCEPTED,
            CancelAnswer {
                job_id: id,
                status: "cancelling".into(),
                record: None,
            },
        ),
    };
    Ok((answer.0, Json(answer.1)).into_response())
}

/// Run a failed, timed-out or cancelled job again: same request, a new run; the record keeps the ended runs in
/// `history`.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 202, description = "Queued again", body = JobAccepted),
        (status = 404, body = Problem),
        (status = 409, description = "Not failed, timed out or cancelled; or its inline inputs are gone", body = Problem),
        (status = 503, body = Problem)))]
pub async fn retry_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let record = crate::jobs::submit::retry(&state, &caller, &id).await?;
    let body = JobAccepted {
        job_id: id,
        status: record.status,
        record: Some(record),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
