//! A three-node JetStream cluster with every stream and bucket replicated three times: the node leading the jobs
//! stream is killed mid-run, and every job still ends, each with exactly one terminal record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleet_tests::metrics::{sample, scrape};
use fleet_tests::*;
use futures::StreamExt;
use serde_json::{json, Value};

const JOBS: usize = 40;

/// Waits for the job's terminal record through the gateway, riding out the answers of a cluster in failover.
async fn terminal_record(api: &Api, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = api.get(&format!("/v1/jobs/{id}?wait=10")).await;
        if r.status == 200
            && !["queued", "running"].contains(&r.body["status"].as_str().unwrap_or(""))
        {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not end: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_of_a_three_node_cluster_mid_run_loses_no_job() {
    let mut cluster = NatsCluster::start(3);
    let settings = [
        ("FLEET_QUEUE_REPLICAS", "3"),
        ("FLEET_WORKER_MAX_CONCURRENT", "4"),
    ];
    // Each worker with its own work directory.
    let configs: Vec<TestConfig> = (0..2)
        .map(|_| test_config(&cluster.url(), &settings))
        .collect();
    let config = &configs[0].config;

    // The cluster takes a moment to elect its JetStream leader; until then the topology cannot be created.
    let probe = fleet_shared::nats::connect(&config.nats, "cluster-probe")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(probe);
    let deadline = Instant::now() + Duration::from_secs(60);
    let handles = loop {
        match fleet_shared::Topology::new("fleet")
            .ensure(&js, &config.queue)
            .await
        {
            Ok(handles) => break handles,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the cluster never took the topology: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut jobs_stream = handles.jobs.clone();
    let info = jobs_stream.info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3);
    let cluster_info = info.cluster.clone().expect("a clustered stream");
    assert_eq!(cluster_info.replicas.len(), 2, "{cluster_info:?}");
    let leader: usize = cluster_info
        .leader
        .as_deref()
        .and_then(|l| l.strip_prefix("node"))
        .and_then(|n| n.parse().ok())
        .expect("a leader");

    // Done notices, watched from a node that stays up.
    let survivor = (leader + 1) % 3;
    let observer = async_nats::connect(cluster.node_url(survivor))
        .await
        .expect("observer");
    let mut done = observer
        .subscribe(fleet_tests::topology().done_subject_wildcard())
        .await
        .expect("subscribe");
    observer.flush().await.expect("flush");

    let (one, two) = (
        start_worker_listening(&configs[0].config).await,
        start_worker_listening(&configs[1].config).await,
    );
    let addrs = [one.1, two.1];
    let workers = vec![one.0, two.0];
    let gw = start_gateway(config).await;
    let api = gw.api();

    let mut ids = Vec::new();
    for i in 0..JOBS {
        let r = api
            .post(
                "/v1/jobs",
                &json!({"agent": "fake", "message": format!("sleep:0.3 print:job-{i}")}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.job_id());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(leader);

    for (i, id) in ids.iter().enumerate() {
        let record = terminal_record(&api, id).await;
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["stdout"], format!("job-{i}\n"), "{record}");
    }

    // Exactly one end per job: the workers wrote one terminal record per job between them, and none was announced
    // twice. A done notice is core NATS, at most once: one in flight when its server died is lost, which is why
    // gateways waiting on a job also re-read its record (tests/events.rs shows a waiter riding out a lost notice).
    let mut notices: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), done.next()).await {
        let id = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .expect("id")
            .to_string();
        *notices.entry(id).or_default() += 1;
    }
    for (id, n) in &notices {
        assert!(ids.contains(id), "a done notice for an unknown job {id}");
        assert_eq!(*n, 1, "done notices for {id}: {notices:?}");
    }
    let mut ended = 0.0;
    for addr in &addrs {
        let text = scrape(&format!("http://{addr}/metrics")).await;
        ended += sample(
            &text,
            r#"fleet_worker_jobs_total{agent="fake",status="completed"}"#,
        )
        .unwrap_or(0.0);
    }
    assert_eq!(ended, JOBS as f64);
    for w in workers {
        w.stop().await;
    }
}
