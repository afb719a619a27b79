//! The OpenAI-compatible front door: `POST /v1/chat/completions` (streamed or whole) and `GET /v1/models`,
//! where a model is a model agent. A program using an OpenAI SDK with its base URL pointed here gets queued,
//! scaled, observable completions: each is a job like any other.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_shared::chat::{CompletionRequest, ModelEntry, ModelList};
use fleet_shared::config::{secs, AgentKind};
use fleet_shared::wire::JobEvent;
use fleet_shared::JobRecord;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, OpenAiError, OpenAiErrorDetail, OpenAiErrorEvent};
use crate::jobs::chat::{self, CancelOnDrop, Chunks};
use crate::jobs::follow::job_events;
use crate::jobs::submit::submit;
use crate::routes::jobs::submit_and_wait;
use crate::state::AppState;

/// Ask a model agent (OpenAI's chat completions). `model` names the agent; `stream: true` answers as
/// Server-Sent Events of `chat.completion.chunk`, ending with `data: [DONE]`. The completion's id is
/// `chatcmpl-<job id>`. A client that goes away before the answer is complete cancels the job.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body(content = Object, description = "OpenAI's chat completion request: `model`, `messages`, `stream`, \
        `stream_options.include_usage`, `temperature`, `max_tokens` (or `max_completion_tokens`), `seed`"),
    responses((status = 200, description = "`chat.completion` JSON, or with `stream: true` a text/event-stream of \
        `chat.completion.chunk`", body = Object),
        (status = 422, body = crate::http::error::Problem), (status = 502, body = crate::http::error::Problem),
        (status = 504, body = crate::http::error::Problem)))]
pub async fn completions(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<CompletionRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let Json(request) = body?;
    chat::model_agent(&state, &caller, &request.model).await?;
    let mut sub = chat::submission(&request)?;
    let id = *sub.id.get_or_insert_with(fleet_shared::wire::new_job_id);
    let mut guard = CancelOnDrop::new(&state, &caller, id);
    if request.stream {
        submit(&state, &caller, sub).await?;
        let events = job_events(&state, &caller, id, None).await?;
        let chunks = Chunks::new(&id, &request.model);
        let answer = answer_stream(events, guard, chunks, request.wants_usage());
        let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
        return Ok(Sse::new(answer).keep_alive(keep_alive).into_response());
    }
    let limit = secs(state.config.http.generate_wait_secs);
    let (record, _) = submit_and_wait(&state, &caller, sub, limit).await?;
    if record.status.is_terminal() {
        guard.disarm();
    }
    if !chat::is_answer(&record) {
        // Not ended within the wait: the guard cancels it, for nobody will read this answer.
        return Err(chat::not_completed(&record).into());
    }
    Ok(Json(chat::completion(&record)).into_response())
}

/// The models this caller may ask: the fleet's model agents (OpenAI's model list).
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "OpenAI's model list", body = Object)))]
pub async fn models(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<ModelList>, OpenAiError> {
    let agents = state.agents.list().await?;
    let scopes = caller.scopes();
    let data = agents
        .into_iter()
        .filter(|a| AgentKind::parse(&a.kind).is_some_and(AgentKind::is_model))
        .filter(|a| scopes.may_run(&a.name))
        .map(|a| ModelEntry {
            id: a.name,
            object: "model".into(),
            created: 0,
            owned_by: "fleet".into(),
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

/// The job's events as a streamed answer: each `message` a chunk, then the end (or the job's error), then
/// `[DONE]`.
fn answer_stream(
    events: BoxStream<'static, (Option<u64>, JobEvent)>,
    guard: CancelOnDrop,
    chunks: Chunks,
    usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let answering = Answering {
        events,
        guard,
        chunks,
        usage,
        pending: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(answering, Answering::next).map(Ok)
}

struct Answering {
    events: BoxStream<'static, (Option<u64>, JobEvent)>,
    /// Cancels the job if the client leaves (this stream is dropped) before the end.
    guard: CancelOnDrop,
    chunks: Chunks,
    /// The client asked for the token counts (`stream_options.include_usage`).
    usage: bool,
    pending: VecDeque<Event>,
    done: bool,
}

impl Answering {
    async fn next(mut self) -> Option<(Event, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if self.done {
                return None;
            }
            match self.events.next().await {
                Some((_, JobEvent::Message { text, .. })) => {
                    let chunk = self.chunks.text(text);
                    self.pending.push_back(data(&chunk));
                }
                Some((_, JobEvent::End { record, .. })) => self.end(&record),
                Some(_) => {}
                // The events ended without the job's end (the gateway is stopping): the guard cancels it.
                None => self.done = true,
            }
        }
    }

    fn end(&mut self, record: &JobRecord) {
        self.guard.disarm();
        self.done = true;
        if !chat::is_answer(record) {
            let error = OpenAiErrorDetail::of(&chat::not_completed(record));
            self.pending.push_back(data(&OpenAiErrorEvent { error }));
            return;
        }
        // A job that ended before its events went live streamed nothing: its record holds the whole answer.
        let answer = chat::answer_of(record);
        if !self.chunks.has_spoken() && !answer.is_empty() {
            let chunk = self.chunks.text(answer);
            self.pending.push_back(data(&chunk));
        }
        self.pending.push_back(data(&self.chunks.stop()));
        if self.usage {
            self.pending.push_back(data(&self.chunks.usage(record)));
        }
        self.pending.push_back(Event::default().data("[DONE]"));
    }
}

fn data(value: &impl serde::Serialize) -> Event {
    // Chunks and errors are plain structs of strings and numbers: they always serialize.
    Event::default()
        .json_data(value)
        .unwrap_or_else(|_| Event::default().data("{}"))
}
