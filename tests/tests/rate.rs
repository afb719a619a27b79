//! Rate limits: per API key on submissions (other keys and reads unaffected) and per client IP on every request,
//! authenticated or not; past a limit, 429 `rate_limited` with Retry-After, and nothing is queued.

use fleet_tests::clients::NatsClient;
use fleet_tests::*;
use serde_json::json;

fn key(cfg: &TestConfig, name: &str) -> String {
    create_key(cfg, &["--name", name, "--agent", "*"]).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_and_addresses_are_limited_separately() {
    let nats = NatsServer::start();
    let cfg = test_config(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "required"),
            ("FLEET_HTTP_SUBMIT_PER_SEC", "1"),
            ("FLEET_HTTP_SUBMIT_BURST", "3"),
        ],
    );
    declare_agents_without_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let probe = NatsClient::connect(&nats.url()).await;
    let (a, b) = (
        gw.api().with_key(&key(&cfg, "a")),
        gw.api().with_key(&key(&cfg, "b")),
    );
    let job = json!({"agent": "echo", "message": "x"});

    for _ in 0..3 {
        assert_eq!(a.post("/v1/jobs", &job).await.status, 202);
    }
    let r = a.post("/v1/jobs", &job).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["code"], "rate_limited");
    let retry: u64 = r
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        probe.queued_messages().await,
        3,
        "the refused job was not queued"
    );
    // Another key, and reads by the same key, are not held back. (Refills are timed in `rate.rs`'s unit tests,
    // on a fake clock.)
    assert_eq!(b.post("/v1/jobs", &job).await.status, 202);
    assert_eq!(a.get("/v1/jobs").await.status, 200);
    // A chat completion is a submission too (it queues a job), whatever model it names.
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": "x"}]});
    let r = a.post("/v1/chat/completions", &chat).await;
    r.assert_problem(429, "rate_limited");

    // Per address: every request counts, with or without a key, before authentication.
    let strict = test_config(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "required"),
            ("FLEET_HTTP_IP_PER_SEC", "1"),
            ("FLEET_HTTP_IP_BURST", "4"),
        ],
    );
    let gw2 = start_gateway(&strict.config).await;
    // start_gateway polled /ready from 127.0.0.1 until it answered: the test's requests come from another address.
    let fresh: std::net::IpAddr = [127, 0, 0, 2].into();
    let anonymous = gw2.api().from_address(fresh);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(anonymous.get("/v1/jobs").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
    let keyed = gw2.api().from_address(fresh).with_key(&key(&strict, "c"));
    assert_eq!(
        keyed.get("/v1/jobs").await.status,
        429,
        "the address is out, whatever the key"
    );
}
