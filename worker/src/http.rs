//! The worker's own small HTTP listener: `/health` (the process is up), `/ready` (NATS connected and the worker
//! taking jobs) and `/metrics`, for container probes and Prometheus.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_shared::{ErrorCode, JobError};
use serde::Serialize;

use crate::Shared;

/// The answer of `/health` and `/ready`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl Health {
    fn up(status: &'static str) -> Json<Self> {
        Json(Self {
            status,
            reason: None,
        })
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { Health::up("ok") }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let connected = shared.client.connection_state() == async_nats::connection::State::Connected;
    let taking_jobs = !shared.stop_pulling.is_cancelled();
    if connected && taking_jobs {
        (StatusCode::OK, Health::up("ready"))
    } else {
        let why = if taking_jobs {
            "not connected to NATS"
        } else {
            "shutting down"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not ready",
                reason: Some(why),
            }),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !shared.config.auth.may_read_metrics(authorization) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"fleet-metrics\"")],
            Json(JobError::new(
                ErrorCode::Unauthorized,
                "/metrics needs the metrics token (auth.metrics_token)",
            )),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, fleet_shared::metrics::CONTENT_TYPE)],
        shared.metrics.render(),
    )
        .into_response()
}

/// Serves until the worker has stopped (`done`); a listener that cannot bind is an error at start-up.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    done: tokio_util::sync::CancellationToken,
) {
    let served = axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move { done.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the worker's health and metrics listener failed");
    }
}
