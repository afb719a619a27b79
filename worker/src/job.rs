//! Handling one job message from claim to ack: read it, claim the record, run the agent while keeping the
//! message alive with in-progress acks, write the terminal record, announce it, and settle the message.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use fleet_shared::codec::Format;
use fleet_shared::lifecycle::{Exit, RunEnd, Stop};
use fleet_shared::{ErrorCode, JobError, JobRecord};
use tracing::Instrument;

use crate::agent::run_spec;
use crate::artifacts;
use crate::events::Events;
use crate::intake::{self, Incoming, Intake};
use crate::supervisor::{self, Ending, KillReason, RunOutcome, SpawnError};
use crate::Shared;
use fleet_shared::record_store::{self as records, Claim, Finish, Held};

/// What becomes of a job message. The only place that decides ack, nak or term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The job has its terminal record.
    Ack,
    /// Not finished here; hand it to another worker (after the delay).
    Retry(Option<Duration>),
}

async fn settle(msg: &jetstream::Message, settle: Settle) {
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
        &Incoming {
            subject: msg.subject.as_str(),
            payload: &msg.payload,
            headers: msg.headers.as_ref(),
            stream_sequence: info.stream_sequence,
            published: intake::from_offset(info.published),
        },
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
    // Records keep input names and sizes; the content is written from the message into the workspace.
    let mut queued = JobRecord::queued(intake.request.without_inline_data());
    let mut queued_revision = intake.queued_revision;
    let input_files = intake.request.input_files;
    if intake.generation > 0 {
        // A retry: its record carries the history of earlier runs, which the message does not.
        match records::current(&shared.records, &key).await {
            Ok(Some(held)) if held.record.generation() == intake.generation => {
                if held.record.status.is_terminal() {
                    return Settle::Ack;
                }
                queued = held.record;
                queued_revision = held.revision;
            }
            Ok(_) => {
                tracing::info!(
                    "a stale retry message (the job was retried again or has ended); skipping"
                );
                return Settle::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the retried job's record failed; retrying later");
                return Settle::Retry(Some(Duration::from_millis(500)));
            }
        }
    }
    if intake.queued_revision.is_none() && intake.generation == 0 {
        if let Some(settle) = check_direct_publish(shared, &key, &queued, intake.format).await {
            return settle;
        }
    }
    if shared.cancels.is_requested(&queued.id, intake.generation) {
        return cancel_before_start(shared, &key, queued, intake.format).await;
    }
    let registration = shared.cancels.register(queued.id, intake.generation);
    // First deliveries run at once and claim only if they outlive the claim delay; redeliveries (a worker was
    // lost, or handed the job back) claim first, so every attempt that could have died is counted.
    let deferred = delivered <= 1 && !shared.config.worker.claim_delay().is_zero();
    let mut held = if deferred {
        records::unclaimed(queued.clone(), queued_revision, &shared.worker_id)
    } else {
        match claim(shared, &key, &queued, queued_revision, Utc::now()).await {
            Ok(Claim::Claimed(held)) => held,
            Ok(Claim::AlreadyTerminal) => {
                tracing::info!("job already has a terminal record; skipping");
                return Settle::Ack;
            }
            Ok(Claim::Exhausted(held)) => {
                return record_worker_lost(shared, &key, held, intake.format).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming the job failed; handing it back");
                return Settle::Retry(Some(Duration::from_millis(500)));
            }
        }
    };
    let mut claimed = !deferred;

    let stop = shared.kill_running.child_token();
    let mut superseded = false;
    let mut output_sent = false;
    let result = match shared.dirs.take(&held.record) {
        Ok(mut dirs) => 'run: {
            let target = held.record.request.artifact_target.as_deref();
            let (target_id, store) = match shared.stores.for_job(target) {
                Ok(found) => found,
                Err(e) => {
                    shared.dirs.give_back(dirs);
                    break 'run Err(SpawnError::Input(e.to_string()));
                }
            };
            let writing = artifacts::write_inputs(
                &shared.stores,
                &shared.records,
                &input_files,
                &dirs.workspace,
            );
            let inputs = match writing.await {
                Ok(inputs) => inputs,
                Err(why) => {
                    dirs.mark_dirty();
                    shared.dirs.give_back(dirs);
                    break 'run Err(SpawnError::Input(why));
                }
            };
            let (_uid, sandbox) = match confine(shared, agent) {
                Ok(confined) => confined,
                Err(source) => {
                    shared.dirs.give_back(dirs);
                    break 'run Err(SpawnError::Start {
                        program: agent.command.first().cloned().unwrap_or_default(),
                        source,
                    });
                }
            };
            let config = &shared.config;
            let mut spec = run_spec(
                &held.record,
                agent,
                &config.worker,
                &config.artifacts,
                &dirs,
                sandbox,
            );
            spec.cancel = registration.token.clone();
            spec.output_cap =
                crate::fit::output_cap(&held.record, spec.output_cap, record_limit(shared));
            let job_events = Events::new(
                &shared.client,
                &shared.topology,
                &queued.id,
                held.record.attempt.max(1),
                &shared.worker_id,
                shared.config.queue.events_output_bytes,
                shared.config.worker.output_cap_bytes,
            );
            let job_events = Arc::new(job_events);
            if claimed {
                job_events.go_live().await;
            }
            spec.events = Some(job_events.clone());
            shared.metrics.run_started(&held.record);
            let cgroup = job_cgroup(shared, &sandbox);
            let run = supervisor::run(spec, stop.clone(), cgroup.as_ref())
                .instrument(tracing::info_span!("run"));
            let watch = Watch {
                msg,
                key: &key,
                queued: &queued,
                stop: &stop,
                events: &job_events,
            };
            let r = supervise(shared, watch, run, &mut held, &mut claimed, &mut superseded).await;
            // Directories handed to another user are not reused.
            if sandbox.user.is_some()
                || r.as_ref()
                    .map_or(true, |o| o.stdout.logged || o.stderr.logged)
            {
                dirs.mark_dirty();
            }
            let collected = match &r {
                Ok(outcome) if outcome.killed != Some(KillReason::Requested) && !superseded => {
                    let limits = &shared.config.artifacts;
                    let storing =
                        artifacts::collect(&store, limits, &held.record, &dirs, &inputs, outcome);
                    let storing =
                        storing.instrument(tracing::info_span!("store_files", target = %target_id));
                    let stored = with_heartbeat(msg, shared.config.queue.ack_wait(), storing).await;
                    match &stored {
                        Ok(c) => {
                            let all = c.files.iter().chain(&c.logs);
                            let bytes = all.clone().map(|f| f.size).sum();
                            shared.metrics.stored(&target_id, all.count(), bytes);
                            for file in &c.files {
                                job_events.stored(file).await;
                            }
                        }
                        Err(_) => shared.metrics.upload_failed(&target_id),
                    }
                    Some(stored.map(|c| (target_id, c)))
                }
                _ => None,
            };
            shared.dirs.give_back(dirs);
            output_sent = job_events.is_live();
            r.map(|outcome| (outcome, collected))
        }
        Err(e) => Err(SpawnError::Workspace(e)),
    };
    if superseded {
        tracing::info!("another writer ended this job while it ran here; our run is dropped");
        return Settle::Ack;
    }
    match result {
        Ok((outcome, _)) if outcome.killed == Some(KillReason::Requested) => {
            hand_back(
                shared,
                &key,
                &held.record.request.agent,
                claimed.then_some(&held),
            )
            .await
        }
        Ok((outcome, collected)) => {
            let mut record = completed_record(&held, &outcome);
            match collected {
                Some(Ok((target_id, c))) => {
                    if !(c.files.is_empty() && c.logs.is_empty()) {
                        record.artifact_store = Some(target_id);
                    }
                    record.files = c.files;
                    record.skipped_files = c.skipped;
                    record.skipped_files_omitted = c.skipped_omitted;
                    record.logs = c.logs;
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "storing the job's files failed");
                    record = record.files_not_stored(e.to_string());
                }
                None => {}
            }
            // Recording waits out NATS outages: keep the message ours meanwhile.
            let recording = write_and_announce(
                shared,
                &key,
                record,
                held.revision,
                intake.format,
                output_sent,
            );
            with_heartbeat(msg, shared.config.queue.ack_wait(), recording).await
        }
        Err(e) => {
            let code = match e {
                SpawnError::Input(_) => ErrorCode::InvalidJob,
                _ => ErrorCode::SpawnFailed,
            };
            let record = held
                .record
                .clone()
                .failed(JobError::new(code, e.to_string()));
            write_and_announce(shared, &key, record, held.revision, intake.format, false).await
        }
    }
}

