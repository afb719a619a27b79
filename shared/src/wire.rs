//! Wire types: the job request a client hands the fleet and the job record every reader sees. These are the only
//! values serialized across processes (MessagePack with field names on NATS and in KV; JSON over HTTP).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ErrorCode;

/// Longest agent name; agent names become NATS subject tokens and consumer names.
pub const MAX_AGENT_NAME: usize = 64;

/// A job as submitted: by the gateway on behalf of an HTTP client, or by a program publishing straight to NATS.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRequest {
    /// UUID v7, set by the gateway or the publisher; the deduplication key inside the duplicate window.
    pub id: Uuid,
    pub agent: String,
    pub message: String,
    pub context: Option<String>,
    /// Seconds; absent means the agent's configured timeout.
    pub timeout: Option<f64>,
    #[serde(default = "default_true")]
    pub return_files: bool,
    /// Files written into the workspace before the agent starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_files: Vec<InputFile>,
    /// Where the job's files go: `default` or a target configured under `[artifacts.targets]`; absent: the
    /// fleet's current default (the sharing target set with `POST /configure-sharing`, else `[artifacts]`).
    pub artifact_target: Option<String>,
    /// Subject that receives the terminal record, for publishers that wait on NATS.
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub submitted_at: DateTime<Utc>,
    /// W3C `traceparent` of the submitter, so the worker's spans join the client's trace.
    pub traceparent: Option<String>,
    /// Who submitted the job through a gateway, as a principal no other caller can take: `key:<key id>` or
    /// `user:<user name>` (records written before principals hold a key's name). Set by the gateway, never by the
    /// caller; jobs published straight to NATS have none.
    pub owner: Option<String>,
    /// The owner's display name (a key's name, a user's name): a label, never used to decide access.
    pub owner_name: Option<String>,
    /// For model agents: the conversation to continue (OpenAI's chat messages, the front door's request), asked
    /// in place of `context` and `message`; `message` then holds its last user message, for lists and search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chat: Vec<crate::chat::ChatMessage>,
    /// For model agents: sampling asked for this job, over the agent's own settings.
    #[serde(default, skip_serializing_if = "crate::chat::Sampling::is_empty")]
    pub sampling: crate::chat::Sampling,
    /// The session and turn this job is, when it is a session's turn.
    pub session: Option<crate::session::SessionTurn>,
    /// The conversation and exchange this job is, when it is one (always also a session's turn).
    pub conversation: Option<crate::conversation::ConversationStep>,
}

fn default_true() -> bool {
    true
}

/// A file given to a job: inline (base64, in the job message only — records keep the name and size) or a file
/// another job stored.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputFile {
    /// Relative path in the workspace, e.g. `data/input.csv`.
    #[cfg_attr(feature = "openapi", schema(schema_with = relative_path_schema))]
    pub name: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
    )]
    pub data_base64: Option<String>,
    pub from: Option<StoredFileRef>,
    /// Bytes of inline content, filled in when the job is accepted.
    #[cfg_attr(feature = "openapi", schema(read_only))]
    pub size: Option<u64>,
}

/// A file some job stored, to be used as input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredFileRef {
    pub job_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(schema_with = relative_path_schema))]
    pub name: String,
}

/// The schema of a file's path inside a workspace: relative, with no empty, `.` or `..` component, no backslash
/// and no NUL (what the worker accepts).
#[cfg(feature = "openapi")]
fn relative_path_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    const COMPONENT: &str = r"(?:[^/\\\x00.][^/\\\x00]*|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)";
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "Relative path in the workspace, e.g. `data/input.csv`.",
        ))
        .max_length(Some(1024))
        .pattern(Some(format!("^{COMPONENT}(?:/{COMPONENT})*$")))
        .build()
}

impl InputFile {
    /// The inline content, decoded.
    pub fn inline_bytes(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        use base64::Engine;
        self.data_base64
            .as_deref()
            .map(|d| base64::engine::general_purpose::STANDARD.decode(d))
    }
}

