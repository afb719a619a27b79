//! The HTTP surface against a real nats-server: native and seed-compatible endpoints, bad input, idempotency,
//! a full queue.

use fleet_tests::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_through_native_and_compatible_endpoints() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();

    // Native submit and wait: shell metacharacters reach the agent as literal text.
    let msg = "$(touch /tmp/pwned); `id` && echo 'x' | cat";
    let r = api
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": msg}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["record"]["stdout"], format!("{msg}\n"));
    assert_eq!(r.body["record"]["exit_code"], 0);
    assert_eq!(r.body["record"]["attempt"], 1);
    let id = r.job_id();
    let rec = api.get(&format!("/v1/jobs/{id}")).await.body;
    assert_eq!(rec["status"], "completed");
    assert!(rec["resources"]["wall_ms"].is_u64());

    // Without wait: 202 queued, then it completes.
    let r = api
        .post(
            "/v1/jobs",
            &json!({"agent": "fake", "message": "print:later exit:3"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    let id = r.job_id();
    let rec = api.get(&format!("/v1/jobs/{id}?wait=20")).await.body;
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["error"]["code"], "nonzero_exit");
    assert_eq!(rec["stdout"], "later\n");

    // Seed-compatible: /interact then poll /results until not processing.
    let r = api
        .post(
            "/interact",
            &json!({"agent": "echo", "message": "hi", "context": "c", "return_files": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rid = r.body["request_id"].as_str().unwrap().to_string();
    let result = api
        .poll(&format!("/results/{rid}"), "interact result", |b| {
            b["status"] != "processing"
        })
        .await;
    assert_eq!(result["status"], "completed");
    assert_eq!(result["stdout"], "hi\n");
    assert!(result["files"].is_array());

    // /execute in python and shell, then /jobs/{id}/status and /jobs/{id}/results.
    for (language, code, expected) in [
        ("python", "print(6*7)", "42\n"),
        ("shell", "echo $((6*7))", "42\n"),
    ] {
        let r = api
            .post("/execute", &json!({"code": code, "language": language}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "pending");
        let jid = r.job_id();
        api.poll(&format!("/jobs/{jid}/status"), "execute status", |s| {
            s["status"] == "completed" || s["status"] == "failed"
        })
        .await;
        let r = api.get(&format!("/jobs/{jid}/results")).await.body;
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["stdout"], expected);
    }
    let r = api
        .post("/execute", &json!({"code": "x", "language": "cobol"}))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["code"], "invalid_request");

    // /generate waits for the default agent.
    let r = api
        .post("/generate", &json!({"prompt": "ping", "max_gen": 5}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"text": "ping", "from": "echo"}));

    // Listing, agents, info, stats.
    let list = api
        .get("/v1/jobs?agent=echo&status=completed&limit=2")
        .await
        .body;
    assert_eq!(list["count"], 2);
    assert!(list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["request"]["agent"] == "echo"));
    assert_eq!(api.get("/v1/jobs?status=bogus").await.status, 422);
    let agents = api.get("/v1/agents").await.body;
    let names: Vec<_> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "fake", "python", "shell"]);
    let stats = api.get("/stats").await.body;
    assert_eq!(stats["total"], 6);
    assert_eq!(stats["by_status"]["completed"], 5);
    assert_eq!(stats["by_status"]["failed"], 1);
    assert_eq!(stats["by_agent"]["echo"]["completed"], 3);
    assert_eq!(stats["queue"]["echo"]["queued"], 0);
    assert_eq!(api.get("/info").await.body["nats_connected"], true);

    // Docs are served from the binary.
    let spec = api.get("/openapi.json").await.body;
    assert!(spec["paths"]["/v1/jobs"]["post"].is_object());
    assert!(spec["paths"]["/results/{id}"]["get"].is_object());
    // A non-JSON page: its status and text.
    let page = |path: &'static str| {
        let request = api.request(reqwest::Method::GET, path);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, docs) = page("/docs/").await;
    assert_eq!(status, 200);
    assert!(docs.contains("swagger"));
    // The docs page loads the document the gateway serves.
    let (status, init) = page("/docs/swagger-initializer.js").await;
    assert_eq!(status, 200);
    assert!(init.contains(r#""url": "/openapi.json""#));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_body_and_queues_nothing() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_HTTP_MAX_BODY_BYTES", "4096")]);
    declare_agents_without_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let raw = |body: String, content_type: &str| {
        api.request(reqwest::Method::POST, "/v1/jobs")
            .header("content-type", content_type)
            .body(body)
    };
    const JSON: &str = "application/json";
    let big = format!(
        "{{\"agent\": \"echo\", \"message\": \"{}\"}}",
        "x".repeat(10_000)
    );
    let cases: [(String, &str, u16, &str); 9] = [
        ("{\"agent\": \"echo\",".into(), JSON, 400, "malformed_json"),
        (
            "{\"agent\": 5, \"message\": \"x\"}".into(),
            JSON,
            422,
            "invalid_request",
        ),
        ("{\"agent\": \"echo\"}".into(), JSON, 422, "invalid_request"),
        (
            "{\"agent\": \"echo\", \"message\": \"x\", \"bogus\": 1}".into(),
            JSON,
            422,
            "invalid_request",
        ),
        (
            "{\"agent\": \"echo\", \"message\": \"x\", \"timeout\": -1}".into(),
            JSON,
            422,
            "invalid_request",
        ),
        (
            "{\"agent\": \"no-such-agent\", \"message\": \"x\"}".into(),
            JSON,
            422,
            "unknown_agent",
        ),
        (
            "{\"agent\": \"a.b\", \"message\": \"x\"}".into(),
            JSON,
            422,
            "invalid_request",
        ),
        (
            "agent=echo".into(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (big, JSON, 413, "payload_too_large"),
    ];
    for (body, content_type, status, code) in cases {
        let shown: String = body.chars().take(60).collect();
        let r = api.send(raw(body, content_type)).await;
        assert_eq!(
            (r.status, r.body["code"].as_str().unwrap()),
            (status, code),
            "{shown}: {}",
            r.body
        );
        assert!(r.body["message"].is_string() && r.body["request_id"].is_string());
    }

    assert_eq!(api.get("/v1/jobs/not-a-uuid").await.status, 404);
    let r = api
        .get("/v1/jobs/01900000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str().unwrap()),
        (404, "job_not_found")
    );
    assert_eq!(api.get("/nowhere").await.body["code"], "not_found");
    let r = api
        .send(api.request(reqwest::Method::DELETE, "/v1/jobs"))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );

    let probe = NatsClient::connect_with(&nats.url(), &cfg.config.queue).await;
    assert_eq!(
        probe.queued_messages().await,
        0,
        "a rejected request queued something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmissions_create_one_job_and_a_full_queue_answers_503() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_QUEUE_MAX_JOBS", "3")]);
    declare_agents_without_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let probe = NatsClient::connect_with(&nats.url(), &cfg.config.queue).await;

    // The same client-chosen id twice: one job.
    let id = uuid::Uuid::now_v7();
    let first = api
        .post(
            "/v1/jobs",
            &json!({"id": id, "agent": "echo", "message": "once"}),
        )
        .await;
    let again = api
        .post(
            "/v1/jobs",
            &json!({"id": id, "agent": "echo", "message": "once"}),
        )
        .await;
    assert_eq!((first.status, again.status), (202, 200));
    assert_eq!(first.body["job_id"], again.body["job_id"]);

    // The same Idempotency-Key twice: one job; with another body: 409.
    let with_key = |key: &str, message: &str| {
        api.request(reqwest::Method::POST, "/v1/jobs")
            .header("Idempotency-Key", key)
            .json(&json!({"agent": "echo", "message": message}))
    };
    let a = api.send(with_key("key-1", "hello")).await;
    let b = api.send(with_key("key-1", "hello")).await;
    assert_eq!((a.status, b.status), (202, 200));
    assert_eq!(a.body["job_id"], b.body["job_id"]);
    let c = api.send(with_key("key-1", "different")).await;
    assert_eq!(c.status, 409);
    assert_eq!(c.body["code"], "idempotency_conflict");
    assert_eq!(probe.queued_messages().await, 2);

    // One more fills the queue (max 3); the next is refused with Retry-After and leaves no record.
    assert_eq!(
        api.post("/v1/jobs", &json!({"agent": "echo", "message": "3"}))
            .await
            .status,
        202
    );
    let r = api
        .post("/v1/jobs", &json!({"agent": "echo", "message": "4"}))
        .await;
    assert_eq!(r.status, 503);
    assert!(r.retry_after.is_some());
    assert_eq!(r.body["code"], "queue_full");
    let stats = api.get("/stats").await.body;
    assert_eq!(stats["total"], 3, "{stats}");

    // A worker drains the queue; every accepted job completes exactly once.
    let worker = start_worker(&cfg.config).await;
    api.poll("/stats", "queue drained", |s: &Value| {
        s["by_status"]["completed"] == 3
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_shared_by_idle_agents_serves_each_of_them_at_once() {
    // A worker's slots are shared by all its agents' pull loops; one idle loop must not sit on the only slot
    // until its pull expires (5 s) while another agent's job waits.
    let (_nats, _cfg, worker, gw) = start_fleet(&[("FLEET_WORKER_MAX_CONCURRENT", "1")]).await;
    let api = gw.api();
    for agent in ["shell", "fake", "echo", "python", "fake", "echo"] {
        let started = std::time::Instant::now();
        let message = if agent == "fake" {
            "print:hi"
        } else {
            "print('hi')"
        };
        let r = api
            .post(
                "/v1/jobs?wait=20",
                &json!({"agent": agent, "message": message}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(2500),
            "a {agent} job waited {:?} for a slot held by an idle pull",
            started.elapsed()
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_register_through_the_nats_service_api_and_are_listed() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_WORKER_MAX_CONCURRENT", "3")]);
    let (one, two) = (
        start_worker(&cfg.config).await,
        start_worker(&cfg.config).await,
    );
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    let listed = api
        .poll("/v1/workers", "two workers", |r| {
            r["workers"].as_array().is_some_and(|w| w.len() == 2)
        })
        .await;
    for w in listed["workers"].as_array().unwrap() {
        assert_eq!(w["max_concurrent"], 3, "{w}");
        assert_eq!(w["in_flight"], 0, "{w}");
        assert!(
            w["agents"].as_array().unwrap().contains(&json!("fake")),
            "{w}"
        );
        assert!(
            !w["worker_id"].as_str().unwrap().is_empty() && !w["host"].as_str().unwrap().is_empty()
        );
        assert_eq!(w["version"], env!("CARGO_PKG_VERSION"));
    }
    // A running job shows as in flight on one of them.
    api.post("/v1/jobs", &json!({"agent": "fake", "message": "sleep:30"}))
        .await;
    api.poll("/v1/workers", "a job in flight", |r| {
        r["workers"].as_array().is_some_and(|w| {
            w.iter()
                .map(|w| w["in_flight"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 1
        })
    })
    .await;
    // A stopped worker leaves the list.
    two.stop().await;
    api.poll("/v1/workers", "one worker", |r| {
        r["workers"].as_array().is_some_and(|w| w.len() == 1)
    })
    .await;
    one.stop().await;
}
