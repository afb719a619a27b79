//! Reading every current job record in one pass (for listing and statistics): an ordered consumer over the
//! jobs bucket's stream delivering the last value of each key.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use fleet_shared::codec::{decode, Format};
use fleet_shared::JobRecord;
use futures::StreamExt;

use crate::http::error::ApiError;
use crate::state::AppState;

/// Upper bound on records read by one scan, so a huge bucket cannot stall a request.
pub const MAX_SCAN: usize = 100_000;

pub async fn each_record(
    state: &AppState,
    mut visit: impl FnMut(JobRecord),
) -> Result<(), ApiError> {
    let unavailable =
        |e: async_nats::Error| ApiError::unavailable("scanning job records failed", e);
    let stream = state
        .js
        .get_stream(state.topology.jobs_bucket_stream())
        .await
        .map_err(|e| unavailable(e.into()))?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::LastPerSubject,
            filter_subject: state.topology.jobs_bucket_subjects(),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(e.into()))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| unavailable(e.into()))?
        .num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(e.into()))?;
    let mut seen = 0usize;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let msg = msg.map_err(|e| unavailable(e.into()))?;
        seen += 1;
        // Delete and purge markers carry no payload.
        if !msg.payload.is_empty() {
            if let Ok(record) = decode::<JobRecord>(&msg.payload, Format::MessagePack) {
                visit(record);
            }
        }
        let remaining = msg.info().map(|i| i.pending).unwrap_or(0);
        if remaining == 0 || seen >= MAX_SCAN {
            break;
        }
    }
    Ok(())
}
