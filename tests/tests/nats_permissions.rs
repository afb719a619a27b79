//! The least-privilege NATS users of `deploy/nats/nats-server.conf` are enough to run the fleet (HTTP jobs, live
//! events, cancel, the worker list) and to publish jobs directly, and the direct publisher can do nothing more.

use std::time::Duration;

use fleet_tests::*;
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_permissions_run_the_fleet_and_confine_direct_publishers() {
    let conf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf");
    std::env::set_var("FLEET_NATS_GATEWAY_PASSWORD", "gw-pass");
    std::env::set_var("FLEET_NATS_WORKER_PASSWORD", "wk-pass");
    std::env::set_var("FLEET_NATS_CLIENT_PASSWORD", "cl-pass");
    let nats = NatsServer::start_with(&["-c", conf.to_str().expect("utf-8")]);
    let as_user = |user: &str, pass: &str| {
        test_config(
            &nats.url(),
            &[("FLEET_NATS_USER", user), ("FLEET_NATS_PASSWORD", pass)],
        )
    };
    let worker_cfg = as_user("worker", "wk-pass");
    let gateway_cfg = as_user("gateway", "gw-pass");
    let worker = start_worker(&worker_cfg.config).await;
    let gw = start_gateway(&gateway_cfg.config).await;
    let api = gw.api();

    // A job through HTTP, waited for.
    let r = api
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": "permitted"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    // Live events of a running job, then its cancel.
    let id = api.submit("fake", "print:started sleep:30").await;
    let mut events =
        fleet_tests::clients::SseReader::open(&api, &format!("/v1/jobs/{id}/events"), None).await;
    loop {
        let e = events.next().await.expect("an event");
        if e.event == "output" {
            assert!(e.data.to_string().contains("started"), "{}", e.data);
            break;
        }
    }
    let r = api
        .post(&format!("/v1/jobs/{id}/cancel?wait=10"), &json!({}))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    // The worker list goes through the service API.
    let workers = api.get("/v1/workers").await;
    assert_eq!(
        workers.body["workers"].as_array().map(Vec::len),
        Some(1),
        "{}",
        workers.body
    );

    // A direct publisher: a job in, its reply back.
    let client =
        async_nats::ConnectOptions::with_user_and_password("client".into(), "cl-pass".into())
            .connect(nats.url())
            .await
            .expect("client connects");
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .expect("subscribe to its inbox");
    let js = async_nats::jetstream::new(client.clone());
    js.publish(
        "fleet.jobs.echo",
        serde_json::to_vec(&json!({"message": "direct", "reply_to": inbox}))
            .expect("json")
            .into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let reply = tokio::time::timeout(Duration::from_secs(20), replies.next())
        .await
        .expect("a reply")
        .expect("reply");
    // A JSON job gets a JSON reply.
    let record: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON record");
    assert_eq!(record["stdout"], "direct\n");
    // ... and nothing more: no records, no streams, no events.
    let denied = tokio::time::timeout(Duration::from_secs(5), js.get_key_value("fleet_jobs")).await;
    assert!(
        !matches!(denied, Ok(Ok(_))),
        "the client read the records bucket"
    );
    let mut sneaky = client
        .subscribe("fleet.events.>")
        .await
        .expect("subscribe is sent");
    client.flush().await.ok();
    api.post(
        "/v1/jobs?wait=20",
        &json!({"agent": "echo", "message": "unseen"}),
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), sneaky.next())
            .await
            .is_err(),
        "the client saw another job's events"
    );
    worker.stop().await;
}
