//! A chat completion put to a model agent as a job, and its answer told in OpenAI's shapes: the front door
//! (`/v1/chat/completions`) and the comms server's `/generate` both go through here, so every completion is a
//! job with a record, events, traces and metrics, under the caller's keys and limits.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_shared::chat::{
    ChatMessage, ChatRole, ChunkChoice, Completion, CompletionChoice, CompletionChunk,
    CompletionRequest, CompletionUsage, Delta, Sampling,
};
use fleet_shared::wire::{is_valid_agent_name, Usage};
use fleet_shared::{ErrorCode, JobError, JobRecord, JobStatus};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::cancel::{self, Unrecorded};
use crate::jobs::submit::Submission;
use crate::state::AppState;

/// Checks that `model` names a model agent the caller may run.
pub async fn model_agent(state: &AppState, caller: &Caller, model: &str) -> Result<(), ApiError> {
    let unknown = || {
        ApiError::new(
            ErrorCode::UnknownAgent,
            format!("no model `{model}` in this fleet: GET /v1/models lists them"),
        )
    };
    if !is_valid_agent_name(model) {
        return Err(unknown());
    }
    caller.may_run(model)?;
    match state.agents.kind(model).await? {
        Some(kind) if kind.is_model() => Ok(()),
        Some(kind) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "agent `{model}` is a {} agent; chat completions go to model agents (kind openai or ollama): \
                 GET /v1/models lists them",
                kind.as_str()
            ),
        )),
        None => Err(unknown()),
    }
}

/// The job a completion request asks for: its conversation and sampling, its last user message as the
/// record's message (what lists and searches show).
pub fn submission(request: &CompletionRequest) -> Result<Submission, ApiError> {
    let invalid = |why: &str| ApiError::new(ErrorCode::InvalidRequest, why);
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::User)
        .ok_or_else(|| invalid("`messages` must hold at least one message of role `user`"))?;
    let sampling = request.sampling();
    check_sampling(&sampling)?;
    Ok(Submission {
        agent: request.model.clone(),
        message: last_user.content.clone(),
        chat: request.messages.clone(),
        sampling,
        return_files: false,
        metadata: BTreeMap::from([("api".to_string(), "chat.completions".into())]),
        ..Default::default()
    })
}

/// `/generate`'s prompt for the default agent: a model agent gets it as a one-message conversation, any other
/// agent as its message.
pub fn prompt_submission(agent: &str, prompt: String, max_tokens: Option<u32>) -> Submission {
    Submission {
        agent: agent.to_string(),
        chat: vec![ChatMessage::new(ChatRole::User, prompt.clone())],
        message: prompt,
        sampling: Sampling {
            max_tokens,
            ..Default::default()
        },
        return_files: false,
        ..Default::default()
    }
}

fn check_sampling(sampling: &Sampling) -> Result<(), ApiError> {
    let invalid = |why: &str| Err(ApiError::new(ErrorCode::InvalidRequest, why));
    if sampling
        .temperature
        .is_some_and(|t| !(t.is_finite() && (0.0..=2.0).contains(&t)))
    {
        return invalid("`temperature` must be between 0 and 2");
    }
    if sampling.max_tokens == Some(0) {
        return invalid("`max_tokens` must be at least 1");
    }
    Ok(())
}

/// What the agent answered: a model's or a CLI preset's answer, else what a plain command printed.
pub fn answer_of(record: &JobRecord) -> String {
    match &record.answer {
        Some(answer) => answer.clone(),
        None => record.stdout.trim_end().to_string(),
    }
}

/// A job that did not complete, as an error naming the job, how it ended and why.
pub fn not_completed(record: &JobRecord) -> ApiError {
    if !record.status.is_terminal() {
        return ApiError::new(
            ErrorCode::Timeout,
            format!(
                "job {} is still running; GET /v1/jobs/{} for its record",
                record.id, record.id
            ),
        );
    }
    let error = record
        .error
        .clone()
        .unwrap_or_else(|| JobError::new(ErrorCode::NonzeroExit, "the agent failed"));
    ApiError::new(
        error.code,
        format!(
            "job {} ended {}: {}",
            record.id,
            record.status.as_str(),
            error.message
        ),
    )
}

