//! Handling one job message from claim to ack: read it, decide whether it runs (refused, stale, cancelled,
//! exhausted), claim the record, have `attempt.rs` run it, write the terminal record, announce it, and settle
//! the message.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use fleet_shared::codec::Format;
use fleet_shared::lifecycle::{Exit, RunEnd, Stop};
use fleet_shared::{ErrorCode, JobError, JobRecord};
use tracing::Instrument;

use fleet_shared::record_store::{self as records, Claim, Encoded, Finish, Held};

use crate::attempt::{self, ClaimState, Progress};
use crate::intake::{self, Incoming, Intake};
use crate::supervisor::{Ending, KillReason, RunOutcome, SpawnError};
use crate::Shared;

/// What becomes of a job message. The only place that decides ack, nak or term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The job has its terminal record.
    Ack,
    /// Not finished here; hand it to another worker (after the delay).
    Retry(Option<Duration>),
}

pub async fn settle(msg: &jetstream::Message, settle: Settle) {
    let kind = match settle {
        Settle::Ack => AckKind::Ack,
        Settle::Retry(delay) => AckKind::Nak(delay),
    };
    if let Err(e) = msg.ack_with(kind).await {
        // A lost ack means a redelivery, which finds the terminal record and acks again.
        tracing::warn!(error = %e, ?settle, "settling the job message failed");
    }
}

pub async fn handle(shared: Arc<Shared>, msg: jetstream::Message) {
    let outcome = process(&shared, &msg).await;
    settle(&msg, outcome).await;
}

async fn process(shared: &Shared, msg: &jetstream::Message) -> Settle {
    let Ok(info) = msg.info() else {
        tracing::error!(subject = %msg.subject, "job message without JetStream metadata");
        return Settle::Ack;
    };
    let intake = intake::read(
        &shared.topology,
        &shared.sealer,
        &Incoming::delivered(msg, &info),
    );
    let job_id = intake.request.id;
    let _in_flight = shared.metrics.in_flight(&intake.request.agent);
    let span = tracing::info_span!(
        "job",
        job_id = %job_id,
        agent = %intake.request.agent,
        delivered = info.delivered,
        trace_id = tracing::field::Empty,
        otel.kind = "consumer",
    );
    fleet_shared::trace_context::continue_from(&span, msg.headers.as_ref());
    if let Some(trace_id) = fleet_shared::trace_context::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    run_job(shared, msg, intake, info.delivered)
        .instrument(span)
        .await
}

async fn run_job(
    shared: &Shared,
    msg: &jetstream::Message,
    intake: Intake,
    delivered: i64,
) -> Settle {
    let key = shared.topology.record_key(&intake.request.id);
    if let Some(error) = intake.rejected {
        tracing::info!(code = %error.code, reason = %error.message, "rejecting job");
        let record = JobRecord::failed_without_run(intake.request, error);
        return refuse(shared, &key, record, intake.format).await;
    }
    let Some(agent) = shared.config.agents.get(&intake.request.agent) else {
        // This worker pulls only for agents it has configured; a mismatch means a stale consumer.
        tracing::warn!("no configuration for this agent on this worker; handing the job back");
        return Settle::Retry(Some(Duration::from_secs(1)));
    };
    let (mut queued, queued_revision) = match queued_record(shared, &key, &intake).await {
        Ok(found) => found,
        Err(settle) => return settle,
    };
    if shared.cancels.is_requested(&queued.id, intake.generation) {
        return cancel_before_start(shared, &key, queued, intake.format).await;
    }
    let start = match session_start(shared, &key, &queued, delivered).await {
        Ok(start) => start,
        Err(Unrun::Settled(settle)) => return settle,
        Err(Unrun::Ended(ending)) => {
            return end_unrun(shared, &key, queued, ending, intake.format).await
        }
    };
    if let Some(message) = &start.message {
        if let Err(e) = crate::session::record_message(shared, &key, message).await {
            tracing::warn!(error = %e, "recording the exchange's message failed; retrying later");
            return Settle::Retry(Some(Duration::from_secs(1)));
        }
        queued.request.message = message.clone();
    }
    let registration = shared.cancels.register(queued.id, intake.generation);
    // First deliveries run at once and claim only if they outlive the claim delay; redeliveries (a worker was
    // lost, or handed the job back) claim first, so every attempt that could have died is counted.
    let deferred = delivered <= 1 && !shared.config.worker.claim_delay().is_zero();
    let mut progress = match first_claim(shared, &key, &queued, queued_revision, deferred).await {
        Ok(progress) => progress,
        Err(Refused::Settled(settle)) => return settle,
        Err(Refused::Exhausted(held)) => {
            return record_worker_lost(shared, &key, *held, intake.format).await
        }
    };
    let mut input_files = intake.request.input_files.clone();
    if queued.request.session.is_some() && !agent.kind.is_model() {
        input_files.push(crate::session::history_file(&start.history));
    }
    let job = attempt::Job {
        msg,
        key: &key,
        agent,
        queued: &queued,
        input_files: &input_files,
        start: &start,
        cancel: registration.token.clone(),
    };
    let attempted = attempt::run(shared, &job, &mut progress).await;
    record_attempt(shared, &job, intake.format, progress, attempted).await
}