/// Why a request is not a job the fleet can accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestInvalid {
    #[error("agent name must be 1-{MAX_AGENT_NAME} characters of A-Z, a-z, 0-9, '-' or '_'")]
    AgentName,
    #[error("timeout must be a positive number of seconds")]
    Timeout,
    #[error("message must not contain NUL bytes")]
    NulInMessage,
    #[error("reply_to is not a valid NATS subject")]
    ReplyTo,
    #[error("reply_to names one of the fleet's own subjects or a server subject (`$...`)")]
    ReplyToReserved,
    #[error("input file `{0}`: {1}")]
    InputFile(String, &'static str),
}

impl JobRequest {
    /// A request with only an id, an agent and a message; every other field empty (files returned).
    pub fn new(id: Uuid, agent: &str, message: String, submitted_at: DateTime<Utc>) -> Self {
        Self {
            id,
            agent: agent.to_string(),
            message,
            context: None,
            timeout: None,
            return_files: true,
            input_files: Vec::new(),
            artifact_target: None,
            reply_to: None,
            metadata: BTreeMap::new(),
            submitted_at,
            traceparent: None,
            owner: None,
            owner_name: None,
            chat: Vec::new(),
            sampling: Default::default(),
            session: None,
            conversation: None,
        }
    }

    /// Checks what the type system cannot: names that become subjects, positive timeouts.
    pub fn validate(&self) -> Result<(), RequestInvalid> {
        if !is_valid_agent_name(&self.agent) {
            return Err(RequestInvalid::AgentName);
        }
        if let Some(t) = self.timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(RequestInvalid::Timeout);
            }
        }
        // argv elements are C strings: a NUL would silently cut the message short.
        if self.message.contains('\0') || self.context.as_deref().is_some_and(|c| c.contains('\0'))
        {
            return Err(RequestInvalid::NulInMessage);
        }
        if let Some(r) = &self.reply_to {
            if !is_valid_publish_subject(r) {
                return Err(RequestInvalid::ReplyTo);
            }
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.input_files {
            let bad = |why| Err(RequestInvalid::InputFile(f.name.clone(), why));
            if !crate::artifacts::is_safe_name(&f.name) {
                return bad("names are relative paths without `.` or `..` parts");
            }
            if crate::artifacts::is_reserved_name(&f.name) {
                return bad("`_logs/` is reserved for the job's logs");
            }
            if crate::artifacts::stored_name_problem(&f.name).is_some() {
                return bad("each part of a name may be at most 255 bytes once percent-encoded (non-ASCII characters take three bytes a byte)");
            }
            if !names.insert(f.name.as_str()) {
                return bad("given twice");
            }
            match (&f.data_base64, &f.from) {
                (Some(_), None) => {
                    if f.inline_bytes().is_some_and(|d| d.is_err()) {
                        return bad("data_base64 is not valid base64");
                    }
                }
                (None, Some(r)) if crate::artifacts::is_safe_name(&r.name) => {}
                (None, Some(_)) => return bad("`from.name` is not a safe relative name"),
                _ => return bad("give exactly one of data_base64 and from"),
            }
        }
        Ok(())
    }

    /// The request as records keep it: inline input content dropped (the job message has it), sizes kept.
    pub fn without_inline_data(&self) -> JobRequest {
        let mut r = self.clone();
        for f in &mut r.input_files {
            if let Some(Ok(d)) = f.inline_bytes() {
                f.size = Some(d.len() as u64);
            }
            f.data_base64 = None;
        }
        r
    }
}

pub fn is_valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_AGENT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn is_valid_publish_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">")
        && !s
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Timeout,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Timeout,
        Self::Cancelled,
    ];

    /// Terminal states are final: no writer may replace a terminal record.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Timeout | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The value under a job id in the cancels bucket.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub requested_at: Option<DateTime<Utc>>,
    /// The run being cancelled (the record's number of retries then); a retry after it is not cancelled.
    #[serde(default)]
    pub generation: u32,
}

