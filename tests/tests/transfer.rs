//! `fleet export` and `fleet import`: a session carried to a fresh fleet (records, history, files and its
//! workspace) continues there; importing twice changes nothing; jobs since a time travel with their files.

use std::process::Output;

use fleet_tests::run_fleet as fleet;
use fleet_tests::sessions::{create, ended, say};
use fleet_tests::*;
use serde_json::json;

/// Appends each message to `notes.txt` and prints how many turns came before and the notes so far.
const NOTES: &str = r#"
[agents.notes]
command = ["python3", "-c", """
import json, sys
history, message = json.load(open(sys.argv[1])), sys.argv[2]
open('notes.txt', 'a').write(message + ',')
print(len(history), open('notes.txt').read())
""", "{history_file}", "{message}"]
"#;

fn said(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_exported_from_one_fleet_continues_in_another() {
    let (nats_a, nats_b) = (NatsServer::start(), NatsServer::start());
    let cfg_a = test_config_with(&nats_a.url(), &[], NOTES);
    let cfg_b = test_config_with(&nats_b.url(), &[], NOTES);
    let worker_a = start_worker(&cfg_a.config).await;
    let gw_a = start_gateway(&cfg_a.config).await;
    let a = gw_a.api();
    let session = create(&a, "notes").await;
    for message in ["one", "two"] {
        let (job, _) = say(&a, &session, message).await;
        ended(&a, &job).await;
    }
    let r = a
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "shell", "message": "echo hi > out.txt"}),
        )
        .await;
    let plain = r.job_id();

    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("session.tar");
    let jobs = dir.path().join("jobs.tar");
    let archive_arg = archive.to_string_lossy().into_owned();
    let out = said(
        &fleet(
            &a.base,
            &["export", "--session", &session, "-o", &archive_arg],
        )
        .await,
    );
    assert!(
        out.starts_with(&format!("exported session {session} to ")),
        "{out}"
    );
    let since = "2000-01-01T00:00:00Z";
    let jobs_arg = jobs.to_string_lossy().into_owned();
    said(&fleet(&a.base, &["export", "--since", since, "-o", &jobs_arg]).await);
    worker_a.stop().await;

    // A fresh fleet takes it; a second import changes nothing.
    let worker_b = start_worker(&cfg_b.config).await;
    let gw_b = start_gateway(&cfg_b.config).await;
    let b = gw_b.api();
    let out = said(&fleet(&b.base, &["import", &archive_arg]).await);
    assert!(
        out.starts_with("imported 1 sessions (2 turns), 0 conversations, 2 jobs,"),
        "{out}"
    );
    assert!(out.ends_with("; 0 already here\n"), "{out}");
    let again = said(&fleet(&b.base, &["import", &archive_arg]).await);
    assert_eq!(
        again,
        "imported 0 sessions (0 turns), 0 conversations, 0 jobs, 0 files; 3 already here\n"
    );

    // The session goes on there: its history and its workspace came along.
    let view = b.get(&format!("/v1/sessions/{session}")).await.body;
    assert_eq!(view["turns"][1]["answer"], "1 one,two,", "{view}");
    let (three, _) = say(&b, &session, "three").await;
    let three = ended(&b, &three).await;
    assert_eq!(three["stdout"], "2 one,two,three,\n", "{three}");

    // Jobs since a time, with their files.
    let out = said(&fleet(&b.base, &["import", &jobs_arg]).await);
    assert!(
        out.contains(" jobs, ") && out.contains("already here"),
        "{out}"
    );
    let record = b.get(&format!("/v1/jobs/{plain}")).await;
    assert_eq!(record.status, 200, "{}", record.body);
    let file = reqwest::get(format!("{}/v1/jobs/{plain}/artifacts/out.txt", b.base))
        .await
        .expect("download");
    assert_eq!(file.text().await.expect("text"), "hi\n");
    worker_b.stop().await;
}
