//! The `fleet` client commands against a real fleet: run (following output, uploading and downloading files, exit
//! codes), status, logs, cancel, retry, jobs, agents, download; errors are one line and a non-zero exit.

use std::process::Output;
use std::time::Duration;

use fleet_tests::*;
use serde_json::Value;

/// Runs `fleet ARGS --url BASE` off the async runtime and returns its output.
async fn fleet(base: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(built_binary("fleet"));
    command.args(args).arg("--url").arg(base);
    tokio::task::spawn_blocking(move || command.output().expect("run fleet"))
        .await
        .expect("join")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_drive_a_fleet_from_a_terminal() {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let base = gw.api().base.clone();

    // run --follow: output as it comes, the exit code of the job.
    let out = fleet(
        &base,
        &[
            "run",
            "fake",
            "print:hello sleep:0.2 print:world exit:3",
            "--follow",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    assert!(
        text(&out.stderr).contains("failed after") && text(&out.stderr).contains("(nonzero_exit"),
        "{}",
        text(&out.stderr)
    );

    // run with an input file and --download: the file goes in, the job's files come out.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.txt");
    std::fs::write(&input, "abc").unwrap();
    let saved = dir.path().join("saved");
    let out = fleet(
        &base,
        &[
            "run",
            "shell",
            "cat data.txt; mkdir -p out; cp data.txt out/copy.txt; printf two > 'two wörds.txt'",
            "--file",
            input.to_str().unwrap(),
            "--download",
            saved.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "abc");
    assert_eq!(
        std::fs::read_to_string(saved.join("out/copy.txt")).unwrap(),
        "abc"
    );
    // Several files come as one archive, unpacked exactly.
    assert_eq!(
        std::fs::read_to_string(saved.join("two wörds.txt")).unwrap(),
        "two"
    );

    // --json for scripts; status, logs, jobs, agents.
    let out = fleet(&base, &["run", "echo", "hi there", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let record: Value = serde_json::from_slice(&out.stdout).expect("a JSON record");
    assert_eq!(record["stdout"], "hi there\n");
    let id = record["id"].as_str().unwrap().to_string();
    let out = fleet(&base, &["status", &id]).await;
    assert!(
        text(&out.stdout).contains("status     completed"),
        "{}",
        text(&out.stdout)
    );
    let out = fleet(&base, &["logs", &id]).await;
    assert_eq!(text(&out.stdout), "hi there\n");
    let out = fleet(&base, &["jobs", "--agent", "echo", "--json"]).await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    let out = fleet(&base, &["agents"]).await;
    assert!(text(&out.stdout).contains("fake"), "{}", text(&out.stdout));
    let out = fleet(&base, &["workers"]).await;
    assert!(text(&out.stdout).contains(" 0/8 "), "{}", text(&out.stdout));

    // cancel and retry a running job; download into a directory.
    let api = gw.api();
    // The pid file appears once the file is written: cancel only then.
    let written = dir.path().join("written");
    let message = format!("write:x.bin=10 pid:{} sleep:60", written.display());
    let r = api
        .post(
            "/v1/jobs",
            &serde_json::json!({"agent": "fake", "message": message}),
        )
        .await;
    let slow = r.body["job_id"].as_str().unwrap().to_string();
    let marker = written.clone();
    eventually("the file written", Duration::from_secs(20), || {
        let marker = marker.clone();
        async move { marker.exists() }
    })
    .await;
    // And claimed: a job cancelled before its claim ends `cancelled` without running on.
    api.poll(&format!("/v1/jobs/{slow}"), "running", |r| {
        r["status"] == "running"
    })
    .await;
    let out = fleet(&base, &["cancel", &slow]).await;
    assert_eq!(text(&out.stdout).trim(), format!("job {slow}: cancelled"));
    let out = fleet(&base, &["download", &slow, saved.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(saved.join("x.bin")).unwrap().len(), 10);
    let out = fleet(&base, &["retry", &slow]).await;
    assert_eq!(text(&out.stdout).trim(), format!("job {slow}: queued"));
    api.poll(&format!("/v1/jobs/{slow}"), "running again", |r| {
        r["status"] == "running"
    })
    .await;
    fleet(&base, &["cancel", &slow]).await;

    // Errors: one line, non-zero.
    let out = fleet(&base, &["run", "no-such-agent", "x"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fleet: unknown_agent:"), "{err}");
    let out = fleet("http://127.0.0.1:9", &["status", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the gateway"),
        "{}",
        text(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    worker.stop().await;
}
