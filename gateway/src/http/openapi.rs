//! The OpenAPI document, generated from the handlers and types themselves so it cannot drift from them.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleet_shared::config::Config;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::routes::{
    artifacts, chat, compat, conversations, events, jobs, keys, links, sessions, sharing, system,
    transfer,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "fleet", description = "Run AI agents and code jobs on a NATS JetStream worker fleet."),
    paths(
        jobs::submit_job, jobs::get_job, jobs::list_jobs, jobs::cancel_job, jobs::retry_job, events::events, events::websocket,
        artifacts::list, artifacts::archive, artifacts::download, artifacts::download_compat, links::create,
        system::health, system::ready, system::agents, system::workers, system::me, crate::http::metrics::render, crate::auth::tokens::token,
        compat::interact, compat::results, compat::execute, compat::job_status, compat::job_results,
        compat::generate, compat::info, compat::stats, sharing::configure, sharing::current,
        keys::create, keys::list, keys::revoke, chat::completions, chat::models,
        sessions::create, sessions::list, sessions::get, sessions::delete, sessions::message,
        conversations::create, conversations::get, conversations::cancel, conversations::events,
        transfer::export, transfer::import,
    ),
    modifiers(&CommonContract),
    tags(
        (name = "jobs", description = "Native job API"),
        (name = "agents", description = "What the fleet runs"),
        (name = "compatible", description = "Endpoints of the systems the fleet replaces"),
        (name = "system", description = "Health"),
        (name = "auth", description = "Sign-in tokens for configured users"),
        (name = "keys", description = "API keys (the `manage_keys` scope)"),
        (name = "openai", description = "OpenAI-compatible front door: model agents as OpenAI models"),
        (name = "sessions", description = "Conversations with an agent that continue on any worker, and between agents"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`. Built on the first request and kept as bytes: building it runs a large body of code an
/// idle gateway would otherwise keep resident for nothing.
pub async fn serve(State(state): State<AppState>) -> Response {
    let body = state.openapi.get_or_init(|| {
        Bytes::from(serde_json::to_vec(&document(&state.config)).expect("the document serializes"))
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
        .into_response()
}

/// The document served at `/openapi.json`: the generated one, plus what only the configuration knows (the
/// languages of `/execute`, the artifact targets a job may name) and what the generator cannot express (the shape
/// of each server-sent event, the headers of a WebSocket upgrade).
pub fn document(config: &Config) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let schemas = "/components/schemas";
    let languages: Vec<&String> = config.execute.keys().collect();
    patch(
        &mut doc,
        &format!("{schemas}/ExecuteRequest/properties/language"),
        json!({"type": "string", "enum": languages, "description": "Case does not matter."}),
    );
    let mut targets = vec![Value::from("default")];
    targets.extend(
        config
            .artifacts
            .targets
            .keys()
            .map(|k| Value::from(k.as_str())),
    );
    targets.push(Value::Null);
    if let Some(target) =
        doc.pointer_mut(&format!("{schemas}/SubmitJob/properties/artifact_target"))
    {
        target["enum"] = Value::Array(targets);
    }
    // On OpenAPI 3.1, the schema of a text/event-stream response describes one event.
    let event_names: Vec<&str> = [
        "status",
        "output",
        "output_limit",
        "artifact",
        "behind",
        "end",
    ]
    .to_vec();
    patch(
        &mut doc,
        "/paths/~1v1~1jobs~1{id}~1events/get/responses/200/content/text~1event-stream/schema",
        json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": event_names},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/JobEvent"}
                }
            }
        }),
    );
    let header = |name: &str, schema: Value| json!({"name": name, "in": "header", "required": true, "schema": schema});
    if let Some(Value::Array(params)) =
        doc.pointer_mut("/paths/~1v1~1jobs~1{id}~1ws/get/parameters")
    {
        params.extend([
            header("Connection", json!({"type": "string", "enum": ["Upgrade"]})),
            header("Upgrade", json!({"type": "string", "enum": ["websocket"]})),
            header(
                "Sec-WebSocket-Version",
                json!({"type": "string", "enum": ["13"]}),
            ),
            header(
                "Sec-WebSocket-Key",
                json!({"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
            ),
        ]);
    }
    doc
}

fn patch(doc: &mut Value, pointer: &str, value: Value) {
    match doc.pointer_mut(pointer) {
        Some(slot) => *slot = value,
        None => debug_assert!(false, "no {pointer} in the generated document"),
    }
}

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
                if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add("400", "A parameter is malformed");
                    add("422", "A parameter is well-formed but out of range");
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
