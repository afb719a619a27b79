//! Live events over SSE: listeners from the start, joining late, and resuming with Last-Event-ID each see the exact
//! output, in order, once; then the terminal record, and the stream closes. Direct NATS listeners get the same
//! events on `fleet.events.<id>`.

use std::time::Duration;

use fleet_shared::codec::{decode, Format};
use fleet_shared::wire::JobEvent;
use fleet_tests::*;
use futures::StreamExt;
use serde_json::{json, Value};

fn expected_output(lines: u64) -> String {
    (1..=lines).map(|n| format!("line {n}\n")).collect()
}

/// Reads events to the end; returns the stdout text, the output sequence numbers, the ids, and the `end` record.
async fn read_to_end(reader: &mut SseReader) -> (String, Vec<u64>, Vec<u64>, Value) {
    let (mut text, mut seqs, mut ids) = (String::new(), Vec::new(), Vec::new());
    while let Some(e) = reader.next().await {
        if let Some(id) = &e.id {
            ids.push(id.parse().expect("numeric event id"));
        }
        match e.event.as_str() {
            "output" if e.data["stream"] == "stdout" => {
                text.push_str(e.data["text"].as_str().expect("text"));
                seqs.push(e.data["seq"].as_u64().expect("seq"));
            }
            "end" => {
                assert!(
                    reader.next().await.is_none(),
                    "the stream closes after `end`"
                );
                return (text, seqs, ids, e.data["record"].clone());
            }
            _ => {}
        }
    }
    panic!("the stream closed without an `end` event");
}

