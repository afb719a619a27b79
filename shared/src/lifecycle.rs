//! A job's lifecycle: its states, which transitions are allowed, and the record each transition produces, with
//! the error code and message it sets. Pure functions over [`JobRecord`]; `record_store` writes what they return
//! with compare-and-set, in the gateway and the worker alike. A new state (a session turn waiting its turn, a
//! skipped workflow task, a scheduled job) is a variant of [`JobStatus`], a row in [`may_become`] and a function
//! here.
//!
//! ```text
//!            claim / redelivery              run ends
//!  queued ─────────────────────────▶ running ───────────▶ completed | failed | timeout | cancelled
//!    │  ▲          hand back            │                          │
//!    │  └───────────────────────────────┘                          │ retry (failed, timeout, cancelled)
//!    │  cancelled before it started, refused, or ended within       ▼
//!    └─ the claim delay (a deferred claim) ──▶ terminal        queued (the ended run in `history`)
//! ```

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::wire::EndedRun;
use crate::{ErrorCode, JobError, JobRecord, JobRequest, JobStatus};

/// Whether a record in state `from` may be replaced by one in state `to`.
pub fn may_become(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    match (from, to) {
        // Claimed; or ended straight from the queue (refused, cancelled, or a deferred claim's short run).
        (Queued, _) => true,
        // A redelivery's claim (attempt + 1), a hand-back, or the run's end.
        (Running, _) => true,
        (Failed | Timeout | Cancelled, Queued) => true,
        (Completed | Failed | Timeout | Cancelled, _) => false,
    }
}

/// Why the agent was stopped short, as the record's `killed` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Killed {
    Timeout,
    CpuLimit,
    MemoryLimit,
    FileSizeLimit,
    ProcessLimit,
    OpenFilesLimit,
}

impl Killed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::CpuLimit => "cpu_limit",
            Self::MemoryLimit => "memory_limit",
            Self::FileSizeLimit => "file_size_limit",
            Self::ProcessLimit => "process_limit",
            Self::OpenFilesLimit => "open_files_limit",
        }
    }

    /// In a sentence: "the agent hit its memory limit".
    fn described(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::CpuLimit => "cpu limit",
            Self::MemoryLimit => "memory limit",
            Self::FileSizeLimit => "file size limit",
            Self::ProcessLimit => "process limit",
            Self::OpenFilesLimit => "open files limit",
        }
    }
}

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the agent's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// No process ran: a model agent's request ended (its answer came, or it was stopped).
    NoProcess,
}

/// What stopped a run before the agent ended by itself, if anything did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Cancelled while running: its output and files so far are kept.
    Cancelled,
    /// Ran past its timeout.
    Timeout,
    /// Failed on one of its resource limits (inferred from how it ended).
    Limit(Killed),
}

/// A run's end as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    pub exit: Exit,
    pub stop: Option<Stop>,
}

/// A transition the record's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {id} is {from}; {why}")]
pub struct NotAllowed {
    pub id: uuid::Uuid,
    pub from: &'static str,
    pub why: &'static str,
}

impl JobRecord {
    /// A new job, waiting for a worker.
    pub fn queued(request: JobRequest) -> Self {
        Self {
            id: request.id,
            status: JobStatus::Queued,
            request,
            attempt: 0,
            worker: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated_bytes: 0,
            stderr_truncated_bytes: 0,
            files: Vec::new(),
            files_omitted: 0,
            skipped_files: Vec::new(),
            skipped_files_omitted: 0,
            logs: Vec::new(),
            artifact_store: None,
            history: Vec::new(),
            resources: None,
            killed: None,
            error: None,
            waiting: None,
            answer: None,
            answer_truncated_bytes: 0,
            usage: None,
            agent_session_id: None,
            tool_calls: 0,
            session_workspace: None,
            updated_at: Utc::now(),
        }
    }

    /// A terminal `failed` record for a job that never ran (unknown agent, undecodable, refused).
    pub fn failed_without_run(request: JobRequest, error: JobError) -> Self {
        Self::queued(request).ended(JobStatus::Failed, Some(error))
    }

    /// Attempt N+1, run by `worker` since `started_at`.
    pub fn claimed(mut self, worker: &str, started_at: chrono::DateTime<Utc>) -> Self {
        debug_assert!(may_become(self.status, JobStatus::Running));
        self.status = JobStatus::Running;
        self.attempt += 1;
        self.waiting = None;
        self.worker = Some(worker.to_string());
        self.started_at = Some(started_at);
        self.updated_at = Utc::now();
        self
    }

