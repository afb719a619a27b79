//! The stateless HTTP gateway: validates requests, publishes jobs to JetStream, reads records from KV. Holds no
//! state of its own, so replicas are interchangeable and a restart loses nothing.

pub mod agents;
pub mod auth;
pub mod cancel;
pub mod completed;
pub mod error;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod parse_errors;
pub mod rate;
pub mod records;
pub mod routes;
pub mod scan;
pub mod serve;
pub mod slow;
pub mod state;
pub mod submit;
pub mod tar;
pub mod tokens;
pub mod upload;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use fleet_shared::config::Config;
use utoipa_swagger_ui::SwaggerUi;

pub use state::AppState;

pub fn app(state: AppState) -> Router {
    use routes::{artifacts, compat, events, jobs, keys, sharing, system};
    let body_limit = state.config.http.max_body_bytes;
    Router::new()
        .route(
            "/v1/jobs",
            // Uploads may be large; the handler's body extractor applies every limit itself.
            post(jobs::submit_job)
                .layer(DefaultBodyLimit::disable())
                .get(jobs::list_jobs),
        )
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/retry", post(jobs::retry_job))
        .route("/v1/jobs/{id}/events", get(events::events))
        .route("/v1/jobs/{id}/ws", get(events::websocket))
        .route("/v1/jobs/{id}/artifacts", get(artifacts::list))
        .route("/v1/jobs/{id}/artifacts.tar", get(artifacts::archive))
        .route("/v1/jobs/{id}/artifacts/{*name}", get(artifacts::download))
        .route(
            "/download/{id}/{*filename}",
            get(artifacts::download_compat),
        )
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/agents", get(system::agents))
        .route("/v1/workers", get(system::workers))
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/metrics", get(metrics::render))
        .route("/token", post(tokens::token))
        .route("/interact", post(compat::interact))
        .route("/results/{id}", get(compat::results))
        .route("/execute", post(compat::execute))
        .route("/jobs/{id}/status", get(compat::job_status))
        .route("/jobs/{id}/results", get(compat::job_results))
        .route("/generate", post(compat::generate))
        .route("/info", get(compat::info))
        .route("/stats", get(compat::stats))
        .route(
            "/configure-sharing",
            post(sharing::configure).get(sharing::current),
        )
        .route("/openapi.json", get(openapi::serve))
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        // Layers run bottom-up: metrics and tracing, then the IP limit, authentication, the caller's limit, the
        // body deadline.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            slow::body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate::per_caller,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate::per_ip,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Topology(#[from] fleet_shared::topology::TopologyError),
    #[error(transparent)]
    Store(#[from] fleet_shared::artifacts::StoreError),
    #[error(transparent)]
    Seal(#[from] fleet_shared::seal::SealError),
    #[error("{0}")]
    Auth(String),
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Arc<Config>,
    client: async_nats::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    auth::check_mode(&config).map_err(GatewayError::Auth)?;
    let state = AppState::connect(config, client).await?;
    let cancels = tokio::spawn(cancel::serve_nats(state.clone()));
    let keys = tokio::spawn(follow_keys(state.clone()));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let forget = tokio::spawn(forget_idle_callers(state.clone()));
    let header_timeout = fleet_shared::config::secs(state.config.http.header_timeout_secs);
    let served = serve::serve(listener, app(state), header_timeout, shutdown).await;
    cancels.abort();
    keys.abort();
    forget.abort();
    served?;
    Ok(())
}

/// Keeps the key ring current, starting the watch again after NATS trouble.
async fn follow_keys(state: AppState) {
    loop {
        if let Err(e) = state.keys.follow().await {
            tracing::warn!(error = %e, "watching API keys failed; retrying");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn forget_idle_callers(state: AppState) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        every.tick().await;
        state.rate.forget_idle();
    }
}