/// The answer to a cancel request on `fleet.cancel.<id>` (JSON): the job's state after it, or why it was refused.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReply {
    /// Absent only when the subject named no job id.
    pub job_id: Option<Uuid>,
    pub status: Option<CancelState>,
    pub error: Option<JobError>,
}

/// Where a cancelled job stands: ended (normally `cancelled`; a job that ended on its own first keeps its end), or
/// still stopping or not yet seen by any worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelState {
    Cancelling,
    Completed,
    Failed,
    Timeout,
    Cancelled,
}

impl CancelState {
    /// The state of a job whose record says `status`.
    pub fn of(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued | JobStatus::Running => Self::Cancelling,
            JobStatus::Completed => Self::Completed,
            JobStatus::Failed => Self::Failed,
            JobStatus::Timeout => Self::Timeout,
            JobStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// How an earlier run of a retried job ended.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndedRun {
    /// The record's `attempt` when that run ended.
    pub attempt: u32,
    pub status: JobStatus,
    pub worker: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub error: Option<JobError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What the agent's process cost, from `wait4`'s rusage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    pub wall_ms: u64,
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    pub max_rss_kb: u64,
}

/// A file the job produced, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub location: String,
    /// The stored file stops short of what the job wrote (a full log over the per-file limit, ending in a line
    /// that says so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A file the job produced that was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedFile {
    pub name: String,
    pub size: u64,
    pub reason: String,
}

/// `_logs/manifest.json`, stored beside a job's files when they are many: every stored and every skipped file,
/// including those a record trimmed to fit NATS's message size leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest<'a> {
    pub files: std::borrow::Cow<'a, [FileEntry]>,
    pub skipped_files: std::borrow::Cow<'a, [SkippedFile]>,
}

/// The job's record in the `jobs` KV bucket, and the payload of its reply. Exactly one terminal version of it is
/// ever written per job.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRecord {
    pub id: Uuid,
    pub status: JobStatus,
    pub request: JobRequest,
    /// Number of times a worker started this job (redeliveries after a crash count).
    #[serde(default)]
    pub attempt: u32,
    pub worker: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// Signal that ended the agent, when it did not exit by itself.
    pub signal: Option<i32>,
    /// Capped copy of stdout, shown lossily as UTF-8; the full bytes are kept in the full log.
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    /// How many bytes of stdout the record leaves out (0 when the copy is complete).
    #[serde(default)]
    pub stdout_truncated_bytes: u64,
    #[serde(default)]
    pub stderr_truncated_bytes: u64,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Stored files left out of `files` so the record stays within NATS's message size; the stored manifest
    /// (`_logs/manifest.json`) lists them all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_omitted: u64,
    /// Files the job produced that were not stored (over a size or count cap), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<SkippedFile>,
    /// Entries left out of `skipped_files` so the record stays within NATS's message size; the stored manifest
    /// (`_logs/manifest.json`) lists them all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_files_omitted: u64,
    /// Full stdout/stderr logs, stored when the record's copies are not the exact output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<FileEntry>,
    /// The artifact target holding `files` and `logs` (`default`, a configured name, or `sharing:<uuid>`).
    pub artifact_store: Option<String>,
    /// Earlier runs of this job, oldest first, each ended before a `POST /v1/jobs/{id}/retry`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<EndedRun>,
    pub resources: Option<Resources>,
    /// Why the agent was stopped short: `timeout`, or the resource limit it hit (`cpu_limit`, `memory_limit`,
    /// `file_size_limit`, `process_limit`, `open_files_limit`).
    pub killed: Option<crate::lifecycle::Killed>,
    pub error: Option<JobError>,
    /// Why a queued job has not started yet when it waits for something other than a worker (a session's turn
    /// waiting for the turn before it).
    pub waiting: Option<String>,
    /// What an agent the fleet understands (a model agent, a CLI preset) answered: its final text. Raw stdout
    /// stays in `stdout`.
    pub answer: Option<String>,
    /// Bytes of the answer cut to keep the record within NATS's message size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub answer_truncated_bytes: u64,
    /// Tokens the run used (and its cost, where the agent reports one).
    pub usage: Option<Usage>,
    /// The agent's own session id (Claude Code's `session_id`, Codex's thread id), where it has one.
    pub agent_session_id: Option<String>,
    /// Tool calls the agent made.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tool_calls: u64,
    /// A session turn's workspace as the turn left it, saved for the next turn.
    pub session_workspace: Option<crate::session_workspace::WorkspaceRef>,
    pub updated_at: DateTime<Utc>,
}

