//! Prometheus metrics: the pieces the gateway's and the worker's own metric sets share.
//!
//! Registries are per process role, not global: `fleet up` and the tests run a gateway and a worker in one
//! process, and each `/metrics` must show only its own numbers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// The OpenMetrics text format, which Prometheus, the OpenTelemetry collector and KEDA's Prometheus scaler read.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds in seconds, from a no-op job's milliseconds to the hours a long agent run takes.
pub const SECONDS_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// A histogram family over `SECONDS_BUCKETS`.
pub type SecondsHistograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub fn seconds_histograms<L>() -> SecondsHistograms<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(|| Histogram::new(SECONDS_BUCKETS))
}

/// A registry whose metric names all start with `fleet_`.
pub fn registry() -> Registry {
    Registry::with_prefix("fleet")
}

/// The registry's metrics in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

impl AgentLabel {
    pub fn new(agent: &str) -> Self {
        Self {
            agent: agent.to_string(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentStatusLabels {
    pub agent: String,
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn renders_prefixed_counters_and_histograms() {
        let mut registry = registry();
        let jobs = Family::<AgentStatusLabels, Counter>::default();
        let waits = seconds_histograms::<AgentLabel>();
        registry.register("jobs", "Jobs", jobs.clone());
        registry.register("wait_seconds", "Wait", waits.clone());
        jobs.get_or_create(&AgentStatusLabels {
            agent: "echo".into(),
            status: "completed".into(),
        })
        .inc_by(3);
        waits.get_or_create(&AgentLabel::new("echo")).observe(0.02);
        let text = render(&registry);
        assert!(
            text.contains(r#"fleet_jobs_total{agent="echo",status="completed"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fleet_wait_seconds_bucket{le="0.025",agent="echo"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
