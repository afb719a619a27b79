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
