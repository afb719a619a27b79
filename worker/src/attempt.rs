//! One attempt at running a job on this worker: its directories (given back however the attempt ends), its input
//! files, its confinement, the agent's run under supervision (heartbeats, the deferred claim, cancellation) and
//! the files it leaves, stored. What to record afterwards is `job.rs`'s.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use fleet_shared::artifacts::ArtifactStore;
use fleet_shared::config::AgentConfig;
use fleet_shared::record_store::{self as records, Claim, Held};
use fleet_shared::session_workspace::WorkspaceRef;
use fleet_shared::JobRecord;
use tracing::Instrument;

use crate::agent::run_spec;
use crate::artifacts::{self, Collected, Inputs};
use crate::dirs::JobDirs;
use crate::events::Events;
use crate::model;
use crate::session_workspace::{self, Baseline, SaveError};
use crate::supervisor::{self, KillReason, RunOutcome, SpawnError};
use crate::Shared;

/// Where this worker's claim on the job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// Running before its claim: a first delivery, claimed only if it outlives the claim delay.
    Deferred,
    /// Claimed, or its one claim attempt made (a failed attempt runs on unclaimed; the terminal write decides).
    Claimed,
    /// The claim found the job already ended by another writer: this run is dropped.
    Superseded,
}

/// What the attempt has done to the job so far, for the caller to record.
pub struct Progress {
    /// The record this worker holds, with the revision its next write expects.
    pub held: Held,
    pub claim: ClaimState,
    /// Output went out as live events (the end then says so, and listeners need not be sent it again).
    pub output_sent: bool,
}

/// The job being attempted.
pub struct Job<'a> {
    pub msg: &'a jetstream::Message,
    pub key: &'a str,
    pub agent: &'a AgentConfig,
    /// The job's record as it was queued (the claim's starting point).
    pub queued: &'a JobRecord,
    pub input_files: &'a [fleet_shared::wire::InputFile],
    /// What a session's turn starts from (empty for a job outside a session).
    pub start: &'a crate::session::Start,
    /// Cancelled when a cancel request for this run arrives.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// The run's outcome and what of it was kept.
pub type Attempted = Result<(RunOutcome, Kept), SpawnError>;

/// What a run left that was kept: unless it was stopped for the worker's sake or superseded, its files; for a
/// session turn whose agent ended on its own, the session's workspace as saved (`None` inside: nothing to save).
#[derive(Default)]
pub struct Kept {
    pub files: Option<Stored>,
    pub workspace: Option<Result<Option<WorkspaceRef>, SaveError>>,
}

/// The files stored, under the target id that holds them, or why storing failed.
pub type Stored = Result<(String, Collected), fleet_shared::artifacts::StoreError>;

/// Runs the job once: a model agent's question, or the agent's process in fresh directories.
pub async fn run(shared: &Shared, job: &Job<'_>, progress: &mut Progress) -> Attempted {
    if job.agent.kind.is_model() {
        return Ok((ask_model(shared, job, progress).await, Kept::default()));
    }
    run_process(shared, job, progress).await
}

/// Asks a model agent's server the job's question (no process, no workspace, no files), supervised like a run.
async fn ask_model(shared: &Shared, job: &Job<'_>, progress: &mut Progress) -> RunOutcome {
    let events = job_events(shared, job, &progress.held);
    if progress.claim == ClaimState::Claimed {
        events.go_live().await;
    }
    shared.metrics.run_started(&progress.held.record);
    let stop = shared.kill_running.child_token();
    let record = progress.held.record.clone();
    let ask = model::Ask {
        agent: job.agent,
        record: &record,
        history: &job.start.history,
        events: &events,
        timeout: crate::agent::timeout(&record, job.agent, &shared.config.worker),
        cancel: job.cancel.clone(),
        stop: stop.clone(),
        answer_cap: crate::fit::output_cap(
            &record,
            shared.config.worker.output_cap_bytes,
            record_limit(shared),
        ),
    };
    let Some(http) = &shared.models else {
        // Made at start whenever a served agent is a model: a job for one always finds it.
        return model::outcome(model::unasked("the worker has no client for model servers"));
    };
    let asking = model::ask(http, &ask).instrument(tracing::info_span!("ask_model"));
    let answer = supervise(shared, job, &events, &stop, pin!(asking), progress).await;
    progress.output_sent = events.is_live();
    model::outcome(answer)
}

