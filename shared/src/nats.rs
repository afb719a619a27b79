//! Connecting to NATS the same way from every process: named connection, reconnect forever.

use std::time::Duration;

use crate::config::NatsConfig;

pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        // A worker or gateway outlives NATS restarts: keep trying, and start even if NATS comes up later.
        .max_reconnects(None)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        })
        .connect(cfg.urls())
        .await
}

/// Publishes one of a job's events on its events subject (a core publish; the events stream keeps it).
pub async fn publish_event(
    client: &async_nats::Client,
    topology: &crate::Topology,
    job_id: &uuid::Uuid,
    event: &crate::wire::JobEvent,
) {
    let payload = crate::codec::to_msgpack(event);
    if let Err(e) = client
        .publish(topology.events_subject(job_id), payload.into())
        .await
    {
        tracing::debug!(job_id = %job_id, error = %e, "publishing a job event failed");
    }
}
