//! Workers crash, NATS restarts, workers are told to stop: every accepted job still ends in exactly one terminal
//! record, and its reply subject hears exactly one final message.

use std::time::Duration;

use fleet_shared::codec::{decode, Format};
use fleet_shared::{ErrorCode, JobRecord, JobStatus};
use fleet_tests::*;
use futures::StreamExt;
use serde_json::json;

/// Publishes a script for the fake agent under a fresh id and returns the id.
async fn publish_fake(nats: &NatsClient, script: &str, reply_to: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    nats.publish_job(
        "fake",
        &json!({"id": id, "message": script, "reply_to": reply_to}),
    )
    .await;
    id
}

/// Runs `script` on a `fleet worker` process, kills that worker with SIGKILL once the job is running, starts a
/// second worker, and returns the job's terminal record together with the second worker (kept alive).
async fn crash_mid_job(
    cfg: &TestConfig,
    nats: &NatsClient,
    script: &str,
    reply_to: &str,
) -> (JobRecord, FleetProcess) {
    let first = FleetProcess::worker(cfg);
    let id = publish_fake(nats, script, reply_to).await;
    nats.wait_record(id, "first run", |r| r.status == JobStatus::Running)
        .await;
    first.signal(libc::SIGKILL);
    drop(first);
    let second = FleetProcess::worker(cfg);
    let record = nats
        .wait_record(id, "terminal record", |r| r.status.is_terminal())
        .await;
    (record, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_redelivers_to_another_worker_with_one_terminal_record_and_one_reply() {
    let server = NatsServer::start();
    let cfg = test_config(&server.url(), &[("FLEET_QUEUE_ACK_WAIT_SECS", "2")]);
    let nats = NatsClient::connect(&server.url()).await;
    let mut replies = nats.client.subscribe("crash.reply").await.unwrap();
    nats.client.flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (r, _second) = crash_mid_job(
        &cfg,
        &nats,
        &format!("count:{} sleep:2 print:done", runs.display()),
        "crash.reply",
    )
    .await;
    let id = r.id;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.attempt, 2);
    assert_eq!(r.stdout, "done\n");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);
    assert_eq!(
        count_until_quiet(&mut replies, Duration::from_secs(3)).await,
        1
    );
    let terminal = status_history(&nats, id)
        .await
        .into_iter()
        .filter(|s| s.is_terminal())
        .count();
    assert_eq!(terminal, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_does_not_outlive_a_worker_killed_with_sigkill() {
    let server = NatsServer::start();
    let cfg = test_config(&server.url(), &[]);
    let nats = NatsClient::connect(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("agent");
    let worker = FleetProcess::worker(&cfg);
    let script = format!("pid:{} sleep:60", pid_file.display());
    let id = publish_fake(&nats, &script, "orphan.reply").await;
    nats.wait_record(id, "running", |r| r.status == JobStatus::Running)
        .await;
    eventually("the agent wrote its pid", Duration::from_secs(10), || {
        let pid_file = pid_file.clone();
        async move { pid_file.exists() }
    })
    .await;
    assert!(process_alive(pid_in(&pid_file)));
    worker.signal(libc::SIGKILL);
    processes_gone("the agent died with its worker", &[&pid_file]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_exhausted_by_dead_workers_end_failed_with_worker_lost() {
    let server = NatsServer::start();
    let cfg = test_config(
        &server.url(),
        &[
            ("FLEET_QUEUE_ACK_WAIT_SECS", "1"),
            ("FLEET_QUEUE_MAX_ATTEMPTS", "1"),
        ],
    );
    let nats = NatsClient::connect(&server.url()).await;
    let mut replies = nats.client.subscribe("lost.reply").await.unwrap();
    nats.client.flush().await.unwrap();
    let (r, _second) = crash_mid_job(&cfg, &nats, "sleep:30", "lost.reply").await;
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.error.unwrap().code, ErrorCode::WorkerLost);
    assert_eq!(
        count_until_quiet(&mut replies, Duration::from_secs(2)).await,
        1
    );
    assert_eq!(nats.queued_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_loses_no_queued_or_running_job() {
    let mut server = NatsServer::start();
    let cfg = test_config(&server.url(), &[("FLEET_WORKER_MAX_CONCURRENT", "2")]);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = api
            .post(
                "/v1/jobs",
                &json!({"agent": "fake", "message": format!("sleep:1 print:job{i}")}),
            )
            .await;
        ids.push(r.job_uuid());
    }
    // The scenario: NATS goes away while two jobs run and four wait.
    let running_now = || async {
        let mut running = 0;
        for id in &ids {
            let r = api.get(&format!("/v1/jobs/{id}")).await;
            running += usize::from(r.body["status"] == "running");
        }
        running
    };
    eventually("two jobs running", Duration::from_secs(10), || async {
        running_now().await == 2
    })
    .await;
    server.restart(Duration::from_millis(500));

    let nats = NatsClient::connect(&server.url()).await;
    for (i, id) in ids.iter().enumerate() {
        let r = nats
            .wait_record(*id, "job after restart", |r| r.status.is_terminal())
            .await;
        assert_eq!(r.status, JobStatus::Completed, "{r:?}");
        assert_eq!(r.stdout, format!("job{i}\n"));
    }
    // The gateway reconnected by itself.
    assert_eq!(
        api.post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": "after"})
        )
        .await
        .status,
        200
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_jobs_finish_and_hands_long_ones_to_another_worker() {
    let server = NatsServer::start();
    let cfg = test_config(
        &server.url(),
        &[("FLEET_WORKER_SHUTDOWN_GRACE_SECS", "1.5")],
    );
    let nats = NatsClient::connect(&server.url()).await;
    let mut first = FleetProcess::worker(&cfg);
    wait_for_agents(&cfg.config).await;
    let short = publish_fake(&nats, "sleep:0.5 print:short", "term.reply").await;
    let long = publish_fake(&nats, "ignore-term sleep:4 print:long", "term.reply").await;
    nats.wait_record(short, "short running", |r| r.status == JobStatus::Running)
        .await;
    nats.wait_record(long, "long running", |r| r.status == JobStatus::Running)
        .await;
    first.signal(libc::SIGTERM);

    let r = nats
        .wait_record(short, "short finished", |r| r.status.is_terminal())
        .await;
    assert_eq!((r.status, r.attempt), (JobStatus::Completed, 1));
    // The long job is handed back: queued again, then finished by the next worker.
    nats.wait_record(long, "long handed back", |r| r.status == JobStatus::Queued)
        .await;
    let exit = tokio::task::spawn_blocking(move || first.child.wait().map(|s| s.success()))
        .await
        .unwrap()
        .unwrap();
    assert!(exit, "worker exits cleanly after SIGTERM");
    let _second = FleetProcess::worker(&cfg);
    let r = nats
        .wait_record(long, "long finished", |r| r.status.is_terminal())
        .await;
    assert_eq!(
        (r.status, r.attempt, r.stdout.as_str()),
        (JobStatus::Completed, 2, "long\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_job_kept_alive_by_progress_acks_runs_once() {
    let server = NatsServer::start();
    let cfg = test_config(&server.url(), &[("FLEET_QUEUE_ACK_WAIT_SECS", "1")]);
    let worker = start_worker(&cfg.config).await;
    let nats = NatsClient::connect(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Five ack-waits long: without in-progress acks it would be redelivered four times.
    let id = publish_fake(
        &nats,
        &format!("count:{} sleep:5", runs.display()),
        "long.reply",
    )
    .await;
    let r = nats
        .wait_record(id, "long job", |r| r.status.is_terminal())
        .await;
    assert_eq!((r.status, r.attempt), (JobStatus::Completed, 1));
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    worker.stop().await;
}

/// The statuses a job's record went through, oldest first (the bucket keeps two revisions).
async fn status_history(nats: &NatsClient, id: uuid::Uuid) -> Vec<JobStatus> {
    let history: Vec<_> = nats
        .records
        .history(id.to_string())
        .await
        .expect("record history")
        .collect()
        .await;
    history
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .filter_map(|e| decode::<JobRecord>(&e.value, Format::MessagePack).ok())
        .map(|r| r.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_runs_are_claimed_only_when_they_outlive_the_claim_delay() {
    let server = NatsServer::start();
    let cfg = test_config(&server.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let nats = NatsClient::connect(&server.url()).await;

    let quick = publish_fake(&nats, "print:quick", "deferred.reply").await;
    let r = nats
        .wait_record(quick, "quick job", |r| r.status.is_terminal())
        .await;
    assert_eq!((r.status, r.attempt), (JobStatus::Completed, 1));
    assert_eq!(status_history(&nats, quick).await, [JobStatus::Completed]);

    let slow = publish_fake(&nats, "sleep:0.5 print:slow", "deferred.reply").await;
    let running = nats
        .wait_record(slow, "slow job claimed", |r| r.status == JobStatus::Running)
        .await;
    assert_eq!(running.attempt, 1);
    let r = nats
        .wait_record(slow, "slow job", |r| r.status.is_terminal())
        .await;
    assert_eq!(
        (r.status, r.attempt, r.stdout.as_str()),
        (JobStatus::Completed, 1, "slow\n")
    );
    assert_eq!(
        status_history(&nats, slow).await,
        [JobStatus::Running, JobStatus::Completed]
    );
    // The claim comes a delay after the start; the record still says when the agent started, in the running
    // record and the terminal one alike.
    assert_eq!(running.started_at, r.started_at);
    let (started, finished) = (
        r.started_at.expect("started"),
        r.finished_at.expect("finished"),
    );
    let wall = r.resources.as_ref().expect("resources").wall_ms as i64;
    assert!(
        (finished - started).num_milliseconds() >= wall,
        "started {started}, finished {finished}, yet the agent ran {wall} ms"
    );
    worker.stop().await;

    // With no delay every job is claimed before it runs.
    let cfg = test_config(&server.url(), &[("FLEET_WORKER_CLAIM_DELAY_SECS", "0")]);
    let worker = start_worker(&cfg.config).await;
    let eager = publish_fake(&nats, "print:eager", "deferred.reply").await;
    nats.wait_record(eager, "eager job", |r| r.status.is_terminal())
        .await;
    assert_eq!(
        status_history(&nats, eager).await,
        [JobStatus::Running, JobStatus::Completed]
    );
    worker.stop().await;
}

/// An agent whose last worker is gone for good (here: removed from the only worker's configuration) is
/// forgotten after `queue.agent_idle_secs`: its consumer is removed, new jobs for it are refused, and a job
/// still queued for it ends `failed` / `unknown_agent` with a reply, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_workers_are_gone_is_forgotten_and_its_queued_jobs_fail() {
    let server = NatsServer::start();
    let settings = [
        ("FLEET_QUEUE_AGENT_IDLE_SECS", "2"),
        ("FLEET_WORKER_UNKNOWN_AGENT_GRACE_SECS", "1"),
    ];
    let cfg = test_config(&server.url(), &settings);
    let both = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let listed = |body: &serde_json::Value, name: &str| {
        body["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == name))
    };
    assert!(listed(&api.get("/v1/agents").await.body, "fake"));
    // The worker comes back serving `echo` only: nobody pulls for `fake` any more.
    both.stop().await;
    let mut echo_only_settings = settings.to_vec();
    echo_only_settings.push(("FLEET_WORKER_AGENTS", "echo"));
    let echo_only = start_worker(&test_config(&server.url(), &echo_only_settings).config).await;
    let nc = NatsClient::connect(&server.url()).await;
    let id = uuid::Uuid::now_v7();
    nc.publish_job("fake", &json!({"id": id, "message": "print:never"}))
        .await;

    let r = nc
        .wait_record(id, "the stranded job ended", |r| r.status.is_terminal())
        .await;
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(fleet_shared::ErrorCode::UnknownAgent)
    );
    eventually("fake no longer listed", Duration::from_secs(20), || async {
        !listed(&api.get("/v1/agents").await.body, "fake")
    })
    .await;
    let refused = api
        .post("/v1/jobs", &json!({"agent": "fake", "message": "x"}))
        .await;
    refused.assert_problem(422, "unknown_agent");
    assert!(listed(&api.get("/v1/agents").await.body, "echo"));
    echo_only.stop().await;
}
