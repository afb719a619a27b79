//! The live workers, from the NATS service API: one `$SRV.INFO` and one `$SRV.STATS` request to the worker service,
//! which every registered worker answers; replies are gathered until none has come for a moment.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_shared::services::{ServiceInfo, ServiceStats, WorkerMetadata};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::ApiError;
use crate::state::AppState;

/// How long to wait for the first reply, and for each further one.
const FIRST: Duration = Duration::from_millis(1000);
const QUIET: Duration = Duration::from_millis(150);

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerInfo {
    /// The worker's service instance id (new at every start).
    pub service_id: String,
    pub worker_id: String,
    pub host: String,
    pub agents: Vec<String>,
    pub max_concurrent: Option<u64>,
    /// Jobs running there now.
    pub in_flight: Option<u64>,
    pub version: String,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn list(state: &AppState) -> Result<Vec<WorkerInfo>, ApiError> {
    let (infos, stats) = tokio::join!(
        gather::<ServiceInfo>(state, state.topology.worker_info_subject()),
        gather::<ServiceStats>(state, state.topology.worker_stats_subject()),
    );
    let in_flight: BTreeMap<String, u64> = stats?
        .iter()
        .filter_map(|s| Some((s.id.clone(), s.in_flight()?)))
        .collect();
    let mut workers: Vec<WorkerInfo> = infos?
        .into_iter()
        .map(|info| {
            let meta = WorkerMetadata::from_map(&info.metadata);
            WorkerInfo {
                in_flight: in_flight.get(&info.id).copied(),
                worker_id: meta.worker_id,
                host: meta.host,
                agents: meta.agents,
                max_concurrent: meta.max_concurrent,
                version: info.version,
                started_at: meta.started_at,
                service_id: info.id,
            }
        })
        .collect();
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    Ok(workers)
}

/// The replies to `subject`; one that does not parse (a service of another kind or version) is left out.
async fn gather<T: DeserializeOwned>(
    state: &AppState,
    subject: String,
) -> Result<Vec<T>, ApiError> {
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::unavailable("asking the workers failed", e);
    let inbox = state.client.new_inbox();
    let mut replies = state
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable(&e))?;
    state
        .client
        .publish_with_reply(subject, inbox, bytes::Bytes::new())
        .await
        .map_err(|e| unavailable(&e))?;
    let mut out = Vec::new();
    let mut wait = FIRST;
    while let Ok(Some(msg)) = tokio::time::timeout(wait, replies.next()).await {
        if let Ok(v) = serde_json::from_slice(&msg.payload) {
            out.push(v);
        }
        wait = QUIET;
    }
    Ok(out)
}
