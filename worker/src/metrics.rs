//! The worker's metrics, served on its own small HTTP listener (`worker.http_addr`) with `/health` and `/ready`.

use fleet_shared::metrics::{
    self, seconds_histograms, AgentLabel, AgentStatusLabels, Registry, SecondsHistograms,
};
use fleet_shared::JobRecord;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandBackLabels {
    pub agent: String,
    pub reason: &'static str,
}

pub struct WorkerMetrics {
    registry: Registry,
    /// Terminal records this worker wrote, by agent and status.
    jobs: Family<AgentStatusLabels, Counter>,
    run_seconds: SecondsHistograms<AgentLabel>,
    queue_wait_seconds: SecondsHistograms<AgentLabel>,
    in_flight: Family<AgentLabel, Gauge>,
    redeliveries: Family<AgentLabel, Counter>,
    handed_back: Family<HandBackLabels, Counter>,
    upload_bytes: Family<TargetLabel, Counter>,
    uploaded_files: Family<TargetLabel, Counter>,
    upload_errors: Family<TargetLabel, Counter>,
}

impl WorkerMetrics {
    pub fn new(max_concurrent: usize) -> Self {
        let mut registry = metrics::registry();
        let jobs = Family::default();
        let run_seconds = seconds_histograms();
        let queue_wait_seconds = seconds_histograms();
        let in_flight = Family::default();
        let redeliveries = Family::default();
        let handed_back = Family::default();
        let upload_bytes = Family::default();
        let uploaded_files = Family::default();
        let upload_errors = Family::default();
        let slots: Gauge = Gauge::default();
        slots.set(i64::try_from(max_concurrent).unwrap_or(i64::MAX));
        registry.register(
            "worker_jobs",
            "Jobs this worker ended (wrote the terminal record of), by agent and status",
            jobs.clone(),
        );
        registry.register(
            "worker_run_seconds",
            "Wall time of agent runs",
            run_seconds.clone(),
        );
        registry.register(
            "worker_queue_wait_seconds",
            "From submission to the start of a run",
            queue_wait_seconds.clone(),
        );
        registry.register(
            "worker_jobs_in_flight",
            "Jobs this worker is working on now",
            in_flight.clone(),
        );
        registry.register(
            "worker_redeliveries",
            "Job messages delivered here after an earlier delivery (a worker was lost, or one handed the job back)",
            redeliveries.clone(),
        );
        registry.register(
            "worker_handed_back",
            "Job messages given back to the queue unfinished, by agent and reason (no_free_slot: another agent's \
             jobs took the slots; shutdown)",
            handed_back.clone(),
        );
        registry.register(
            "worker_upload_bytes",
            "Bytes of job files and full logs stored, by artifact target",
            upload_bytes.clone(),
        );
        registry.register(
            "worker_uploaded_files",
            "Job files and full logs stored, by artifact target",
            uploaded_files.clone(),
        );
        registry.register(
            "worker_upload_errors",
            "Jobs whose files could not be stored, by artifact target",
            upload_errors.clone(),
        );
        registry.register(
            "worker_slots",
            "Jobs this worker runs at once at most",
            slots,
        );
        Self {
            registry,
            jobs,
            run_seconds,
            queue_wait_seconds,
            in_flight,
            redeliveries,
            handed_back,
            upload_bytes,
            uploaded_files,
            upload_errors,
        }
    }

    pub fn render(&self) -> String {
        metrics::render(&self.registry)
    }

    /// A job message pulled for `agent`, before it takes a slot.
    pub fn delivered(&self, agent: &str, delivered: i64) {
        if delivered > 1 {
            self.redeliveries
                .get_or_create(&AgentLabel::new(agent))
                .inc();
        }
    }

    /// Counts a job message from the start of its handling until it is settled (the guard's drop).
    pub fn in_flight(&self, agent: &str) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create(&AgentLabel::new(agent))
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    pub fn handed_back(&self, agent: &str, reason: &'static str) {
        self.handed_back
            .get_or_create(&HandBackLabels {
                agent: agent.to_string(),
                reason,
            })
            .inc();
    }

    pub fn run_started(&self, record: &JobRecord) {
        // A submission time ahead of this clock (skew) counts as no wait.
        let waited = (chrono::Utc::now() - record.request.submitted_at)
            .to_std()
            .unwrap_or_default();
        self.queue_wait_seconds
            .get_or_create(&AgentLabel::new(&record.request.agent))
            .observe(waited.as_secs_f64());
    }

    /// A terminal record this worker wrote.
    pub fn ended(&self, record: &JobRecord) {
        let agent = &record.request.agent;
        self.jobs
            .get_or_create(&AgentStatusLabels {
                agent: agent.clone(),
                status: record.status.as_str().to_string(),
            })
            .inc();
        if let Some(resources) = &record.resources {
            self.run_seconds
                .get_or_create(&AgentLabel::new(agent))
                .observe(resources.wall_ms as f64 / 1000.0);
        }
    }

    pub fn stored(&self, target: &str, files: usize, bytes: u64) {
        let label = TargetLabel {
            target: target.to_string(),
        };
        self.uploaded_files
            .get_or_create(&label)
            .inc_by(files as u64);
        self.upload_bytes.get_or_create(&label).inc_by(bytes);
    }

    pub fn upload_failed(&self, target: &str) {
        self.upload_errors
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .inc();
    }
}

/// Holds one unit of the in-flight gauge.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
