//! Model agents (`kind = "openai"` and `"ollama"`) against a real llama.cpp server with a real small model: the
//! answer streams as `message` events, the record carries the answer and the tokens used, cancel and timeout
//! stop generation at once, a busy server is asked again as its `Retry-After` says, a refusal fails the job
//! with `model_error`, and the API key reaches the server but nothing the fleet shows.
//! Assertions are on structure, never on the model's words.

use std::time::{Duration, Instant};

use fleet_tests::llm::{LlamaServer, MODEL};
use fleet_tests::*;
use serde_json::{json, Value};

/// A model agent on `base_url`, answering at temperature 0 with a fixed seed.
fn model_agent(name: &str, kind: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[agents.{name}]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\nmodel = \"{MODEL}\"\n\
         temperature = 0.0\nseed = 42\n{extra}\n"
    )
}

/// A fleet (in-process worker and gateway) whose agents are `agents` (each `(name, kind, extra settings)`) on a
/// fresh llama.cpp server, with `env` added to its configuration.
struct ModelFleet {
    llm: LlamaServer,
    api: Api,
    worker: WorkerHandle,
    _gw: GatewayHandle,
    _nats: NatsServer,
}

impl ModelFleet {
    async fn start(agents: &[(&str, &str, &str)], env: &[(&str, &str)]) -> Self {
        let llm = LlamaServer::start();
        let nats = NatsServer::start();
        let base = llm.openai_base();
        let toml: String = agents
            .iter()
            .map(|(name, kind, extra)| model_agent(name, kind, &base, extra))
            .collect();
        let cfg = test_config_with(&nats.url(), env, &toml);
        let worker = start_worker(&cfg.config).await;
        let gw = start_gateway(&cfg.config).await;
        Self {
            llm,
            api: gw.api(),
            worker,
            _gw: gw,
            _nats: nats,
        }
    }
}

