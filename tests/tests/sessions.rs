//! Sessions: turns run one at a time in the order they were accepted, on whichever worker is free, each given the
//! history so far (a command agent as a file, a model as chat messages); a turn waiting for the one before it says
//! so in its record; sessions obey the same ownership as jobs.

use fleet_tests::llm::{LlamaServer, MODEL};
use fleet_tests::sessions::{create, ended, rerun_after_kill, say};
use fleet_tests::*;
use serde_json::{json, Value};

/// Prints how many turns came before, this message, and the earlier messages; `sleep:S` sleeps S seconds first.
const HISTORY_AGENT: &str = r#"
[agents.hist]
command = ["python3", "-c", """
import json, sys, time
history, message = json.load(open(sys.argv[1])), sys.argv[2]
if message.startswith('sleep:'):
    time.sleep(float(message[6:]))
print(f"{len(history)}:{message}:" + '|'.join(t['message'] for t in history))
""", "{history_file}", "{message}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_run_in_order_with_their_history_on_whichever_worker_is_free() {
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], HISTORY_AGENT);
    let first = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let session = create(&api, "hist").await;

    let (one, turn) = say(&api, &session, "m1").await;
    assert_eq!(turn, 1);
    let one = ended(&api, &one).await;
    assert_eq!(one["stdout"], "0:m1:\n", "{one}");
    assert_eq!(
        one["request"]["session"],
        json!({"session_id": session, "turn": 1})
    );
    let first_worker = one["worker"].clone();

    // The next turn on another worker: the history follows the session, not the worker.
    first.stop().await;
    let second = start_worker(&cfg.config).await;
    let (two, _) = say(&api, &session, "m2").await;
    let two = ended(&api, &two).await;
    assert_eq!(two["stdout"], "1:m2:m1\n", "{two}");
    assert_ne!(two["worker"], first_worker, "{two}");

    // Turns sent at once keep their order; one waiting for the turn before says so in its record.
    let (slow, _) = say(&api, &session, "sleep:1.5").await;
    let sent: Vec<(String, u64)> = futures::future::join_all((4..=6).map(|n| {
        let (api, session) = (api.clone(), session.clone());
        async move { say(&api, &session, &format!("m{n}")).await }
    }))
    .await;
    // Turn numbers follow acceptance, which among requests sent at once is whichever arrived first.
    let mut sent = sent;
    sent.sort_by_key(|(_, turn)| *turn);
    assert_eq!(sent.iter().map(|(_, t)| *t).collect::<Vec<_>>(), [4, 5, 6]);
    let waiting = api
        .poll(&format!("/v1/jobs/{}", sent[0].0), "waiting noted", |r| {
            r["waiting"].is_string()
        })
        .await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert!(
        waiting["waiting"]
            .as_str()
            .unwrap_or_default()
            .contains("turn 3"),
        "{waiting}"
    );
    ended(&api, &slow).await;
    let mut turns: Vec<(u64, Value)> = Vec::new();
    for (job, turn) in &sent {
        turns.push((*turn, ended(&api, job).await));
    }
    turns.sort_by_key(|(turn, _)| *turn);
    for (turn, record) in &turns {
        let before = turn - 1;
        let stdout = record["stdout"].as_str().unwrap_or_default();
        assert!(
            stdout.starts_with(&format!("{before}:")),
            "turn {turn} saw {before} turns before it: {stdout}"
        );
        assert!(
            record["waiting"].is_null(),
            "a claimed turn waits no more: {record}"
        );
    }
    let started = |r: &Value| r["started_at"].as_str().unwrap_or_default().to_string();
    assert!(
        turns
            .windows(2)
            .all(|w| started(&w[0].1) < started(&w[1].1)),
        "one at a time, in order"
    );

    // The session tells its turns, each with its message, status and answer.
    let view = api.get(&format!("/v1/sessions/{session}")).await.body;
    assert_eq!(view["turns"].as_array().map(Vec::len), Some(6), "{view}");
    assert_eq!(view["turns"][1]["answer"], "1:m2:m1", "{view}");
    assert_eq!(view["turns"][5]["status"], "completed", "{view}");

    // `POST /v1/jobs` naming the session does the same; `/v1/jobs?session=` lists a session's turns.
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "hist", "message": "m7", "session_id": session}),
        )
        .await;
    assert_eq!(
        r.body["record"]["request"]["session"]["turn"], 7,
        "{}",
        r.body
    );
    assert!(
        r.body["record"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .starts_with("6:m7:m1|m2|"),
        "{}",
        r.body
    );
    let r = api
        .post(
            "/v1/jobs",
            &json!({"agent": "echo", "message": "x", "session_id": session}),
        )
        .await;
    r.assert_problem(422, "invalid_request");
    let listed = api
        .get(&format!("/v1/jobs?session={session}&limit=100"))
        .await
        .body;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(7), "{listed}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_its_owner_s_alone_and_is_gone_when_deleted() {
    let nats = NatsServer::start();
    let cfg = test_config_with(
        &nats.url(),
        &[("FLEET_AUTH_MODE", "required")],
        HISTORY_AGENT,
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    wait_for_agents(&cfg.config).await;
    let alice = gw
        .api()
        .with_key(&create_key(&cfg, &["--name", "alice", "--agent", "hist"]).1);
    let bob = gw
        .api()
        .with_key(&create_key(&cfg, &["--name", "bob", "--agent", "*"]).1);

    let session = create(&alice, "hist").await;
    let path = format!("/v1/sessions/{session}");
    for r in [
        bob.get(&path).await,
        bob.post(&format!("{path}/messages"), &json!({"message": "x"}))
            .await,
        bob.send(bob.request(reqwest::Method::DELETE, &path)).await,
    ] {
        r.assert_problem(404, "session_not_found");
    }
    assert_eq!(bob.get("/v1/sessions").await.body["sessions"], json!([]));
    assert_eq!(
        alice.get("/v1/sessions").await.body["sessions"][0]["session_id"],
        session.as_str()
    );
    // Pages, newest first: every session once, none of anyone else's.
    let newer = [create(&alice, "hist").await, create(&alice, "hist").await];
    create(&bob, "hist").await;
    let first = alice.get("/v1/sessions?limit=2").await.body;
    let ids = |page: &Value| -> Vec<String> {
        page["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["session_id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(ids(&first), [newer[1].clone(), newer[0].clone()], "{first}");
    let cursor = first["next_cursor"].as_str().expect("more to come");
    let second = alice
        .get(&format!("/v1/sessions?limit=2&cursor={cursor}"))
        .await
        .body;
    assert_eq!(ids(&second), std::slice::from_ref(&session), "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    let r = alice.post("/v1/sessions", &json!({"agent": "nope"})).await;
    r.assert_problem(403, "forbidden");

    let (job, _) = say(&alice, &session, "hello").await;
    ended(&alice, &job).await;
    let r = alice
        .send(alice.request(reqwest::Method::DELETE, &path))
        .await;
    assert_eq!(r.status, 204);
    alice
        .get(&path)
        .await
        .assert_problem(404, "session_not_found");
    worker.stop().await;
}

/// A model agent is given the earlier turns as chat messages: the second turn's prompt holds the first turn's
/// message and answer (counted in its input tokens), whatever the model makes of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_agent_is_asked_with_the_session_s_history() {
    let llm = LlamaServer::start();
    let nats = NatsServer::start();
    let agent = format!(
        "[agents.smol]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"{MODEL}\"\ntemperature = 0.0\nseed = 1\nmax_tokens = 24\n",
        llm.openai_base()
    );
    let cfg = test_config_with(&nats.url(), &[], &agent);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let session = create(&api, "smol").await;

    let (one, _) = say(&api, &session, "My name is Zed. Remember it.").await;
    let one = ended(&api, &one).await;
    let (two, _) = say(&api, &session, "What is my name?").await;
    let two = ended(&api, &two).await;
    let tokens = |r: &Value, k: &str| r["usage"][k].as_u64().unwrap_or(0);
    assert_eq!(two["status"], "completed", "{two}");
    assert!(
        tokens(&two, "input_tokens")
            >= tokens(&one, "input_tokens") + tokens(&one, "output_tokens"),
        "the second prompt holds the first turn: {one} {two}"
    );
    let view = api.get(&format!("/v1/sessions/{session}")).await.body;
    assert_eq!(view["turns"][0]["answer"], one["answer"], "{view}");
    worker.stop().await;
}

/// A worker killed mid-turn leaves the session as it was before that turn: the turn runs again on another
/// worker (its second attempt), and the next turn's history holds each earlier turn once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_turn_leaves_the_session_as_it_was_and_the_turn_runs_again() {
    let nats = NatsServer::start();
    let cfg = test_config_with(
        &nats.url(),
        &[("FLEET_QUEUE_ACK_WAIT_SECS", "2")],
        HISTORY_AGENT,
    );
    let doomed = FleetProcess::worker(&cfg);
    let gw = start_gateway(&cfg.config).await;
    wait_for_agents(&cfg.config).await;
    let api = gw.api();
    let session = create(&api, "hist").await;
    let (one, _) = say(&api, &session, "m1").await;
    ended(&api, &one).await;

    let (two, _) = say(&api, &session, "sleep:2").await;
    let (two, rescuer) = rerun_after_kill(&api, &cfg, doomed, &two).await;
    assert_eq!(
        (two["status"].as_str(), two["attempt"].as_u64()),
        (Some("completed"), Some(2)),
        "{two}"
    );
    assert_eq!(two["stdout"], "1:sleep:2:m1\n", "{two}");

    let (three, _) = say(&api, &session, "m3").await;
    let three = ended(&api, &three).await;
    assert_eq!(three["stdout"], "2:m3:m1|sleep:2\n", "{three}");
    rescuer.stop().await;
}

/// A publisher naming someone else's session turn in its job gets neither its history nor its place: the job is
/// refused (`invalid_job`) and the turn is left as it was. Only a gateway gives a job a turn, after the owner's
/// check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_naming_a_session_turn_that_is_not_its_own_is_refused_and_changes_nothing() {
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], HISTORY_AGENT);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let session = create(&api, "hist").await;
    let (one, _) = say(&api, &session, "secret plan").await;
    ended(&api, &one).await;
    let before = api.get(&format!("/v1/sessions/{session}")).await.body;

    let publisher = fleet_tests::clients::NatsClient::connect(&nats.url()).await;
    let forged = uuid::Uuid::now_v7().to_string();
    for turn in [1, 2] {
        let id = if turn == 1 {
            forged.clone()
        } else {
            uuid::Uuid::now_v7().to_string()
        };
        let job = json!({"id": id, "agent": "hist", "message": "leak",
            "session": {"session_id": session, "turn": turn}});
        publisher.publish_job("hist", &job).await;
        let record = ended(&api, &id).await;
        assert_eq!(record["status"], "failed", "{record}");
        assert_eq!(record["error"]["code"], "invalid_job", "{record}");
        assert_eq!(record["stdout"], "", "it never ran: {record}");
    }
    // Nor may a publisher make another job's answer its message by posing as a conversation's exchange.
    let id = uuid::Uuid::now_v7().to_string();
    let job = json!({"id": id, "agent": "hist", "message": "leak",
        "conversation": {"conversation_id": session, "exchange": 2, "follows": one}});
    publisher.publish_job("hist", &job).await;
    let record = ended(&api, &id).await;
    assert_eq!(record["error"]["code"], "invalid_job", "{record}");
    assert_eq!(record["stdout"], "", "it never ran: {record}");
    let after = api.get(&format!("/v1/sessions/{session}")).await.body;
    assert_eq!(after["turns"], before["turns"], "the session is as it was");
    worker.stop().await;
}

