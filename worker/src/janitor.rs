//! Fails jobs published for an agent no worker runs. A job on `jobs.<agent>` with no `agent-<agent>` consumer
//! would otherwise wait forever; after a grace period (a worker for it may just be starting) it gets a `failed`
//! record with `unknown_agent` and a reply, and its message is removed. Safe on many workers at once: the
//! record write is a compare-and-set and removing a message twice is harmless.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_shared::{ErrorCode, JobError, JobRecord};
use futures::TryStreamExt;

use crate::intake::{self, Incoming};
use crate::Shared;
use fleet_shared::record_store::{self as records, Finish};

/// Longest run of lookups spent on one subject per sweep: a subject holding wildcard characters matches other
/// subjects' messages as a filter, and those are skipped one lookup each.
const LOOKUPS_PER_SUBJECT: usize = 256;

pub async fn run(shared: Arc<Shared>) {
    let every = (shared.config.worker.unknown_agent_grace() / 4)
        .clamp(Duration::from_millis(250), Duration::from_secs(10));
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            biased;
            _ = shared.stop_pulling.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep(&shared, &mut seen).await {
            tracing::debug!(error = %e, "unknown-agent sweep failed");
        }
    }
}

/// What the janitor remembers between sweeps.
#[derive(Default)]
struct Seen {
    /// Subjects naming no agent, already reported.
    warned: HashSet<String>,
    /// Per subject, the stream sequence the next lookup starts from.
    cursors: HashMap<String, u64>,
}

async fn sweep(shared: &Shared, seen: &mut Seen) -> Result<(), async_nats::Error> {
    let stream = shared.jobs.clone();
    let consumers: HashSet<String> = stream.consumer_names().try_collect().await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(shared.topology.jobs_subject_wildcard())
        .await?
        .try_collect()
        .await?;
    for (subject, count) in subjects {
        if count == 0 {
            continue;
        }
        match shared.topology.agent_of_subject(&subject) {
            Some(agent) if consumers.contains(&shared.topology.agent_consumer(agent)) => {}
            Some(agent) => {
                let agent = agent.to_string();
                let cursor = seen.cursors.entry(subject.clone()).or_insert(1);
                sweep_subject(shared, &subject, cursor, |msg| {
                    fail_unknown_agent(shared, &agent, msg)
                })
                .await?;
            }
            None => {
                if seen.warned.insert(subject.clone()) {
                    tracing::warn!(subject, count, "messages on a jobs subject that names no agent; they are removed, no job is recorded for them");
                }
                let cursor = seen.cursors.entry(subject.clone()).or_insert(1);
                sweep_subject(shared, &subject, cursor, |msg| async move {
                    tracing::warn!(subject = %msg.subject, sequence = msg.sequence, "removed a message that is not a job");
                    Ok(())
                })
                .await?;
            }
        }
    }
    Ok(())
}

/// Handles, then removes, each message stored under exactly `subject` that has waited past the grace period.
/// The lookup treats `subject` as a filter, so every message it returns is checked to be one of `subject`'s own:
/// nothing of another subject is ever touched.
async fn sweep_subject<F, Fut>(
    shared: &Shared,
    subject: &str,
    cursor: &mut u64,
    mut handle: F,
) -> Result<(), async_nats::Error>
where
    F: FnMut(async_nats::jetstream::message::StreamMessage) -> Fut,
    Fut: std::future::Future<Output = Result<(), async_nats::Error>>,
{
    let grace =
        // Validated finite and small at load.
        chrono::Duration::from_std(shared.config.worker.unknown_agent_grace()).unwrap_or_default();
    for _ in 0..LOOKUPS_PER_SUBJECT {
        let Ok(msg) = shared
            .jobs
            .get_first_raw_message_by_subject(subject, *cursor)
            .await
        else {
            // Past the last message: start from the beginning next time.
            *cursor = 1;
            break;
        };
        if msg.subject.as_str() != subject {
            *cursor = msg.sequence + 1;
            continue;
        }
        if Utc::now() - intake::from_offset(msg.time) < grace {
            break;
        }
        *cursor = msg.sequence + 1;
        let sequence = msg.sequence;
        handle(msg).await?;
        // Removing a message twice (another worker's janitor) is harmless.
        let _ = shared.jobs.delete_message(sequence).await;
    }
    Ok(())
}

/// Ends the job of a message for an agent no worker runs: `failed`/`unknown_agent`, unless its id names a job
/// of another agent (left alone) or one that has already ended.
async fn fail_unknown_agent(
    shared: &Shared,
    agent: &str,
    msg: async_nats::jetstream::message::StreamMessage,
) -> Result<(), async_nats::Error> {
    let intake = intake::read(&shared.topology, &shared.sealer, &Incoming::stored(&msg));
    let error = JobError::new(
        ErrorCode::UnknownAgent,
        format!("no worker in the fleet runs agent `{agent}`"),
    );
    let record = JobRecord::failed_without_run(intake.request, error);
    let key = shared.topology.record_key(&record.id);
    let expected = match records::current(&shared.records, &key).await? {
        None => None,
        Some(held) if held.record.status.is_terminal() => return Ok(()),
        Some(held) if held.record.request.agent != agent => {
            tracing::warn!(job_id = %record.id, agent, "a message for an unserved agent names another agent's job; that job is left alone");
            return Ok(());
        }
        Some(held) => held.revision,
    };
    let stored = records::Encoded::new(record);
    let finish = records::finish(
        &shared.records,
        &key,
        expected,
        &stored,
        &shared.kill_running,
    )
    .await?;
    if finish == Finish::Written {
        let record = stored.record();
        tracing::warn!(job_id = %record.id, agent, "failed a job for an agent no worker runs");
        shared.metrics.ended(record);
        crate::delivery::announce(
            &shared.client,
            &shared.topology,
            &stored,
            intake.format,
            false,
        )
        .await;
    }
    Ok(())
}
