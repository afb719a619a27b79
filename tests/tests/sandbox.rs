//! What an agent can see of its worker: an agent printing its whole environment shows none of the worker's
//! settings or secrets (NATS credentials, store keys, FLEET_* variables), only the small base set and the agent's
//! own configured variables.

use fleet_tests::clients::NatsClient;
use fleet_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_none_of_the_workers_secrets() {
    let nats = NatsServer::start();
    let secrets = [
        ("FLEET_NATS_TOKEN", "nats-token-c4f3"),
        ("FLEET_ARTIFACTS_S3_SECRET_ACCESS_KEY", "s3-secret-b00b"),
        ("FLEET_ARTIFACTS_FTP_PASSWORD", "ftp-secret-d00d"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-f00d"),
        ("FLEET_API_KEY", "fk_0123456789ab_secretsecret"),
    ];
    // The worker gets them the way an operator's secrets arrive: in its process environment.
    let cfg = test_config(&nats.url(), &[]);
    let worker = std::process::Command::new(built_binary("fleet"))
        .args(["worker", "--config"])
        .arg(&cfg.file)
        .env_clear()
        .envs(cfg.env_for_subprocess())
        .envs(secrets)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("worker");
    let _worker = KillOnDrop(worker);
    wait_for_agents(&cfg.config).await;
    let client = NatsClient::connect(&nats.url()).await;
    let record = client
        .run_job("shell", json!({"message": "env; echo END"}))
        .await;
    let out = record.stdout.clone();
    assert!(out.ends_with("END\n"), "{out}");
    for (name, value) in secrets {
        assert!(!out.contains(value), "{name} reached the agent: {out}");
    }
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    // Exactly the base set (the shell adds PWD itself).
    let base = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "PWD",
        "FLEET_JOB_ID",
        "FLEET_AGENT",
        "FLEET_ATTEMPT",
    ];
    assert!(names.iter().all(|n| base.contains(n)), "{names:?}");
    assert!(
        out.contains(&format!("FLEET_JOB_ID={}", record.id)),
        "{out}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CONFINED: &str = r#"
[agents.confined]
command = ["python3", "-c", "{message}"]
run_as = "nobody"
network = false
[agents.confined.limits]
cpu_secs = 1
memory_bytes = 536870912
file_bytes = 1048576
open_files = 64
processes = 40

[agents.open]
command = ["python3", "-c", "{message}"]
"#;

/// A fork bomb, a memory hog, a disk filler and a CPU spinner each end `failed` with the limit they hit named in
/// the record, while the worker keeps running other jobs; a confined agent runs as another user with no network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_agents_end_with_the_limit_named_and_the_worker_carries_on() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests run agents as `nobody` and in network namespaces: run them as root (CI does)"
    );
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], CONFINED);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let run = |agent: &'static str, code: String| {
        let api = api.clone();
        async move {
            let r = api
                .post(
                    "/v1/jobs?wait=60",
                    &json!({"agent": agent, "message": code}),
                )
                .await;
            r.body["record"].clone()
        }
    };

    let cases = [
        ("import os\nwhile True:\n    os.fork()", "process_limit"),
        ("b = bytearray(2 * 1024 ** 3)", "memory_limit"),
        (
            "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)",
            "file_size_limit",
        ),
        ("while True:\n    pass", "cpu_limit"),
    ];
    for (code, limit) in cases {
        // Another job runs meanwhile, unharmed.
        let (confined, other) = tokio::join!(
            run("confined", code.to_string()),
            run("open", "print('fine')".to_string())
        );
        assert_eq!(confined["status"], "failed", "{limit}: {confined}");
        assert_eq!(confined["killed"], limit, "{confined}");
        assert_eq!(confined["error"]["code"], "limit_exceeded", "{confined}");
        assert_eq!(other["status"], "completed", "{other}");
        assert_eq!(other["stdout"], "fine\n");
    }
    // The disk filler's file stopped at the limit.
    let filler = run(
        "confined",
        "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)".to_string(),
    )
    .await;
    let big = filler["files"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "big"))
        .cloned();
    assert_eq!(big.expect("the file")["size"], 1048576, "{filler}");

    // Another user, no network.
    let who = run(
        "confined",
        "import os\nprint(os.getuid(), os.getgid())".to_string(),
    )
    .await;
    assert_eq!(who["stdout"], "65534 65534\n", "{who}");
    let dial = format!(
        "import socket\nsocket.create_connection(('127.0.0.1', {}), timeout=3)\nprint('connected')",
        nats.port
    );
    let confined = run("confined", dial.clone()).await;
    assert_eq!(confined["status"], "failed", "{confined}");
    assert!(
        confined["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable"),
        "{confined}"
    );
    assert!(confined["killed"].is_null(), "{confined}");
    let open = run("open", dial).await;
    assert_eq!(open["stdout"], "connected\n", "{open}");

    // The worker is still healthy.
    let last = run("open", "print(6 * 7)".to_string()).await;
    assert_eq!(last["stdout"], "42\n");
    worker.stop().await;
}