/// A session's history is read in batches of many keys at once: every turn that holds a value comes back, in
/// order, across more turns than one batch may name; removed turns are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_read_in_batches_without_removed_turns() {
    use fleet_shared::session::{SessionStore, Turn};
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let client = fleet_shared::nats::connect(&cfg.config.nats, "history-test")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let handles = topology()
        .ensure(&js, &cfg.config.queue)
        .await
        .expect("topology");
    let bucket = handles.sessions.clone();
    let store = SessionStore::new(client.clone(), handles.sessions);
    let id = uuid::Uuid::now_v7();
    let count = fleet_shared::kv_batch::MAX_KEYS as u32 + 76;
    let turn = |n: u32| Turn {
        turn: n,
        job_id: uuid::Uuid::now_v7(),
        message: format!("m{n}"),
        submitted_at: chrono::Utc::now(),
        status: fleet_shared::JobStatus::Completed,
        answer: None,
        ended_at: None,
        workspace: None,
    };
    let writes = (1..=count).map(|n| {
        let store = &store;
        async move { store.create_turn(&id, &turn(n)).await }
    });
    futures::future::try_join_all(writes).await.expect("turns");
    let key = |n: u32| fleet_shared::session::turn_key(&id, n);
    bucket.purge(key(3)).await.expect("purge");
    bucket.delete(key(1050)).await.expect("delete");

    let read = store.turns(&id, 1, count + 5).await.expect("read");
    let numbers: Vec<u32> = read.iter().map(|t| t.turn).collect();
    let expected: Vec<u32> = (1..=count).filter(|n| ![3, 1050].contains(n)).collect();
    assert_eq!(numbers, expected);
    assert!(read.iter().all(|t| t.message == format!("m{}", t.turn)));

    // One batch answers for many keys; none found is an empty answer, not an error.
    let keys: Vec<String> = [2, 3, 4, 5000].map(key).to_vec();
    let found = fleet_shared::kv_batch::latest(&client, &bucket, &keys)
        .await
        .expect("batch");
    let mut found: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    found.sort_unstable();
    assert_eq!(found, [key(2), key(4)]);
    let none = fleet_shared::kv_batch::latest(&client, &bucket, &[key(5000)])
        .await
        .expect("empty batch");
    assert!(none.is_empty());

    // The gateways' session index learns how far the sessions (one-token keys) have been written from the
    // last message on a wildcard subject, which turns written after them do not move.
    let sessions_only = format!("{}*", bucket.prefix);
    let last = || {
        let last = bucket.stream.raw_message_builder();
        last.last_by_subject(sessions_only.clone()).send()
    };
    assert!(last().await.is_err(), "no session yet");
    let session: fleet_shared::session::SessionRecord = serde_json::from_value(serde_json::json!({
        "session_id": id, "agent": "a", "created_at": chrono::Utc::now(), "turn_count": count
    }))
    .expect("session");
    store.create(&session).await.expect("session");
    let written = last().await.expect("the session's message");
    store
        .create_turn(&id, &turn(count + 1))
        .await
        .expect("turn");
    let after_a_turn = last().await.expect("still the session's message");
    assert_eq!(written.sequence, after_a_turn.sequence);
    assert_eq!(written.subject.as_str(), format!("{}{id}", bucket.prefix));
}

