//! A session's workspace follows it from turn to turn on whichever worker runs the turn: files a turn leaves are
//! there for the next (only regular files and directories: links are not kept), at the same path, within a size
//! cap; a turn killed with its worker, or over the cap, leaves the session's workspace as it was before it; a
//! deleted session's files are gone.

use fleet_tests::sessions::{create, ended, rerun_after_kill, say};
use fleet_tests::*;
use serde_json::Value;
use std::time::Duration;

/// `write` leaves files, an empty directory, an executable and a link; `change` reports and appends; `show`
/// lists what it finds; `big` writes past the cap; `partial` notes whether `partial.txt` was there, writes it
/// and sleeps.
const WORKSPACE_AGENT: &str = r#"
[agents.ws]
command = ["python3", "-c", """
import os, sys, time
m = sys.argv[1]
print('cwd=' + os.getcwd())
read = lambda p: open(p).read() if os.path.exists(p) else '-'
if m == 'write':
    os.makedirs('notes'); os.makedirs('empty/inner')
    open('notes/a.txt', 'w').write('one')
    open('run.sh', 'w').write('#!/bin/sh\\n'); os.chmod('run.sh', 0o755)
    os.symlink('/etc/hostname', 'escape')
    open('.fleet/mine', 'w').write('x')
elif m == 'change':
    print('a=' + read('notes/a.txt'))
    open('notes/a.txt', 'a').write(' two')
    print('exec=%s escape=%s empty=%s fleet=%s' % (os.access('run.sh', os.X_OK),
        os.path.lexists('escape'), os.path.isdir('empty/inner'), os.path.exists('.fleet/mine')))
elif m == 'big':
    open('big.bin', 'wb').write(b'x' * 5000)
elif m == 'partial':
    print('partial=%s' % os.path.exists('partial.txt'))
    open('partial.txt', 'w').write('half')
    time.sleep(3)
files = sorted(os.path.join(d, f)[2:] for d, _, fs in os.walk('.') for f in fs if not d.startswith('./.fleet'))
print('a=' + read('notes/a.txt') + ' files=' + ','.join(files))
""", "{message}"]
"#;

fn line<'a>(record: &'a Value, key: &str) -> &'a str {
    let stdout = record["stdout"].as_str().unwrap_or_default();
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_default()
}

