//! Endpoints of the systems the fleet replaces, with their request and response shapes, so their clients work
//! unchanged: the agent-interaction server (`/interact`, `/results`), the code-execution API (`/execute`,
//! `/jobs/{id}/status|results`) and the comms server (`/generate`, `/info`, `/stats`).

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use fleet_shared::config::secs;
use fleet_shared::{ErrorCode, JobError, JobRecord, JobStatus, Resources};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Path, Problem};
use crate::jobs::chat;
use crate::jobs::records;
use crate::jobs::scan;
use crate::jobs::submit::{submit, Submission};
use crate::routes::jobs::submit_and_wait;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct InteractRequest {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub agent: String,
    #[schema(pattern = r"^[^\x00]*$")]
    pub message: String,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]*$")]
    pub context: Option<String>,
    #[serde(default = "yes")]
    pub return_files: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InteractResponse {
    pub request_id: Uuid,
    /// `processing` until the job ends.
    pub status: String,
}

/// The interaction server's word for a status: everything before the end is `processing`.
fn interaction_status(s: JobStatus) -> &'static str {
    if s.is_terminal() {
        s.as_str()
    } else {
        "processing"
    }
}

/// Send a message to an agent (agent-interaction server compatible).
#[utoipa::path(post, path = "/interact", tag = "compatible", request_body = InteractRequest,
    responses((status = 200, body = InteractResponse), (status = 422, body = Problem)))]