    /// Still queued, waiting for `why` (a session's earlier turn) rather than for a worker.
    pub fn waiting_for(mut self, why: String) -> Self {
        debug_assert_eq!(self.status, JobStatus::Queued);
        self.waiting = Some(why);
        self.updated_at = Utc::now();
        self
    }

    /// A conversation's exchange told its message (the answer of the exchange before) as it is about to run.
    pub fn told(mut self, message: String) -> Self {
        debug_assert_eq!(self.status, JobStatus::Queued);
        self.request.message = message;
        self.waiting = None;
        self.updated_at = Utc::now();
        self
    }

    /// Given back to the queue by a worker that stops (its attempt still counted).
    pub fn handed_back(mut self) -> Self {
        debug_assert!(may_become(self.status, JobStatus::Queued));
        self.status = JobStatus::Queued;
        self.worker = None;
        self.started_at = None;
        self.updated_at = Utc::now();
        self
    }

    /// Ended before any worker ran it.
    pub fn cancelled_before_start(self) -> Self {
        self.ended(
            JobStatus::Cancelled,
            Some(JobError::new(
                ErrorCode::Cancelled,
                "cancelled before it started",
            )),
        )
    }

    /// Ended before any worker ran it, because what it was part of stopped (a conversation that ended).
    pub fn stopped_before_start(self, why: String) -> Self {
        self.ended(
            JobStatus::Cancelled,
            Some(JobError::new(ErrorCode::Cancelled, why)),
        )
    }

    /// Its workers vanished on each of its attempts.
    pub fn worker_lost(self) -> Self {
        let attempts = self.attempts_this_run();
        self.ended(
            JobStatus::Failed,
            Some(JobError::new(
                ErrorCode::WorkerLost,
                format!("the job's worker was lost on each of its {attempts} attempts"),
            )),
        )
    }

    /// Failed for a reason of the fleet's (the agent could not be started), not of the agent's.
    pub fn failed(self, error: JobError) -> Self {
        self.ended(JobStatus::Failed, Some(error))
    }

    /// A model agent's server refused the question or garbled its answer: the job fails with `model_error`,
    /// keeping what was answered before.
    pub fn model_refused(self, why: impl Into<String>) -> Self {
        self.ended(
            JobStatus::Failed,
            Some(JobError::new(ErrorCode::ModelError, why.into())),
        )
    }

    /// The run ended but its files could not all be stored: nothing is listed that is not stored, so the job
    /// fails, keeping its output and exit.
    pub fn files_not_stored(self, why: String) -> Self {
        self.not_kept(JobError::new(ErrorCode::ArtifactUploadFailed, why))
    }

    /// The run ended but what it left could not be kept (its files, a session's workspace): the job fails with
    /// `error`, keeping its output and exit.
    pub fn not_kept(mut self, error: JobError) -> Self {
        debug_assert!(self.status.is_terminal());
        self.status = JobStatus::Failed;
        self.error = Some(error);
        self
    }

    /// The run's end: status, error and `killed` from how it ended and what stopped it.
    pub fn run_ended(mut self, end: RunEnd) -> Self {
        match end.exit {
            Exit::Code(code) => self.exit_code = Some(code),
            Exit::Signal(sig) => self.signal = Some(sig),
            Exit::NoProcess => {}
        }
        let (status, error) = match (end.stop, end.exit) {
            (Some(Stop::Cancelled), _) => (
                JobStatus::Cancelled,
                Some(JobError::new(
                    ErrorCode::Cancelled,
                    "cancelled while running; output and files up to then are kept",
                )),
            ),
            (Some(Stop::Limit(limit)), _) => {
                self.killed = Some(limit);
                (
                    JobStatus::Failed,
                    Some(JobError::new(
                        ErrorCode::LimitExceeded,
                        format!("the agent hit its {}", limit.described()),
                    )),
                )
            }
            (Some(Stop::Timeout), _) => {
                self.killed = Some(Killed::Timeout);
                let limit = self
                    .request
                    .timeout
                    .map(|t| format!(" of {t} s"))
                    .unwrap_or_default();
                (
                    JobStatus::Timeout,
                    Some(JobError::new(
                        ErrorCode::Timeout,
                        format!("the agent ran past its timeout{limit}"),
                    )),
                )
            }
            (None, Exit::Code(0) | Exit::NoProcess) => (JobStatus::Completed, None),
            (None, Exit::Code(code)) => (
                JobStatus::Failed,
                Some(JobError::new(
                    ErrorCode::NonzeroExit,
                    format!("the agent exited with status {code}"),
                )),
            ),
            (None, Exit::Signal(sig)) => (
                JobStatus::Failed,
                Some(JobError::new(
                    ErrorCode::NonzeroExit,
                    format!("the agent was killed by signal {sig}"),
                )),
            ),
        };
        self.ended(status, error)
    }

