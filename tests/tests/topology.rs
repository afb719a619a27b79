//! The NATS topology is created once and checked, never overwritten: a process whose settings differ from the
//! existing streams and buckets refuses to start, naming the setting and how to migrate.

use fleet_tests::*;

async fn ensure_error(nats_url: &str, extra: &[(&str, &str)]) -> String {
    let cfg = test_config(nats_url, extra);
    let client = fleet_shared::nats::connect(&cfg.config.nats, "topology-test")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    match fleet_shared::Topology::new(&cfg.config.nats.prefix)
        .ensure(&js, &cfg.config.queue)
        .await
    {
        Ok(_) => panic!("settings {extra:?} were accepted over the existing topology"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_settings_are_refused_with_the_setting_named() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;

    // The same settings again: fine, any number of times.
    let client = fleet_shared::nats::connect(&cfg.config.nats, "topology-test")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    fleet_shared::Topology::new("fleet")
        .ensure(&js, &cfg.config.queue)
        .await
        .expect("same settings");

    let e = ensure_error(&nats.url(), &[("FLEET_QUEUE_MAX_JOBS", "5")]).await;
    assert!(
        e.contains("FLEET_JOBS exists with max messages = 100000"),
        "{e}"
    );
    assert!(e.contains("`queue.max_jobs`"), "{e}");
    assert!(
        e.contains("nats stream edit FLEET_JOBS --max-msgs=5"),
        "{e}"
    );

    let e = ensure_error(&nats.url(), &[("FLEET_QUEUE_REPLICAS", "3")]).await;
    assert!(e.contains("replicas = 1"), "{e}");
    assert!(e.contains("`queue.replicas`"), "{e}");

    let e = ensure_error(&nats.url(), &[("FLEET_QUEUE_DUPLICATE_WINDOW_SECS", "30")]).await;
    assert!(e.contains("`queue.duplicate_window_secs`"), "{e}");

    let e = ensure_error(&nats.url(), &[("FLEET_QUEUE_RETENTION_HOURS", "1")]).await;
    assert!(e.contains("`queue.retention_hours`"), "{e}");

    // A gateway with such settings does not start, and says why.
    let bad = test_config(&nats.url(), &[("FLEET_QUEUE_MAX_JOBS", "5")]);
    let client = fleet_shared::nats::connect(&bad.config.nats, "topology-test")
        .await
        .expect("connect");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let run = fleet_gateway::run(
        listener,
        std::sync::Arc::new(bad.config.clone()),
        client,
        std::future::pending(),
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("fails fast")
        .expect_err("refused");
    assert!(err.to_string().contains("queue.max_jobs"), "{err}");

    // Nothing was changed: the fleet still runs jobs.
    let gw = start_gateway(&cfg.config).await;
    let r = gw
        .api()
        .post(
            "/v1/jobs?wait=20",
            &serde_json::json!({"agent": "echo", "message": "still here"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    worker.stop().await;
}

/// A fleet upgraded in place: the jobs stream and an agent consumer as the version before owner subjects made
/// them, with a job waiting. The new processes widen both, and old and new jobs all run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_consumers_of_the_previous_version_are_upgraded() {
    use async_nats::jetstream::{consumer, stream};
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[("FLEET_AUTH_MODE", "required")]);
    let client = fleet_shared::nats::connect(&cfg.config.nats, "topology-test")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let topology = fleet_shared::Topology::new("fleet");
    let old_stream = stream::Config {
        subjects: vec!["fleet.jobs.*".into()],
        ..topology.jobs_stream_config(&cfg.config.queue)
    };
    let jobs = js.create_stream(old_stream).await.expect("old stream");
    jobs.create_consumer(consumer::pull::Config {
        filter_subject: "fleet.jobs.echo".into(),
        filter_subjects: Vec::new(),
        ..topology.agent_consumer_config("echo", &cfg.config.queue, Default::default())
    })
    .await
    .expect("old consumer");
    let probe = fleet_tests::clients::NatsClient::connect(&nats.url()).await;
    let waiting = uuid::Uuid::now_v7();
    probe
        .publish_job(
            "echo",
            &serde_json::json!({"id": waiting, "agent": "echo", "message": "from before"}),
        )
        .await;

    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let record = probe
        .wait_record(waiting, "the waiting job's end", |r| r.status.is_terminal())
        .await;
    assert_eq!(record.status, fleet_shared::JobStatus::Completed);
    let mut jobs = js.get_stream("FLEET_JOBS").await.expect("stream");
    assert_eq!(
        jobs.info().await.expect("info").config.subjects,
        ["fleet.jobs.>"]
    );
    let (_, key) = create_key(&cfg, &["--name", "after", "--agent", "echo"]);
    let r = gw
        .api()
        .with_key(&key)
        .post(
            "/v1/jobs?wait=20",
            &serde_json::json!({"agent": "echo", "message": "owned"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    worker.stop().await;
}