/// Why a job is ended or handed back without a run.
enum Unrun {
    Settled(Settle),
    Ended(NeverRun),
}

/// How a job that never runs ends.
enum NeverRun {
    /// It must not run (refused): `failed`.
    Refused(JobError),
    /// What it was part of ended first: `cancelled`, saying why.
    Stopped(String),
}

/// What a session's turn starts from, once the turns (and the conversation's exchange) before it have ended.
async fn session_start(
    shared: &Shared,
    key: &str,
    queued: &JobRecord,
    delivered: i64,
) -> Result<crate::session::Start, Unrun> {
    use crate::session::Gate;
    let Some(turn) = queued.request.session else {
        if queued.request.conversation.is_some() {
            let why =
                "a conversation's exchange is always a session's turn, which only a gateway gives";
            let error = JobError::new(ErrorCode::InvalidJob, why);
            return Err(Unrun::Ended(NeverRun::Refused(error)));
        }
        return Ok(crate::session::Start::default());
    };
    match crate::session::gate(shared, &queued.request, &turn, delivered).await {
        Ok(Gate::Go(start)) => Ok(*start),
        Ok(Gate::Wait(delay, why)) => {
            crate::session::mark_waiting(shared, key, why).await;
            Err(Unrun::Settled(Settle::Retry(Some(delay))))
        }
        Ok(Gate::Refuse(why)) => {
            tracing::warn!(reason = %why, "refusing a session turn");
            let error = JobError::new(ErrorCode::InvalidJob, why);
            Err(Unrun::Ended(NeverRun::Refused(error)))
        }
        Ok(Gate::Stop(why)) => {
            tracing::info!(reason = %why, "not running a conversation's exchange");
            Err(Unrun::Ended(NeverRun::Stopped(why)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the job's session failed; retrying later");
            Err(Unrun::Settled(Settle::Retry(Some(Duration::from_secs(1)))))
        }
    }
}

/// The job's `queued` record and the revision a claim must expect: the gateway's (named in the message), or for a
/// retry the stored one, which carries the history of earlier runs. `Err`: the message is settled without a run
/// (a stale retry, a direct publish reusing an id, NATS unreachable).
async fn queued_record(
    shared: &Shared,
    key: &str,
    intake: &Intake,
) -> Result<(JobRecord, Option<u64>), Settle> {
    // Records keep input names and sizes; the content is written from the message into the workspace.
    let queued = JobRecord::queued(intake.request.without_inline_data());
    if intake.generation == 0 {
        if intake.queued_revision.is_none() {
            if let Some(settle) = check_direct_publish(shared, key, &queued, intake.format).await {
                return Err(settle);
            }
        }
        return Ok((queued, intake.queued_revision));
    }
    match records::current(&shared.records, key).await {
        Ok(Some(held)) if held.record.generation() == intake.generation => {
            if held.record.status.is_terminal() {
                return Err(Settle::Ack);
            }
            Ok((held.record, held.revision))
        }
        Ok(_) => {
            tracing::info!(
                "a stale retry message (the job was retried again or has ended); skipping"
            );
            Err(Settle::Ack)
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the retried job's record failed; retrying later");
            Err(Settle::Retry(Some(Duration::from_millis(500))))
        }
    }
}

/// Why a job is not run after all.
enum Refused {
    Settled(Settle),
    /// Its workers were lost on every attempt: record that.
    Exhausted(Box<Held>),
}

/// The attempt's starting point: unclaimed (a deferred claim) or claimed now.
async fn first_claim(
    shared: &Shared,
    key: &str,
    queued: &JobRecord,
    queued_revision: Option<u64>,
    deferred: bool,
) -> Result<Progress, Refused> {
    let (held, claim) = if deferred {
        let held = records::unclaimed(queued.clone(), queued_revision, &shared.worker_id);
        (held, ClaimState::Deferred)
    } else {
        match attempt::claim(shared, key, queued, queued_revision, Utc::now()).await {
            Ok(Claim::Claimed(held)) => (held, ClaimState::Claimed),
            Ok(Claim::AlreadyTerminal) => {
                tracing::info!("job already has a terminal record; skipping");
                return Err(Refused::Settled(Settle::Ack));
            }
            Ok(Claim::Exhausted(held)) => return Err(Refused::Exhausted(Box::new(held))),
            Err(e) => {
                tracing::warn!(error = %e, "claiming the job failed; handing it back");
                return Err(Refused::Settled(Settle::Retry(Some(
                    Duration::from_millis(500),
                ))));
            }
        }
    };
    Ok(Progress {
        held,
        claim,
        output_sent: false,
    })
}

/// Records how the attempt ended: dropped (superseded), handed back (the worker stops), or the job's end.
async fn record_attempt(
    shared: &Shared,
    job: &attempt::Job<'_>,
    format: Format,
    progress: Progress,
    attempted: attempt::Attempted,
) -> Settle {
    let Progress {
        held,
        claim,
        output_sent,
    } = progress;
    if claim == ClaimState::Superseded {
        tracing::info!("another writer ended this job while it ran here; our run is dropped");
        return Settle::Ack;
    }
    let record = match attempted {
        Ok((outcome, _)) if outcome.killed == Some(KillReason::Requested) => {
            let claimed = (claim == ClaimState::Claimed).then_some(&held);
            return hand_back(shared, job.key, &held.record.request.agent, claimed).await;
        }
        Ok((outcome, kept)) => with_kept(completed_record(&held, &outcome), kept),
        Err(e) => {
            let code = match e {
                SpawnError::Input(_) => ErrorCode::InvalidJob,
                SpawnError::SessionWorkspace(_) => ErrorCode::WorkspaceUnavailable,
                _ => ErrorCode::SpawnFailed,
            };
            let error = JobError::new(code, e.to_string());
            return write_and_announce(
                shared,
                job.key,
                held.record.failed(error),
                held.revision,
                format,
                false,
                Some(&job.start.seen),
            )
            .await;
        }
    };
    // Recording waits out NATS outages: keep the message ours meanwhile.
    let seen = Some(&job.start.seen);
    let recording = write_and_announce(
        shared,
        job.key,
        record,
        held.revision,
        format,
        output_sent,
        seen,
    );
    attempt::with_heartbeat(job.msg, shared.config.queue.ack_wait(), pin!(recording)).await
}

/// The ended run's record with what it kept: failed if its files or its session's workspace could not be kept.
fn with_kept(record: JobRecord, kept: attempt::Kept) -> JobRecord {
    use crate::session_workspace::SaveError;
    let record = with_files(record, kept.files);
    let (code, why) = match kept.workspace {
        None => return record,
        Some(Ok(state)) => {
            return JobRecord {
                session_workspace: state,
                ..record
            }
        }
        Some(Err(SaveError::TooLarge(why))) => (ErrorCode::WorkspaceTooLarge, why),
        Some(Err(e @ SaveError::Store(_))) => (ErrorCode::WorkspaceUnavailable, e.to_string()),
    };
    tracing::warn!(code = code.as_str(), reason = %why, "the session's workspace was not saved");
    if record
        .error
        .as_ref()
        .is_some_and(|e| e.code == ErrorCode::ArtifactUploadFailed)
    {
        return record;
    }
    record.not_kept(JobError::new(code, why))
}

/// The ended run's record with the files it stored, or failed if they could not all be stored.
fn with_files(mut record: JobRecord, stored: Option<attempt::Stored>) -> JobRecord {
    match stored {
        Some(Ok((target_id, c))) => {
            if !(c.files.is_empty() && c.logs.is_empty()) {
                record.artifact_store = Some(target_id);
            }
            record.files = c.files;
            record.skipped_files = c.skipped;
            record.skipped_files_omitted = c.skipped_omitted;
            record.logs = c.logs;
            record
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "storing the job's files failed");
            record.files_not_stored(e.to_string())
        }
        None => record,
    }
}

/// Records a message the fleet refuses (it cannot be read as a job) under the id it names, only if no job has
/// that id: a refused message never ends someone else's job. Its publisher is answered either way.
async fn refuse(shared: &Shared, key: &str, record: JobRecord, format: Format) -> Settle {
    let stored = Encoded::new(record);
    match records::create_only(&shared.records, key, &stored).await {
        Ok(true) => {
            shared.metrics.ended(stored.record());
            crate::delivery::announce(&shared.client, &shared.topology, &stored, format, false)
                .await;
            Settle::Ack
        }
        Ok(false) => {
            tracing::warn!("a refused message names an existing job; that job is left alone");
            crate::delivery::reply(&shared.client, stored.record(), format).await;
            Settle::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "recording the refused job failed; retrying later");
            Settle::Retry(Some(Duration::from_millis(500)))
        }
    }
}

