//! The hostile suite, agents the fleet understands: a model server that sends one endless line, lines that are not
//! events, or tokens without end; a coding CLI that prints one endless line. Each must end its job clearly with the
//! worker's memory bounded (lines are cut at 1 MiB, answers at the output cap), never hang it or crash it.

use std::process::{Child, Command, Stdio};

use fleet_tests::*;
use serde_json::Value;

/// `tests/llm/hostile_model.py` in `mode`, on a loopback port.
struct HostileModel {
    child: Child,
    port: u16,
}

impl HostileModel {
    fn start(mode: &str) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("llm/hostile_model.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let port = announced_port(&mut child, "hostile_model.py");
        Self { child, port }
    }
}

impl Drop for HostileModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ended(api: &Api, agent: &str, message: &str) -> Value {
    ended_run(api, agent, message).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_model_servers_end_their_jobs_clearly_within_bounds() {
    let (endless, garbage, forever) = (
        HostileModel::start("endless-line"),
        HostileModel::start("not-json"),
        HostileModel::start("forever"),
    );
    let agent = |name: &str, server: &HostileModel, extra: &str| {
        format!(
            "[agents.{name}]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nmodel = \"m\"\n{extra}\n",
            server.port
        )
    };
    let agents = agent("endless", &endless, "")
        + &agent("garbage", &garbage, "")
        + &agent("forever", &forever, "timeout = 2.0");
    let nats = NatsServer::start();
    let cap = "20000";
    let cfg = test_config_with(
        &nats.url(),
        &[("FLEET_WORKER_OUTPUT_CAP_BYTES", cap)],
        &agents,
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    let record = ended(&api, "endless", "hi").await;
    assert_eq!(record["error"]["code"], "model_error", "{record}");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("longer than 1 MiB"),
        "{record}"
    );

    let record = ended(&api, "garbage", "hi").await;
    assert_eq!(record["error"]["code"], "model_error", "{record}");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not JSON"),
        "{record}"
    );

    let record = ended(&api, "forever", "hi").await;
    assert_eq!(record["status"], "timeout", "{record}");
    let answer = record["answer"].as_str().unwrap_or_default();
    assert!(
        answer.len() <= 20_000 && answer.len() > 10_000,
        "the answer is kept up to the cap: {}",
        answer.len()
    );
    assert!(
        record["stdout_truncated_bytes"].as_u64().unwrap_or(0) > 0,
        "and the rest is counted: {record}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_printing_one_endless_line_has_it_passed_on_as_output_and_completes() {
    let nats = NatsServer::start();
    let agent = format!(
        "[agents.cli]\nkind = \"claude-code\"\ncommand = [\"{}\", \"{{message}}\"]\n",
        fake_agent()
    );
    let cfg = test_config_with(&nats.url(), &[], &agent);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    // 3 MB without a newline, then a line the parser knows.
    let result = r#"print:{"type":"result","result":"done","session_id":"s"}"#;
    let record = ended(&api, "cli", &format!("flood:3000000 print: {result}")).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["stdout_bytes"],
        3_000_000 + 1 + result.len() as u64 - "print:".len() as u64 + 1,
        "{}",
        record["stdout_bytes"]
    );
    assert_eq!(
        record["answer"], "done",
        "the parser reads on after the endless line"
    );
    worker.stop().await;
}
