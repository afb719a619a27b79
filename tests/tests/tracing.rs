//! One OpenTelemetry trace per job across processes: a gateway and a worker, each its own `fleet` process,
//! export spans over OTLP/HTTP (JSON) to a receiver the test runs; the job's spans from both share one trace, the
//! worker's continuing the gateway's publish. A direct publisher's own `traceparent` is continued too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use fleet_tests::clients::NatsClient;
use fleet_tests::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP receiver keeping every span it is sent.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                let mut kept = kept.lock().expect("lock");
                for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                            kept.push(Span {
                                service: service.clone(),
                                name: text("name"),
                                trace_id: text("traceId"),
                                span_id: text("spanId"),
                                parent_span_id: text("parentSpanId"),
                            });
                        }
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, spans)
}

fn find<'a>(spans: &'a [Span], service: &str, name: &str, trace_id: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && s.trace_id == trace_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_from_the_http_request_to_the_reply() {
    let nats = NatsServer::start();
    let (otlp, spans) = otlp_receiver().await;
    let cfg = test_config(&nats.url(), &[]);
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let logs = tempfile::tempdir().expect("tempdir");
    let worker_log = logs.path().join("worker.log");
    let worker_env: Vec<(&str, &str)> = otel
        .iter()
        .copied()
        .chain([("RUST_LOG_FORMAT", "json"), ("RUST_LOG", "info")])
        .collect();
    let _worker = FleetProcess::start_with_log("worker", &cfg, &worker_env, &worker_log);
    wait_for_agents(&cfg.config).await;
    let gateway_log = logs.path().join("gateway.log");
    let (_gateway, api) = FleetProcess::gateway(&cfg, &otel, &gateway_log).await;

    // Through the gateway: the job outlives the claim delay, so it is claimed too.
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "fake", "message": "sleep:0.2 write:out.txt=10 print:done"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "completed", "{}", r.body);

    let mut trace_id = String::new();
    eventually(
        "the job's spans from both processes",
        Duration::from_secs(20),
        || {
            let spans = spans.lock().expect("lock").clone();
            let request = spans
                .iter()
                .find(|s| s.service == "fleet-gateway" && s.name == "POST /v1/jobs")
                .cloned();
            if let Some(request) = &request {
                trace_id = request.trace_id.clone();
            }
            let done = request.is_some_and(|r| {
                ["job", "claim", "run", "store_files", "record", "reply"]
                    .iter()
                    .all(|name| find(&spans, "fleet-worker", name, &r.trace_id).is_some())
            });
            async move { done }
        },
    )
    .await;
    let spans_now = spans.lock().expect("lock").clone();
    let request = find(&spans_now, "fleet-gateway", "POST /v1/jobs", &trace_id).expect("request");
    let publish = find(&spans_now, "fleet-gateway", "publish", &trace_id).expect("publish span");
    let job = find(&spans_now, "fleet-worker", "job", &trace_id).expect("job span");
    assert_eq!(publish.parent_span_id, request.span_id, "{spans_now:#?}");
    assert_eq!(
        job.parent_span_id, publish.span_id,
        "the worker continues the publish: {spans_now:#?}"
    );
    for child in ["claim", "run", "store_files", "record", "reply"] {
        let span = find(&spans_now, "fleet-worker", child, &trace_id).expect("child");
        assert_eq!(span.parent_span_id, job.span_id, "{child}: {spans_now:#?}");
    }

    // The worker's JSON log lines about the job carry its id and trace id.
    let job_id = r.body["job_id"].as_str().expect("id");
    let log = std::fs::read_to_string(&worker_log).expect("worker log");
    let job_lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["job_id"] == job_id))
        })
        .collect();
    assert!(!job_lines.is_empty(), "{log}");
    assert!(
        job_lines
            .iter()
            .any(|l| l["fields"]["message"] == "job finished"),
        "{log}"
    );
    for line in &job_lines {
        let in_job = line["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .find(|s| s["name"] == "job");
        assert_eq!(
            in_job.expect("job span")["trace_id"],
            trace_id.as_str(),
            "{line}"
        );
    }

    // A direct publisher's own trace context is continued, and its reply carries the trace on.
    let direct = NatsClient::connect(&nats.url()).await;
    let theirs_trace = "0af7651916cd43dd8448eb211c80319c";
    let theirs_span = "b7ad6b7169203331";
    let inbox = direct.client.new_inbox();
    let mut replies = direct
        .client
        .subscribe(inbox.clone())
        .await
        .expect("subscribe");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{theirs_trace}-{theirs_span}-01").as_str(),
    );
    let body = json!({"message": "traced", "reply_to": inbox});
    direct
        .js
        .publish_with_headers(
            "fleet.jobs.echo",
            headers,
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        futures::StreamExt::next(&mut replies),
    )
    .await
    .expect("reply in time")
    .expect("reply");
    let traceparent = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string())
        .expect("the reply carries the trace");
    assert!(traceparent.contains(theirs_trace), "{traceparent}");
    eventually("the direct job's span", Duration::from_secs(20), || {
        let found = find(
            &spans.lock().expect("lock"),
            "fleet-worker",
            "job",
            theirs_trace,
        )
        .is_some_and(|s| s.parent_span_id == theirs_span);
        async move { found }
    })
    .await;
}