/// Every gateway lists the same sessions in the same pages, whether it has just started over an existing bucket
/// (reading the bucket until its index is ready) or has followed it all along; a deleted session leaves every list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_later_lists_the_same_pages() {
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], HISTORY_AGENT);
    declare_agents_without_worker(&cfg.config).await;
    let first = start_gateway(&cfg.config).await;
    let api = first.api();
    let mut made = Vec::new();
    for _ in 0..7 {
        made.push(create(&api, "hist").await);
    }
    // A turn and its end in the same bucket are not sessions.
    say(&api, &made[6], "m").await;
    let pages = |api: Api| async move {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = api.get(&format!("/v1/sessions?limit=3{cursor}")).await.body;
            let listed = page["sessions"].as_array().cloned().unwrap_or_default();
            ids.push(
                listed
                    .iter()
                    .map(|s| s["session_id"].clone())
                    .collect::<Vec<_>>(),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return ids,
            }
        }
    };
    let newest_first: Vec<Value> = made.iter().rev().map(|id| json!(id)).collect();
    let expected: Vec<Vec<Value>> = newest_first.chunks(3).map(<[Value]>::to_vec).collect();
    assert_eq!(pages(api.clone()).await, expected);
    let second = start_gateway(&cfg.config).await;
    assert_eq!(pages(second.api()).await, expected, "at once");
    let r = api
        .send(api.request(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{}", made[6]),
        ))
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let rest: Vec<Value> = newest_first[1..].to_vec();
    let expected: Vec<Vec<Value>> = rest.chunks(3).map(<[Value]>::to_vec).collect();
    assert_eq!(pages(second.api()).await, expected, "after a delete");
    assert_eq!(pages(api).await, expected);
}
