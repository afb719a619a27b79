//! Coding CLI presets through a real process: each CLI's documented stream (the transcripts in
//! `tests/transcripts/`, replayed by the fake agent as the preset's overridden command) becomes typed events and
//! a record that says what the agent meant — answer, usage, the CLI's session id, tool calls — while stdout stays
//! byte for byte what was printed and a line no parser knows still arrives as output.

use std::path::PathBuf;

use fleet_tests::*;
use serde_json::{json, Value};

fn transcript(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("transcripts")
        .join(name)
}

/// The preset `kind`, its command overridden by the fake agent replaying `file`, then the job's own steps.
fn preset(name: &str, kind: &str, file: &str) -> String {
    format!(
        "[agents.{name}]\nkind = \"{kind}\"\ncommand = [\"{}\", \"cat:{}\", \"{{message}}\"]\n",
        fake_agent(),
        transcript(file).display()
    )
}

/// Runs `agent` with `steps` after its transcript: every event until `end`, and the record.
async fn run(api: &Api, agent: &str, steps: &str) -> (Vec<SseEvent>, Value) {
    let r = api
        .post("/v1/jobs", &json!({"agent": agent, "message": steps}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.job_id();
    let events = SseReader::job_until_end(api, &id).await;
    let record = api.get(&format!("/v1/jobs/{id}")).await.body;
    (events, record)
}

fn kinds(events: &[SseEvent], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event == kind)
        .map(|e| e.data.clone())
        .collect()
}

fn output_text(events: &[SseEvent]) -> String {
    kinds(events, "output")
        .iter()
        .filter_map(|d| d["text"].as_str())
        .collect()
}

const GEMINI: Expect = Expect {
    agent: "gemini",
    file: "gemini.jsonl",
    answer: "There are two files.",
    session: "c2a7a0de-2f0e-4b53-9a55-0c0b0d7e1e11",
    tool_calls: 2,
    tokens: (1600, 50),
};

struct Expect {
    agent: &'static str,
    file: &'static str,
    answer: &'static str,
    session: &'static str,
    tool_calls: u64,
    tokens: (u64, u64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cli_s_stream_becomes_typed_events_and_a_record_that_says_what_it_meant() {
    let nats = NatsServer::start();
    let agents = preset("claude", "claude-code", "claude-code.jsonl")
        + &preset("codex", "codex", "codex.jsonl")
        + &preset("gemini", "gemini", "gemini.jsonl")
        + &preset("qwen", "qwen", "gemini.jsonl")
        + &preset("opencode", "opencode", "opencode.jsonl")
        + &preset("aider", "aider", "aider.txt");
    let cfg = test_config_with(&nats.url(), &[], &agents);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    let expected = [
        Expect {
            agent: "claude",
            file: "claude-code.jsonl",
            answer: "There are two files: a.txt and b.txt.",
            session: "9f1c2d3e-0000-4000-8000-000000000001",
            tool_calls: 1,
            tokens: (3210, 74),
        },
        Expect {
            agent: "codex",
            file: "codex.jsonl",
            answer: "Two files: a.txt and b.txt. I wrote notes.md.",
            session: "0199a213-81c0-7800-8aa1-bbab2a035a53",
            tool_calls: 3,
            tokens: (24763, 122),
        },
        GEMINI,
        // Qwen Code reading Gemini CLI's shape of stream.
        Expect {
            agent: "qwen",
            ..GEMINI
        },
        Expect {
            agent: "opencode",
            file: "opencode.jsonl",
            answer: "There are two files: a.txt and b.txt.",
            session: "ses_494719016ffe85dkDMj0FPRbHK",
            tool_calls: 1,
            tokens: (4300, 52),
        },
    ];
    for e in &expected {
        // A line no parser knows, printed after the stream: it must arrive as output.
        let (events, record) = run(&api, e.agent, "print:progress-line-no-parser-knows").await;
        let what = format!("{}: {record}", e.agent);
        assert_eq!(record["status"], "completed", "{what}");
        assert_eq!(record["answer"], e.answer, "{what}");
        assert_eq!(record["agent_session_id"], e.session, "{what}");
        assert_eq!(record["tool_calls"], e.tool_calls, "{what}");
        assert_eq!(
            (
                record["usage"]["input_tokens"].as_u64(),
                record["usage"]["output_tokens"].as_u64()
            ),
            (Some(e.tokens.0), Some(e.tokens.1)),
            "{what}"
        );
        let printed = std::fs::read_to_string(transcript(e.file)).expect("transcript")
            + "progress-line-no-parser-knows\n";
        assert_eq!(record["stdout"], printed, "stdout stays as printed: {what}");

        assert!(
            !kinds(&events, "message").is_empty(),
            "{}: {events:?}",
            e.agent
        );
        let calls = kinds(&events, "tool_call");
        assert_eq!(calls.len() as u64, e.tool_calls, "{}: {calls:?}", e.agent);
        assert!(
            calls
                .iter()
                .all(|c| c["name"].as_str().is_some_and(|n| !n.is_empty())),
            "{calls:?}"
        );
        assert!(!kinds(&events, "tool_result").is_empty(), "{}", e.agent);
        assert!(!kinds(&events, "usage").is_empty(), "{}", e.agent);
        assert_eq!(
            output_text(&events),
            "progress-line-no-parser-knows\n",
            "only the unknown line is output: {}",
            e.agent
        );
    }

    // aider has no stream: everything it prints is output, its answer follows the banner, its tokens line the usage.
    let (events, record) = run(&api, "aider", "").await;
    assert_eq!(
        record["answer"], "The two files are a.txt and b.txt.",
        "{record}"
    );
    assert_eq!(record["usage"]["cost_usd"], 0.0031, "{record}");
    assert!(output_text(&events).contains("Aider v0.86.1"), "{events:?}");

    // Garbage in a CLI's stream never fails the job.
    let (_, record) = run(
        &api,
        "claude",
        "print:{\"type\":\"assistant\",\"message\":7} print:{oops exit:0",
    )
    .await;
    assert_eq!(record["status"], "completed", "{record}");
    assert!(
        record["stdout"]
            .as_str()
            .unwrap_or_default()
            .ends_with("{oops\n"),
        "{record}"
    );
    worker.stop().await;
}

/// Claude Code and Codex themselves (from npm), pointed at the tests' llama.cpp server: Claude Code through
/// `ANTHROPIC_BASE_URL` (the server answers Anthropic's `/v1/messages`), Codex through a provider on its
/// `/v1/responses`. A 135M model cannot hold their prompts, so its words are not judged: the streams they print
/// must fill the record and the events as the transcripts' did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_claude_code_and_codex_against_a_local_model_fill_the_record_from_their_streams() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cli-agents/node_modules/.bin");
    let (claude, codex) = (bin.join("claude"), bin.join("codex"));
    assert!(
        claude.exists() && codex.exists(),
        "Claude Code or Codex missing: install them with `scripts/deps test`"
    );
    // One slot with room for a coding CLI's system prompt and tools (3,000 to 4,500 tokens). Codex asks for no
    // limit, and a 135M model sampled at random may ramble until the context is full, past the agent's timeout on
    // two cores (seen twice in three runs): each answer is capped.
    let llm = fleet_tests::llm::LlamaServer::start_with(1, 8192, Some(256));
    let nats = NatsServer::start();
    let model = fleet_tests::llm::MODEL;
    let agents = format!(
        "[agents.claude]\nkind = \"claude-code\"\ntimeout = 150\n\
         command = ['{claude}', '-p', '{{message}}', '--output-format', 'stream-json', '--verbose', '--model', '{model}']\n\
         [agents.claude.env]\nANTHROPIC_BASE_URL = '{base}'\nANTHROPIC_API_KEY = 'sk-local-test'\n\
         CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = '1'\nDISABLE_AUTOUPDATER = '1'\nCLAUDE_CODE_MAX_OUTPUT_TOKENS = '48'\n\
         [agents.codex]\nkind = \"codex\"\ntimeout = 150\n\
         command = ['{codex}', 'exec', '--json', '--skip-git-repo-check', '-c', 'model_provider=local', '-c', \
         'model_providers.local={{name=\"local\",base_url=\"{base}/v1\",wire_api=\"responses\"}}', '-m', '{model}', '{{message}}']\n",
        claude = claude.display(),
        codex = codex.display(),
        base = llm.base(),
    );
    let cfg = test_config_with(&nats.url(), &[], &agents);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    for (agent, first_type, session_key) in [
        ("claude", "system", "session_id"),
        ("codex", "thread.started", "thread_id"),
    ] {
        let (events, record) = run(&api, agent, "Say hello.").await;
        let stdout = record["stdout"].as_str().unwrap_or_default();
        let first: Value = serde_json::from_str(stdout.lines().next().unwrap_or_default())
            .unwrap_or_else(|_| panic!("{agent} printed JSON lines: {record}"));
        assert_eq!(first["type"], first_type, "{record}");
        // Claude Code exits 1 when its result is an error (a model this small overruns its token limit).
        assert!(
            matches!(record["status"].as_str(), Some("completed" | "failed")),
            "{record}"
        );
        assert_eq!(record["agent_session_id"], first[session_key], "{record}");
        assert!(
            !record["answer"].as_str().unwrap_or_default().is_empty(),
            "{record}"
        );
        assert!(
            record["usage"]["input_tokens"].as_u64().unwrap_or(0) > 1000,
            "its prompt was counted: {record}"
        );
        assert!(!kinds(&events, "message").is_empty(), "{agent}: {events:?}");
        assert!(!kinds(&events, "usage").is_empty(), "{agent}: {events:?}");
        resumes_its_own_session(&api, agent).await;
    }
    worker.stop().await;
}

/// A session's second turn resumes the CLI's own session from the first (its state is in the workspace, which
/// follows the session, at the same path): the same session id, and the CLI's own transcript of that session,
/// which the second turn wrote (so it is among its files), holds both turns' messages.
async fn resumes_its_own_session(api: &Api, agent: &str) {
    let session = fleet_tests::sessions::create(api, agent).await;
    // A real CLI on a 135M model takes tens of seconds a turn, and may loop until its timeout (150 s): each turn
    // is waited for to its end, however it ends. The session id comes from the stream's first line, and the
    // transcript is among the turn's files either way.
    let say = |message: &'static str| {
        let path = format!("/v1/sessions/{session}/messages?wait=300");
        async move {
            let r = api.post(&path, &json!({"message": message})).await;
            assert_eq!(r.status, 200, "{agent}'s turn ended: {}", r.body);
            r.body["record"].clone()
        }
    };
    let one = say("Say hello.").await;
    let two = say("Say it again.").await;
    let id = one["agent_session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{agent} reported its session: {one}"));
    assert_eq!(
        two["agent_session_id"], id,
        "{agent} resumed its session: {two}"
    );
    let transcript = two["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .find(|name| name.ends_with(&format!("{id}.jsonl")))
        .unwrap_or_else(|| {
            panic!("{agent}'s transcript of session {id} among the turn's files: {two}")
        });
    let job = two["id"].as_str().unwrap_or_default();
    let url = format!("{}/v1/jobs/{job}/artifacts/{transcript}", api.base);
    let text = reqwest::get(url)
        .await
        .expect("download")
        .text()
        .await
        .expect("text");
    for message in ["Say hello.", "Say it again."] {
        assert!(
            text.contains(message),
            "{agent}'s transcript lacks `{message}`: {text}"
        );
    }
}
