//! Registration with the NATS service API: every worker answers `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` for the
//! service `<prefix>-worker`, with its id, host, agents, concurrency, version and start time as metadata, and its
//! jobs in flight in its statistics. Its status endpoint answers the same as JSON.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::{Service, ServiceExt};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::Shared;

pub async fn register(
    shared: &Arc<Shared>,
    slots: Arc<Semaphore>,
) -> Result<Service, async_nats::Error> {
    let max = shared.config.worker.max_concurrent;
    let metadata = HashMap::from([
        ("worker_id".to_string(), shared.worker_id.clone()),
        ("host".to_string(), crate::host_name()),
        (
            "agents".to_string(),
            shared.config.worker_agents().join(","),
        ),
        ("max_concurrent".to_string(), max.to_string()),
        ("started_at".to_string(), chrono::Utc::now().to_rfc3339()),
    ]);
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
        .stats_handler(move |_, _| serde_json::json!({ "in_flight": stats_in_flight() }))
        .start(shared.topology.worker_service(), env!("CARGO_PKG_VERSION"))
        .await?;
    let mut status = service
        .endpoint(shared.topology.worker_status_subject(&shared.worker_id))
        .await?;
    let worker_id = shared.worker_id.clone();
    tokio::spawn(async move {
        while let Some(request) = status.next().await {
            let body = serde_json::json!({"worker_id": worker_id, "in_flight": in_flight(), "max_concurrent": max});
            let _ = request.respond(Ok(body.to_string().into())).await;
        }
    });
    Ok(service)
}
