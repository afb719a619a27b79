//! The agent process as a worker sees it: timeouts reach the whole process group, output floods cost flat
//! memory, output bytes are kept losslessly, resource use is recorded.

use std::time::Duration;

use fleet_shared::{ErrorCode, JobRecord, JobStatus};
use fleet_tests::*;

async fn run_fake(nats_url: &str, message: String) -> JobRecord {
    run_fake_with(nats_url, serde_json::json!({ "message": message })).await
}

async fn run_fake_with(nats_url: &str, body: serde_json::Value) -> JobRecord {
    NatsClient::connect(nats_url)
        .await
        .run_job("fake", body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_terminates_then_kills_the_whole_process_group() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let dir = tempfile::tempdir().unwrap();
    let (agent_pid, grandchild_pid) = (dir.path().join("agent"), dir.path().join("grandchild"));
    let started = std::time::Instant::now();
    // The agent and its grandchild both ignore SIGTERM: only the SIGKILL after the grace period ends them.
    let message = format!(
        "pid:{} grandchild:{} ignore-term sleep:60",
        agent_pid.display(),
        grandchild_pid.display()
    );
    let record = run_fake_with(
        &nats.url(),
        serde_json::json!({"message": message, "timeout": 1.0}),
    )
    .await;

    assert_eq!(record.status, JobStatus::Timeout);
    assert_eq!(record.error.as_ref().unwrap().code, ErrorCode::Timeout);
    assert_eq!(
        record.signal,
        Some(libc::SIGKILL),
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    for file in [agent_pid, grandchild_pid] {
        let pid: i32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        eventually("process gone", Duration::from_secs(3), || async move {
            !process_alive(pid)
        })
        .await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_is_capped_in_the_record_with_flat_worker_memory() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_WORKER_OUTPUT_CAP_BYTES", "1000")]);
    let worker = FleetProcess::worker(&cfg);
    wait_for_agents(&cfg.config).await;
    let before = worker.peak_rss_kb();
    let flood: u64 = 100 * 1024 * 1024;
    let record = run_fake(&nats.url(), format!("flood:{flood}")).await;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.stdout_bytes, flood);
    assert_eq!(record.stdout.len(), 1000);
    assert_eq!(record.stdout_truncated_bytes, flood - 1000);
    let after = worker.peak_rss_kb();
    // The first job with full logs costs a fixed 3.5–3.7 MiB here (blocking-pool threads, the log writer's buffer,
    // the upload's hash buffer), the same for 10 MB of output as for 100 MB; a 4 MiB bound failed under load.
    // Output held in memory would show as its full 100 MB.
    assert!(
        after < before + 8 * 1024,
        "worker peak RSS grew from {before} KiB to {after} KiB on 100 MB of output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_lossless_in_the_full_log_and_replaced_in_the_record() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_WORKER_KEEP_WORKSPACES", "true")]);
    let worker = start_worker(&cfg.config).await;
    let record = run_fake(&nats.url(), "invalid-utf8".into()).await;
    let raw = b"ok \xff\xfe bad \xc3\x28 end\n";
    assert_eq!(record.stdout, String::from_utf8_lossy(raw));
    assert!(record.stdout.contains('\u{fffd}'));
    let log = cfg
        .config
        .worker
        .work_dir
        .join(format!("{}-{}", record.id, record.attempt))
        .join("stdout.log");
    assert_eq!(std::fs::read(log).unwrap(), raw);
    let resources = record.resources.expect("resources recorded");
    assert!(resources.max_rss_kb > 0 && resources.wall_ms < 10_000);
    assert_eq!(record.exit_code, Some(0));
    worker.stop().await;
}
