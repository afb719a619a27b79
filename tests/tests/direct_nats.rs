//! Programs that publish jobs straight to NATS: replies on their subject, records in KV, clear failures.

use std::time::Duration;

use fleet_shared::codec::{decode, Format};
use fleet_shared::{JobRecord, JobStatus};
use fleet_tests::*;
use futures::StreamExt;

async fn next_record(sub: &mut async_nats::Subscriber) -> (JobRecord, Option<String>) {
    let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a reply")
        .expect("open subscription");
    let ct = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.to_string());
    let format = Format::detect(ct.as_deref(), &msg.payload);
    (decode(&msg.payload, format).expect("reply is a record"), ct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_msgpack_publishers_get_their_record_on_the_reply_subject_and_in_kv() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut replies = client.subscribe("my.replies.>").await.unwrap();

    // JSON without id: the worker derives one; the reply comes back as JSON.
    let body = br#"{"message": "from json", "reply_to": "my.replies.1"}"#;
    js.publish("fleet.jobs.echo", body.as_slice().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, ct) = next_record(&mut replies).await;
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.stdout, "from json\n");

    // MessagePack with an id and a header-named reply subject.
    let id = uuid::Uuid::now_v7();
    let payload =
        rmp_serde::to_vec_named(&serde_json::json!({"id": id, "message": "from msgpack"})).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Fleet-Reply-To", "my.replies.2");
    js.publish_with_headers("fleet.jobs.echo", headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, ct) = next_record(&mut replies).await;
    assert_eq!(ct.as_deref(), Some("application/msgpack"));
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.error);
    assert_eq!(record.id, id);
    assert_eq!(record.stdout, "from msgpack\n");

    // The KV record is the same terminal record.
    let kv = js.get_key_value("fleet_jobs").await.unwrap();
    let stored: JobRecord = decode(
        &kv.get(id.to_string()).await.unwrap().unwrap(),
        Format::MessagePack,
    )
    .unwrap();
    assert_eq!(stored, record);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unknown_agents_get_a_failed_record_not_silence() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut replies = client.subscribe("bad.replies.>").await.unwrap();

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Fleet-Reply-To", "bad.replies.garbage");
    js.publish_with_headers("fleet.jobs.echo", headers, "\u{1}not a job".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, _) = next_record(&mut replies).await;
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(
        record.error.unwrap().code,
        fleet_shared::ErrorCode::InvalidJob
    );

    let body = br#"{"message": "anyone?", "reply_to": "bad.replies.unknown"}"#;
    js.publish("fleet.jobs.no-such-agent", body.as_slice().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, _) = next_record(&mut replies).await;
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(
        record.error.as_ref().unwrap().code,
        fleet_shared::ErrorCode::UnknownAgent
    );
    // Its message is gone from the queue, and the record is in KV.
    let mut stream = js.get_stream("FLEET_JOBS").await.unwrap();
    eventually(
        "unknown-agent message removed",
        Duration::from_secs(5),
        || {
            let mut s = stream.clone();
            async move { s.info().await.unwrap().state.messages == 0 }
        },
    )
    .await;
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    let kv = js.get_key_value("fleet_jobs").await.unwrap();
    assert!(kv.get(record.id.to_string()).await.unwrap().is_some());
    worker.stop().await;
}
