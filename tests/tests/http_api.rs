//! The HTTP surface against a real nats-server: native and seed-compatible endpoints, bad input, idempotency,
//! a full queue.

use std::time::Duration;

use fleet_tests::*;
use serde_json::{json, Value};

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn stream_messages(nats_url: &str) -> u64 {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream("FLEET_JOBS").await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_through_native_and_compatible_endpoints() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let http = reqwest::Client::new();
    let u = &gw.url;

    // Native submit and wait: shell metacharacters reach the agent as literal text.
    let msg = "$(touch /tmp/pwned); `id` && echo 'x' | cat";
    let (status, body) = post(
        &http,
        &format!("{u}/v1/jobs?wait=20"),
        json!({"agent": "echo", "message": msg}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["record"]["stdout"], format!("{msg}\n"));
    assert_eq!(body["record"]["exit_code"], 0);
    assert_eq!(body["record"]["attempt"], 1);
    let id = body["job_id"].as_str().unwrap().to_string();
    let rec: Value = http
        .get(format!("{u}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec["status"], "completed");
    assert!(rec["resources"]["wall_ms"].is_u64());

    // Without wait: 202 queued, then it completes.
    let (status, body) = post(
        &http,
        &format!("{u}/v1/jobs"),
        json!({"agent": "fake", "message": "print:later exit:3"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["job_id"].as_str().unwrap().to_string();
    let rec: Value = http
        .get(format!("{u}/v1/jobs/{id}?wait=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["error"]["code"], "nonzero_exit");
    assert_eq!(rec["stdout"], "later\n");

    // Seed-compatible: /interact then poll /results until not processing.
    let (status, body) = post(
        &http,
        &format!("{u}/interact"),
        json!({"agent": "echo", "message": "hi", "context": "c", "return_files": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rid = body["request_id"].as_str().unwrap().to_string();
    let mut result: Value = Value::Null;
    for _ in 0..400 {
        result = http
            .get(format!("{u}/results/{rid}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if result["status"] != "processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(result["status"], "completed");
    assert_eq!(result["stdout"], "hi\n");
    assert!(result["files"].is_array());

    // /execute in python and shell, then /jobs/{id}/status and /jobs/{id}/results.
    for (language, code, expected) in [
        ("python", "print(6*7)", "42\n"),
        ("shell", "echo $((6*7))", "42\n"),
    ] {
        let (status, body) = post(
            &http,
            &format!("{u}/execute"),
            json!({"code": code, "language": language}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "pending");
        let jid = body["job_id"].as_str().unwrap().to_string();
        eventually("execute status", Duration::from_secs(30), || {
            let http = http.clone();
            let url = format!("{u}/jobs/{jid}/status");
            async move {
                let s: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                s["status"] == "completed" || s["status"] == "failed"
            }
        })
        .await;
        let r: Value = http
            .get(format!("{u}/jobs/{jid}/results"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["stdout"], expected);
    }
    let (status, body) = post(
        &http,
        &format!("{u}/execute"),
        json!({"code": "x", "language": "cobol"}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "invalid_request");

    // /generate waits for the default agent.
    let (status, body) = post(
        &http,
        &format!("{u}/generate"),
        json!({"prompt": "ping", "max_gen": 5}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"text": "ping", "from": "echo"}));

    // Listing, agents, info, stats.
    let list: Value = http
        .get(format!("{u}/v1/jobs?agent=echo&status=completed&limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 2);
    assert!(list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["request"]["agent"] == "echo"));
    let r = http
        .get(format!("{u}/v1/jobs?status=bogus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let agents: Value = http
        .get(format!("{u}/v1/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "fake", "python", "shell"]);
    let stats: Value = http
        .get(format!("{u}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["total"], 6);
    assert_eq!(stats["by_status"]["completed"], 5);
    assert_eq!(stats["by_status"]["failed"], 1);
    assert_eq!(stats["by_agent"]["echo"]["completed"], 3);
    assert_eq!(stats["queue"]["echo"]["queued"], 0);
    let info: Value = http
        .get(format!("{u}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["nats_connected"], true);

    // Docs are served from the binary.
    let spec: Value = http
        .get(format!("{u}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/v1/jobs"]["post"].is_object());
    assert!(spec["paths"]["/results/{id}"]["get"].is_object());
    let docs = http.get(format!("{u}/docs/")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_body_and_queues_nothing() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_HTTP_MAX_BODY_BYTES", "4096")]);
    // Consumers exist (the agents are known) but no worker runs, so anything queued would stay visible.
    let worker = start_worker(&cfg.config).await;
    worker.stop().await;
    let gw = start_gateway(&cfg.config).await;
    let http = reqwest::Client::new();
    let u = &gw.url;
    let send = |body: &'static str, ct: &'static str| {
        let http = http.clone();
        let url = format!("{u}/v1/jobs");
        async move {
            let r = http
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.expect("problem bodies are JSON");
            (status, v)
        }
    };
    let cases: [(&str, &str, u16, &str); 8] = [
        (
            "{\"agent\": \"echo\",",
            "application/json",
            400,
            "malformed_json",
        ),
        (
            "{\"agent\": 5, \"message\": \"x\"}",
            "application/json",
            422,
            "invalid_request",
        ),
        (
            "{\"agent\": \"echo\"}",
            "application/json",
            422,
            "invalid_request",
        ),
        (
            "{\"agent\": \"echo\", \"message\": \"x\", \"bogus\": 1}",
            "application/json",
            422,
            "invalid_request",
        ),
        (
            "{\"agent\": \"echo\", \"message\": \"x\", \"timeout\": -1}",
            "application/json",
            422,
            "invalid_request",
        ),
        (
            "{\"agent\": \"no-such-agent\", \"message\": \"x\"}",
            "application/json",
            422,
            "unknown_agent",
        ),
        (
            "{\"agent\": \"a.b\", \"message\": \"x\"}",
            "application/json",
            422,
            "invalid_request",
        ),
        ("agent=echo", "text/plain", 415, "unsupported_media_type"),
    ];
    for (body, ct, status, code) in cases {
        let (s, v) = send(body, ct).await;
        assert_eq!(
            (s, v["code"].as_str().unwrap()),
            (status, code),
            "{body}: {v}"
        );
        assert!(v["message"].is_string() && v["request_id"].is_string());
    }
    let big = format!(
        "{{\"agent\": \"echo\", \"message\": \"{}\"}}",
        "x".repeat(10_000)
    );
    let r = http
        .post(format!("{u}/v1/jobs"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );

    let r = http
        .get(format!("{u}/v1/jobs/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = http
        .get(format!("{u}/v1/jobs/01900000-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "job_not_found");
    let r = http.get(format!("{u}/nowhere")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = http.delete(format!("{u}/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );

    assert_eq!(
        stream_messages(&nats.url()).await,
        0,
        "a rejected request queued something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmissions_create_one_job_and_a_full_queue_answers_503() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_QUEUE_MAX_JOBS", "3")]);
    let worker = start_worker(&cfg.config).await;
    worker.stop().await;
    let gw = start_gateway(&cfg.config).await;
    let http = reqwest::Client::new();
    let u = &gw.url;

    // The same client-chosen id twice: one job.
    let id = uuid::Uuid::now_v7();
    let (s1, b1) = post(
        &http,
        &format!("{u}/v1/jobs"),
        json!({"id": id, "agent": "echo", "message": "once"}),
    )
    .await;
    let (s2, b2) = post(
        &http,
        &format!("{u}/v1/jobs"),
        json!({"id": id, "agent": "echo", "message": "once"}),
    )
    .await;
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(b1["job_id"], b2["job_id"]);

    // The same Idempotency-Key twice: one job; with another body: 409.
    let submit = |key: &'static str, message: &'static str| {
        let http = http.clone();
        let url = format!("{u}/v1/jobs");
        async move {
            let r = http
                .post(url)
                .header("Idempotency-Key", key)
                .json(&json!({"agent": "echo", "message": message}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (a, ba) = submit("key-1", "hello").await;
    let (b, bb) = submit("key-1", "hello").await;
    assert_eq!((a, b), (202, 200));
    assert_eq!(ba["job_id"], bb["job_id"]);
    let (c, bc) = submit("key-1", "different").await;
    assert_eq!(c, 409);
    assert_eq!(bc["code"], "idempotency_conflict");
    assert_eq!(stream_messages(&nats.url()).await, 2);

    // One more fills the queue (max 3); the next is refused with Retry-After and leaves no record.
    assert_eq!(
        post(
            &http,
            &format!("{u}/v1/jobs"),
            json!({"agent": "echo", "message": "3"})
        )
        .await
        .0,
        202
    );
    let r = http
        .post(format!("{u}/v1/jobs"))
        .json(&json!({"agent": "echo", "message": "4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "queue_full");
    let stats: Value = http
        .get(format!("{u}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["total"], 3, "{stats}");

    // A worker drains the queue; every accepted job completes exactly once.
    let worker = start_worker(&cfg.config).await;
    eventually("queue drained", Duration::from_secs(20), || {
        let http = http.clone();
        let url = format!("{u}/stats");
        async move {
            let s: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            s["by_status"]["completed"] == 3
        }
    })
    .await;
    worker.stop().await;
}