/// What a run cost in tokens, as the agent or its model server reported it.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// In US dollars, where the agent reports it (Claude Code does; a model server does not).
    pub cost_usd: Option<f64>,
}

impl JobRecord {
    /// Which run this is: 0 for the first, one more for each retry.
    pub fn generation(&self) -> u32 {
        self.history.len() as u32
    }

    /// Attempts (starts) since the last retry: what `queue.max_attempts` bounds.
    pub fn attempts_this_run(&self) -> u32 {
        let before = self.history.last().map_or(0, |h| h.attempt);
        self.attempt.saturating_sub(before)
    }

    /// The stored file (artifact or full log) called `name`.
    pub fn stored_file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().chain(&self.logs).find(|f| f.name == name)
    }

    /// Names of the files the job produced, as the seed-compatible endpoints list them.
    pub fn file_names(&self) -> Vec<String> {
        self.files.iter().map(|f| f.name.clone()).collect()
    }
}

/// A new job id: UUID v7, so ids sort by submission time.
pub use crate::published::{job_id_for_message, PublishedJob};

pub fn new_job_id() -> Uuid {
    Uuid::now_v7()
}

/// What happens to a job, as published on `fleet.events.<job_id>` (MessagePack) and served as Server-Sent Events
/// (JSON, the event name being `type`). The events stream keeps them, so a late listener replays them in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// A worker started (or restarted, on a later attempt) the job; or, in a retried job's stream, an earlier
    /// run ended (gateways tell that run's `end` this way, for the stream goes on to the latest run).
    Status {
        status: JobStatus,
        attempt: u32,
        worker: String,
        at: DateTime<Utc>,
    },
    /// Output as it was read: `seq` counts the attempt's output events from 1. Text is UTF-8; a character split
    /// between reads is sent whole with the next one, and bytes that are not UTF-8 become U+FFFD (the full log
    /// artifact keeps the exact bytes).
    Output {
        stream: OutputStream,
        attempt: u32,
        seq: u64,
        text: String,
    },
    /// The attempt's output went past the events' budget; the rest is in the record and its full logs.
    OutputLimit { attempt: u32, bytes: u64 },
    /// A file the job produced was stored.
    Artifact { file: FileEntry },
    /// Sent by a gateway to a listener that fell too far behind the live events, just before it closes the
    /// stream: reconnect with `Last-Event-ID: last_id` (or `?after=`) to continue without a gap.
    Behind { last_id: u64 },
    /// Assistant text from an agent the fleet understands: a model agent's tokens as they are generated, a CLI
    /// preset's messages as it prints them.
    Message {
        attempt: u32,
        text: String,
        /// A piece of a message still being written (a model's tokens): pieces join without a break. A whole
        /// message (a CLI's) has none.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    },
    /// The agent called a tool (`input` as the agent gave it).
    ToolCall {
        attempt: u32,
        name: String,
        #[serde(default)]
        input: serde_json::Value,
    },
    /// What a tool call returned to the agent (cut to a few KiB).
    ToolResult {
        attempt: u32,
        #[serde(default)]
        output: String,
        #[serde(default)]
        is_error: bool,
    },
    /// Tokens used so far (a model agent's or a CLI's final count).
    Usage { attempt: u32, usage: Usage },
    /// The terminal record; always the last event. A job that ends within the claim delay publishes no events
    /// at all (its end is on `fleet.done.<id>` and its reply subject); gateways still serve it to listeners as
    /// `output` events made from the record, then `end`. `output_sent` is true on every published `end`.
    End {
        record: Box<JobRecord>,
        #[serde(default)]
        output_sent: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl JobEvent {
    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Output { .. } => "output",
            Self::OutputLimit { .. } => "output_limit",
            Self::Artifact { .. } => "artifact",
            Self::Behind { .. } => "behind",
            Self::Message { .. } => "message",
            Self::ToolCall { .. } => "tool_call",
            Self::ToolResult { .. } => "tool_result",
            Self::Usage { .. } => "usage",
            Self::End { .. } => "end",
        }
    }

    /// The attempt the event belongs to, when it says.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            Self::Status { attempt, .. }
            | Self::Output { attempt, .. }
            | Self::OutputLimit { attempt, .. }
            | Self::Message { attempt, .. }
            | Self::ToolCall { attempt, .. }
            | Self::ToolResult { attempt, .. }
            | Self::Usage { attempt, .. } => Some(*attempt),
            Self::End { record, .. } => Some(record.attempt),
            Self::Artifact { .. } | Self::Behind { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(agent: &str) -> JobRequest {
        JobRequest::new(new_job_id(), agent, "hi".into(), Utc::now())
    }

    #[test]
    fn agent_names_that_would_break_subjects_are_rejected() {
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert_eq!(
                request(bad).validate(),
                Err(RequestInvalid::AgentName),
                "{bad:?}"
            );
        }
        assert_eq!(request("claude-full_2").validate(), Ok(()));
    }

    #[test]
    fn non_positive_timeout_is_rejected() {
        let mut r = request("echo");
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            r.timeout = Some(t);
            assert_eq!(r.validate(), Err(RequestInvalid::Timeout));
        }
    }

    #[test]
    fn wildcard_reply_subject_is_rejected() {
        let mut r = request("echo");
        r.reply_to = Some("replies.*".into());
        assert_eq!(r.validate(), Err(RequestInvalid::ReplyTo));
        r.reply_to = Some("_INBOX.abc.1".into());
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn input_files_need_safe_unique_names_and_exactly_one_source() {
        let file = |name: &str, data: Option<&str>, from: Option<&str>| InputFile {
            name: name.into(),
            data_base64: data.map(str::to_string),
            from: from.map(|n| StoredFileRef {
                job_id: Uuid::nil(),
                name: n.into(),
            }),
            size: None,
        };
        let check = |files: Vec<InputFile>| {
            let mut r = request("echo");
            r.input_files = files;
            r.validate()
        };
        assert_eq!(
            check(vec![
                file("a/b.txt", Some("aGk="), None),
                file("c", None, Some("out/x"))
            ]),
            Ok(())
        );
        for bad in [
            vec![file("../a", Some("aGk="), None)],
            vec![file("a", Some("%%%"), None)],
            vec![file("a", None, None)],
            vec![file("a", Some("aGk="), Some("x"))],
            vec![file("a", None, Some("/etc/passwd"))],
            vec![file("a", Some("aGk="), None), file("a", Some("aGk="), None)],
        ] {
            assert!(
                matches!(check(bad.clone()), Err(RequestInvalid::InputFile(..))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn records_keep_input_sizes_not_content() {
        let mut r = request("echo");
        r.input_files = vec![InputFile {
            name: "a".into(),
            data_base64: Some("aGk=".into()),
            from: None,
            size: None,
        }];
        let stripped = r.without_inline_data();
        assert_eq!(stripped.input_files[0].data_base64, None);
        assert_eq!(stripped.input_files[0].size, Some(2));
    }

    #[test]
    fn terminal_states() {
        let terminal: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Timeout,
                JobStatus::Cancelled
            ]
        );
        assert_eq!(JobStatus::parse("timeout"), Some(JobStatus::Timeout));
        assert_eq!(JobStatus::parse("processing"), None);
    }
}
