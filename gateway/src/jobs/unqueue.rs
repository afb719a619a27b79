//! Taking a job cancelled while `queued` off the jobs stream. Its message would otherwise wait there until a worker
//! pulls it (and, seeing the record, drops it), counted meanwhile as queued by `/v1/agents` and against its owner's
//! `max_queued`. The message is found by time and subject: JetStream's message-get API starts at the first message
//! on the job's subject published after the run was queued, and the job's `Nats-Msg-Id` picks it out.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessage;
use chrono::{DateTime, Utc};
use fleet_shared::topology::MSG_ID_HEADER;
use fleet_shared::{JobRecord, Topology};
use serde::{Deserialize, Serialize};

use crate::state::AppState;

/// How far before the record's time its message may carry (the gateway's clock against the NATS server's).
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);
/// Messages looked at before giving up: others of the same agent and owner queued in the same stretch of time.
const MAX_LOOKED_AT: usize = 10_000;

#[derive(Serialize)]
struct GetRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    next_by_subj: String,
}

#[derive(Deserialize)]
struct GetResponse {
    message: Option<RawMessage>,
    error: Option<ApiErrorBody>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    err_code: u64,
    description: String,
}

/// JetStream's code for "no message found".
const NO_MESSAGE: u64 = 10037;

/// Deletes the message of `record`'s current run, which the caller has just recorded as cancelled before any
/// worker claimed it. Returns whether a message was deleted; a worker that pulled it meanwhile drops it anyway.
pub async fn remove(state: &AppState, record: &JobRecord) -> Result<bool, async_nats::Error> {
    let subject = state.topology.subject_of(&record.request);
    let wanted = Topology::message_id(&record.id, record.generation());
    let since = record.request.submitted_at.min(record.updated_at) - CLOCK_SKEW;
    let api = format!("STREAM.MSG.GET.{}", state.topology.jobs_stream());
    let mut request = GetRequest {
        start_time: Some(since),
        seq: None,
        next_by_subj: subject,
    };
    for _ in 0..MAX_LOOKED_AT {
        let response: GetResponse = state.js.request(api.clone(), &request).await?;
        let raw = match (response.message, response.error) {
            (Some(raw), _) => raw,
            (None, Some(e)) if e.err_code == NO_MESSAGE => return Ok(false),
            (None, Some(e)) => return Err(e.description.into()),
            (None, None) => return Ok(false),
        };
        let sequence = raw.sequence;
        let message = StreamMessage::try_from(raw)?;
        let id = message.headers.get(MSG_ID_HEADER).map(|v| v.as_str());
        if id == Some(wanted.as_str()) {
            return Ok(state.jobs.delete_message(sequence).await?);
        }
        request.start_time = None;
        request.seq = Some(sequence + 1);
    }
    Ok(false)
}
