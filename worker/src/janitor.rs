//! Fails jobs published for an agent no worker runs. A job on `jobs.<agent>` with no `agent-<agent>` consumer
//! would otherwise wait forever; after a grace period (a worker for it may just be starting) it gets a `failed`
//! record with `unknown_agent` and a reply, and its message is removed. Safe on many workers at once: the
//! record write is a compare-and-set and removing a message twice is harmless.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_shared::{ErrorCode, JobError, JobRecord};
use futures::TryStreamExt;

use crate::intake::{self, Incoming};
use crate::records::{self, Finish};
use crate::Shared;

pub async fn run(shared: Arc<Shared>) {
    let every = (shared.config.worker.unknown_agent_grace() / 4)
        .clamp(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        tokio::select! {
            biased;
            _ = shared.stop_pulling.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep(&shared).await {
            tracing::debug!(error = %e, "unknown-agent sweep failed");
        }
    }
}

async fn sweep(shared: &Shared) -> Result<(), async_nats::Error> {
    let stream = shared.jobs.clone();
    let consumers: HashSet<String> = stream.consumer_names().try_collect().await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(shared.topology.jobs_subject_wildcard())
        .await?
        .try_collect()
        .await?;
    let grace =
        chrono::Duration::from_std(shared.config.worker.unknown_agent_grace()).unwrap_or_default();
    for (subject, count) in subjects {
        let Some(agent) = shared.topology.agent_of_subject(&subject) else {
            continue;
        };
        if count == 0 || consumers.contains(&shared.topology.agent_consumer(agent)) {
            continue;
        }
        let mut from = 1;
        loop {
            let msg = match stream
                .get_first_raw_message_by_subject(&subject, from)
                .await
            {
                Ok(m) => m,
                Err(_) => break,
            };
            let published = intake::from_offset(msg.time);
            if Utc::now() - published < grace {
                break;
            }
            from = msg.sequence + 1;
            let intake = intake::read(
                &shared.topology,
                &Incoming {
                    subject: msg.subject.as_str(),
                    payload: &msg.payload,
                    headers: Some(&msg.headers),
                    stream_sequence: msg.sequence,
                    published,
                },
            );
            let error = JobError::new(
                ErrorCode::UnknownAgent,
                format!("no worker in the fleet runs agent `{agent}`"),
            );
            let record = JobRecord::failed_without_run(intake.request, error);
            let key = shared.topology.record_key(&record.id);
            let expected = records::current(&shared.records, &key).await?;
            if expected
                .as_ref()
                .is_some_and(|h| h.record.status.is_terminal())
            {
                stream.delete_message(msg.sequence).await.ok();
                continue;
            }
            let finish = records::finish(
                &shared.records,
                &key,
                expected.and_then(|h| h.revision),
                &record,
                &shared.kill_running,
            )
            .await?;
            if finish == Finish::Written {
                tracing::warn!(job_id = %record.id, agent, "failed a job for an agent no worker runs");
                shared.metrics.ended(&record);
                crate::delivery::announce(
                    &shared.client,
                    &shared.topology,
                    &record,
                    intake.format,
                    false,
                )
                .await;
            }
            stream.delete_message(msg.sequence).await.ok();
        }
    }
    Ok(())
}
