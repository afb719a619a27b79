//! `/metrics` on the gateway and on the worker's own listener reflect a run of 100 jobs exactly, and the
//! worker's `/health` and `/ready` answer.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_tests::metrics::{sample, samples, scrape};
use fleet_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_hundred_jobs_exactly() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let (worker, worker_addr) = start_worker_listening(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let worker_url = format!("http://{worker_addr}");

    // The worker's listener comes up with the rest of the worker, a moment after `start_worker` returns.
    eventually("the worker's /health", Duration::from_secs(10), || async {
        reqwest::get(format!("{worker_url}/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let ready = reqwest::get(format!("{worker_url}/ready"))
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);

    let mut ids = Vec::new();
    for i in 0..100 {
        let body = match i % 10 {
            0 => json!({"agent": "fake", "message": "exit:2"}),
            1 => json!({"agent": "fake", "message": format!("write:out.bin={}", 1000 + i)}),
            2 => json!({"agent": "fake", "message": "sleep:5", "timeout": 0.3}),
            _ => json!({"agent": "echo", "message": format!("job {i}")}),
        };
        let r = api.post("/v1/jobs", &body).await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.job_id());
    }
    // One bad request, counted under its own status.
    let bad = api.post("/v1/jobs", &json!({"agent": "echo"})).await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    let mut by_agent_status: BTreeMap<String, f64> = BTreeMap::new();
    let mut runs_by_agent: BTreeMap<String, f64> = BTreeMap::new();
    let mut stored_bytes = 0u64;
    let mut stored_files = 0usize;
    for id in &ids {
        let rec = api.get(&format!("/v1/jobs/{id}?wait=60")).await.body;
        let agent = rec["request"]["agent"].as_str().expect("agent").to_string();
        let status = rec["status"].as_str().expect("status").to_string();
        assert_ne!(status, "queued", "{rec}");
        assert_ne!(status, "running", "{rec}");
        assert_eq!(rec["attempt"], 1, "{rec}");
        *by_agent_status
            .entry(format!(r#"{{agent="{agent}",status="{status}"}}"#))
            .or_default() += 1.0;
        *runs_by_agent
            .entry(format!(r#"{{agent="{agent}"}}"#))
            .or_default() += 1.0;
        for f in rec["files"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(rec["logs"].as_array().into_iter().flatten())
        {
            stored_bytes += f["size"].as_u64().expect("size");
            stored_files += 1;
        }
    }
    assert_eq!(by_agent_status.len(), 4, "{by_agent_status:?}");
    assert_eq!(stored_files, 10);

    let w = scrape(&format!("{worker_url}/metrics")).await;
    assert_eq!(
        samples(&w, "fleet_worker_jobs_total"),
        by_agent_status,
        "{w}"
    );
    assert_eq!(
        samples(&w, "fleet_worker_run_seconds_count"),
        runs_by_agent,
        "{w}"
    );
    assert_eq!(
        samples(&w, "fleet_worker_queue_wait_seconds_count"),
        runs_by_agent,
        "{w}"
    );
    assert_eq!(
        sample(&w, r#"fleet_worker_upload_bytes_total{target="default"}"#),
        Some(stored_bytes as f64),
        "{w}"
    );
    assert_eq!(
        sample(&w, r#"fleet_worker_uploaded_files_total{target="default"}"#),
        Some(stored_files as f64),
        "{w}"
    );
    // One worker: every message it handed back (a pull for one agent brought more jobs than slots left free by
    // the other's) came back to it once more, and nothing else was redelivered.
    let handed_back: BTreeMap<String, f64> = samples(&w, "fleet_worker_handed_back_total")
        .into_iter()
        .map(|(labels, v)| {
            let agent = labels.split(',').next().expect("agent label").to_string() + "}";
            assert!(labels.ends_with(r#"reason="no_free_slot"}"#), "{labels}");
            (agent, v)
        })
        .collect();
    let mut redelivered = samples(&w, "fleet_worker_redeliveries_total");
    redelivered.retain(|_, v| *v > 0.0);
    assert_eq!(redelivered, handed_back, "{w}");
    assert!(
        samples(&w, "fleet_worker_upload_errors_total").is_empty(),
        "{w}"
    );
    assert_eq!(sample(&w, "fleet_worker_slots"), Some(8.0), "{w}");
    // The last job's message is settled just after its record is written.
    eventually("no job in flight", Duration::from_secs(5), || async {
        let w = scrape(&format!("{worker_url}/metrics")).await;
        samples(&w, "fleet_worker_jobs_in_flight")
            .values()
            .all(|v| *v == 0.0)
    })
    .await;

    let g = scrape(&format!("{}/metrics", gw.url)).await;
    let submitted = samples(&g, "fleet_jobs_submitted_total");
    assert_eq!(submitted.get(r#"{agent="echo"}"#), Some(&70.0), "{g}");
    assert_eq!(submitted.get(r#"{agent="fake"}"#), Some(&30.0), "{g}");
    assert_eq!(
        sample(
            &g,
            r#"fleet_http_requests_total{method="POST",route="/v1/jobs",status="202"}"#
        ),
        Some(100.0),
        "{g}"
    );
    assert_eq!(
        sample(
            &g,
            r#"fleet_http_requests_total{method="POST",route="/v1/jobs",status="422"}"#
        ),
        Some(1.0),
        "{g}"
    );
    assert_eq!(
        sample(
            &g,
            r#"fleet_http_requests_total{method="GET",route="/v1/jobs/{id}",status="200"}"#
        ),
        Some(100.0),
        "{g}"
    );
    assert_eq!(
        sample(&g, r#"fleet_http_request_seconds_count{route="/v1/jobs"}"#),
        Some(101.0),
        "{g}"
    );
    for agent in ["echo", "fake"] {
        assert_eq!(
            sample(&g, &format!(r#"fleet_queue_pending{{agent="{agent}"}}"#)),
            Some(0.0),
            "{g}"
        );
    }

    // Queue depth while no worker serves the agent: the gateway reports what waits.
    worker.stop().await;
    let not_ready = reqwest::get(format!("{worker_url}/ready")).await;
    assert!(not_ready.is_err() || not_ready.is_ok_and(|r| r.status() == 503));
    for i in 0..7 {
        let r = api
            .post(
                "/v1/jobs",
                &json!({"agent": "echo", "message": format!("waiting {i}")}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let g = scrape(&format!("{}/metrics", gw.url)).await;
    assert_eq!(
        sample(&g, r#"fleet_queue_pending{agent="echo"}"#),
        Some(7.0),
        "{g}"
    );
}