    /// The `queued` record of a retry of this ended job: same request, the ended run moved to `history`.
    pub fn retried(&self) -> Result<Self, NotAllowed> {
        if !may_become(self.status, JobStatus::Queued) || self.status == JobStatus::Queued {
            return Err(NotAllowed {
                id: self.id,
                from: self.status.as_str(),
                why: "only failed, timed-out or cancelled jobs can be retried",
            });
        }
        let mut next = Self::queued(self.request.clone());
        next.attempt = self.attempt;
        next.history = self.history.clone();
        next.history.push(EndedRun {
            attempt: self.attempt,
            status: self.status,
            worker: self.worker.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            exit_code: self.exit_code,
            error: self.error.clone(),
        });
        Ok(next)
    }

    fn ended(mut self, status: JobStatus, error: Option<JobError>) -> Self {
        debug_assert!(status.is_terminal() && may_become(self.status, status));
        let now = Utc::now();
        self.status = status;
        self.finished_at = Some(now);
        self.updated_at = now;
        self.error = error;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued() -> JobRecord {
        JobRecord::queued(JobRequest::new(
            crate::wire::new_job_id(),
            "echo",
            "hi".into(),
            Utc::now(),
        ))
    }

    #[test]
    fn terminal_records_change_only_by_a_retry_and_completed_ones_never() {
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let allowed = may_become(from, to);
                match from {
                    JobStatus::Queued | JobStatus::Running => assert!(allowed, "{from:?}→{to:?}"),
                    JobStatus::Completed => assert!(!allowed, "{from:?}→{to:?}"),
                    _ => assert_eq!(allowed, to == JobStatus::Queued, "{from:?}→{to:?}"),
                }
            }
        }
    }

    #[test]
    fn a_claim_counts_the_attempt_and_a_hand_back_keeps_it() {
        let r = queued().claimed("w1", Utc::now());
        assert_eq!(
            (r.status, r.attempt, r.worker.as_deref()),
            (JobStatus::Running, 1, Some("w1"))
        );
        let r = r.handed_back().claimed("w2", Utc::now());
        assert_eq!((r.attempt, r.worker.as_deref()), (2, Some("w2")));
        let lost = r.worker_lost();
        assert_eq!(lost.status, JobStatus::Failed);
        assert_eq!(
            lost.error.as_ref().map(|e| e.code),
            Some(ErrorCode::WorkerLost)
        );
        assert!(lost
            .error
            .unwrap()
            .message
            .contains("each of its 2 attempts"));
    }

    #[test]
    fn a_run_end_sets_status_error_and_killed() {
        let run = |exit, stop| {
            queued()
                .claimed("w", Utc::now())
                .run_ended(RunEnd { exit, stop })
        };
        let r = run(Exit::Code(0), None);
        assert_eq!(
            (r.status, r.exit_code, r.error),
            (JobStatus::Completed, Some(0), None)
        );
        let r = run(Exit::Code(3), None);
        assert_eq!(r.error.unwrap().code, ErrorCode::NonzeroExit);
        let r = run(Exit::Signal(9), Some(Stop::Timeout));
        assert_eq!(
            (r.status, r.signal, r.killed),
            (JobStatus::Timeout, Some(9), Some(Killed::Timeout))
        );
        let r = run(Exit::Signal(9), Some(Stop::Limit(Killed::MemoryLimit)));
        assert_eq!(r.status, JobStatus::Failed);
        assert_eq!(r.error.unwrap().message, "the agent hit its memory limit");
        let r = run(Exit::Signal(15), Some(Stop::Cancelled));
        assert_eq!((r.status, r.killed), (JobStatus::Cancelled, None));
        assert!(r.finished_at.is_some());
    }

    #[test]
    fn only_failed_timed_out_or_cancelled_jobs_are_retried() {
        assert!(queued().retried().is_err());
        let done = queued().claimed("w", Utc::now()).run_ended(RunEnd {
            exit: Exit::Code(0),
            stop: None,
        });
        assert!(done.retried().is_err());
        let cancelled = queued().cancelled_before_start();
        let next = cancelled.retried().expect("retry");
        assert_eq!((next.status, next.generation()), (JobStatus::Queued, 1));
        assert_eq!(next.history[0].status, JobStatus::Cancelled);
    }

    #[test]
    fn killed_keeps_its_wire_names() {
        for k in [Killed::Timeout, Killed::CpuLimit, Killed::OpenFilesLimit] {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
    }
}
