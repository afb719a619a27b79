//! Cancellation over HTTP and over NATS: queued jobs never start, running ones are stopped with their output and
//! files kept, finished ones answer 409, and every race leaves exactly one terminal record and no process behind.

use std::time::Duration;

use fleet_tests::*;
use serde_json::{json, Value};

async fn submit(api: &Api, message: &str, extra: Value) -> String {
    let mut body = json!({"agent": "fake", "message": message});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    let r = api.post("/v1/jobs", &body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.job_id()
}

/// `POST /v1/jobs/{id}/cancel`.
async fn cancel(api: &Api, id: &str) -> Reply {
    api.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await
}

async fn wait_status(api: &Api, id: &str, status: &str) -> Value {
    api.poll(&format!("/v1/jobs/{id}"), status, |r| r["status"] == status)
        .await
}

/// `fake`'s (queued, running) as `/v1/agents` reports them.
async fn agent_load(api: &Api) -> (u64, u64) {
    let r = api.get("/v1/agents").await;
    let agents = r.body["agents"].as_array().cloned().unwrap_or_default();
    let fake = agents
        .iter()
        .find(|a| a["name"] == "fake")
        .unwrap_or_else(|| panic!("no fake agent in {}", r.body));
    (
        fake["queued"].as_u64().expect("queued"),
        fake["running"].as_u64().expect("running"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_jobs_skips_queued_ones_and_refuses_finished_ones() {
    let (nats, _cfg, worker, gw) = start_fleet(&[("FLEET_WORKER_MAX_CONCURRENT", "1")]).await;
    let api = gw.api();
    let dir = tempfile::tempdir().unwrap();
    let (agent_pid, grandchild_pid) = (dir.path().join("agent"), dir.path().join("grandchild"));

    // A running job holding the only slot, with a grandchild, output and a file so far.
    let running = submit(
        &api,
        &format!(
            "write:partial.txt=10 print:started pid:{} grandchild:{} sleep:60",
            agent_pid.display(),
            grandchild_pid.display()
        ),
        json!({}),
    )
    .await;
    wait_status(&api, &running, "running").await;
    // A queued job behind it.
    let queued_marker = dir.path().join("queued-ran");
    let queued = submit(
        &api,
        &format!("pid:{} print:never", queued_marker.display()),
        json!({}),
    )
    .await;
    assert_eq!(
        agent_load(&api).await,
        (1, 1),
        "queued and running before the cancel"
    );

    let r = cancel(&api, &queued).await;
    assert_eq!(
        (r.status, &r.body["status"]),
        (200, &json!("cancelled")),
        "{}",
        r.body
    );
    assert_eq!(r.body["record"]["error"]["code"], "cancelled");
    // Off the queue at once, not when the slot frees: `fleet agents` no longer counts it.
    assert_eq!(
        agent_load(&api).await,
        (0, 1),
        "queued and running after the cancel"
    );

    let r = cancel(&api, &running).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let record = &r.body["record"];
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["stdout"], "started\n");
    assert_eq!(record["files"][0]["name"], "partial.txt", "{record}");
    processes_gone("cancelled process gone", &[&agent_pid, &grandchild_pid]).await;

    // The slot is free: the cancelled queued job is delivered now, and must not run.
    let after = submit(&api, "print:after", json!({})).await;
    wait_status(&api, &after, "completed").await;
    assert!(!queued_marker.exists(), "the cancelled queued job ran");
    let q = api.get(&format!("/v1/jobs/{queued}")).await.body;
    assert_eq!(
        (q["status"].as_str(), q["started_at"].as_str()),
        (Some("cancelled"), None),
        "{q}"
    );
    eventually("no job message left", Duration::from_secs(5), || async {
        NatsClient::connect(&nats.url())
            .await
            .queued_messages()
            .await
            == 0
    })
    .await;

    // Finished jobs cannot be cancelled; unknown ids are accepted for a worker to honour later.
    let r = cancel(&api, &after).await;
    r.assert_problem(409, "job_finished");
    assert!(r.body["message"].as_str().unwrap().contains("completed"));
    let r = cancel(&api, &running).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = api.post("/v1/jobs/not-a-uuid/cancel", &json!({})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cancels_and_timeouts_leave_one_terminal_record_and_one_notice() {
    let (nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let nc = NatsClient::connect(&nats.url()).await;

    // Twice at once.
    let id = submit(&api, "print:x sleep:60", json!({})).await;
    wait_status(&api, &id, "running").await;
    let mut notices = nc.done_notices(&id).await;
    let path = format!("/v1/jobs/{id}/cancel");
    let empty = json!({});
    let (a, b) = tokio::join!(api.post(&path, &empty), api.post(&path, &empty));
    for r in [&a, &b] {
        assert!(
            r.status == 200 && r.body["status"] == "cancelled" || r.status == 409,
            "{} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(
        count_until_quiet(&mut notices, Duration::from_millis(500)).await,
        1
    );

    // Against a timeout: whichever wins, one terminal record, and nothing of the job's process group left.
    let dir = tempfile::tempdir().unwrap();
    for delay_ms in [900u64, 1000, 1100] {
        let (agent_pid, grandchild_pid) = (
            dir.path().join(format!("agent-{delay_ms}")),
            dir.path().join(format!("grandchild-{delay_ms}")),
        );
        let message = format!(
            "pid:{} grandchild:{} sleep:60",
            agent_pid.display(),
            grandchild_pid.display()
        );
        let id = submit(&api, &message, json!({"timeout": 1.0})).await;
        wait_status(&api, &id, "running").await;
        let mut notices = nc.done_notices(&id).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let r = cancel(&api, &id).await;
        assert!(matches!(r.status, 200 | 409), "{} {}", r.status, r.body);
        let end = api
            .poll(&format!("/v1/jobs/{id}"), "the end", |r| {
                r["status"] == "cancelled" || r["status"] == "timeout"
            })
            .await;
        assert_eq!(
            count_until_quiet(&mut notices, Duration::from_millis(500)).await,
            1,
            "{end}"
        );
        processes_gone("the job's processes gone", &[&agent_pid, &grandchild_pid]).await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cancel_requests_reach_directly_published_jobs_before_any_worker_sees_them() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_WORKER_MAX_CONCURRENT", "1")]);
    let worker = start_worker(&cfg.config).await;
    let _gw = start_gateway(&cfg.config).await;
    let nc = NatsClient::connect(&nats.url()).await;

    // Occupy the slot, then publish a job straight to NATS: no record exists for it yet.
    let blocker = uuid::Uuid::now_v7();
    nc.publish_job("fake", &json!({"id": blocker, "message": "sleep:60"}))
        .await;
    nc.wait_record(blocker, "blocker running", |r| {
        r.status == fleet_shared::JobStatus::Running
    })
    .await;
    let id = uuid::Uuid::now_v7();
    let inbox = nc.client.new_inbox();
    let mut replies = nc.client.subscribe(inbox.clone()).await.unwrap();
    nc.publish_job(
        "fake",
        &json!({"id": id, "message": "print:never", "reply_to": inbox}),
    )
    .await;

    let answer = nc
        .client
        .request(nc.topology.cancel_subject(&id), "".into())
        .await
        .expect("a gateway answers");
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["status"], "cancelling", "{answer}");
    let answer = nc
        .client
        .request(nc.topology.cancel_subject(&blocker), "".into())
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert!(
        answer["status"] == "cancelling" || answer["status"] == "cancelled",
        "{answer}"
    );

    // The worker frees up, pulls the job, and records the cancel instead of running it; the publisher hears it.
    let (record, content_type) = next_reply(&mut replies, Duration::from_secs(30)).await;
    assert_eq!(record.status, fleet_shared::JobStatus::Cancelled);
    assert_eq!(record.stdout, "");
    assert_eq!(record.started_at, None);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let answer = nc
        .client
        .request(nc.topology.cancel_subject(&id), "".into())
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["error"]["code"], "job_finished", "{answer}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_an_ended_job_again_and_keeps_its_history() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");

    // Fails once (exit 3), then is retried twice: a cancel of one run does not stop the next.
    let message = format!("count:{} print:ran exit:3", runs.display());
    let r = api
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "fake", "message": message}),
        )
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    let id = r.job_id();

    let r = api.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    let ended = wait_status(&api, &id, "failed").await;
    let history = ended["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{ended}");
    assert_eq!(history[0]["status"], "failed");
    assert_eq!(history[0]["exit_code"], 3);
    assert_eq!(ended["attempt"], 2, "{ended}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);

    // Cancel a run, then retry it: the retry runs.
    let slow = submit(&api, "sleep:60", json!({})).await;
    wait_status(&api, &slow, "running").await;
    let r = cancel(&api, &slow).await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    let r = api
        .post(&format!("/v1/jobs/{slow}/retry"), &json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&api, &slow, "running").await;
    let r = cancel(&api, &slow).await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    let rec = &r.body["record"];
    assert_eq!(rec["history"].as_array().unwrap().len(), 1, "{rec}");

    // Completed and running jobs, and jobs with inline inputs, cannot be retried.
    let done = json!({"agent": "fake", "message": "print:ok"});
    let inline = json!({"agent": "fake", "message": "exit:1",
        "input_files": [{"name": "a.txt", "data_base64": "aGk="}]});
    for body in [done, inline] {
        let id = api.post("/v1/jobs?wait=20", &body).await.job_id();
        let r = api.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
        r.assert_problem(409, "not_retryable");
    }
    let r = api
        .post(
            &format!("/v1/jobs/{}/retry", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 404);
    worker.stop().await;
}
