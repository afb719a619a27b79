//! Registration with the NATS service API: every worker answers `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` for the
//! service `<prefix>-worker`, with its id, host, agents, concurrency, version and start time as metadata, and its
//! jobs in flight in its statistics. Its status endpoint answers the same as JSON.

use std::sync::Arc;

use async_nats::service::{Service, ServiceExt};
use fleet_shared::services::{WorkerMetadata, WorkerStats, WorkerStatus};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::Shared;

pub async fn register(
    shared: &Arc<Shared>,
    slots: Arc<Semaphore>,
) -> Result<Service, async_nats::Error> {
    let max = shared.config.worker.max_concurrent;
    let metadata = WorkerMetadata {
        worker_id: shared.worker_id.clone(),
        host: crate::host_name(),
        agents: shared.config.worker_agents(),
        max_concurrent: Some(max as u64),
        started_at: Some(chrono::Utc::now()),
    }
    .to_map();
    let in_flight = {
        let slots = slots.clone();
        move || max.saturating_sub(slots.available_permits())
    };
    let stats_in_flight = in_flight.clone();
    let service = shared
        .client
        .service_builder()
        .description("fleet worker")
        .metadata(metadata)
        .stats_handler(move |_, _| {
            let stats = WorkerStats {
                in_flight: stats_in_flight() as u64,
            };
            // A struct of numbers always serializes.
            serde_json::to_value(stats).unwrap_or_default()
        })
        .start(shared.topology.worker_service(), env!("CARGO_PKG_VERSION"))
        .await?;
    let mut status = service
        .endpoint(shared.topology.worker_status_subject(&shared.worker_id))
        .await?;
    let worker_id = shared.worker_id.clone();
    tokio::spawn(async move {
        while let Some(request) = status.next().await {
            let status = WorkerStatus {
                worker_id: worker_id.clone(),
                in_flight: in_flight() as u64,
                max_concurrent: max as u64,
            };
            // Strings and numbers always serialize.
            let body = serde_json::to_vec(&status).unwrap_or_default();
            if let Err(e) = request.respond(Ok(body.into())).await {
                // The asker left (timed out); nothing to redo.
                tracing::debug!(error = %e, "answering a status request failed");
            }
        }
    });
    Ok(service)
}
