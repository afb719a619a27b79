//! The `fleet` client commands against a real fleet: run (following output, uploading and downloading files, exit
//! codes), status, logs, cancel, retry, jobs, agents, download; errors are one line and a non-zero exit.

use std::process::Output;
use std::time::Duration;

use fleet_tests::run_fleet as fleet;
use fleet_tests::*;
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_drive_a_fleet_from_a_terminal() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
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
    // A page of one says how to get the next; the cursor gets it.
    let out = fleet(&base, &["jobs", "--limit", "1"]).await;
    let err = text(&out.stderr);
    assert!(err.starts_with("1 job shown of "), "{err}");
    let cursor = err.rsplit("--cursor ").next().unwrap().trim().to_string();
    let first_row = text(&out.stdout).lines().nth(1).unwrap().to_string();
    let out = fleet(&base, &["jobs", "--limit", "1", "--cursor", &cursor]).await;
    let second_row = text(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        !second_row.is_empty() && second_row != first_row,
        "{first_row} / {second_row}"
    );
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
    let slow = r.job_id();
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

/// Runs `fleet ARGS --url BASE` with `input` on its stdin.
async fn fleet_with_stdin(base: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut command = std::process::Command::new(built_binary("fleet"));
    command
        .args(args)
        .arg("--url")
        .arg(base)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let input = input.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("run fleet");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("fleet output")
    })
    .await
    .expect("join")
}

fn expected_seq(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_run_prints_the_whole_output_or_says_what_is_missing() {
    let nats = NatsServer::start();
    // Live output stops at 100 kB and the record keeps 64 KiB: the rest must come from the full log.
    let cfg = test_config(
        &nats.url(),
        &[("FLEET_QUEUE_EVENTS_OUTPUT_BYTES", "100000")],
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let base = gw.api().base.clone();
    // The sleep makes the job outlive the claim delay, so its output goes out live (up to the limit).
    let script = "sleep 0.2; seq 1 60000";
    for follow in [false, true] {
        let mut args = vec!["run", "shell", script];
        if follow {
            args.push("--follow");
        }
        let out = fleet(&base, &args).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout) == expected_seq(60000),
            "follow={follow}: {} bytes, ends {:?}",
            out.stdout.len(),
            &text(&out.stdout)[out.stdout.len().saturating_sub(40)..]
        );
        assert!(
            text(&out.stderr).contains("running on"),
            "{}",
            text(&out.stderr)
        );
    }

    // Standard input as the message: `-` or --stdin.
    let out = fleet_with_stdin(&base, &["run", "python", "-"], "print(6*7)\n").await;
    assert_eq!(text(&out.stdout), "42\n", "{}", text(&out.stderr));
    let out = fleet_with_stdin(&base, &["run", "shell", "--stdin"], "echo from stdin\n").await;
    assert_eq!(text(&out.stdout), "from stdin\n", "{}", text(&out.stderr));

    // A full log cut at artifacts.max_file_bytes: what there is, then what is missing, and a failing exit.
    let capped = test_config(
        &nats.url(),
        &[
            ("FLEET_ARTIFACTS_MAX_FILE_BYTES", "100000"),
            ("FLEET_NATS_PREFIX", "capped"),
        ],
    );
    let capped_worker = start_worker(&capped.config).await;
    let capped_gw = start_gateway(&capped.config).await;
    let out = fleet(&capped_gw.api().base, &["run", "shell", script]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(expected_seq(60000).starts_with(text(&out.stdout).lines().next().unwrap()));
    let err = text(&out.stderr);
    assert!(
        err.contains("the job wrote 348894 bytes of stdout; the fleet kept the first"),
        "{err}"
    );
    capped_worker.stop().await;

    // Ctrl-C on a followed job: cancelled when asked for, else left running, and said either way.
    for cancel in [true, false] {
        let mut args = vec![
            "run",
            "fake",
            "print:started sleep:60",
            "--follow",
            "--url",
            &base,
        ];
        if cancel {
            args.push("--cancel-on-interrupt");
        }
        let mut child = std::process::Command::new(built_binary("fleet"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut first = [0u8; 8];
            std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
            stdout
        })
        .await
        .unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(130));
        let err = text(&out.stderr);
        let id = err.split_whitespace().nth(1).unwrap().to_string();
        let record = gw.api().get(&format!("/v1/jobs/{id}")).await;
        if cancel {
            assert!(err.contains(&format!("job {id}: cancelled")), "{err}");
            assert_eq!(record.body["status"], "cancelled");
        } else {
            assert!(err.contains(&format!("job {id} keeps running")), "{err}");
            assert_eq!(record.body["status"], "running");
            fleet(&base, &["cancel", &id]).await;
        }
    }
    worker.stop().await;
}

/// `fleet chat`: one turn per line on one session, each answer printed as it comes (a command's output; a CLI
/// preset's messages and tool calls, not its raw stream), the session kept to go on with; `fleet sessions`,
/// `fleet session ID` and `--delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_chat_talks_in_a_session_that_fleet_sessions_lists() {
    let claude = format!(
        "[agents.claude]\nkind = \"claude-code\"\ncommand = [\"{}\", \"cat:{}/transcripts/claude-code.jsonl\", \"{{message}}\"]\n",
        fake_agent(),
        env!("CARGO_MANIFEST_DIR")
    );
    let hist = r#"
[agents.hist]
command = ["python3", "-c", """
import json, sys
history = json.load(open(sys.argv[1]))
print(f"{len(history)}:{sys.argv[2]}:" + '|'.join(t['message'] for t in history))
""", "{history_file}", "{message}"]
"#;
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), &[], &format!("{claude}{hist}"));
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let base = gw.api().base.clone();

    let out = fleet_with_stdin(&base, &["chat", "hist"], "m1\n\nm2\n").await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(text(&out.stdout), "0:m1:\n1:m2:m1\n", "{err}");
    let id = err
        .split_whitespace()
        .nth(1)
        .expect("the session's id first")
        .to_string();
    assert!(
        err.contains(&format!("`fleet chat hist --session {id}`")),
        "{err}"
    );

    let out = fleet_with_stdin(&base, &["chat", "hist", "--session", &id], "m3\n").await;
    assert_eq!(text(&out.stdout), "2:m3:m1|m2\n", "{}", text(&out.stderr));
    let out = fleet_with_stdin(&base, &["chat", "claude", "--session", &id], "x\n").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is with agent hist"));

    let out = fleet_with_stdin(&base, &["chat", "claude"], "x\n").await;
    let (said, err) = (text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("There are two files: a.txt and b.txt."),
        "{said}"
    );
    assert!(!said.contains("\"type\""), "not the raw stream: {said}");
    assert!(err.contains("[tool: "), "{err}");

    let listed = text(&fleet(&base, &["sessions", "--agent", "hist"]).await.stdout);
    let row = listed.lines().find(|l| l.starts_with(&id)).expect(&listed);
    assert!(row.contains("hist") && row.contains(" 3 "), "{row}");
    let shown = text(&fleet(&base, &["session", &id]).await.stdout);
    assert!(
        shown.contains("turn 3 · completed") && shown.contains("  > m3\n  2:m3:m1|m2\n"),
        "{shown}"
    );
    let out = fleet(&base, &["session", &id, "--delete"]).await;
    assert_eq!(text(&out.stdout), format!("session {id} deleted\n"));
    let out = fleet(&base, &["session", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("session_not_found"));
    worker.stop().await;
}
