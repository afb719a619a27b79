//! Conversations between agents (see `fleet_shared::conversation`): started by creating a session for each
//! participant and queueing every exchange as its speaker's next turn, each naming the exchange before it; read
//! back from the exchanges' records; cancelled by cancelling the exchanges not yet ended.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use fleet_shared::conversation::{ConversationRecord, ConversationStep, Exchange, Participant};
use fleet_shared::session::SessionRecord;
use fleet_shared::{ErrorCode, JobRecord, JobStatus};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::cancel::{self, Unrecorded};
use crate::jobs::records;
use crate::jobs::sessions::{self, store_error, NewSession};
use crate::jobs::submit::Submission;
use crate::state::AppState;

/// The most exchanges one conversation queues.
pub const MOST_TURNS: u32 = 100;
/// The most participants of one conversation.
pub const MOST_PARTICIPANTS: usize = 8;

/// A participant as asked for.
pub struct Speaker {
    pub name: String,
    pub agent: String,
    pub persona: Option<String>,
}

/// What a new conversation is given.
pub struct NewConversation {
    pub participants: Vec<Speaker>,
    pub opening: String,
    pub turns: u32,
    pub stop_when: Option<String>,
}

pub fn not_found(id: &Uuid) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no conversation with id {id}"))
}

/// The conversation, if the caller may see it.
pub async fn get_or_404(
    state: &AppState,
    caller: &Caller,
    id: &Uuid,
) -> Result<ConversationRecord, ApiError> {
    match state.sessions.conversation(id).await.map_err(store_error)? {
        Some(c) if caller.may_read_owned_by(c.owner.as_deref()) => Ok(c),
        _ => Err(not_found(id)),
    }
}

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, why)
}

fn validate(new: &NewConversation) -> Result<(), ApiError> {
    let count = new.participants.len();
    if !(2..=MOST_PARTICIPANTS).contains(&count) {
        return Err(invalid(format!(
            "a conversation has 2 to {MOST_PARTICIPANTS} participants, not {count}"
        )));
    }
    let mut names: Vec<&str> = new.participants.iter().map(|p| p.name.as_str()).collect();
    if names.iter().any(|n| n.trim().is_empty() || n.len() > 64) {
        return Err(invalid("each participant needs a name of 1 to 64 bytes"));
    }
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("participants' names must differ"));
    }
    if !(1..=MOST_TURNS).contains(&new.turns) {
        return Err(invalid(format!("turns must be between 1 and {MOST_TURNS}")));
    }
    if new.opening.trim().is_empty() {
        return Err(invalid("the opening message is empty"));
    }
    Ok(())
}

/// Creates the participants' sessions and queues every exchange; a failure part way cancels what was queued.
pub async fn start(
    state: &AppState,
    caller: &Caller,
    new: NewConversation,
) -> Result<ConversationRecord, ApiError> {
    validate(&new)?;
    for p in &new.participants {
        caller.may_run(&p.agent)?;
    }
    let conversation_id = Uuid::now_v7();
    let mut sessions_of = Vec::with_capacity(new.participants.len());
    let mut participants = Vec::with_capacity(new.participants.len());
    for p in new.participants {
        let metadata = BTreeMap::from([
            (
                "conversation_id".to_string(),
                conversation_id.to_string().into(),
            ),
            ("participant".to_string(), p.name.clone().into()),
        ]);
        let session = NewSession {
            agent: p.agent.clone(),
            title: Some(format!("{} in conversation {conversation_id}", p.name)),
            metadata,
        };
        let session = sessions::create(state, caller, session).await?;
        participants.push(Participant {
            name: p.name,
            agent: p.agent,
            persona: p.persona,
            session_id: session.session_id,
        });
        sessions_of.push(session);
    }
    let exchanges: Vec<Exchange> = (1..=new.turns)
        .map(|exchange| Exchange {
            exchange,
            speaker: participants[speaker_of(exchange, participants.len())]
                .name
                .clone(),
            job_id: fleet_shared::wire::new_job_id(),
        })
        .collect();
    let conversation = ConversationRecord {
        conversation_id,
        participants,
        opening: new.opening,
        turns: new.turns,
        stop_when: new.stop_when,
        owner: caller.owner(),
        owner_name: caller.principal().map(|p| p.name.clone()),
        created_at: Utc::now(),
        exchanges,
    };
    state
        .sessions
        .create_conversation(&conversation)
        .await
        .map_err(store_error)?;
    queue_exchanges(state, caller, &conversation, &sessions_of).await?;
    Ok(conversation)
}

/// Which participant speaks in `exchange` (1-based).
fn speaker_of(exchange: u32, participants: usize) -> usize {
    (exchange as usize - 1) % participants
}

