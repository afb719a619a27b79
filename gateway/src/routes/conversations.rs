//! `/v1/conversations`: agents that talk to each other. Each participant speaks in a session of its own; every
//! exchange is a job (record, events, files, cancel) whose message is the answer the exchange before it gave.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_shared::conversation::{ConversationRecord, Participant};
use fleet_shared::wire::JobEvent;
use futures::{SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Path, Problem};
use crate::jobs::conversations::{
    self, ConversationStatus, ExchangeView, NewConversation, Speaker,
};
use crate::jobs::follow::job_events;
use crate::state::AppState;

/// One participant of `POST /v1/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParticipant {
    pub name: String,
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub agent: String,
    /// How it should behave: given to each of its exchanges as context (a model's system prompt).
    #[serde(default)]
    pub persona: Option<String>,
}

/// Body of `POST /v1/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// 2 to 8; they speak in this order, round and round.
    pub participants: Vec<NewParticipant>,
    /// The first participant's first message.
    pub opening: String,
    /// How many exchanges in all (1 to 100).
    #[schema(minimum = 1, maximum = 100)]
    pub turns: u32,
    /// The conversation ends after an answer holding this text.
    #[serde(default)]
    pub stop_when: Option<String>,
}

/// A conversation and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    pub conversation_id: Uuid,
    pub status: ConversationStatus,
    /// Why it ended before its last exchange, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub participants: Vec<Participant>,
    pub opening: String,
    pub turns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_when: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub exchanges: Vec<ExchangeView>,
}

async fn view(state: &AppState, c: ConversationRecord) -> Result<ConversationView, ApiError> {
    let (status, stopped, exchanges) = conversations::exchanges(state, &c).await?;
    Ok(ConversationView {
        conversation_id: c.conversation_id,
        status,
        stopped,
        participants: c.participants,
        opening: c.opening,
        turns: c.turns,
        stop_when: c.stop_when,
        created_at: c.created_at,
        exchanges,
    })
}

/// Start a conversation between agents: every exchange is queued at once and runs when the one before it ends.
#[utoipa::path(post, path = "/v1/conversations", tag = "sessions", request_body = CreateConversation,
    responses((status = 201, body = ConversationView), (status = 422, body = Problem)))]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    Json(body): Json<CreateConversation>,
) -> Result<Response, ApiError> {
    let new = NewConversation {
        participants: body
            .participants
            .into_iter()
            .map(|p| Speaker {
                name: p.name,
                agent: p.agent,
                persona: p.persona,
            })
            .collect(),
        opening: body.opening,
        turns: body.turns,
        stop_when: body.stop_when,
    };
    let started = conversations::start(&state, &caller, new).await?;
    let view = view(&state, started).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A conversation: its status and exchanges (speaker, message, answer, job).
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = ConversationView), (status = 404, body = Problem)))]
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<ConversationView>, ApiError> {
    let conversation = conversations::get_or_404(&state, &caller, &id).await?;
    Ok(Json(view(&state, conversation).await?))
}

/// Stop a conversation: its exchanges not yet ended are cancelled.
#[utoipa::path(post, path = "/v1/conversations/{id}/cancel", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = ConversationView), (status = 404, body = Problem)))]
pub async fn cancel(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<ConversationView>, ApiError> {
    caller.require(|s| s.cancel, "cancel or retry jobs")?;
    let conversation = conversations::get_or_404(&state, &caller, &id).await?;
    conversations::cancel_exchanges(&state, &caller, &conversation.exchanges).await;
    Ok(Json(view(&state, conversation).await?))
}

/// Follow a conversation live: for each exchange in turn, `exchange` (speaker and job), then that job's own
/// events (`message`, `output`, `tool_call`, ...) and its `end`; finally `conversation` with the whole view.
#[utoipa::path(get, path = "/v1/conversations/{id}/events", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 404, body = Problem)))]
pub async fn events(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let conversation = conversations::get_or_404(&state, &caller, &id).await?;
    let (mut send, receive) = futures::channel::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        for exchange in &conversation.exchanges {
            // A listener that left shows at the next event's send, which ends the loop.
            let _ = send.send(json_event("exchange", exchange)).await;
            let Ok(mut job) = job_events(&state, &caller, exchange.job_id, None).await else {
                break;
            };
            let mut completed = false;
            while let Some((_, event)) = job.next().await {
                if let JobEvent::End { record, .. } = &event {
                    completed = record.status == fleet_shared::JobStatus::Completed;
                }
                if send.send(json_event(event.kind(), &event)).await.is_err() {
                    return; // the listener left
                }
            }
            if !completed {
                break;
            }
        }
        if let Ok(whole) = view(&state, conversation).await {
            // The last event: a listener that left has nothing more to miss.
            let _ = send.send(json_event("conversation", &whole)).await;
        }
    });
    let stream = receive.map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn json_event(kind: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event("error").data("unencodable event"))
}
