//! The OpenAPI document, generated from the handlers and types themselves so it cannot drift from them.

use utoipa::OpenApi;

use crate::routes::{artifacts, compat, events, jobs, sharing, system};

#[derive(OpenApi)]
#[openapi(
    info(title = "fleet", description = "Run AI agents and code jobs on a NATS JetStream worker fleet."),
    paths(
        jobs::submit_job, jobs::get_job, jobs::list_jobs, jobs::cancel_job, jobs::retry_job, events::events, events::websocket,
        artifacts::list, artifacts::archive, artifacts::download, artifacts::download_compat,
        system::health, system::ready, system::agents, system::workers, crate::metrics::render, crate::tokens::token,
        compat::interact, compat::results, compat::execute, compat::job_status, compat::job_results,
        compat::generate, compat::info, compat::stats, sharing::configure, sharing::current,
    ),
    tags(
        (name = "jobs", description = "Native job API"),
        (name = "agents", description = "What the fleet runs"),
        (name = "compatible", description = "Endpoints of the systems the fleet replaces"),
        (name = "system", description = "Health"),
        (name = "auth", description = "Sign-in tokens for configured users"),
    )
)]
pub struct ApiDoc;