async fn queue_exchanges(
    state: &AppState,
    caller: &Caller,
    conversation: &ConversationRecord,
    sessions_of: &[SessionRecord],
) -> Result<(), ApiError> {
    let exchanges = &conversation.exchanges;
    for (i, exchange) in exchanges.iter().enumerate() {
        let speaker = speaker_of(exchange.exchange, sessions_of.len());
        let follows = i.checked_sub(1).map(|before| exchanges[before].job_id);
        let message = match follows {
            None => conversation.opening.clone(),
            // Replaced by the answer of the exchange before when this one runs.
            Some(_) => format!("(the answer of exchange {})", exchange.exchange - 1),
        };
        let turn = Submission {
            id: Some(exchange.job_id),
            message,
            context: conversation.participants[speaker].persona.clone(),
            metadata: BTreeMap::from([
                (
                    "conversation_id".to_string(),
                    conversation.conversation_id.to_string().into(),
                ),
                ("exchange".to_string(), exchange.exchange.into()),
            ]),
            conversation: Some(ConversationStep {
                conversation_id: conversation.conversation_id,
                exchange: exchange.exchange,
                follows,
                stop_when: conversation.stop_when.clone(),
            }),
            return_files: true,
            ..Default::default()
        };
        if let Err(e) = sessions::take_turn(state, caller, &sessions_of[speaker], turn).await {
            cancel_exchanges(state, caller, &exchanges[..i]).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Asks every exchange given to stop (those already ended keep their end).
pub async fn cancel_exchanges(state: &AppState, caller: &Caller, exchanges: &[Exchange]) {
    for exchange in exchanges {
        let cancelling = cancel::cancel(
            state,
            caller,
            exchange.job_id,
            Duration::ZERO,
            Unrecorded::NotFound,
        );
        if let Err(e) = cancelling.await {
            tracing::warn!(job_id = %exchange.job_id, error = %e.message, "cancelling a conversation's exchange failed");
        }
    }
}

/// An exchange as a reader sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExchangeView {
    pub exchange: u32,
    pub speaker: String,
    pub job_id: Uuid,
    pub status: JobStatus,
    /// What the speaker was told: the opening, or the answer of the exchange before (once this one has run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the speaker answered, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// Where a conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    /// Exchanges are still queued or running.
    Running,
    /// Every exchange ran, or an answer held `stop_when`.
    Completed,
    /// An exchange failed or timed out; the ones after it did not run.
    Failed,
    /// It was cancelled.
    Cancelled,
}

/// The exchanges as their records tell them, and the conversation's status (decided by its first exchange
/// that did not complete) with why it stopped early.
pub async fn exchanges(
    state: &AppState,
    conversation: &ConversationRecord,
) -> Result<(ConversationStatus, Option<String>, Vec<ExchangeView>), ApiError> {
    let mut views = Vec::with_capacity(conversation.exchanges.len());
    let mut standing: Option<(ConversationStatus, Option<String>)> = None;
    for exchange in &conversation.exchanges {
        let record = records::get(state, &exchange.job_id).await?;
        if standing.is_none() {
            standing = match &record {
                Some(r) if r.status == JobStatus::Completed => None,
                Some(r) => Some(stopped_at(r)),
                None => Some((ConversationStatus::Running, None)),
            };
        }
        views.push(exchange_view(exchange, record.as_ref()));
    }
    let (status, why) = standing.unwrap_or((ConversationStatus::Completed, None));
    Ok((status, why, views))
}

fn exchange_view(exchange: &Exchange, record: Option<&JobRecord>) -> ExchangeView {
    let ran = record.filter(|r| r.started_at.is_some());
    let answer = record
        .filter(|r| r.status.is_terminal() && r.started_at.is_some())
        .map(|r| {
            r.answer
                .clone()
                .unwrap_or_else(|| r.stdout.trim_end().to_string())
        });
    ExchangeView {
        exchange: exchange.exchange,
        speaker: exchange.speaker.clone(),
        job_id: exchange.job_id,
        status: record.map_or(JobStatus::Queued, |r| r.status),
        message: ran.map(|r| r.request.message.clone()),
        answer: answer.filter(|a| !a.is_empty()),
    }
}

/// What the conversation's first exchange that did not complete says of it.
fn stopped_at(record: &JobRecord) -> (ConversationStatus, Option<String>) {
    let why = record.error.as_ref().map(|e| e.message.clone());
    let status = match record.status {
        JobStatus::Queued | JobStatus::Running => return (ConversationStatus::Running, None),
        JobStatus::Completed => ConversationStatus::Completed,
        // stop_when: the conversation ended as asked.
        JobStatus::Cancelled
            if why
                .as_deref()
                .is_some_and(|w| w.starts_with(fleet_shared::conversation::ENDED)) =>
        {
            ConversationStatus::Completed
        }
        JobStatus::Cancelled => ConversationStatus::Cancelled,
        JobStatus::Failed | JobStatus::Timeout => ConversationStatus::Failed,
    };
    (status, why)
}
