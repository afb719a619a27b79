//! The stateless HTTP gateway: validates requests, publishes jobs to JetStream, reads records from KV. Holds no
//! state of its own, so replicas are interchangeable and a restart loses nothing.
//!
//! Grouped by role: `http/` is the edge every request crosses (accept loop, deadlines, rate limits, metrics,
//! OpenAPI, the one error-to-HTTP mapping); `auth/` who the caller is and what it may do; `jobs/` what the
//! gateway does with jobs (submit, cancel, read and list records, follow live ones, uploads and archives);
//! `fleet/` what it knows of the fleet (agents, workers); `routes/` the handlers, thin, each calling the
//! others. A handler goes in `routes/`; what two handlers share goes in the group of its role.

pub mod auth;
pub mod console;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod routes;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use crate::auth::tokens;
use crate::http::{error, metrics, openapi, serve};
use crate::jobs::cancel;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use fleet_shared::config::Config;
use utoipa_swagger_ui::SwaggerUi;

pub use state::AppState;

/// A route that names a job: `{id}` in its path is a job id.
pub struct JobRoute {
    pub path: &'static str,
    pub method: axum::http::Method,
    router: axum::routing::MethodRouter<AppState>,
}

fn job_route<H, T>(path: &'static str, method: axum::http::Method, handler: H) -> JobRoute
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let filter = axum::routing::MethodFilter::try_from(method.clone())
        .unwrap_or(axum::routing::MethodFilter::GET);
    JobRoute {
        path,
        method,
        router: axum::routing::on(filter, handler),
    }
}

/// Every route that takes a job id: the one list the router is built from and the authorization test walks (each
/// must answer a caller who may not read the job exactly as for a job that does not exist), so no such route can
/// be added without the test seeing it.
pub fn job_routes() -> Vec<JobRoute> {
    use axum::http::Method;
    use routes::{artifacts, compat, events, jobs, links};
    vec![
        job_route("/v1/jobs/{id}", Method::GET, jobs::get_job),
        job_route("/v1/jobs/{id}/cancel", Method::POST, jobs::cancel_job),
        job_route("/v1/jobs/{id}/retry", Method::POST, jobs::retry_job),
        job_route("/v1/jobs/{id}/events", Method::GET, events::events),
        job_route("/v1/jobs/{id}/ws", Method::GET, events::websocket),
        job_route("/v1/jobs/{id}/artifacts", Method::GET, artifacts::list),
        job_route("/v1/jobs/{id}/links", Method::POST, links::create),
        job_route(
            "/v1/jobs/{id}/artifacts.tar",
            Method::GET,
            artifacts::archive,
        ),
        job_route(
            "/v1/jobs/{id}/artifacts/{*name}",
            Method::GET,
            artifacts::download,
        ),
        job_route(
            "/download/{id}/{*filename}",
            Method::GET,
            artifacts::download_compat,
        ),
        job_route("/results/{id}", Method::GET, compat::results),
        job_route("/jobs/{id}/status", Method::GET, compat::job_status),
        job_route("/jobs/{id}/results", Method::GET, compat::job_results),
    ]
}

/// Sessions, conversations between agents, and their export and import.
fn session_routes(router: Router<AppState>) -> Router<AppState> {
    use routes::{conversations, sessions, transfer};
    router
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route(
            "/v1/sessions/{id}/messages",
            // Messages may carry uploads; the body extractor applies every limit itself.
            post(sessions::message).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/conversations", post(conversations::create))
        .route("/v1/conversations/{id}", get(conversations::get))
        .route("/v1/conversations/{id}/cancel", post(conversations::cancel))
        .route("/v1/conversations/{id}/events", get(conversations::events))
        .route("/v1/export", get(transfer::export))
        .route(
            "/v1/import",
            post(transfer::import).layer(DefaultBodyLimit::disable()),
        )
}

pub fn app(state: AppState) -> Router {
    use routes::{chat, compat, jobs, keys, sharing, system};
    let body_limit = state.config.http.max_body_bytes;
    let mut router = session_routes(Router::new());
    for route in job_routes() {
        router = router.route(route.path, route.router);
    }
    router
        .route(
            "/v1/jobs",
            // Uploads may be large; the handler's body extractor applies every limit itself.
            post(jobs::submit_job)
                .layer(DefaultBodyLimit::disable())
                .get(jobs::list_jobs),
        )
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/agents", get(system::agents))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(chat::models))
        .route("/v1/workers", get(system::workers))
        .route("/v1/me", get(system::me))
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/metrics", get(metrics::render))
        .route("/token", post(tokens::token))
        .route("/interact", post(compat::interact))
        .route("/execute", post(compat::execute))
        .route("/generate", post(compat::generate))
        .route("/info", get(compat::info))
        .route("/stats", get(compat::stats))
        .route(
            "/configure-sharing",
            post(sharing::configure).get(sharing::current),
        )
        .route("/openapi.json", get(openapi::serve))
        .route("/", get(console::index))
        .route("/qr", get(console::qr::page))
        .route("/ui/{version}/{name}", get(console::asset))
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::steps::every_request,
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
    // Set once, here: a state fresh from `connect` has no address yet, so this cannot fail.
    let _ = state.listen.set(listener.local_addr()?);
    let cancels = tokio::spawn(cancel::serve_nats(state.clone()));
    let keys = tokio::spawn(follow_keys(state.clone()));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let forget = tokio::spawn(forget_idle_callers(state.clone()));
    let history = tokio::spawn(state.history.clone().follow(state.records.clone()));
    let session_list = tokio::spawn(
        state
            .session_list
            .clone()
            .follow(state.sessions.bucket().clone()),
    );
    let sweep = tokio::spawn(
        state
            .history
            .clone()
            .sweep_expired(state.config.queue.retention()),
    );
    let header_timeout = fleet_shared::config::secs(state.config.http.header_timeout_secs);
    let served = serve::serve(listener, app(state), header_timeout, shutdown).await;
    cancels.abort();
    keys.abort();
    forget.abort();
    history.abort();
    session_list.abort();
    sweep.abort();
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
