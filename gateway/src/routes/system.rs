//! Liveness, readiness, the agent and worker lists, and who the caller is.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::fleet::agents::AgentInfo;
use crate::http::error::{ApiError, Json, Problem};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// NATS is connected and the jobs stream answers.
#[utoipa::path(get, path = "/ready", tag = "system", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    let stream_ok = connected
        && state
            .js
            .get_stream(state.topology.jobs_stream())
            .await
            .is_ok();
    if stream_ok {
        (StatusCode::OK, Json(Health { status: "ready" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not ready",
            }),
        )
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// Agents some worker in the fleet runs, with their queue depth.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", responses((status = 200, body = AgentList), (status = 503, body = Problem)))]
pub async fn agents(State(state): State<AppState>) -> Result<Json<AgentList>, ApiError> {
    let agents = state.agents.list().await?;
    Ok(Json(AgentList { agents }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<crate::fleet::workers::WorkerInfo>,
}

/// The workers answering the NATS service API now: id, host, agents, concurrency, jobs in flight, version.
#[utoipa::path(get, path = "/v1/workers", tag = "agents",
    responses((status = 200, body = WorkerList), (status = 503, body = Problem)))]
pub async fn workers(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    Ok(Json(WorkerList {
        workers: crate::fleet::workers::list(&state).await?,
    }))
}

/// Who the caller is and what it may do, so a client offers only what it may use.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// `key:<id>` or `user:<name>`, as the caller's jobs name their owner; absent when authentication is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The key's name or the user's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub scopes: fleet_shared::auth::Scopes,
}

/// The caller's identity and scopes (everything when authentication is off).
#[utoipa::path(get, path = "/v1/me", tag = "system", responses((status = 200, body = Me)))]
pub async fn me(caller: Caller) -> Json<Me> {
    let principal = caller.principal();
    Json(Me {
        principal: principal.map(|p| p.id.clone()),
        name: principal.map(|p| p.name.clone()),
        scopes: caller.scopes().into_owned(),
    })
}