fn assert_in_order_once(seqs: &[u64], ids: &[u64]) {
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "output seqs not contiguous"
    );
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "event ids not increasing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_listeners_early_late_and_resuming_each_see_the_exact_output() {
    let (nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let nc = NatsClient::connect(&nats.url()).await;

    // Subscribed before the job exists, so the raw subscriber sees every event.
    let job_id = uuid::Uuid::now_v7();
    let mut raw = nc.events(&job_id).await;
    let message = "lines:1-5000 sleep:1 lines:5001-10000 write:done.txt=3";
    let r = api
        .post(
            "/v1/jobs",
            &json!({"id": job_id, "agent": "fake", "message": message}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = job_id.to_string();
    let path = format!("/v1/jobs/{id}/events");

    let early = tokio::spawn({
        let api = api.clone();
        let path = path.clone();
        async move {
            let mut reader = SseReader::open(&api, &path, None).await;
            read_to_end(&mut reader).await
        }
    });
    // Halfway: during the pause after the first 5,000 lines.
    api.poll(&format!("/v1/jobs/{id}"), "running", |r| {
        r["status"] == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = tokio::spawn({
        let api = api.clone();
        let path = path.clone();
        async move {
            let mut reader = SseReader::open(&api, &path, None).await;
            read_to_end(&mut reader).await
        }
    });
    // Resuming: read a few events, drop the connection, come back with the last id.
    let mut first = SseReader::open(&api, &path, None).await;
    let mut resumed_text = String::new();
    let mut last_id = None;
    let mut first_seqs = Vec::new();
    while first_seqs.len() < 3 {
        let e = first.next().await.expect("events");
        if e.event == "output" {
            resumed_text.push_str(e.data["text"].as_str().unwrap());
            first_seqs.push(e.data["seq"].as_u64().unwrap());
        }
        last_id = e.id.clone();
    }
    drop(first);
    let mut again = SseReader::open(&api, &path, last_id.as_deref()).await;
    let (rest, rest_seqs, _, _) = read_to_end(&mut again).await;
    resumed_text.push_str(&rest);
    first_seqs.extend(rest_seqs);
    assert_in_order_once(&first_seqs, &[]);

    let expected = expected_output(10_000);
    for (who, (text, seqs, ids, record)) in [
        ("early", early.await.unwrap()),
        ("late", late.await.unwrap()),
    ] {
        assert_eq!(text.len(), expected.len(), "{who}");
        assert!(text == expected, "{who} listener's output differs");
        assert_in_order_once(&seqs, &ids);
        assert_eq!(record["status"], "completed", "{who}");
    }
    assert!(
        resumed_text == expected,
        "the resumed listener's output differs"
    );

    // The same events reached a plain NATS subscriber: a status first, the file, then the end.
    let mut kinds = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), raw.next()).await {
        let event: JobEvent = decode(&msg.payload, Format::MessagePack).unwrap();
        let kind = event.kind();
        if kinds.last() != Some(&kind) {
            kinds.push(kind);
        }
        if kind == "end" {
            break;
        }
    }
    assert_eq!(kinds, ["status", "output", "artifact", "end"]);

    // The WebSocket carries the same events with their ids, and resumes after one.
    let ws_url = format!("{}/v1/jobs/{id}/ws", api.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let (mut ws_text, mut third_id) = (String::new(), None);
    let mut frames = 0;
    while let Some(Ok(frame)) = ws.next().await {
        let tokio_tungstenite::tungstenite::Message::Text(text) = frame else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        frames += 1;
        if frames == 3 {
            third_id = event["id"].as_u64();
        }
        if event["type"] == "output" && event["stream"] == "stdout" {
            ws_text.push_str(event["text"].as_str().unwrap());
        }
        if event["type"] == "end" {
            break;
        }
    }
    assert!(
        ws_text == expected,
        "the WebSocket listener's output differs"
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{ws_url}?after={}", third_id.unwrap()))
            .await
            .unwrap();
    let mut resumed = 0;
    while let Some(Ok(frame)) = ws.next().await {
        if frame.is_text() {
            resumed += 1;
        }
    }
    assert_eq!(resumed, frames - 3, "resuming after the third frame");

    // After the end, a new listener gets the whole story at once and the stream closes.
    let mut after = SseReader::open(&api, &path, None).await;
    let (text, _, _, record) = read_to_end(&mut after).await;
    assert!(text == expected);
    assert_eq!(record["files"][0]["name"], "done.txt");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_cancelled_and_old_jobs_end_with_their_record() {
    let (nats, _cfg, worker, gw) = start_fleet(&[
        ("FLEET_WORKER_MAX_CONCURRENT", "1"),
        ("FLEET_QUEUE_EVENTS_OUTPUT_BYTES", "1000"),
    ])
    .await;
    let api = gw.api();
    let nc = NatsClient::connect(&nats.url()).await;

    // Over the output budget: an `output_limit` event, and the record still has everything it keeps.
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "fake", "message": "sleep:0.2 lines:1-500"}),
        )
        .await;
    let id = r.job_id();
    let mut reader = SseReader::open(&api, &format!("/v1/jobs/{id}/events"), None).await;
    let mut saw_limit = false;
    let mut text = String::new();
    while let Some(e) = reader.next().await {
        match e.event.as_str() {
            "output" => text.push_str(e.data["text"].as_str().unwrap()),
            "output_limit" => saw_limit = true,
            "end" => {
                assert_eq!(e.data["record"]["stdout"], expected_output(500));
                break;
            }
            _ => {}
        }
    }
    assert!(saw_limit && text.len() <= 1000 && expected_output(500).starts_with(&text));

    // A short job publishes no events (its done notice ends it); listeners still get its output as `output` events,
    // then the end.
    let job_id = uuid::Uuid::now_v7();
    let mut raw = nc.events(&job_id).await;
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"id": job_id, "agent": "fake", "message": "print:quick"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    let quiet = tokio::time::timeout(Duration::from_millis(300), raw.next()).await;
    assert!(quiet.is_err(), "a short job publishes no events");
    let mut reader = SseReader::open(&api, &format!("/v1/jobs/{job_id}/events"), None).await;
    let e = reader.next().await.unwrap();
    assert_eq!(
        (e.event.as_str(), &e.data["text"]),
        ("output", &json!("quick\n"))
    );
    assert_eq!(reader.next().await.unwrap().event, "end");
    assert!(reader.next().await.is_none());

    // A queued job cancelled before it ran: its only event is the end.
    let blocker = api
        .post("/v1/jobs", &json!({"agent": "fake", "message": "sleep:30"}))
        .await
        .job_id();
    api.poll(&format!("/v1/jobs/{blocker}"), "running", |r| {
        r["status"] == "running"
    })
    .await;
    let queued = api
        .post(
            "/v1/jobs",
            &json!({"agent": "fake", "message": "print:never"}),
        )
        .await
        .job_id();
    let mut reader = SseReader::open(&api, &format!("/v1/jobs/{queued}/events"), None).await;
    let r = api
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = reader.next().await.expect("an event");
    assert_eq!(
        (e.event.as_str(), &e.data["record"]["status"]),
        ("end", &json!("cancelled"))
    );
    assert!(reader.next().await.is_none());
    let r = api
        .post(&format!("/v1/jobs/{blocker}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = api
        .get(&format!("/v1/jobs/{}/events", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(r.status, 404);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_cancel_work_through_any_gateway_replica() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let (one, two) = (
        start_gateway(&cfg.config).await,
        start_gateway(&cfg.config).await,
    );
    let (api1, api2) = (one.api(), two.api());
    assert_ne!(api1.base, api2.base);

    let id = api1.submit("fake", "print:ready sleep:60").await;
    // Follow through the second replica, cancel through the first: the follower sees the end.
    let mut reader = SseReader::open(&api2, &format!("/v1/jobs/{id}/events"), None).await;
    let mut text = String::new();
    while !text.contains("ready") {
        let e = reader.next().await.expect("events");
        if e.event == "output" {
            text.push_str(e.data["text"].as_str().unwrap());
        }
    }
    let r = api1
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    loop {
        let e = reader.next().await.expect("the end");
        if e.event == "end" {
            assert_eq!(e.data["record"]["status"], "cancelled");
            break;
        }
    }
    drop(one);
    // The first replica is gone; the second answers for the job.
    let r = api2.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.body["status"], "cancelled");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_too_slow_for_the_live_tail_is_dropped_with_word_and_resumes_without_a_gap() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[("FLEET_HTTP_LIVE_BUFFER_EVENTS", "8")]).await;
    let api = gw.api();

    let id = api.submit("fake", "sleep:0.3 lines:1-100000").await;
    let path = format!("/v1/jobs/{id}/events");
    let mut slow = SseReader::open(&api, &path, None).await;
    // Not reading while the job floods its output: the socket fills, then the tail's buffer.
    api.poll(&format!("/v1/jobs/{id}"), "the end", |r| {
        r["status"] == "completed"
    })
    .await;
    let mut text = String::new();
    let mut behind = None;
    while let Some(e) = slow.next().await {
        match e.event.as_str() {
            "output" => text.push_str(e.data["text"].as_str().unwrap()),
            "behind" => behind = e.data["last_id"].as_u64(),
            "end" => panic!("a listener that far behind cannot have kept up"),
            _ => {}
        }
    }
    let last_id = behind.expect("a `behind` event before the stream closed");
    let mut again = SseReader::open(&api, &path, Some(&last_id.to_string())).await;
    let (rest, _, _, record) = read_to_end(&mut again).await;
    text.push_str(&rest);
    assert!(text == expected_output(100_000), "resumed output differs");
    assert_eq!(record["status"], "completed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_end_was_never_announced_still_ends_its_waiters_and_listeners() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    declare_agents_without_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let nc = NatsClient::connect(&nats.url()).await;

    // Two queued jobs no worker takes: `quiet` ends before its events go live, `live` after one output event. Their
    // terminal records are then written with no done notice and no `end` event, as when the server carrying those
    // core-NATS publishes died.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = api
            .post("/v1/jobs", &json!({"agent": "fake", "message": "print:x"}))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.job_uuid());
    }
    let (quiet, live) = (ids[0], ids[1]);
    let partial = JobEvent::Output {
        stream: fleet_shared::wire::OutputStream::Stdout,
        attempt: 1,
        seq: 1,
        text: "partial\n".into(),
    };
    nc.js
        .publish(
            fleet_tests::topology().events_subject(&live),
            fleet_shared::codec::to_msgpack(&partial).into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");

    let mut quiet_events = SseReader::open(&api, &format!("/v1/jobs/{quiet}/events"), None).await;
    let mut live_events = SseReader::open(&api, &format!("/v1/jobs/{live}/events"), None).await;
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move { api.get(&format!("/v1/jobs/{quiet}?wait=60")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    for (id, stdout) in [(quiet, "by hand\n"), (live, "partial\n")] {
        let mut record = nc.record(id).await.expect("a record");
        assert_eq!(record.status, fleet_shared::JobStatus::Queued);
        record.status = fleet_shared::JobStatus::Completed;
        record.exit_code = Some(0);
        record.stdout = stdout.into();
        nc.records
            .put(
                id.to_string(),
                fleet_shared::codec::to_msgpack(&record).into(),
            )
            .await
            .expect("put");
    }

    // The waiter re-reads the record: seconds, not the minute it asked to wait.
    let r = waiter.await.expect("waiter");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["status"], &r.body["stdout"]),
        (&json!("completed"), &json!("by hand\n"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the waiter took {:?}",
        started.elapsed()
    );

    // Listeners end too: the quiet job's output comes from its record, the live job's from its one event.
    let (text, _, _, record) = read_to_end(&mut quiet_events).await;
    assert_eq!(
        (text.as_str(), &record["status"]),
        ("by hand\n", &json!("completed"))
    );
    let (text, seqs, _, record) = read_to_end(&mut live_events).await;
    assert_eq!(
        (text.as_str(), &record["status"]),
        ("partial\n", &json!("completed"))
    );
    assert_eq!(seqs, vec![1]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the listeners took {:?}",
        started.elapsed()
    );
}

/// A gateway stopped while listeners follow a long job exits within its grace (it used to wait for the job's
/// end), cutting their streams, which resume on another gateway; and without a panic (a follower once polled a
/// KV watch past the error saying its connection was closing, and async-nats panicked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_under_live_listeners_exits_within_its_grace() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("gateway.log");
    let (gateway, api) = FleetProcess::gateway(&cfg, &[], &log).await;
    let id = api.submit("fake", "print:started sleep:30").await;
    api.poll(&format!("/v1/jobs/{id}"), "running", |r| {
        r["status"] == "running"
    })
    .await;
    let mut listeners = Vec::new();
    for _ in 0..5 {
        let mut events = SseReader::open(&api, &format!("/v1/jobs/{id}/events"), None).await;
        assert!(events.next().await.is_some(), "a first event");
        listeners.push(events);
    }
    let stopped = std::time::Instant::now();
    gateway.signal(libc::SIGTERM);
    let pid = gateway.pid();
    eventually("the gateway gone", Duration::from_secs(30), || async move {
        !process_alive(pid)
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopped.elapsed()
    );
    drop(listeners);
    let text = std::fs::read_to_string(&log).expect("gateway log");
    assert!(!text.contains("panicked"), "the gateway panicked:\n{text}");
    drop(gateway);
    worker.stop().await;
}

/// Reads events to the end; returns each `output` as (attempt, text), the other events' names, the last id and the
/// `end` record.
async fn runs_to_end(
    reader: &mut SseReader,
) -> (Vec<(u64, String)>, Vec<String>, Option<String>, Value) {
    let (mut output, mut others, mut last_id) = (Vec::new(), Vec::new(), None);
    while let Some(e) = reader.next().await {
        last_id = e.id.clone().or(last_id);
        match e.event.as_str() {
            "output" => output.push((
                e.data["attempt"].as_u64().expect("attempt"),
                e.data["text"].as_str().expect("text").to_string(),
            )),
            "end" => {
                assert!(
                    reader.next().await.is_none(),
                    "the stream closes after `end`"
                );
                return (output, others, last_id, e.data["record"].clone());
            }
            other => others.push(format!(
                "{other}:{}",
                e.data["status"].as_str().unwrap_or("")
            )),
        }
    }
    panic!("the stream closed without an `end` event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_s_events_go_on_to_its_latest_run() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    let dir = tempfile::tempdir().unwrap();

    // The first run outlives the claim delay, so its events go live; the retry ends at once and publishes none.
    let message = format!(
        "once:{} sleep:1 print:ran exit:3",
        dir.path().join("first").display()
    );
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "fake", "message": message}),
        )
        .await;
    assert_eq!(r.body["status"], "failed", "{}", r.body);
    let id = r.job_id();
    let path = format!("/v1/jobs/{id}/events");
    let (output, _, first_last_id, record) =
        runs_to_end(&mut SseReader::open(&api, &path, None).await).await;
    assert_eq!(output, [(1, "ran\n".to_string())]);
    assert_eq!(record["attempt"], 1);
    let first_last_id = first_last_id.expect("the live run's events have ids");

    let r = api.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Resuming after the first run's end, as a page that showed it does: the retry's output and end follow,
    // though the retry published no events of its own.
    let mut resumed = SseReader::open(&api, &path, Some(&first_last_id)).await;
    let (output, _, _, record) = runs_to_end(&mut resumed).await;
    assert_eq!(output, [(2, "ran\n".to_string())], "{record}");
    assert_eq!(
        (record["attempt"].as_u64(), record["status"].as_str()),
        (Some(2), Some("failed"))
    );

    // A listener from the start: the first run's output, its end told as a status (the stream goes on), then the
    // retry's output and the latest run's end.
    let (output, others, _, record) =
        runs_to_end(&mut SseReader::open(&api, &path, None).await).await;
    assert_eq!(
        output,
        [(1, "ran\n".to_string()), (2, "ran\n".to_string())],
        "{others:?}"
    );
    assert!(others.contains(&"status:failed".to_string()), "{others:?}");
    assert_eq!(record["attempt"], 2);
    worker.stop().await;
}