/// Runs the agent's process once in fresh directories, which go back to the pool (or away) however this ends.
async fn run_process(shared: &Shared, job: &Job<'_>, progress: &mut Progress) -> Attempted {
    let session = progress.held.record.request.session;
    let mut dirs = job_dirs(shared, job, &progress.held.record).await?;
    let target = progress.held.record.request.artifact_target.as_deref();
    let (target_id, store) = shared
        .stores
        .for_job(target)
        .map_err(|e| SpawnError::Input(e.to_string()))?;
    let (_uid, sandbox) = confine(shared, job.agent).map_err(|source| SpawnError::Start {
        program: job.agent.command.first().cloned().unwrap_or_default(),
        source,
    })?;
    let baseline = restore_workspace(shared, job, session, &dirs, sandbox.user).await?;
    let writing = artifacts::write_inputs(
        &shared.stores,
        &shared.records,
        job.input_files,
        &dirs.workspace,
    );
    let mut inputs = writing.await.map_err(|why| {
        dirs.mark_dirty();
        SpawnError::Input(why)
    })?;
    for (name, meta) in &baseline.files {
        inputs.insert(name, meta);
    }
    let events = Arc::new(job_events(shared, job, &progress.held));
    let resume = crate::agent::Resume {
        agent_session: job.start.agent_session.as_deref(),
    };
    let mut spec = run_spec(
        &progress.held.record,
        resume,
        job.agent,
        &shared.config.worker,
        &shared.config.artifacts,
        &dirs,
        sandbox,
    );
    spec.cancel = job.cancel.clone();
    spec.output_cap =
        crate::fit::output_cap(&progress.held.record, spec.output_cap, record_limit(shared));
    if progress.claim == ClaimState::Claimed {
        events.go_live().await;
    }
    spec.events = Some(events.clone());
    shared.metrics.run_started(&progress.held.record);
    let stop = shared.kill_running.child_token();
    let cgroup = job_cgroup(shared, &sandbox);
    let running =
        supervisor::run(spec, stop.clone(), cgroup.as_ref()).instrument(tracing::info_span!("run"));
    let ran = supervise(shared, job, &events, &stop, pin!(running), progress).await;
    // Directories handed to another user are not reused, nor are those holding a full log.
    if sandbox.user.is_some()
        || ran
            .as_ref()
            .map_or(true, |o| o.stdout.logged || o.stderr.logged)
    {
        dirs.mark_dirty();
    }
    let kept = match &ran {
        Ok(outcome)
            if outcome.killed != Some(KillReason::Requested)
                && progress.claim != ClaimState::Superseded =>
        {
            let files = Files {
                store: &store,
                target_id,
                dirs: &dirs,
                inputs: &inputs,
            };
            let record = &progress.held.record;
            keep(shared, job, &events, record, files, outcome, &baseline).await
        }
        _ => Kept::default(),
    };
    progress.output_sent = events.is_live();
    ran.map(|outcome| (outcome, kept))
}

/// A session turn's workspace as its session keeps it (nothing for a job outside a session).
async fn restore_workspace(
    shared: &Shared,
    job: &Job<'_>,
    session: Option<fleet_shared::session::SessionTurn>,
    dirs: &JobDirs,
    user: Option<(libc::uid_t, libc::gid_t)>,
) -> Result<Baseline, SpawnError> {
    let Some(st) = session else {
        return Ok(Baseline::default());
    };
    let restoring = session_workspace::restore(
        &shared.session_files,
        &st.session_id,
        job.start.workspace.as_ref(),
        &dirs.workspace,
        user,
    );
    let restored = with_heartbeat(job.msg, shared.config.queue.ack_wait(), pin!(restoring))
        .instrument(tracing::info_span!("restore_workspace"))
        .await;
    restored.map_err(SpawnError::SessionWorkspace)
}

/// Stores the run's files and, for a session turn whose agent ended on its own, saves the workspace; both at once.
async fn keep(
    shared: &Shared,
    job: &Job<'_>,
    events: &Events,
    record: &JobRecord,
    files: Files<'_>,
    outcome: &RunOutcome,
    baseline: &Baseline,
) -> Kept {
    let dirs = files.dirs;
    let storing = files.store(shared, job, events, record, outcome);
    let saving = async {
        let ended_on_its_own = outcome.killed.is_none() && outcome.limit.is_none();
        let st = record.request.session.filter(|_| ended_on_its_own)?;
        Some(save_workspace(shared, job, st, dirs, baseline).await)
    };
    let (files, workspace) = tokio::join!(storing, saving);
    Kept {
        files: Some(files),
        workspace,
    }
}

/// The attempt's directories: fresh ones from the pool, or a session turn's own.
async fn job_dirs<'s>(
    shared: &'s Shared,
    job: &Job<'_>,
    record: &JobRecord,
) -> Result<crate::dirs::Leased<'s>, SpawnError> {
    match record.request.session {
        Some(st) => session_dirs(shared, job, &st.session_id).await,
        None => shared.dirs.take(record).map_err(SpawnError::Workspace),
    }
}

/// A session turn's directories: its session's own path on this machine, waited for while another run of the
/// session here still holds it (a cancelled turn's process ending).
async fn session_dirs<'s>(
    shared: &'s Shared,
    job: &Job<'_>,
    session: &uuid::Uuid,
) -> Result<crate::dirs::Leased<'s>, SpawnError> {
    let waiting = async {
        for _ in 0..600 {
            match shared.dirs.take_session(session) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                taken => return taken.map_err(SpawnError::Workspace),
            }
        }
        Err(SpawnError::SessionWorkspace(
            "another run of this session on this machine kept its workspace for a minute".into(),
        ))
    };
    with_heartbeat(job.msg, shared.config.queue.ack_wait(), pin!(waiting)).await
}