/// Records a message the fleet refuses (it cannot be read as a job) under the id it names, only if no job has
/// that id: a refused message never ends someone else's job. Its publisher is answered either way.
async fn refuse(shared: &Shared, key: &str, record: JobRecord, format: Format) -> Settle {
    match records::create_only(&shared.records, key, &record).await {
        Ok(true) => {
            shared.metrics.ended(&record);
            crate::delivery::announce(&shared.client, &shared.topology, &record, format, false)
                .await;
            Settle::Ack
        }
        Ok(false) => {
            tracing::warn!("a refused message names an existing job; that job is left alone");
            crate::delivery::reply(&shared.client, &record, format).await;
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

/// The job's confinement, with the uid it holds from its agent's `run_as` range while it runs.
fn confine<'a>(
    shared: &'a Shared,
    agent: &fleet_shared::config::AgentConfig,
) -> std::io::Result<(
    Option<crate::sandbox::UidLease<'a>>,
    crate::sandbox::Sandbox,
)> {
    let uid = agent
        .run_as_range()
        .map(|range| shared.uids.lease(range))
        .transpose()?;
    let sandbox = crate::sandbox::Sandbox::for_agent(agent, uid.as_ref().map(|l| l.uid))?;
    Ok((uid, sandbox))
}

/// A cgroup for a confined job (joining one costs about half a spawn, see cgroup.rs); none where there is none.
fn job_cgroup<'a>(
    shared: &'a Shared,
    sandbox: &crate::sandbox::Sandbox,
) -> Option<crate::cgroup::JobCgroup<'a>> {
    let cgroups = shared.cgroups.as_ref().filter(|_| !sandbox.is_empty())?;
    cgroups
        .lease()
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot make the job's cgroup; it runs without one"),
        )
        .ok()
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
    write_and_announce(shared, key, record, revision, format, false).await
}

