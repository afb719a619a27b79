//! The API against its own OpenAPI document: schemathesis (PyPI, installed by `scripts/deps test`) generates
//! requests from `/openapi.json` — valid ones, invalid ones, and chains of calls — and checks every answer: no 5xx,
//! only documented status codes and content types, bodies, headers and server-sent events that match their
//! schemas, and every request the schema calls invalid refused.
//!
//! Two things are left out, for reasons the schema cannot help: the WebSocket route (an upgrade is not a
//! request/response exchange; `tests/tests/events.rs` covers it) and the check that every schema-valid request is
//! accepted, because some refusals depend on the fleet's state, not the request's shape (an agent no worker
//! runs, an S3 target without a bucket, a name already taken).

use fleet_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[
        ("FLEET_HTTP_SUBMIT_PER_SEC", "0"),
        ("FLEET_HTTP_READ_PER_SEC", "0"),
        ("FLEET_HTTP_IP_PER_SEC", "0"),
        // Generated sharing targets must not send the gateway anywhere but this machine.
        ("FLEET_ARTIFACTS_SHARING_HOSTS", "127.0.0.1,localhost"),
    ])
    .await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let url = format!("{}/openapi.json", gw.url);
    let run = tokio::process::Command::new("schemathesis")
        .current_dir(scratch.path())
        .args([
            "run",
            &url,
            "--max-examples=30",
            "--request-timeout=20",
            // A fixed seed keeps CI repeatable; run without it locally to explore further.
            "--seed=20261122",
            "--checks=all",
            "--exclude-checks=ignored_auth,positive_data_acceptance",
            "--exclude-path=/v1/jobs/{id}/ws",
            "--no-color",
        ])
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis not found: scripts/deps test installs it");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran: every operation the document names but the WebSocket one, and thousands of cases.
    let document = gw.api().get("/openapi.json").await.body;
    let operations: usize = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|path| path.as_object().map_or(0, |p| p.len()))
        .sum();
    assert!(operations > 30, "{operations} operations");
    let tested = format!("Tested: {}", operations - 1);
    assert!(report.contains(&tested), "{tested} expected in:\n{report}");
    assert!(report.contains("passed"), "{report}");
    worker.stop().await;
}
