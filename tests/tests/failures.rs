//! Workers crash, NATS restarts, workers are told to stop: every accepted job still ends in exactly one terminal
//! record, and its reply subject hears exactly one final message.

use std::time::Duration;

use fleet_shared::codec::{decode, Format};
use fleet_shared::{ErrorCode, JobRecord, JobStatus};
use fleet_tests::*;
use futures::StreamExt;
use serde_json::json;

struct Probe {
    js: async_nats::jetstream::Context,
    kv: async_nats::jetstream::kv::Store,
    client: async_nats::Client,
}

impl Probe {
    async fn new(url: &str) -> Self {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        // Created by whichever process starts first; a probe may be first.
        let cfg = test_config(url, &[]);
        let handles = fleet_shared::Topology::new("fleet")
            .ensure(&js, &cfg.config.queue)
            .await
            .unwrap();
        Self {
            js,
            kv: handles.records,
            client,
        }
    }

    async fn publish(&self, message: &str, reply_to: &str) -> uuid::Uuid {
        let id = uuid::Uuid::now_v7();
        let body = json!({"id": id, "message": message, "reply_to": reply_to});
        self.js
            .publish("fleet.jobs.fake", serde_json::to_vec(&body).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        id
    }

    async fn record(&self, id: uuid::Uuid) -> Option<JobRecord> {
        let v = self.kv.get(id.to_string()).await.ok()??;
        decode(&v, Format::MessagePack).ok()
    }

    async fn wait_status(
        &self,
        id: uuid::Uuid,
        what: &str,
        pred: impl Fn(&JobRecord) -> bool,
    ) -> JobRecord {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self.record(id).await {
                if pred(&r) {
                    return r;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Counts messages on a subject until `quiet` passes with nothing new.
async fn count_replies(sub: &mut async_nats::Subscriber, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(quiet, sub.next()).await {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_redelivers_to_another_worker_with_one_terminal_record_and_one_reply() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_QUEUE_ACK_WAIT_SECS", "2")]);
    let probe = Probe::new(&nats.url()).await;
    let mut replies = probe.client.subscribe("crash.reply").await.unwrap();
    probe.client.flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let first = WorkerProcess::start(&cfg);
    let id = probe
        .publish(
            &format!("count:{} sleep:2 print:done", runs.display()),
            "crash.reply",
        )
        .await;
    probe
        .wait_status(id, "first run", |r| r.status == JobStatus::Running)
        .await;
    first.signal(libc::SIGKILL);
    drop(first);

    let _second = WorkerProcess::start(&cfg);
    let r = probe
        .wait_status(id, "terminal record", |r| r.status.is_terminal())
        .await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.attempt, 2);
    assert_eq!(r.stdout, "done\n");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);
    assert_eq!(count_replies(&mut replies, Duration::from_secs(3)).await, 1);
    let history: Vec<_> = probe
        .kv
        .history(id.to_string())
        .await
        .unwrap()
        .collect()
        .await;
    let terminal = history.iter().filter_map(|e| e.as_ref().ok()).filter(|e| {
        decode::<JobRecord>(&e.value, Format::MessagePack).is_ok_and(|r| r.status.is_terminal())
    });
    assert_eq!(terminal.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_exhausted_by_dead_workers_end_failed_with_worker_lost() {
    let nats = NatsServer::start();
    let cfg = test_config(
        &nats.url(),
        &[
            ("FLEET_QUEUE_ACK_WAIT_SECS", "1"),
            ("FLEET_QUEUE_MAX_ATTEMPTS", "1"),
        ],
    );
    let probe = Probe::new(&nats.url()).await;
    let mut replies = probe.client.subscribe("lost.reply").await.unwrap();
    probe.client.flush().await.unwrap();
    let first = WorkerProcess::start(&cfg);
    let id = probe.publish("sleep:30", "lost.reply").await;
    probe
        .wait_status(id, "run", |r| r.status == JobStatus::Running)
        .await;
    first.signal(libc::SIGKILL);
    drop(first);

    let _second = WorkerProcess::start(&cfg);
    let r = probe
        .wait_status(id, "terminal record", |r| r.status.is_terminal())
        .await;
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.error.unwrap().code, ErrorCode::WorkerLost);
    assert_eq!(count_replies(&mut replies, Duration::from_secs(2)).await, 1);
    let mut stream = probe.js.get_stream("FLEET_JOBS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_loses_no_queued_or_running_job() {
    let mut nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_WORKER_MAX_CONCURRENT", "2")]);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let r: serde_json::Value = http
            .post(format!("{}/v1/jobs", gw.url))
            .json(&json!({"agent": "fake", "message": format!("sleep:1 print:job{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["job_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart(Duration::from_millis(500));

    let probe = Probe::new(&nats.url()).await;
    for (i, id) in ids.iter().enumerate() {
        let r = probe
            .wait_status(*id, "job after restart", |r| r.status.is_terminal())
            .await;
        assert_eq!(r.status, JobStatus::Completed, "{r:?}");
        assert_eq!(r.stdout, format!("job{i}\n"));
    }
    // The gateway reconnected by itself.
    let r = http
        .post(format!("{}/v1/jobs?wait=20", gw.url))
        .json(&json!({"agent": "echo", "message": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_jobs_finish_and_hands_long_ones_to_another_worker() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_WORKER_SHUTDOWN_GRACE_SECS", "1.5")]);
    let probe = Probe::new(&nats.url()).await;
    let first = WorkerProcess::start(&cfg);
    wait_for_agents(&cfg.config).await;
    let short = probe.publish("sleep:0.5 print:short", "term.reply").await;
    let long = probe
        .publish("ignore-term sleep:4 print:long", "term.reply")
        .await;
    probe
        .wait_status(short, "short running", |r| r.status == JobStatus::Running)
        .await;
    probe
        .wait_status(long, "long running", |r| r.status == JobStatus::Running)
        .await;
    first.signal(libc::SIGTERM);

    let r = probe
        .wait_status(short, "short finished", |r| r.status.is_terminal())
        .await;
    assert_eq!((r.status, r.attempt), (JobStatus::Completed, 1));
    // The long job is handed back: queued again, then finished by the next worker.
    probe
        .wait_status(long, "long handed back", |r| r.status == JobStatus::Queued)
        .await;
    let mut first = first;
    let exit = tokio::task::spawn_blocking(move || first.child.wait().map(|s| s.success()))
        .await
        .unwrap()
        .unwrap();
    assert!(exit, "worker exits cleanly after SIGTERM");
    let _second = WorkerProcess::start(&cfg);
    let r = probe
        .wait_status(long, "long finished", |r| r.status.is_terminal())
        .await;
    assert_eq!(
        (r.status, r.attempt, r.stdout.as_str()),
        (JobStatus::Completed, 2, "long\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_job_kept_alive_by_progress_acks_runs_once() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_QUEUE_ACK_WAIT_SECS", "1")]);
    let worker = start_worker(&cfg.config).await;
    let probe = Probe::new(&nats.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Five ack-waits long: without in-progress acks it would be redelivered four times.
    let id = probe
        .publish(&format!("count:{} sleep:5", runs.display()), "long.reply")
        .await;
    let r = probe
        .wait_status(id, "long job", |r| r.status.is_terminal())
        .await;
    assert_eq!((r.status, r.attempt), (JobStatus::Completed, 1));
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    worker.stop().await;
}