fn tar_names(path: &std::path::Path) -> Vec<String> {
    let file = std::fs::File::open(path).expect("pack");
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().expect("a tar");
    entries
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("name")
                .display()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_follow_the_session_from_worker_to_worker_within_the_cap() {
    let nats = NatsServer::start();
    let cfg = test_config_with(
        &nats.url(),
        &[("FLEET_ARTIFACTS_SESSION_WORKSPACE_MAX_BYTES", "4096")],
        WORKSPACE_AGENT,
    );
    let first = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let session = create(&api, "ws").await;

    let (one, _) = say(&api, &session, "write").await;
    let one = ended(&api, &one).await;
    assert_eq!(one["status"], "completed", "{one}");
    assert_eq!(one["session_workspace"]["files"], 2, "{one}");
    let cwd = line(&one, "cwd=").to_string();
    assert!(
        cwd.ends_with(&format!("sessions/{session}/workspace")),
        "{cwd}"
    );

    // Turn 2 on another worker finds turn 1's files, directories and modes (not its link, nor the fleet's own
    // directory), at the same path, and changes a file.
    first.stop().await;
    let second = start_worker(&cfg.config).await;
    let (two, _) = say(&api, &session, "change").await;
    let two = ended(&api, &two).await;
    assert_ne!(two["worker"], one["worker"]);
    assert_eq!(line(&two, "cwd="), cwd, "the same path on every worker");
    assert_eq!(line(&two, "a=").split(' ').next(), Some("one"), "{two}");
    assert_eq!(
        line(&two, "exec="),
        "True escape=False empty=True fleet=False",
        "{two}"
    );
    let stored: Vec<&str> = two["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(
        stored,
        ["notes/a.txt"],
        "only what the turn changed is its artifact"
    );

    // Turn 3 sees the change.
    let (three, _) = say(&api, &session, "show").await;
    let three = ended(&api, &three).await;
    assert_eq!(
        line(&three, "a="),
        "one two files=notes/a.txt,run.sh",
        "{three}"
    );

    // Turn 2 sent only its change: a pack holding notes/a.txt alone, beside turn 1's still read for run.sh;
    // turn 1's replaced manifest is removed.
    let kept = cfg
        .config
        .artifacts
        .local_dir
        .join("sessions")
        .join(&session);
    let names = |dir: &str| -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(kept.join(dir)).into_iter().flatten();
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        paths
    };
    eventually(
        "the replaced state removed",
        Duration::from_secs(10),
        || {
            let left = names("state").len();
            async move { left == 1 }
        },
    )
    .await;
    let packs: Vec<Vec<String>> = names("packs").iter().map(|p| tar_names(p)).collect();
    assert_eq!(
        packs,
        [vec!["notes/a.txt", "run.sh"], vec!["notes/a.txt"]],
        "packs in the order written"
    );

    // A message may bring files (multipart here): they join the workspace, and stay for the turns after.
    let form = reqwest::multipart::Form::new()
        .text("message", "show")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"up".to_vec()).file_name("up.txt"),
        );
    let path = format!("/v1/sessions/{session}/messages");
    let r = api.post_form(&path, form).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let with_file = ended(&api, r.body["job_id"].as_str().expect("job")).await;
    assert_eq!(
        line(&with_file, "a="),
        "one two files=notes/a.txt,run.sh,up.txt",
        "{with_file}"
    );
    let r = api
        .post(
            &path,
            &serde_json::json!({"message": "show",
        "input_files": [{"name": "b64.txt", "data_base64": "aGk="}]}),
        )
        .await;
    let with_json = ended(&api, r.body["job_id"].as_str().expect("job")).await;
    assert_eq!(
        line(&with_json, "a="),
        "one two files=b64.txt,notes/a.txt,run.sh,up.txt",
        "{with_json}"
    );

    // A turn leaving more than the cap fails, and the session keeps its workspace from before it.
    let (four, _) = say(&api, &session, "big").await;
    let four = ended(&api, &four).await;
    assert_eq!(four["error"]["code"], "workspace_too_large", "{four}");
    let (five, _) = say(&api, &session, "show").await;
    let five = ended(&api, &five).await;
    assert_eq!(
        line(&five, "a="),
        "one two files=b64.txt,notes/a.txt,run.sh,up.txt",
        "{five}"
    );
    let view = api.get(&format!("/v1/sessions/{session}")).await.body;
    assert_eq!(view["workspace"]["turn"], 5, "{view}");

    // Deleting the session removes its files.
    assert!(kept.exists());
    let path = format!("/v1/sessions/{session}");
    let r = api.send(api.request(reqwest::Method::DELETE, &path)).await;
    assert_eq!(r.status, 204);
    assert!(!kept.exists(), "{} still there", kept.display());
    second.stop().await;
}

/// A worker killed mid-turn leaves the session's workspace as it was: the turn's rerun starts from turn 1's
/// files, not from what the killed run had half written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_killed_with_its_worker_reruns_from_the_workspace_before_it() {
    let nats = NatsServer::start();
    let cfg = test_config_with(
        &nats.url(),
        &[("FLEET_QUEUE_ACK_WAIT_SECS", "2")],
        WORKSPACE_AGENT,
    );
    let doomed = FleetProcess::worker(&cfg);
    let gw = start_gateway(&cfg.config).await;
    wait_for_agents(&cfg.config).await;
    let api = gw.api();
    let session = create(&api, "ws").await;
    let (one, _) = say(&api, &session, "write").await;
    ended(&api, &one).await;

    let (two, _) = say(&api, &session, "partial").await;
    let (two, rescuer) = rerun_after_kill(&api, &cfg, doomed, &two).await;
    assert_eq!(two["attempt"], 2, "{two}");
    assert_eq!(line(&two, "partial="), "False", "{two}");

    let (three, _) = say(&api, &session, "show").await;
    let three = ended(&api, &three).await;
    assert_eq!(
        line(&three, "a="),
        "one files=notes/a.txt,partial.txt,run.sh",
        "{three}"
    );
    rescuer.stop().await;
}
