//! The gateway's metrics at `/metrics`: HTTP requests by route and status, jobs submitted and retried by agent,
//! and the queue depth of every agent consumer, read from JetStream at scrape time so any replica reports the
//! whole fleet's queue (what an HPA or KEDA scales on).

use std::future::Future;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use fleet_shared::metrics::{self, seconds_histograms, AgentLabel, Registry, SecondsHistograms};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use tracing::Instrument;

use crate::http::error::ApiError;
use crate::state::AppState;
use fleet_shared::ErrorCode;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route's pattern (`/v1/jobs/{id}`), never the raw path: ids would make a series per job.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: SecondsHistograms<RouteLabel>,
    submitted: Family<AgentLabel, Counter>,
    retried: Family<AgentLabel, Counter>,
    queued: Family<AgentLabel, Gauge>,
    running: Family<AgentLabel, Gauge>,
    redelivered: Family<AgentLabel, Gauge>,
    waiting_pulls: Family<AgentLabel, Gauge>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let mut registry = metrics::registry();
        let m = Self {
            requests: Family::default(),
            request_seconds: seconds_histograms(),
            submitted: Family::default(),
            retried: Family::default(),
            queued: Family::default(),
            running: Family::default(),
            redelivered: Family::default(),
            waiting_pulls: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time to the response's headers, by route",
            m.request_seconds.clone(),
        );
        registry.register(
            "jobs_submitted",
            "New jobs this gateway queued, by agent (idempotent replays not counted)",
            m.submitted.clone(),
        );
        registry.register(
            "jobs_retried",
            "Ended jobs this gateway queued again, by agent",
            m.retried.clone(),
        );
        registry.register(
            "queue_pending",
            "Jobs waiting for a worker, by agent (the agent consumer's pending count)",
            m.queued.clone(),
        );
        registry.register(
            "queue_running",
            "Jobs a worker holds now, by agent (the consumer's unacknowledged count)",
            m.running.clone(),
        );
        registry.register(
            "queue_redelivered",
            "Held jobs delivered more than once, by agent",
            m.redelivered.clone(),
        );
        registry.register(
            "queue_waiting_pulls",
            "Open pull requests, by agent: idle worker capacity",
            m.waiting_pulls.clone(),
        );
        Self { registry, ..m }
    }

    pub fn submitted(&self, agent: &str) {
        self.submitted.get_or_create(&AgentLabel::new(agent)).inc();
    }

    pub fn retried(&self, agent: &str) {
        self.retried.get_or_create(&AgentLabel::new(agent)).inc();
    }

    fn set_queues(&self, agents: &[crate::fleet::agents::AgentInfo]) {
        // Agents whose consumer went away leave the output rather than freezing at their last value.
        for family in [
            &self.queued,
            &self.running,
            &self.redelivered,
            &self.waiting_pulls,
        ] {
            family.clear();
        }
        for a in agents {
            let label = AgentLabel::new(&a.name);
            self.queued.get_or_create(&label).set(saturate(a.queued));
            self.running.get_or_create(&label).set(saturate(a.running));
            self.redelivered
                .get_or_create(&label)
                .set(saturate(a.redelivered));
            self.waiting_pulls
                .get_or_create(&label)
                .set(saturate(a.waiting_pulls));
        }
    }
}

struct HttpExtractor<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Middleware: every request runs in its own span (continuing the caller's `traceparent`, if any) and is
/// counted by its route pattern and response status.
pub async fn track<F: Future<Output = Response>>(
    state: &AppState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = request.method().as_str().to_string();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        caller = tracing::field::Empty,
    );
    fleet_shared::trace_context::continue_from_extractor(&span, &HttpExtractor(request.headers()));
    if let Some(trace_id) = fleet_shared::trace_context::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    let started = Instant::now();
    let response = next(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let m = &state.metrics;
    m.request_seconds
        .get_or_create(&RouteLabel {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Prometheus metrics (OpenMetrics text): requests, jobs submitted, and every agent's queue depth.
#[utoipa::path(get, path = "/metrics", tag = "system", responses(
    (status = 200, content_type = "application/openmetrics-text", body = String),
    (status = 503, body = crate::http::error::Problem)))]
pub async fn render(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state.config.auth.may_read_metrics(authorization) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "/metrics needs the metrics token (auth.metrics_token)",
        ));
    }
    let agents = state.agents.list().await?;
    state.metrics.set_queues(&agents);
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&state.metrics.registry),
    )
        .into_response())
}
