//! `/v1/sessions`: conversations with one agent that continue on any worker. A message becomes the session's
//! next turn, a job like any other (record, events, files, cancel, retry) whose record names its session and turn.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleet_shared::session::SessionRecord;
use fleet_shared::{JobRecord, JobStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Path, Problem, Query};
use crate::jobs::records;
use crate::jobs::session_index::SessionQuery;
use crate::jobs::sessions::{self, NewSession, TurnView};
use crate::jobs::submit::Submission;
use crate::jobs::upload::{JobBody, WithInputs};
use crate::routes::jobs::{wait_limit, WaitParams};
use crate::state::AppState;

/// Body of `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub agent: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Start a session with an agent.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses((status = 201, body = SessionRecord), (status = 422, body = Problem)))]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<CreateSession>,
) -> Result<Response, ApiError> {
    let new = NewSession {
        agent: body.agent,
        title: body.title,
        metadata: body.metadata,
    };
    let session = sessions::create(&state, &caller, new).await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only sessions with this agent.
    pub agent: Option<String>,
    /// At most this many (default 50, at most 500), newest first.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Go on after this session (a page's `next_cursor`).
    pub cursor: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionRecord>,
    /// Where the next page starts, when there may be more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<Uuid>,
}

/// The caller's sessions, newest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(ListParams),
    responses((status = 200, body = SessionList)))]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<SessionList>, ApiError> {
    let limit = match params.limit.unwrap_or(50) {
        limit @ 1..=500 => limit,
        _ => {
            return Err(ApiError::new(
                fleet_shared::ErrorCode::InvalidRequest,
                "limit must be between 1 and 500",
            ))
        }
    };
    let asked = SessionQuery {
        agent: params.agent.as_deref(),
        owners: None, // the caller's, decided by the listing
        after: params.cursor,
        limit,
    };
    let (sessions, next_cursor) = sessions::list(&state, &caller, asked).await?;
    Ok(Json(SessionList {
        sessions,
        next_cursor,
    }))
}

/// A session with its turns.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    #[serde(flatten)]
    pub session: SessionRecord,
    pub turns: Vec<TurnView>,
}

/// A session and its turns (each: turn, job, message, status, answer).
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = SessionView), (status = 404, body = Problem)))]
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<SessionView>, ApiError> {
    let session = sessions::get_or_404(&state, &caller, &id).await?;
    let turns = sessions::turns(&state, &session).await?;
    Ok(Json(SessionView { session, turns }))
}

/// Delete a session and its turns.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem)))]
pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let session = sessions::get_or_404(&state, &caller, &id).await?;
    sessions::delete(&state, &session).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/sessions/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    #[schema(pattern = r"^[^\x00]*$")]
    pub message: String,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]*$")]
    pub context: Option<String>,
    /// Seconds.
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub timeout: Option<f64>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Files written into the workspace before the turn runs (over the session's own): `{name, data_base64}`,
    /// `{name, from: {job_id, name}}`, or parts of a multipart body.
    #[serde(default)]
    pub input_files: Vec<fleet_shared::wire::InputFile>,
}

impl WithInputs for SendMessage {
    fn input_files(&mut self) -> &mut Vec<fleet_shared::wire::InputFile> {
        &mut self.input_files
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TurnAccepted {
    pub job_id: Uuid,
    pub turn: u32,
    pub status: JobStatus,
    /// The turn's record, when the request waited (`?wait=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<JobRecord>,
}

/// Send a message: it becomes the session's next turn, run after the turns before it, with their history.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "sessions",
    request_body(content((SendMessage = "application/json"), (SendMessage = "multipart/form-data"))),
    params(("id" = Uuid, Path), WaitParams),
    responses((status = 202, body = TurnAccepted), (status = 200, description = "Ended within `wait`", body = TurnAccepted),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn message(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<WaitParams>,
    JobBody(body): JobBody<SendMessage>,
) -> Result<Response, ApiError> {
    let limit = wait_limit(&state, params.wait)?;
    let session = sessions::get_or_404(&state, &caller, &id).await?;
    let sub = Submission {
        message: body.message,
        context: body.context,
        timeout: body.timeout,
        metadata: body.metadata,
        input_files: body.input_files,
        return_files: true,
        ..Default::default()
    };
    send(&state, &caller, &session, sub, limit).await
}

/// `POST /v1/jobs` naming a session: the job is the session's next turn.
pub async fn turn_from_job(
    state: &AppState,
    caller: &Caller,
    session_id: Uuid,
    body: crate::routes::jobs::SubmitJob,
    limit: std::time::Duration,
) -> Result<Response, ApiError> {
    let session = sessions::get_or_404(state, caller, &session_id).await?;
    if body.agent != session.agent {
        return Err(ApiError::new(
            fleet_shared::ErrorCode::InvalidRequest,
            format!(
                "session {session_id} talks to agent `{}`, not `{}`",
                session.agent, body.agent
            ),
        ));
    }
    if body.id.is_some() {
        return Err(ApiError::new(
            fleet_shared::ErrorCode::InvalidRequest,
            "a session turn's job id is the session's to give: leave `id` out",
        ));
    }
    send(state, caller, &session, body.into(), limit).await
}

/// Takes `sub` as the session's next turn and answers with it (its record too when `limit` is waited).
async fn send(
    state: &AppState,
    caller: &Caller,
    session: &SessionRecord,
    sub: Submission,
    limit: std::time::Duration,
) -> Result<Response, ApiError> {
    let (turn, submitted) = sessions::take_turn(state, caller, session, sub).await?;
    let record = match limit.is_zero() {
        true => submitted.record,
        false => records::wait_existing(state, caller, &turn.job_id, limit).await?,
    };
    let status = match record.status.is_terminal() {
        true => StatusCode::OK,
        false => StatusCode::ACCEPTED,
    };
    let body = TurnAccepted {
        job_id: turn.job_id,
        turn: turn.turn,
        status: record.status,
        record: (!limit.is_zero()).then_some(record),
    };
    Ok((status, Json(body)).into_response())
}
