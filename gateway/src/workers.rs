//! The live workers, from the NATS service API: one `$SRV.INFO` and one `$SRV.STATS` request to the worker service,
//! which every registered worker answers; replies are gathered until none has come for a moment.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
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
    pub started_at: Option<String>,
}

pub async fn list(state: &AppState) -> Result<Vec<WorkerInfo>, ApiError> {
    let service = state.topology.worker_service();
    let (infos, stats) = tokio::join!(
        gather(state, format!("$SRV.INFO.{service}")),
        gather(state, format!("$SRV.STATS.{service}")),
    );
    let in_flight: BTreeMap<String, u64> = stats?
        .iter()
        .filter_map(|s| {
            let id = s["id"].as_str()?.to_string();
            let n = s["endpoints"]
                .as_array()?
                .iter()
                .find_map(|e| e["data"]["in_flight"].as_u64())?;
            Some((id, n))
        })
        .collect();
    let mut workers: Vec<WorkerInfo> = infos?
        .iter()
        .filter_map(|info| {
            let meta = &info["metadata"];
            let text = |k: &str| meta[k].as_str().map(str::to_string);
            let service_id = info["id"].as_str()?.to_string();
            Some(WorkerInfo {
                in_flight: in_flight.get(&service_id).copied(),
                worker_id: text("worker_id").unwrap_or_default(),
                host: text("host").unwrap_or_default(),
                agents: text("agents")
                    .map(|a| {
                        a.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                max_concurrent: text("max_concurrent").and_then(|m| m.parse().ok()),
                version: info["version"].as_str().unwrap_or_default().to_string(),
                started_at: text("started_at"),
                service_id,
            })
        })
        .collect();
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    Ok(workers)
}

async fn gather(state: &AppState, subject: String) -> Result<Vec<Value>, ApiError> {
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