async fn claim(
    shared: &Shared,
    key: &str,
    queued: &JobRecord,
    queued_revision: Option<u64>,
    started_at: chrono::DateTime<Utc>,
) -> Result<Claim, records::RecordError> {
    let claim = records::claim(
        &shared.records,
        key,
        queued.clone(),
        queued_revision,
        &shared.worker_id,
        shared.config.queue.max_attempts,
        started_at,
    )
    .instrument(tracing::info_span!("claim"))
    .await;
    if let Ok(Claim::Claimed(held)) = &claim {
        tracing::info!(attempt = held.record.attempt, "job claimed");
    }
    claim
}

async fn record_worker_lost(shared: &Shared, key: &str, held: Held, format: Format) -> Settle {
    let record = held.record.worker_lost();
    tracing::warn!(
        attempts = record.attempt,
        "attempts exhausted; recording worker_lost"
    );
    write_and_announce(shared, key, record, held.revision, format, false).await
}

/// What `supervise` needs to know about the job besides its run.
struct Watch<'a> {
    msg: &'a jetstream::Message,
    key: &'a str,
    queued: &'a JobRecord,
    /// Stops the run when another writer has already ended the job.
    stop: &'a tokio_util::sync::CancellationToken,
    /// Deferred like the claim: published once the job outlives the claim delay.
    events: &'a Events,
}

/// Drives the run to its end while keeping the message alive with in-progress acks and, for a deferred claim,
/// claiming the job once it has run for the claim delay. Sets `superseded` (and stops the run) when the claim
/// finds the job already ended.
async fn supervise<T>(
    shared: &Shared,
    watch: Watch<'_>,
    run: impl Future<Output = T>,
    held: &mut Held,
    claimed: &mut bool,
    superseded: &mut bool,
) -> T {
    let run = with_heartbeat(watch.msg, shared.config.queue.ack_wait(), run);
    let claim_at = tokio::time::sleep(shared.config.worker.claim_delay());
    tokio::pin!(run, claim_at);
    loop {
        tokio::select! {
            biased;
            out = &mut run => return out,
            _ = &mut claim_at, if !*claimed => {
                *claimed = true;
                watch.events.go_live().await;
                // The agent started when the run did, not now: the record keeps that time.
                let started_at = held.record.started_at.unwrap_or_else(Utc::now);
                match claim(shared, watch.key, watch.queued, held.revision, started_at).await {
                    Ok(Claim::Claimed(h)) => *held = h,
                    Ok(Claim::AlreadyTerminal) => {
                        *superseded = true;
                        watch.stop.cancel();
                    }
                    // The last holder is gone and we are running it now: our result will end the job.
                    Ok(Claim::Exhausted(_)) => {}
                    // NATS is away: run on; the terminal write waits for it.
                    Err(e) => tracing::warn!(error = %e, "claiming the running job failed; it runs on unclaimed"),
                }
            }
        }
    }
}

/// Drives `work` while sending in-progress acks every third of the ack wait, so JetStream does not hand the
/// message to another worker while this one is still running, storing or recording the job.
async fn with_heartbeat<T>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = beat.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
        }
    }
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
    };
    let mut record = held.record.clone().run_ended(RunEnd { exit, stop });
    record.stdout = outcome.stdout.lossy_text();
    record.stderr = outcome.stderr.lossy_text();
    record.stdout_bytes = outcome.stdout.total;
    record.stderr_bytes = outcome.stderr.total;
    record.stdout_truncated_bytes = outcome.stdout.truncated_bytes();
    record.stderr_truncated_bytes = outcome.stderr.truncated_bytes();
    record.resources = Some(outcome.resources.clone());
    record
}

/// The largest record NATS takes (its message size, less room for headers).
fn record_limit(shared: &Shared) -> usize {
    shared
        .client
        .server_info()
        .max_payload
        .saturating_sub(crate::fit::HEADER_ROOM)
}

/// Writes the terminal record unless the job already has one (`expected`: the revision last seen, if any),
/// and announces it only when ours is the job's terminal record.
async fn write_and_announce(
    shared: &Shared,
    key: &str,
    record: JobRecord,
    revision: Option<u64>,
    format: Format,
    output_sent: bool,
) -> Settle {
    let mut record = record;
    crate::fit::fit(&mut record, record_limit(shared));
    let recording = records::finish(
        &shared.records,
        key,
        revision,
        &record,
        &shared.kill_running,
    )
    .instrument(tracing::info_span!(
        "record",
        status = record.status.as_str()
    ));
    match recording.await {
        Ok(Finish::Written) => {
            tracing::info!(status = record.status.as_str(), "job finished");
            shared.metrics.ended(&record);
            crate::delivery::announce(
                &shared.client,
                &shared.topology,
                &record,
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
