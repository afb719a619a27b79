//! Conversations between agents: participants take turns, each in a session of its own, each exchange's message
//! being the answer the exchange before it gave. All exchanges are queued as jobs when the conversation starts;
//! an exchange runs once the one before it has ended, with its answer as the message (so the conversation needs
//! no process of its own to drive it, and survives any worker or gateway going away). It stops early when an
//! exchange fails or is cancelled, or an answer holds `stop_when`: the exchanges left end `cancelled`, saying why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job stands in a conversation: carried in its request.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationStep {
    pub conversation_id: Uuid,
    /// 1 for the opening exchange.
    pub exchange: u32,
    /// The exchange before this one, whose answer is this job's message (none for the opening exchange).
    pub follows: Option<Uuid>,
    /// The conversation ends once an answer holds this text.
    pub stop_when: Option<String>,
}

/// One participant: a name to speak as, an agent, how it should behave, and the session it speaks in.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Participant {
    pub name: String,
    pub agent: String,
    /// Given to each of its exchanges as context (a model's system prompt).
    pub persona: Option<String>,
    pub session_id: Uuid,
}

/// An exchange: who speaks, as which job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Exchange {
    pub exchange: u32,
    pub speaker: String,
    pub job_id: Uuid,
}

/// A conversation as stored.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationRecord {
    pub conversation_id: Uuid,
    pub participants: Vec<Participant>,
    pub opening: String,
    pub turns: u32,
    pub stop_when: Option<String>,
    pub owner: Option<String>,
    pub owner_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub exchanges: Vec<Exchange>,
}

/// Its key in the sessions bucket (a session's keys are its id, and `<id>.<turn>`).
pub fn conversation_key(id: &Uuid) -> String {
    format!("conversations.{id}")
}

/// How the reason of the exchanges that did not run after `stop_when` matched begins.
pub const ENDED: &str = "the conversation ended at exchange";

/// Whether the exchange after one that answered `answer` runs, or why not.
pub fn next_runs(answer: &str, step: &ConversationStep) -> Result<(), String> {
    match step.stop_when.as_deref() {
        Some(stop) if !stop.is_empty() && answer.contains(stop) => Err(format!(
            "{ENDED} {}, whose answer holds `{stop}`",
            step.exchange - 1
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holding_stop_when_ends_the_conversation() {
        let step = ConversationStep {
            conversation_id: Uuid::nil(),
            exchange: 4,
            follows: Some(Uuid::nil()),
            stop_when: Some("BYE".into()),
        };
        assert!(next_runs("see you", &step).is_ok());
        let why = next_runs("ok BYE now", &step).unwrap_err();
        assert!(why.contains("exchange 3"), "{why}");
        assert!(next_runs(
            "BYE",
            &ConversationStep {
                stop_when: None,
                ..step
            }
        )
        .is_ok());
    }
}