/// Saves the session's workspace as this turn left it, keeping the message alive meanwhile.
async fn save_workspace(
    shared: &Shared,
    job: &Job<'_>,
    st: fleet_shared::session::SessionTurn,
    dirs: &JobDirs,
    baseline: &Baseline,
) -> Result<Option<WorkspaceRef>, SaveError> {
    let limits = &shared.config.artifacts;
    let caps = session_workspace::Caps {
        max_bytes: limits.session_workspace_max_bytes,
        max_files: limits.session_workspace_max_files,
    };
    let saving = session_workspace::save(
        &shared.session_files,
        &st.session_id,
        st.turn,
        &dirs.workspace,
        &dirs.root,
        baseline,
        caps,
    )
    .instrument(tracing::info_span!("save_workspace"));
    with_heartbeat(job.msg, shared.config.queue.ack_wait(), pin!(saving)).await
}

fn job_events(shared: &Shared, job: &Job<'_>, held: &Held) -> Events {
    Events::new(
        &shared.client,
        &shared.topology,
        &job.queued.id,
        held.record.attempt.max(1),
        &shared.worker_id,
        shared.config.queue.events_output_bytes,
        shared.config.worker.output_cap_bytes,
    )
}

/// Where the run's files are and where they go.
struct Files<'a> {
    store: &'a ArtifactStore,
    target_id: String,
    dirs: &'a JobDirs,
    inputs: &'a Inputs,
}

impl Files<'_> {
    /// Stores what the run left, keeping the message alive meanwhile, and announces each stored file.
    async fn store(
        self,
        shared: &Shared,
        job: &Job<'_>,
        events: &Events,
        record: &JobRecord,
        outcome: &RunOutcome,
    ) -> Stored {
        let limits = &shared.config.artifacts;
        let target_id = self.target_id;
        let storing =
            artifacts::collect(self.store, limits, record, self.dirs, self.inputs, outcome)
                .instrument(tracing::info_span!("store_files", target = %target_id));
        let stored = with_heartbeat(job.msg, shared.config.queue.ack_wait(), pin!(storing)).await;
        match &stored {
            Ok(c) => {
                let all = c.files.iter().chain(&c.logs);
                let bytes = all.clone().map(|f| f.size).sum();
                shared.metrics.stored(&target_id, all.count(), bytes);
                for file in &c.files {
                    events.stored(file).await;
                }
            }
            Err(_) => shared.metrics.upload_failed(&target_id),
        }
        stored.map(|c| (target_id, c))
    }
}

/// The largest record NATS takes (its message size, less room for headers).
pub fn record_limit(shared: &Shared) -> usize {
    // Kept by the client as servers tell it, without copying their whole INFO.
    shared
        .client
        .max_payload()
        .saturating_sub(crate::fit::HEADER_ROOM)
}

/// The job's confinement, with the uid it holds from its agent's `run_as` range while it runs.
fn confine<'a>(
    shared: &'a Shared,
    agent: &AgentConfig,
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

/// Claims the job for this worker (a redelivery's first step, or a deferred claim once due).
pub async fn claim(
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

/// Drives the run to its end while keeping the message alive with in-progress acks and, for a deferred claim,
/// claiming the job once it has run for the claim delay. A claim that finds the job already ended marks the
/// attempt superseded and stops the run.
async fn supervise<T>(
    shared: &Shared,
    job: &Job<'_>,
    events: &Events,
    stop: &tokio_util::sync::CancellationToken,
    run: Pin<&mut impl Future<Output = T>>,
    progress: &mut Progress,
) -> T {
    let run = with_heartbeat(job.msg, shared.config.queue.ack_wait(), run);
    let claim_at = tokio::time::sleep(shared.config.worker.claim_delay());
    tokio::pin!(run, claim_at);
    loop {
        tokio::select! {
            biased;
            out = &mut run => return out,
            _ = &mut claim_at, if progress.claim == ClaimState::Deferred => {
                progress.claim = ClaimState::Claimed;
                events.go_live().await;
                // The agent started when the run did, not now: the record keeps that time.
                let held = &progress.held;
                let started_at = held.record.started_at.unwrap_or_else(Utc::now);
                // Boxed: only a job outliving the claim delay gets here, and inline its 8 KB would sit in every job.
                let claiming = Box::pin(claim(shared, job.key, job.queued, held.revision, started_at));
                match claiming.await {
                    Ok(Claim::Claimed(h)) => progress.held = h,
                    Ok(Claim::AlreadyTerminal) => {
                        progress.claim = ClaimState::Superseded;
                        stop.cancel();
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
///
/// `work` comes pinned by the caller (`std::pin::pin!`): taken by value and pinned here, a future lives twice in
/// this one's state (the argument and the pinned copy), and the agent's run is 12 KB, copied on each job.
pub async fn with_heartbeat<F: Future>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    mut work: Pin<&mut F>,
) -> F::Output {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            biased;
            out = work.as_mut() => return out,
            _ = beat.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
        }
    }
}