pub async fn interact(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<InteractRequest>,
) -> Result<Json<InteractResponse>, ApiError> {
    let sub = Submission {
        agent: body.agent,
        message: body.message,
        context: body.context,
        return_files: body.return_files,
        ..Default::default()
    };
    let s = submit(&state, &caller, sub).await?;
    Ok(Json(InteractResponse {
        request_id: s.record.id,
        status: interaction_status(s.record.status).into(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResultsResponse {
    pub request_id: Uuid,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// Names of the files the job produced.
    pub files: Vec<String>,
    pub exit_code: Option<i32>,
    pub error: Option<JobError>,
    pub agent: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Results of a job (`processing` until it ends).
#[utoipa::path(get, path = "/results/{id}", tag = "compatible", params(("id" = Uuid, Path)),
    responses((status = 200, body = ResultsResponse), (status = 404, body = Problem)))]
pub async fn results(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<ResultsResponse>, ApiError> {
    let r = records::get_or_404(&state, &caller, &id).await?;
    Ok(Json(ResultsResponse {
        request_id: r.id,
        status: interaction_status(r.status).into(),
        files: r.file_names(),
        exit_code: r.exit_code,
        agent: r.request.agent,
        started_at: r.started_at,
        finished_at: r.finished_at,
        stdout: r.stdout,
        stderr: r.stderr,
        error: r.error,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecuteRequest {
    #[schema(pattern = r"^[^\x00]*$")]
    pub code: String,
    #[serde(default = "python")]
    pub language: String,
    #[serde(default = "yes")]
    pub capture_files: bool,
    /// Seconds.
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub timeout: Option<f64>,
}

fn python() -> String {
    "python".into()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    pub job_id: Uuid,
    pub status: String,
    pub estimated_start_time: Option<DateTime<Utc>>,
}

/// The execution API's word for a status: `pending` before a worker takes the job.
fn execution_status(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Queued => "pending",
        other => other.as_str(),
    }
}

/// Run code in a language (code-execution API compatible).
#[utoipa::path(post, path = "/execute", tag = "compatible", request_body = ExecuteRequest,
    responses((status = 200, body = ExecuteResponse), (status = 422, body = Problem)))]
pub async fn execute(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let language = body.language.to_ascii_lowercase();
    let Some(agent) = state.config.execute.get(&language) else {
        let known: Vec<_> = state.config.execute.keys().map(String::as_str).collect();
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unsupported language `{language}`; supported: {}",
                known.join(", ")
            ),
        ));
    };
    let sub = Submission {
        agent: agent.clone(),
        message: body.code,
        timeout: body.timeout,
        return_files: body.capture_files,
        metadata: BTreeMap::from([("language".to_string(), serde_json::Value::String(language))]),
        ..Default::default()
    };
    let s = submit(&state, &caller, sub).await?;
    Ok(Json(ExecuteResponse {
        job_id: s.record.id,
        status: execution_status(s.record.status).into(),
        estimated_start_time: None,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobStatusResponse {
    pub job_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempt: u32,
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// A job's status (code-execution API compatible).
#[utoipa::path(get, path = "/jobs/{id}/status", tag = "compatible", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobStatusResponse), (status = 404, body = Problem)))]
pub async fn job_status(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobStatusResponse>, ApiError> {
    let r = records::get_or_404(&state, &caller, &id).await?;
    Ok(Json(JobStatusResponse {
        job_id: r.id,
        status: execution_status(r.status).into(),
        created_at: r.request.submitted_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        attempt: r.attempt,
        metadata: r.request.metadata,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobResultsResponse {
    pub job_id: Uuid,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub files: Vec<String>,
    pub execution_time_ms: Option<u64>,
    pub resource_usage: Option<Resources>,
    pub error_message: Option<String>,
    pub error: Option<JobError>,
}

/// A job's full results (code-execution API compatible).
#[utoipa::path(get, path = "/jobs/{id}/results", tag = "compatible", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobResultsResponse), (status = 404, body = Problem)))]
pub async fn job_results(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobResultsResponse>, ApiError> {
    let r = records::get_or_404(&state, &caller, &id).await?;
    Ok(Json(JobResultsResponse {
        job_id: r.id,
        status: execution_status(r.status).into(),
        exit_code: r.exit_code,
        files: r.file_names(),
        execution_time_ms: r.resources.as_ref().map(|x| x.wall_ms),
        resource_usage: r.resources,
        error_message: r.error.as_ref().map(|e| e.message.clone()),
        error: r.error,
        stdout: r.stdout,
        stderr: r.stderr,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerateRequest {
    #[schema(pattern = r"^[^\x00]*$")]
    pub prompt: String,
    /// For a model agent, the most tokens its answer may have; other agents decide their own output length.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_u64)]
    pub max_gen: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateResponse {
    pub text: String,
    /// The agent that answered.
    pub from: String,
}

/// Run the default agent on a prompt and wait for its answer (comms server compatible).
#[utoipa::path(post, path = "/generate", tag = "compatible", request_body = GenerateRequest,
    responses((status = 200, body = GenerateResponse), (status = 502, body = Problem), (status = 504, body = Problem)))]
pub async fn generate(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<GenerateRequest>,
) -> Result<Json<GenerateResponse>, ApiError> {
    let agent = state.config.default_agent.clone();
    let sub = chat::prompt_submission(&agent, body.prompt, body.max_gen);
    let limit = secs(state.config.http.generate_wait_secs);
    let (record, _) = submit_and_wait(&state, &caller, sub, limit).await?;
    if !chat::is_answer(&record) {
        return Err(chat::not_completed(&record));
    }
    Ok(Json(GenerateResponse {
        text: chat::answer_of(&record),
        from: agent,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResponse {
    pub name: &'static str,
    pub version: &'static str,
    pub agents: Vec<String>,
    pub default_agent: String,
    pub languages: Vec<String>,
    pub nats_connected: bool,
}

/// What this fleet is and runs.
#[utoipa::path(get, path = "/info", tag = "compatible", responses((status = 200, body = InfoResponse)))]
pub async fn info(State(state): State<AppState>) -> Result<Json<InfoResponse>, ApiError> {
    let agents = state.agents.list().await?;
    Ok(Json(InfoResponse {
        name: "fleet",
        version: env!("CARGO_PKG_VERSION"),
        agents: agents.into_iter().map(|a| a.name).collect(),
        default_agent: state.config.default_agent.clone(),
        languages: state.config.execute.keys().cloned().collect(),
        nats_connected: state.client.connection_state() == async_nats::connection::State::Connected,
    }))
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct QueueDepth {
    pub queued: u64,
    pub running: u64,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StatsResponse {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_agent: BTreeMap<String, BTreeMap<String, u64>>,
    /// From the agents' consumers: what waits and what runs right now.
    pub queue: BTreeMap<String, QueueDepth>,
}

fn count(out: &mut StatsResponse, agent: &str, status: JobStatus, n: u64) {
    out.total += n;
    *out.by_status.entry(status.as_str().into()).or_default() += n;
    *out.by_agent
        .entry(agent.to_string())
        .or_default()
        .entry(status.as_str().into())
        .or_default() += n;
}

/// Job counts per status and agent (of the caller's own jobs, unless it may read all), and queue depth per agent
/// (fleet-wide: it reveals no job).
#[utoipa::path(get, path = "/stats", tag = "compatible", responses((status = 200, body = StatsResponse)))]
pub async fn stats(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<StatsResponse>, ApiError> {
    let mut out = StatsResponse::default();
    for s in JobStatus::ALL {
        out.by_status.insert(s.as_str().into(), 0);
    }
    if state.history.is_ready() {
        state.history.catch_up(&state.records).await;
        let counts = state
            .history
            .read()
            .counts(caller.readable_owners().as_deref());
        for (agent, by_status) in counts {
            for (status, n) in JobStatus::ALL.iter().zip(by_status) {
                if n > 0 {
                    count(&mut out, &agent, *status, n);
                }
            }
        }
    } else {
        scan::each_record(&state, |r: JobRecord| {
            if caller.may_read(&r) {
                count(&mut out, &r.request.agent, r.status, 1);
            }
        })
        .await?;
    }
    for a in state.agents.list().await? {
        out.queue.insert(
            a.name,
            QueueDepth {
                queued: a.queued,
                running: a.running,
            },
        );
    }
    Ok(Json(out))
}
