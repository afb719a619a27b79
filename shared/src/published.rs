//! What direct publishers send on a jobs subject: a lenient shape completed into a `JobRequest` from what the
//! message itself tells (its subject's agent, a derived id, its time).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::wire::{InputFile, JobRequest};

/// A job as it arrives on a jobs subject. Direct publishers may leave out the id (one is derived from the
/// message so redeliveries agree on it), the agent (the subject names it) and the submission time.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishedJob {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub agent: Option<String>,
    pub message: String,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub return_files: Option<bool>,
    #[serde(default)]
    pub input_files: Vec<InputFile>,
    #[serde(default)]
    pub artifact_target: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub submitted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Set by gateways (the submitting principal). NATS permissions, not this field, decide who may publish.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub owner_name: Option<String>,
    #[serde(default)]
    pub chat: Vec<crate::chat::ChatMessage>,
    #[serde(default)]
    pub sampling: crate::chat::Sampling,
    #[serde(default)]
    pub session: Option<crate::session::SessionTurn>,
    /// Honoured only on a session turn a gateway gave this job (the worker checks).
    #[serde(default)]
    pub conversation: Option<crate::conversation::ConversationStep>,
}

impl PublishedJob {
    /// Completes the job with what the message itself tells: the subject's agent, a fallback id and time.
    pub fn into_request(
        self,
        subject_agent: &str,
        fallback_id: Uuid,
        published: DateTime<Utc>,
    ) -> JobRequest {
        JobRequest {
            id: self.id.unwrap_or(fallback_id),
            agent: self.agent.unwrap_or_else(|| subject_agent.to_string()),
            message: self.message,
            context: self.context,
            timeout: self.timeout,
            return_files: self.return_files.unwrap_or(true),
            input_files: self.input_files,
            artifact_target: self.artifact_target,
            reply_to: self.reply_to,
            metadata: self.metadata,
            submitted_at: self.submitted_at.unwrap_or(published),
            traceparent: self.traceparent,
            owner: self.owner,
            owner_name: self.owner_name,
            chat: self.chat,
            sampling: self.sampling,
            session: self.session,
            conversation: self.conversation,
        }
    }
}

/// A deterministic UUID v7 for a message that carried no id: its publish time and its stream sequence, so every
/// redelivery of the same message yields the same job id.
pub fn job_id_for_message(published: DateTime<Utc>, stream_sequence: u64) -> Uuid {
    let millis = u64::try_from(published.timestamp_millis()).unwrap_or(0);
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&stream_sequence.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}