/// The completion's id: the job's, so a client can find the job behind any answer.
pub fn completion_id(job_id: &Uuid) -> String {
    format!("chatcmpl-{job_id}")
}

/// A completed job as OpenAI's whole answer.
pub fn completion(record: &JobRecord) -> Completion {
    Completion {
        id: completion_id(&record.id),
        object: "chat.completion".into(),
        created: record.request.submitted_at.timestamp(),
        model: record.request.agent.clone(),
        choices: vec![CompletionChoice {
            index: 0,
            message: ChatMessage::new(ChatRole::Assistant, answer_of(record)),
            finish_reason: Some("stop".into()),
        }],
        usage: record.usage.as_ref().map(openai_usage),
    }
}

fn openai_usage(usage: &Usage) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: usage.input_tokens,
        completion_tokens: usage.output_tokens,
        total_tokens: usage.input_tokens + usage.output_tokens,
    }
}

/// Builds the chunks of one streamed answer.
pub struct Chunks {
    id: String,
    created: i64,
    model: String,
    /// The first chunk says who speaks.
    spoke: bool,
}

impl Chunks {
    pub fn new(job_id: &Uuid, model: &str) -> Self {
        Self {
            id: completion_id(job_id),
            created: chrono::Utc::now().timestamp(),
            model: model.to_string(),
            spoke: false,
        }
    }

    pub fn has_spoken(&self) -> bool {
        self.spoke
    }

    /// A piece of the answer.
    pub fn text(&mut self, text: String) -> CompletionChunk {
        let role = (!self.spoke).then_some(ChatRole::Assistant);
        self.spoke = true;
        self.chunk(
            Delta {
                role,
                content: Some(text),
            },
            None,
            None,
        )
    }

    /// The answer's end.
    pub fn stop(&self) -> CompletionChunk {
        self.chunk(Delta::default(), Some("stop".into()), None)
    }

    /// The token counts, in a chunk of their own with no choices (as OpenAI sends them).
    pub fn usage(&self, record: &JobRecord) -> CompletionChunk {
        let usage = record.usage.as_ref().map(openai_usage).unwrap_or_default();
        CompletionChunk {
            choices: Vec::new(),
            usage: Some(usage),
            ..self.chunk(Delta::default(), None, None)
        }
    }

    fn chunk(
        &self,
        delta: Delta,
        finish_reason: Option<String>,
        usage: Option<CompletionUsage>,
    ) -> CompletionChunk {
        CompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage,
        }
    }
}

/// Cancels the job when dropped armed: a client that goes away before its answer is complete (a closed stream,
/// a dropped connection) leaves no model generating for nobody.
pub struct CancelOnDrop {
    state: AppState,
    caller: Caller,
    id: Uuid,
    armed: bool,
}

impl CancelOnDrop {
    pub fn new(state: &AppState, caller: &Caller, id: Uuid) -> Self {
        Self {
            state: state.clone(),
            caller: caller.clone(),
            id,
            armed: true,
        }
    }

    /// The answer reached the client (or the job ended): nothing to cancel.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (state, caller, id) = (self.state.clone(), self.caller.clone(), self.id);
        tokio::spawn(async move {
            match cancel::cancel(&state, &caller, id, Duration::ZERO, Unrecorded::NotFound).await {
                Ok(_) => {
                    tracing::info!(job_id = %id, "chat completion abandoned by its client; job cancelled")
                }
                // A caller without the cancel scope, or a job that ended meanwhile: it runs to its end.
                Err(e) => {
                    tracing::debug!(job_id = %id, error = %e.message, "abandoned chat completion not cancelled")
                }
            }
        });
    }
}

/// Whether a job that ended this way is an answer.
pub fn is_answer(record: &JobRecord) -> bool {
    record.status == JobStatus::Completed
}
