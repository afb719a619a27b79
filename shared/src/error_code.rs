//! Stable error codes. They appear in job records, replies and HTTP problem bodies; clients match on them, so a
//! code is never renamed or reused for another meaning.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Job outcomes recorded by workers.
    /// The agent exited with a non-zero status or was killed by a signal.
    NonzeroExit,
    /// The agent ran past its timeout and its process group was killed.
    Timeout,
    /// Every allowed attempt ended with its worker gone (crash, kill -9, lost connection).
    WorkerLost,
    /// No worker in the fleet runs the named agent.
    UnknownAgent,
    /// A directly published job could not be decoded or failed validation.
    InvalidJob,
    /// The agent's program could not be started (missing binary, permissions, argument too long).
    SpawnFailed,
    /// The job was cancelled.
    Cancelled,
    /// The job ran, but its files could not be stored; stdout and stderr are still in the record.
    ArtifactUploadFailed,
    /// The agent hit one of its resource limits (the record's `killed` names it).
    LimitExceeded,
    /// A model agent's server refused the request or answered something that is not a completion (the
    /// message gives its status and words).
    ModelError,
    /// A session turn's workspace is over `artifacts.session_workspace_max_bytes` (or `_max_files`) when the
    /// turn ends: the session keeps its workspace from before the turn.
    WorkspaceTooLarge,
    /// A session's workspace could not be restored before the turn or saved after it (its store failed).
    WorkspaceUnavailable,

    // Request errors answered by the gateway.
    MalformedJson,
    InvalidRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    NotFound,
    JobNotFound,
    /// No session with that id that the caller may see.
    SessionNotFound,
    MethodNotAllowed,
    IdempotencyConflict,
    QueueFull,
    Unavailable,
    Internal,
    RangeNotSatisfiable,
    /// A file name that is not a safe relative path (absolute, `..`, NUL, ...).
    InvalidName,
    /// An artifact target given at run time could not be reached, or refused its credentials.
    TargetUnreachable,
    /// The job already has its terminal record, so it cannot be cancelled.
    JobFinished,
    /// The job cannot be retried: it has not failed, timed out or been cancelled, or its inputs are gone.
    NotRetryable,
    /// No credentials, or credentials that are malformed, unknown or revoked.
    Unauthorized,
    /// Valid credentials without the scope this request needs (an agent it may not run, say).
    Forbidden,
    /// Too many requests from this caller or address; `Retry-After` says when to try again.
    RateLimited,
    /// The request's body did not arrive in time.
    RequestTimeout,
    /// The caller already has as many jobs queued or running as it may (`max_queued`).
    TooManyJobs,
    /// The request's headers are larger than the gateway takes.
    HeadersTooLarge,
    /// The request is not well-formed HTTP (a bad request line, header or chunk).
    MalformedRequest,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 36] = [
        Self::NonzeroExit,
        Self::Timeout,
        Self::WorkerLost,
        Self::UnknownAgent,
        Self::InvalidJob,
        Self::SpawnFailed,
        Self::Cancelled,
        Self::ArtifactUploadFailed,
        Self::MalformedJson,
        Self::InvalidRequest,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::JobNotFound,
        Self::MethodNotAllowed,
        Self::IdempotencyConflict,
        Self::QueueFull,
        Self::Unavailable,
        Self::Internal,
        Self::RangeNotSatisfiable,
        Self::InvalidName,
        Self::TargetUnreachable,
        Self::JobFinished,
        Self::NotRetryable,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::LimitExceeded,
        Self::RequestTimeout,
        Self::TooManyJobs,
        Self::HeadersTooLarge,
        Self::MalformedRequest,
        Self::ModelError,
        Self::SessionNotFound,
        Self::WorkspaceTooLarge,
        Self::WorkspaceUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonzeroExit => "nonzero_exit",
            Self::Timeout => "timeout",
            Self::WorkerLost => "worker_lost",
            Self::UnknownAgent => "unknown_agent",
            Self::InvalidJob => "invalid_job",
            Self::SpawnFailed => "spawn_failed",
            Self::Cancelled => "cancelled",
            Self::ArtifactUploadFailed => "artifact_upload_failed",
            Self::MalformedJson => "malformed_json",
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::JobNotFound => "job_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::QueueFull => "queue_full",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::InvalidName => "invalid_name",
            Self::TargetUnreachable => "target_unreachable",
            Self::JobFinished => "job_finished",
            Self::NotRetryable => "not_retryable",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::LimitExceeded => "limit_exceeded",
            Self::RequestTimeout => "request_timeout",
            Self::TooManyJobs => "too_many_jobs",
            Self::HeadersTooLarge => "headers_too_large",
            Self::MalformedRequest => "malformed_request",
            Self::ModelError => "model_error",
            Self::WorkspaceTooLarge => "workspace_too_large",
            Self::WorkspaceUnavailable => "workspace_unavailable",
            Self::SessionNotFound => "session_not_found",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in [
            ErrorCode::WorkerLost,
            ErrorCode::QueueFull,
            ErrorCode::NonzeroExit,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
