//! What workers tell the rest of the fleet about themselves, typed on both sides: the metadata of their NATS
//! service (answered on `$SRV.INFO`), its statistics (`$SRV.STATS`), a worker's status endpoint, and the metadata
//! an agent's consumer carries. NATS keeps metadata as string maps; these types are the only code that reads or
//! writes their keys.

use std::collections::HashMap;

use crate::config::AgentKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A worker's service metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerMetadata {
    pub worker_id: String,
    pub host: String,
    pub agents: Vec<String>,
    pub max_concurrent: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
}

impl WorkerMetadata {
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("worker_id".to_string(), self.worker_id.clone()),
            ("host".to_string(), self.host.clone()),
            ("agents".to_string(), self.agents.join(",")),
        ]);
        if let Some(max) = self.max_concurrent {
            map.insert("max_concurrent".into(), max.to_string());
        }
        if let Some(t) = self.started_at {
            map.insert("started_at".into(), t.to_rfc3339());
        }
        map
    }

    /// Read leniently: a worker of another version may leave keys out.
    pub fn from_map(map: &HashMap<String, String>) -> Self {
        let text = |k: &str| map.get(k).cloned().unwrap_or_default();
        Self {
            worker_id: text("worker_id"),
            host: text("host"),
            agents: text("agents")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            max_concurrent: map.get("max_concurrent").and_then(|m| m.parse().ok()),
            started_at: map
                .get("started_at")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// The part of a `$SRV.INFO` reply the fleet reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceInfo {
    /// The service instance's id (new at every start).
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// The part of a `$SRV.STATS` reply the fleet reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceStats {
    pub id: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointStats>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EndpointStats {
    #[serde(default)]
    pub data: Option<WorkerStats>,
}

/// A worker's statistics, as its stats handler answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Jobs running there now.
    pub in_flight: u64,
}

impl ServiceStats {
    pub fn in_flight(&self) -> Option<u64> {
        self.endpoints
            .iter()
            .find_map(|e| e.data.map(|d| d.in_flight))
    }
}

/// A worker's answer on its status endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker_id: String,
    pub in_flight: u64,
    pub max_concurrent: u64,
}

/// The metadata of an agent's consumer, which the worker serving it declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentMetadata {
    pub description: Option<String>,
    pub timeout_secs: Option<f64>,
    /// How the agent runs (`command`, a CLI preset, `openai`, `ollama`): the front door offers model agents.
    pub kind: AgentKind,
}

impl AgentMetadata {
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::new();
        if let Some(d) = &self.description {
            map.insert("description".to_string(), d.clone());
        }
        if let Some(t) = self.timeout_secs {
            map.insert("timeout_secs".to_string(), t.to_string());
        }
        map.insert("kind".to_string(), self.kind.as_str().to_string());
        map
    }

    pub fn from_map(map: &HashMap<String, String>) -> Self {
        Self {
            description: map.get("description").cloned(),
            timeout_secs: map.get("timeout_secs").and_then(|t| t.parse().ok()),
            // Consumers declared before kinds existed ran commands.
            kind: map
                .get("kind")
                .and_then(|k| AgentKind::parse(k))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_reads_back_what_it_wrote() {
        let worker = WorkerMetadata {
            worker_id: "w1".into(),
            host: "box".into(),
            agents: vec!["echo".into(), "python".into()],
            max_concurrent: Some(8),
            started_at: DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        };
        assert_eq!(WorkerMetadata::from_map(&worker.to_map()), worker);
        let agent = AgentMetadata {
            description: Some("Prints".into()),
            timeout_secs: Some(2.5),
            kind: AgentKind::Openai,
        };
        assert_eq!(AgentMetadata::from_map(&agent.to_map()), agent);
        assert_eq!(
            AgentMetadata::from_map(&HashMap::new()),
            AgentMetadata::default()
        );
    }

    #[test]
    fn stats_find_the_in_flight_count() {
        let stats: ServiceStats = serde_json::from_str(
            r#"{"id":"x","endpoints":[{"name":"status"},{"data":{"in_flight":3}}]}"#,
        )
        .unwrap();
        assert_eq!(stats.in_flight(), Some(3));
    }
}