/// A message published straight to NATS (no `queued` record of the gateway's) whose id already has a record:
/// the same job delivered again runs on as usual; a record of another request, or one that has ended, is never
/// run again or touched (only `retry` reruns a job), and the publisher is told. `None`: go on and run it.
async fn check_direct_publish(
    shared: &Shared,
    key: &str,
    queued: &JobRecord,
    format: Format,
) -> Option<Settle> {
    let held = match records::current(&shared.records, key).await {
        Ok(held) => held?,
        Err(e) => {
            tracing::warn!(error = %e, "reading the job's record failed; retrying later");
            return Some(Settle::Retry(Some(Duration::from_millis(500))));
        }
    };
    let why = if held.record.request != queued.request {
        "the id belongs to another job"
    } else if held.record.status.is_terminal() {
        "the job has already ended; only a retry runs it again"
    } else {
        return None;
    };
    tracing::warn!(
        reason = why,
        "a published message reuses an existing job id; not run"
    );
    let error = JobError::new(
        ErrorCode::InvalidJob,
        format!("job id {} is taken: {why}", queued.id),
    );
    let answer = JobRecord::failed_without_run(queued.request.clone(), error);
    crate::delivery::reply(&shared.client, &answer, format).await;
    Some(Settle::Ack)
}

/// A job that never runs: recorded as `ending` says unless it already ended; a message naming no job of a
/// gateway's is recorded only under an id no job has.
async fn end_unrun(
    shared: &Shared,
    key: &str,
    queued: JobRecord,
    ending: NeverRun,
    format: Format,
) -> Settle {
    let end = |record: JobRecord| match &ending {
        NeverRun::Refused(error) => record.failed(error.clone()),
        NeverRun::Stopped(why) => record.stopped_before_start(why.clone()),
    };
    match records::current(&shared.records, key).await {
        Ok(Some(held)) if held.record.status.is_terminal() => Settle::Ack,
        Ok(Some(held)) => {
            let record = end(held.record);
            write_and_announce(shared, key, record, held.revision, format, false, None).await
        }
        Ok(None) => {
            let record = match ending {
                NeverRun::Refused(error) => JobRecord::failed_without_run(queued.request, error),
                NeverRun::Stopped(_) => end(queued),
            };
            refuse(shared, key, record, format).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the job's record failed; retrying later");
            Settle::Retry(Some(Duration::from_millis(500)))
        }
    }
}

