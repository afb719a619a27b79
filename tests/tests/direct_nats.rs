//! Programs that publish jobs straight to NATS: replies on their subject, records in KV, clear failures.

use std::time::Duration;

use fleet_shared::{ErrorCode, JobStatus};
use fleet_tests::*;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_msgpack_publishers_get_their_record_on_the_reply_subject_and_in_kv() {
    let server = NatsServer::start();
    let cfg = test_config(&server.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let nats = NatsClient::connect(&server.url()).await;
    let mut replies = nats.client.subscribe("my.replies.>").await.unwrap();

    // JSON without id: the worker derives one; the reply comes back as JSON.
    nats.publish_job(
        "echo",
        &serde_json::json!({"message": "from json", "reply_to": "my.replies.1"}),
    )
    .await;
    let (record, ct) = next_reply(&mut replies, PATIENCE).await;
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.stdout, "from json\n");

    // MessagePack with an id and a header-named reply subject.
    let id = uuid::Uuid::now_v7();
    let payload =
        rmp_serde::to_vec_named(&serde_json::json!({"id": id, "message": "from msgpack"})).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Fleet-Reply-To", "my.replies.2");
    nats.js
        .publish_with_headers(nats.topology.jobs_subject("echo"), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, ct) = next_reply(&mut replies, PATIENCE).await;
    assert_eq!(ct.as_deref(), Some("application/msgpack"));
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.error);
    assert_eq!(record.id, id);
    assert_eq!(record.stdout, "from msgpack\n");

    // The KV record is the same terminal record.
    assert_eq!(nats.record(id).await, Some(record));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unknown_agents_get_a_failed_record_not_silence() {
    let server = NatsServer::start();
    let cfg = test_config(&server.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let nats = NatsClient::connect(&server.url()).await;
    let mut replies = nats.client.subscribe("bad.replies.>").await.unwrap();

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Fleet-Reply-To", "bad.replies.garbage");
    nats.js
        .publish_with_headers(
            nats.topology.jobs_subject("echo"),
            headers,
            "\u{1}not a job".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, _) = next_reply(&mut replies, PATIENCE).await;
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.error.unwrap().code, ErrorCode::InvalidJob);

    let body = serde_json::json!({"message": "anyone?", "reply_to": "bad.replies.unknown"});
    nats.publish_job("no-such-agent", &body).await;
    let (record, _) = next_reply(&mut replies, PATIENCE).await;
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.error.as_ref().unwrap().code, ErrorCode::UnknownAgent);
    // Its message is gone from the queue, and the record is in KV.
    eventually(
        "unknown-agent message removed",
        Duration::from_secs(5),
        || async { nats.queued_messages().await == 0 },
    )
    .await;
    assert!(nats.record(record.id).await.is_some());
    worker.stop().await;
}
