//! The gateway's HTTP edge, handler by handler: requests sent straight into its router (`tower::ServiceExt::
//! oneshot`, no socket) against one real nats-server, so each case takes a millisecond. Every refusal is a JSON
//! problem body (a stable `code`, a `message`, a `request_id`) with the status the error-code table gives;
//! nothing a refused request carries is queued. The invariants stay with the
//! real-server tests; this is for the many ways a request can be wrong.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use fleet_gateway::AppState;
use fleet_tests::clients::NatsClient;
use fleet_tests::*;
use tower::ServiceExt;

/// One request and the refusal it must get.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: &'static str,
    status: u16,
    code: &'static str,
    /// `Authorization: Bearer …`, for the gateway that requires keys.
    key: Option<String>,
}

fn case(
    method: Method,
    path: impl Into<String>,
    content_type: Option<&'static str>,
    body: &'static str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        method,
        path: path.into(),
        content_type,
        body,
        status,
        code,
        key: None,
    }
}

const JSON: Option<&str> = Some("application/json");
fn cases() -> Vec<Case> {
    let job = "/v1/jobs/01900000-0000-7000-8000-000000000000";
    #[rustfmt::skip]
    let cases = vec![
        case(Method::POST, "/v1/jobs", JSON, "{\"agent\": \"echo\",", 400, "malformed_json"),
        case(Method::POST, "/v1/jobs", JSON, "[1, 2]", 422, "invalid_request"),
        case(Method::POST, "/v1/jobs", JSON, "{\"agent\": \"echo\"}", 422, "invalid_request"),
        case(Method::POST, "/v1/jobs", JSON, "{\"agent\": \"echo\", \"message\": \"x\", \"timeout\": 0}", 422, "invalid_request"),
        case(Method::POST, "/v1/jobs", JSON, "{\"agent\": \"nobody-runs-this\", \"message\": \"x\"}", 422, "unknown_agent"),
        case(Method::POST, "/v1/jobs", JSON, "{\"agent\": \"echo\", \"message\": \"x\", \"reply_to\": \"a.*\"}", 422, "invalid_request"),
        case(Method::POST, "/v1/jobs", Some("text/plain"), "agent=echo", 415, "unsupported_media_type"),
        case(Method::POST, "/v1/jobs", None, "{}", 415, "unsupported_media_type"),
        case(Method::POST, "/v1/jobs?wait=soon", JSON, "{\"agent\": \"echo\", \"message\": \"x\"}", 422, "invalid_request"),
        case(Method::GET, "/v1/jobs?limit=many", None, "", 422, "invalid_request"),
        case(Method::GET, "/v1/jobs?status=sleeping", None, "", 422, "invalid_request"),
        case(Method::GET, "/v1/jobs/not-a-uuid", None, "", 404, "not_found"),
        case(Method::GET, job, None, "", 404, "job_not_found"),
        case(Method::GET, format!("{job}?wait=-3"), None, "", 422, "invalid_request"),
        case(Method::POST, format!("{job}/cancel"), JSON, "{}", 404, "job_not_found"),
        case(Method::POST, format!("{job}/retry"), JSON, "{}", 404, "job_not_found"),
        case(Method::GET, format!("{job}/artifacts"), None, "", 404, "job_not_found"),
        case(Method::GET, format!("{job}/events"), None, "", 404, "job_not_found"),
        case(Method::GET, "/nowhere", None, "", 404, "not_found"),
        case(Method::DELETE, "/v1/jobs", None, "", 405, "method_not_allowed"),
        case(Method::PUT, "/health", None, "", 405, "method_not_allowed"),
        case(Method::POST, "/interact", JSON, "{\"message\": 7}", 422, "invalid_request"),
        case(Method::POST, "/execute", JSON, "{\"language\": \"cobol\", \"code\": \"x\"}", 422, "invalid_request"),
        case(Method::POST, "/generate", JSON, "not json", 400, "malformed_json"),
        case(Method::POST, "/configure-sharing", JSON, "{\"method\": \"carrier-pigeon\"}", 422, "invalid_request"),
    ];
    cases
}