async fn submit(api: &Api, agent: &str, message: &str) -> String {
    let r = api
        .post("/v1/jobs", &json!({"agent": agent, "message": message}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.job_id()
}

fn texts_of(events: &[SseEvent], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == kind)
        .map(|e| e.data["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_answered(record: &Value) {
    assert_eq!(record["status"], "completed", "{record}");
    let answer = record["answer"].as_str().expect("an answer");
    assert!(!answer.is_empty(), "{record}");
    assert_eq!(
        record["stdout"], answer,
        "the answer is the run's output too"
    );
    assert!(
        record["usage"]["input_tokens"].as_u64().unwrap_or(0) > 0,
        "{record}"
    );
    assert!(
        record["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_agent_streams_its_answer_and_records_the_answer_and_its_tokens() {
    let fleet = ModelFleet::start(
        &[
            ("smol", "openai", "max_tokens = 16"),
            ("smol-ollama", "ollama", "max_tokens = 8"),
        ],
        &[],
    )
    .await;
    let api = fleet.api.clone();

    let id = submit(&api, "smol", "Say hello to the fleet.").await;
    let events = SseReader::job_until_end(&api, &id).await;
    let streamed = texts_of(&events, "message");
    assert!(
        streamed.len() > 1,
        "tokens arrive as several message events: {events:?}"
    );
    let usage = events
        .iter()
        .find(|e| e.event == "usage")
        .expect("a usage event");
    assert!(
        usage.data["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "{usage:?}"
    );
    let record = api.get(&format!("/v1/jobs/{id}")).await.body;
    assert_answered(&record);
    assert_eq!(
        record["answer"],
        streamed.concat(),
        "the events add up to the answer"
    );
    assert!(
        record["usage"]["output_tokens"].as_u64().unwrap() <= 16,
        "max_tokens holds"
    );
    assert!(
        record.get("exit_code").is_none_or(Value::is_null),
        "no process ran: {record}"
    );

    // The `ollama` kind through an OpenAI-compatible root (`…/v1`), as Ollama serves it too.
    let id = submit(&api, "smol-ollama", "Name a colour.").await;
    let record = api
        .poll(&format!("/v1/jobs/{id}"), "ollama job ends", |r| {
            r["status"] != "queued" && r["status"] != "running"
        })
        .await;
    assert_answered(&record);
    fleet.worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_stop_a_model_mid_answer() {
    let fleet = ModelFleet::start(
        &[
            ("long", "openai", "max_tokens = 4000"),
            (
                "hasty",
                "openai",
                "max_tokens = 4000
timeout = 1.5",
            ),
        ],
        &[],
    )
    .await;
    let api = fleet.api.clone();

    let id = submit(&api, "long", "Write a very long story about ships.").await;
    let mut sse = SseReader::open(&api, &format!("/v1/jobs/{id}/events"), None).await;
    while let Some(event) = sse.next().await {
        if event.event == "message" {
            break;
        }
    }
    let asked = Instant::now();
    let r = api.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(r.status < 300, "cancel: {} {}", r.status, r.body);
    let record = api
        .poll(&format!("/v1/jobs/{id}"), "cancelled", |r| {
            r["status"] == "cancelled"
        })
        .await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(record["error"]["code"], "cancelled", "{record}");
    assert!(
        !record["answer"].as_str().unwrap_or_default().is_empty(),
        "what was said is kept"
    );
    idle_server(&fleet.llm).await;

    let started = Instant::now();
    let id = submit(&api, "hasty", "Write a very long story about trains.").await;
    let record = api
        .poll(&format!("/v1/jobs/{id}"), "timed out", |r| {
            r["status"] == "timeout"
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "timeout took {:?}",
        started.elapsed()
    );
    assert_eq!(record["error"]["code"], "timeout", "{record}");
    idle_server(&fleet.llm).await;
    fleet.worker.stop().await;
}

/// The server stopped generating: none of its slots is busy (llama.cpp stops a request whose client went away).
async fn idle_server(llm: &LlamaServer) {
    let url = format!("{}/slots", llm.base());
    eventually(
        "the model server idle again",
        Duration::from_secs(5),
        || {
            let url = url.clone();
            async move {
                let Ok(r) = reqwest::get(&url).await else {
                    return false;
                };
                let slots: Value = r.json().await.unwrap_or(Value::Null);
                slots.as_array().is_some_and(|s| {
                    !s.is_empty() && s.iter().all(|slot| slot["is_processing"] == false)
                })
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_asked_again_with_the_key_and_a_refusal_is_a_model_error() {
    let llm = LlamaServer::start();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("authorization.log");
    let flaky = Flaky::start(&llm.base(), 2, "1", &seen);
    let nats = NatsServer::start();
    let secret = "sk-fleet-test-5ecret";
    let agents = model_agent(
        "busy",
        "openai",
        &format!("http://127.0.0.1:{}/v1", flaky.port),
        "max_tokens = 8\napi_key_env = \"SMOL_API_KEY\"",
    ) + &model_agent("lost", "openai", &format!("{}/nope", llm.openai_base()), "");
    let cfg = test_config_with(&nats.url(), &[("SMOL_API_KEY", secret)], &agents);
    let log = dir.path().join("worker.log");
    let _worker = FleetProcess::start_with_log("worker", &cfg, &[("RUST_LOG", "info")], &log);
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    wait_for_agents(&cfg.config).await;

    let started = Instant::now();
    let id = submit(&api, "busy", "Hello?").await;
    let events = SseReader::job_until_end(&api, &id).await;
    let record = api.get(&format!("/v1/jobs/{id}")).await.body;
    assert_answered(&record);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two 429s with Retry-After: 1 wait two seconds, took {:?}",
        started.elapsed()
    );
    let sent = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        sent.lines().count(),
        3,
        "two refusals, then the answer: {sent}"
    );
    assert!(
        sent.lines().all(|l| l == format!("Bearer {secret}")),
        "{sent}"
    );
    let shown = format!(
        "{record} {events:?} {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!shown.contains(secret), "the key shows somewhere: {shown}");

    let id = submit(&api, "lost", "Hello?").await;
    let record = api
        .poll(&format!("/v1/jobs/{id}"), "refused", |r| {
            r["status"] == "failed"
        })
        .await;
    assert_eq!(record["error"]["code"], "model_error", "{record}");
    let why = record["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("404"), "the server's status is named: {why}");
}

/// `tests/llm/flaky.py`: answers 429 to its first `failures` requests, then passes them on to `upstream`.
struct Flaky {
    child: std::process::Child,
    port: u16,
}

impl Flaky {
    fn start(upstream: &str, failures: u32, retry_after: &str, log: &std::path::Path) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("llm/flaky.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args([upstream, &failures.to_string(), retry_after])
            .arg(log)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let port = announced_port(&mut child, "flaky.py");
        Self { child, port }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_gets_queued_completions_through_the_front_door() {
    let fleet = ModelFleet::start(
        &[
            ("smol", "openai", "max_tokens = 16"),
            ("long", "openai", "max_tokens = 4000"),
        ],
        &[("FLEET_DEFAULT_AGENT", "smol")],
    )
    .await;
    let api = fleet.api.clone();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("llm/sdk.py");
    let base = format!("{}/v1", api.base);
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([&base, "smol", "long"])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "sdk.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("sdk.py prints JSON");

    let whole = &seen["whole"];
    assert_eq!(whole["object"], "chat.completion", "{seen}");
    assert_eq!(
        (whole["model"].as_str(), whole["role"].as_str()),
        (Some("smol"), Some("assistant"))
    );
    assert!(
        !whole["content"].as_str().unwrap_or_default().is_empty(),
        "{seen}"
    );
    assert_eq!(whole["finish_reason"], "stop");
    let usage = &whole["usage"];
    assert!(
        usage["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{seen}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    // Every completion is a job with a record: the completion's id names it.
    let job = whole["id"]
        .as_str()
        .and_then(|id| id.strip_prefix("chatcmpl-"))
        .expect("job id");
    let record = api.get(&format!("/v1/jobs/{job}")).await.body;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["answer"], whole["content"], "{record}");
    assert_eq!(record["request"]["chat"][0]["role"], "system", "{record}");
    assert_eq!(record["request"]["message"], "Say hello.");
    assert_eq!(record["request"]["sampling"]["max_tokens"], 12);
    assert_eq!(record["request"]["metadata"]["api"], "chat.completions");

    let stream = &seen["stream"];
    assert!(
        stream["pieces"].as_array().is_some_and(|p| p.len() > 1),
        "{seen}"
    );
    assert_eq!(stream["finish_reason"], "stop", "{seen}");
    assert!(
        stream["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{seen}"
    );
    assert_eq!(
        stream["ids"].as_array().map(Vec::len),
        Some(1),
        "one id for every chunk"
    );

    assert_eq!(seen["unknown"]["status"], 422, "{seen}");
    assert_eq!(seen["unknown"]["code"], "unknown_agent", "{seen}");
    assert!(seen["unknown"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("no-such-model"));

    // A stream the client closed early cancels its job, and the model stops generating.
    let closed = seen["closed"]["id"]
        .as_str()
        .and_then(|id| id.strip_prefix("chatcmpl-"))
        .expect("id");
    api.poll(
        &format!("/v1/jobs/{closed}"),
        "closed stream cancelled",
        |r| r["status"] == "cancelled",
    )
    .await;
    idle_server(&fleet.llm).await;

    // Only model agents are models; `fake` and the built-in code runners are not.
    assert_eq!(seen["models"], json!(["long", "smol"]), "{seen}");

    // The comms server's /generate answers from the default agent (a model here) through the same path.
    let r = api
        .post("/generate", &json!({"prompt": "Say hi.", "max_gen": 4}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["from"], "smol");
    assert!(
        !r.body["text"].as_str().unwrap_or_default().is_empty(),
        "{}",
        r.body
    );

    // A command agent is not a model: a clear refusal in both OpenAI's and the fleet's words.
    let r = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "fake", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["code"], "invalid_request");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("command agent"));
    let r = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "smol", "messages": [{"role": "system", "content": "x"}]}),
        )
        .await;
    r.assert_problem(422, "invalid_request");
    fleet.worker.stop().await;
}

/// Keys apply at the front door as for any job: no key, no answer; a key sees and asks only the models it may run;
/// a completion is a job its key owns. The model server here is never reachable (port 9 on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_answers_a_key_only_for_the_models_it_may_run() {
    let nats = NatsServer::start();
    let nowhere = "http://127.0.0.1:9/v1";
    let agents = model_agent("open-model", "openai", nowhere, "timeout = 1.0")
        + &model_agent("secret-model", "openai", nowhere, "");
    let cfg = test_config_with(&nats.url(), &[("FLEET_AUTH_MODE", "required")], &agents);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    wait_for_agents(&cfg.config).await;
    let (key_id, key) = create_key(&cfg, &["--name", "chat", "--agent", "open-model"]);
    let anonymous = gw.api();
    let ask =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});

    anonymous
        .get("/v1/models")
        .await
        .assert_problem(401, "unauthorized");
    let r = anonymous
        .post("/v1/chat/completions", &ask("open-model"))
        .await;
    r.assert_problem(401, "unauthorized");

    let api = anonymous.with_key(&key);
    let models = api.get("/v1/models").await.body;
    assert_eq!(
        models["data"],
        json!([{"id": "open-model", "object": "model", "created": 0, "owned_by": "fleet"}])
    );
    let r = api.post("/v1/chat/completions", &ask("secret-model")).await;
    r.assert_problem(403, "forbidden");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("secret-model"),
        "{}",
        r.body
    );

    // The server cannot be reached: asked again until the agent's timeout, then the job fails as a model error.
    let r = api.post("/v1/chat/completions", &ask("open-model")).await;
    r.assert_problem(502, "model_error");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot reach the model server"),
        "{}",
        r.body
    );
    let jobs = api.get("/v1/jobs?agent=open-model").await.body;
    assert_eq!(
        jobs["jobs"][0]["request"]["owner"],
        format!("key:{key_id}"),
        "{jobs}"
    );
    worker.stop().await;
}
