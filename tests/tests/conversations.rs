//! Conversations between agents: participants take turns, each in a session of its own, each exchange told the
//! answer of the one before; followed live; ended early by `stop_when`, by a failing exchange or by a cancel.

use fleet_tests::*;
use serde_json::{json, Value};

/// Each speaker answers the message it was told with its own mark added: its name and how many exchanges it
/// has had before in its session. `fail` fails; `slow` sleeps.
const SPEAKERS: &str = r#"
[agents.a]
command = ["python3", "-c", """
import json, sys, time
history, message, persona = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
if 'fail' in message: sys.exit(3)
if 'slow' in message: time.sleep(30)
print(f"{message} {persona or 'x'}{len(history)}")
""", "{history_file}", "{message}", "{context}"]
"#;

async fn start(api: &Api, opening: &str, turns: u32, stop_when: Option<&str>) -> Value {
    let body = json!({
        "participants": [{"name": "alice", "agent": "a", "persona": "a"}, {"name": "bob", "agent": "a", "persona": "b"}],
        "opening": opening, "turns": turns, "stop_when": stop_when,
    });
    let r = api.post("/v1/conversations", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn settled(api: &Api, id: &str) -> Value {
    let path = format!("/v1/conversations/{id}");
    api.poll(&path, "the conversation ended", |c| {
        c["status"] != "running"
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_talk_for_six_exchanges_each_in_its_own_session() {
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], SPEAKERS);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    let started = start(&api, "hi", 6, None).await;
    let id = started["conversation_id"].as_str().expect("id").to_string();
    assert_eq!(started["exchanges"].as_array().map(Vec::len), Some(6));
    let mut sse = SseReader::open(&api, &format!("/v1/conversations/{id}/events"), None).await;
    let mut kinds = Vec::new();
    let whole = loop {
        let event = sse
            .next()
            .await
            .expect("events until the conversation's end");
        kinds.push(event.event.clone());
        if event.event == "conversation" {
            break event.data;
        }
    };
    assert_eq!(
        kinds.iter().filter(|k| *k == "exchange").count(),
        6,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "end").count(), 6, "{kinds:?}");

    assert_eq!(whole["status"], "completed", "{whole}");
    let exchanges = whole["exchanges"].as_array().expect("exchanges");
    let said: Vec<(&str, &str)> = exchanges
        .iter()
        .map(|e| {
            (
                e["speaker"].as_str().unwrap_or(""),
                e["answer"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("alice", "hi a0"),
            ("bob", "hi a0 b0"),
            ("alice", "hi a0 b0 a1"),
            ("bob", "hi a0 b0 a1 b1"),
            ("alice", "hi a0 b0 a1 b1 a2"),
            ("bob", "hi a0 b0 a1 b1 a2 b2"),
        ]
    );
    for pair in exchanges.windows(2) {
        assert_eq!(
            pair[1]["message"], pair[0]["answer"],
            "each is told the answer before"
        );
    }
    // Each participant's session holds its own side: its messages and answers.
    let bob = whole["participants"][1]["session_id"]
        .as_str()
        .expect("bob's session");
    let session = api.get(&format!("/v1/sessions/{bob}")).await.body;
    let turns: Vec<&str> = session["turns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["message"].as_str())
        .collect();
    assert_eq!(
        turns,
        ["hi a0", "hi a0 b0 a1", "hi a0 b0 a1 b1 a2"],
        "{session}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ends_early_on_stop_when_a_failure_or_a_cancel() {
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], SPEAKERS);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    // stop_when: the answer of exchange 3 holds it; the rest never run.
    let id = start(&api, "hi", 6, Some("a1")).await["conversation_id"].clone();
    let c = settled(&api, id.as_str().unwrap_or_default()).await;
    assert_eq!(c["status"], "completed", "{c}");
    assert!(
        c["stopped"].as_str().unwrap_or("").contains("exchange 3"),
        "{c}"
    );
    let statuses: Vec<&str> = c["exchanges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["status"].as_str())
        .collect();
    api.poll(
        &format!("/v1/conversations/{}", id.as_str().unwrap_or("")),
        "all ended",
        |c| {
            c["exchanges"]
                .as_array()
                .is_some_and(|e| e.iter().all(|e| e["status"] != "queued"))
        },
    )
    .await;
    assert_eq!(&statuses[..3], ["completed"; 3], "{c}");

    // A failing exchange stops the conversation there.
    let id = start(&api, "fail", 4, None).await["conversation_id"].clone();
    let c = settled(&api, id.as_str().unwrap_or_default()).await;
    assert_eq!(c["status"], "failed", "{c}");

    // A cancel stops it.
    let id = start(&api, "slow", 4, None).await["conversation_id"].clone();
    let id = id.as_str().unwrap_or_default();
    api.poll(
        &format!("/v1/conversations/{id}"),
        "exchange 1 running",
        |c| c["exchanges"][0]["status"] == "running",
    )
    .await;
    let r = api
        .post(&format!("/v1/conversations/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = settled(&api, id).await;
    assert_eq!(c["status"], "cancelled", "{c}");

    // Bad requests are refused before anything is queued.
    for (body, why) in [
        (
            json!({"participants": [{"name": "a", "agent": "a"}], "opening": "x", "turns": 2}),
            "participants",
        ),
        (
            json!({"participants": [{"name": "a", "agent": "a"}, {"name": "a", "agent": "a"}], "opening": "x", "turns": 2}),
            "differ",
        ),
        (
            json!({"participants": [{"name": "a", "agent": "a"}, {"name": "b", "agent": "a"}], "opening": "x", "turns": 0}),
            "turns",
        ),
    ] {
        let r = api.post("/v1/conversations", &body).await;
        r.assert_problem(422, "invalid_request");
        assert!(
            r.body["message"].as_str().unwrap_or("").contains(why),
            "{}",
            r.body
        );
    }
    api.get("/v1/conversations/01a24271-9a15-7187-b3b0-56baca3518a8")
        .await
        .assert_problem(404, "not_found");
    worker.stop().await;
}
