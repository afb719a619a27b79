//! Which agents the fleet runs: exactly those with a durable consumer on the jobs stream (workers create one per
//! agent they serve, carrying its description and kind in the consumer's metadata). Known names and their kinds
//! are cached briefly; an unknown name is always checked against NATS, so a newly started worker is seen at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use fleet_shared::config::AgentKind;
use fleet_shared::services::AgentMetadata;
use fleet_shared::Topology;
use futures::TryStreamExt;
use serde::Serialize;

use crate::http::error::ApiError;

const KNOWN_TTL: Duration = Duration::from_secs(10);

pub struct AgentDirectory {
    jobs: stream::Stream,
    topology: Topology,
    /// Agents seen lately, with their kind: when each was looked up.
    known: Mutex<HashMap<String, (Instant, AgentKind)>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// How the agent runs: `command`, a CLI preset (`claude-code`, `codex`, ...), or a model (`openai`,
    /// `ollama`) that the OpenAI-compatible front door offers.
    pub kind: String,
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs a worker holds right now.
    pub running: u64,
    /// Open pull requests: a sign of idle workers for this agent.
    pub waiting_pulls: u64,
    /// Held jobs that were delivered more than once (a worker was lost or handed them back).
    pub redelivered: u64,
}

impl AgentDirectory {
    pub fn new(jobs: stream::Stream, topology: Topology) -> Self {
        Self {
            jobs,
            topology,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub async fn exists(&self, agent: &str) -> Result<bool, ApiError> {
        Ok(self.kind(agent).await?.is_some())
    }

    /// How the agent runs, if the fleet runs it.
    pub async fn kind(&self, agent: &str) -> Result<Option<AgentKind>, ApiError> {
        if let Ok(known) = self.known.lock() {
            if let Some((at, kind)) = known.get(agent) {
                if at.elapsed() < KNOWN_TTL {
                    return Ok(Some(*kind));
                }
            }
        }
        Ok(self.metadata(agent).await?.map(|meta| meta.kind))
    }

    /// The metadata of the agent's consumer, if it has one; a name found is remembered as known.
    async fn metadata(&self, agent: &str) -> Result<Option<AgentMetadata>, ApiError> {
        match self
            .jobs
            .consumer_info(self.topology.agent_consumer(agent))
            .await
        {
            Ok(info) => {
                let metadata = AgentMetadata::from_map(&info.config.metadata);
                if let Ok(mut known) = self.known.lock() {
                    known.insert(agent.to_string(), (Instant::now(), metadata.kind));
                }
                Ok(Some(metadata))
            }
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(ApiError::unavailable("looking up the agent failed", e)),
        }
    }

    pub async fn list(&self) -> Result<Vec<AgentInfo>, ApiError> {
        let mut infos: Vec<_> = self
            .jobs
            .consumers()
            .try_collect()
            .await
            .map_err(|e| ApiError::unavailable("listing agents failed", e))?;
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos
            .into_iter()
            .filter_map(|info| {
                let name = self.topology.agent_of_consumer(&info.name)?.to_string();
                let meta = AgentMetadata::from_map(&info.config.metadata);
                Some(AgentInfo {
                    description: meta.description,
                    timeout_secs: meta.timeout_secs,
                    kind: meta.kind.as_str().to_string(),
                    queued: info.num_pending,
                    running: info.num_ack_pending as u64,
                    waiting_pulls: info.num_waiting as u64,
                    redelivered: info.num_redelivered as u64,
                    name,
                })
            })
            .collect())
    }
}
