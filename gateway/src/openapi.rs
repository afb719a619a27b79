//! The OpenAPI document, generated from the handlers and types themselves so it cannot drift from them.

use utoipa::OpenApi;

use crate::routes::{artifacts, compat, events, jobs, keys, sharing, system};

#[derive(OpenApi)]
#[openapi(
    info(title = "fleet", description = "Run AI agents and code jobs on a NATS JetStream worker fleet."),
    paths(
        jobs::submit_job, jobs::get_job, jobs::list_jobs, jobs::cancel_job, jobs::retry_job, events::events, events::websocket,
        artifacts::list, artifacts::archive, artifacts::download, artifacts::download_compat,
        system::health, system::ready, system::agents, system::workers, crate::metrics::render, crate::tokens::token,
        compat::interact, compat::results, compat::execute, compat::job_status, compat::job_results,
        compat::generate, compat::info, compat::stats, sharing::configure, sharing::current,
        keys::create, keys::list, keys::revoke,
    ),
    modifiers(&CommonContract),
    tags(
        (name = "jobs", description = "Native job API"),
        (name = "agents", description = "What the fleet runs"),
        (name = "compatible", description = "Endpoints of the systems the fleet replaces"),
        (name = "system", description = "Health"),
        (name = "auth", description = "Sign-in tokens for configured users"),
        (name = "keys", description = "API keys (the `manage_keys` scope)"),
    )
)]
pub struct ApiDoc;

/// What every operation may answer besides its own responses, and how callers authenticate: added to the
/// generated document so clients (and schema-driven testers) see the whole contract.
pub struct CommonContract;

/// Paths anyone may call (see `auth::is_public`).
const PUBLIC: [&str; 5] = ["/health", "/ready", "/metrics", "/openapi.json", "/token"];

impl utoipa::Modify for CommonContract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{Ref, ResponseBuilder};

        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = PUBLIC.contains(&path.as_str()) || path.starts_with("/docs");
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(description).into());
                };
                add("429", "Too many requests (rate limited); see Retry-After");
                if path.contains('{') {
                    add("404", "No such job or file, or not one the caller may see");
                }

                if !public {
                    add(
                        "401",
                        "Missing, malformed, unknown, expired or revoked credentials",
                    );
                    add("403", "The credentials lack the scope this request needs");
                }
                if operation.request_body.is_some() {
                    add("400", "The body is malformed");
                    add("408", "The body did not arrive in time");
                    add("413", "The body is too large");
                    add("415", "Unsupported content type");
                    add("422", "The body is well-formed but invalid");
                }
                operation.security = Some(if public {
                    vec![SecurityRequirement::default()]
                } else {
                    vec![
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                        SecurityRequirement::new("api_key", Vec::<String>::new()),
                    ]
                });
            }
        }
    }
}