/// A job cancelled before it started here: record it `cancelled` unless it already has a terminal record (the
/// gateway ends queued jobs itself), and never run it.
async fn cancel_before_start(
    shared: &Shared,
    key: &str,
    queued: JobRecord,
    format: Format,
) -> Settle {
    let held = match records::current(&shared.records, key).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "reading the cancelled job's record failed; retrying later");
            return Settle::Retry(Some(Duration::from_millis(500)));
        }
    };
    if held.as_ref().is_some_and(|h| h.record.status.is_terminal()) {
        return Settle::Ack;
    }
    let revision = held.as_ref().and_then(|h| h.revision);
    let record = held.map_or(queued, |h| h.record).cancelled_before_start();
    tracing::info!("job cancelled before it started");
    write_and_announce(shared, key, record, revision, format, false, None).await
}

async fn record_worker_lost(shared: &Shared, key: &str, held: Held, format: Format) -> Settle {
    let record = held.record.worker_lost();
    tracing::warn!(
        attempts = record.attempt,
        "attempts exhausted; recording worker_lost"
    );
    write_and_announce(shared, key, record, held.revision, format, false, None).await
}

/// Gives a job this worker must stop back to the queue; resets the record only if this worker claimed it.
async fn hand_back(shared: &Shared, key: &str, agent: &str, claimed: Option<&Held>) -> Settle {
    tracing::info!("worker shutting down; handing the job back to the queue");
    shared.metrics.handed_back(agent, "shutdown");
    let Some(held) = claimed else {
        return Settle::Retry(None);
    };
    if let Err(e) = records::requeue(&shared.records, key, held).await {
        tracing::warn!(error = %e, "resetting the record to queued failed; the next claim takes it over anyway");
    }
    Settle::Retry(None)
}