async fn gateway(nats: &NatsServer, extra: &[(&str, &str)]) -> (axum::Router, TestConfig) {
    let mut env = vec![("FLEET_HTTP_MAX_BODY_BYTES", "4096")];
    env.extend_from_slice(extra);
    let cfg = test_config(&nats.url(), &env);
    declare_agents_without_worker(&cfg.config).await;
    let client = fleet_shared::nats::connect(&cfg.config.nats, "edges")
        .await
        .expect("connect");
    let state = AppState::connect(Arc::new(cfg.config.clone()), client)
        .await
        .expect("gateway state");
    (fleet_gateway::app(state), cfg)
}

async fn send(app: &axum::Router, c: &Case) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut request = Request::builder()
        .method(c.method.clone())
        .uri(c.path.as_str());
    if let Some(t) = c.content_type {
        request = request.header(header::CONTENT_TYPE, t);
    }
    if let Some(key) = &c.key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request.body(Body::from(c.body)).expect("request");
    let response = app.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, content_type, body)
}

/// The cases that did not get their refusal, described.
async fn wrongly_answered(app: &axum::Router, cases: &[Case]) -> Vec<String> {
    let mut wrong = Vec::new();
    for c in cases {
        let (status, content_type, body) = send(app, c).await;
        let problem = content_type.as_deref() == Some("application/json")
            && body["message"].is_string()
            && body["request_id"].is_string();
        if (status.as_u16(), body["code"].as_str()) != (c.status, Some(c.code)) || !problem {
            wrong.push(format!(
                "{} {}: wanted {} {}, got {status} {content_type:?} {body}",
                c.method, c.path, c.status, c.code
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrong_request_gets_its_problem_body_and_queues_nothing() {
    let nats = NatsServer::start();
    let (app, cfg) = gateway(&nats, &[]).await;
    let wrong = wrongly_answered(&app, &cases()).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let probe = NatsClient::connect_with(&nats.url(), &cfg.config.queue).await;
    assert_eq!(
        probe.queued_messages().await,
        0,
        "a refused request queued a job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_key_or_a_scope_are_refused() {
    let nats = NatsServer::start();
    let (app, cfg) = gateway(&nats, &[("FLEET_AUTH_MODE", "required")]).await;
    let (_, echo_only) = create_key(&cfg, &["--name", "echo-only", "--agent", "echo"]);
    let with = |key: &str, mut c: Case| {
        c.key = Some(key.to_string());
        c
    };
    let submit_fake = "{\"agent\": \"fake\", \"message\": \"x\"}";
    let cases = vec![
        case(Method::GET, "/v1/jobs", None, "", 401, "unauthorized"),
        with(
            "fk_nope_0000",
            case(Method::GET, "/v1/jobs", None, "", 401, "unauthorized"),
        ),
        with(
            "not even a key",
            case(Method::GET, "/v1/jobs", None, "", 401, "unauthorized"),
        ),
        with(
            &echo_only,
            case(
                Method::POST,
                "/v1/jobs",
                JSON,
                submit_fake,
                403,
                "forbidden",
            ),
        ),
        with(
            &echo_only,
            case(
                Method::POST,
                "/v1/keys",
                JSON,
                "{\"name\": \"x\"}",
                403,
                "forbidden",
            ),
        ),
        with(
            &echo_only,
            case(
                Method::GET,
                "/configure-sharing",
                None,
                "",
                403,
                "forbidden",
            ),
        ),
    ];
    let wrong = wrongly_answered(&app, &cases).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The key itself works: what it may do, it does.
    let ok = with(&echo_only, case(Method::GET, "/v1/jobs", None, "", 200, ""));
    assert_eq!(send(&app, &ok).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let nats = NatsServer::start();
    let (app, _cfg) = gateway(&nats, &[]).await;
    let big = format!(
        "{{\"agent\": \"echo\", \"message\": \"{}\"}}",
        "x".repeat(10_000)
    );
    let request = Request::post("/v1/jobs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("request");
    let response = app.oneshot(request).await.expect("an answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(body["code"], "payload_too_large");
}