fn completed_record(held: &Held, outcome: &RunOutcome) -> JobRecord {
    let stop = match outcome.killed {
        Some(KillReason::Cancelled) => Some(Stop::Cancelled),
        // Ended by us for a timeout: not a limit of its own.
        Some(KillReason::Timeout) => Some(Stop::Timeout),
        Some(KillReason::Requested) => None,
        None => outcome.limit.map(Stop::Limit),
    };
    let exit = match outcome.ending {
        Ending::Exited(code) => Exit::Code(code),
        Ending::Signaled(sig) => Exit::Signal(sig),
        Ending::NoProcess => Exit::NoProcess,
    };
    let mut record = match (&outcome.report.refused, stop) {
        (Some(why), None) => held.record.clone().model_refused(why.clone()),
        _ => held.record.clone().run_ended(RunEnd { exit, stop }),
    };
    outcome.report.apply(&mut record);
    record.stdout = outcome.stdout.lossy_text();
    record.stderr = outcome.stderr.lossy_text();
    record.stdout_bytes = outcome.stdout.total;
    record.stderr_bytes = outcome.stderr.total;
    record.stdout_truncated_bytes = outcome.stdout.truncated_bytes();
    record.stderr_truncated_bytes = outcome.stderr.truncated_bytes();
    record.resources = Some(outcome.resources.clone());
    record
}

/// Writes the terminal record unless the job already has one (`expected`: the revision last seen, if any),
/// and announces it only when ours is the job's terminal record; `seen`: a session turn's entries as its gate
/// read them.
async fn write_and_announce(
    shared: &Shared,
    key: &str,
    record: JobRecord,
    revision: Option<u64>,
    format: Format,
    output_sent: bool,
    seen: Option<&fleet_shared::session::Seen>,
) -> Settle {
    let stored = crate::fit::fit(record, attempt::record_limit(shared));
    let record = stored.record();
    let recording = records::finish(
        &shared.records,
        key,
        revision,
        &stored,
        &shared.kill_running,
    )
    .instrument(tracing::info_span!(
        "record",
        status = record.status.as_str()
    ));
    match recording.await {
        Ok(Finish::Written) => {
            tracing::info!(status = record.status.as_str(), "job finished");
            shared.metrics.ended(record);
            crate::session::turn_ended(shared, record, seen).await;
            crate::delivery::announce(
                &shared.client,
                &shared.topology,
                &stored,
                format,
                output_sent,
            )
            .instrument(tracing::info_span!("reply"))
            .await;
            Settle::Ack
        }
        Ok(Finish::AlreadyTerminal) => {
            tracing::info!("another writer recorded this job's end first; our result is dropped");
            Settle::Ack
        }
        Err(e) => {
            tracing::error!(error = %e, "could not record the result before shutdown; the job will run again");
            Settle::Retry(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn taking two arguments returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_job_in_flight_holds_each_driven_future_once() {
        // Every job in flight holds this state, moved into the task's allocation when it starts. Taking a future by
        // value and pinning it again (the agent's run held three times over) made it 55 KB in release builds.
        let size = future_size(handle);
        println!("job future: {size} bytes");
        assert!(size <= 40 * 1024, "a job's future is {size} bytes");
    }
}
