//! The hostile suite, jobs and publishers: an agent running as `nobody` (CI runs as root) that plants links and
//! FIFOs where the worker writes, forks daemons, floods output and names reserved files; publishers that send
//! wildcard subjects, reuse ids and push records past NATS's message size. Each test is a reproduction from
//! issue 14, run against a real worker and a real NATS server.

use std::time::Duration;

use fleet_shared::JobStatus;
use fleet_tests::clients::{next_reply, NatsClient};
use fleet_tests::*;
use serde_json::json;

const NOBODY: &str = r#"
[agents.py]
command = ["python3", "-c", "{message}"]
run_as = "nobody"
[agents.pyrange]
command = ["python3", "-c", "{message}"]
run_as = "62000-62015"
[agents.pystdin]
command = ["python3", "-"]
stdin = "{message}"
run_as = "nobody"
"#;

fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests run agents as `nobody`: run them as root (CI does)"
    );
}

async fn fleet(extra: &[(&str, &str)]) -> (NatsServer, TestConfig, WorkerHandle, GatewayHandle) {
    require_root();
    let nats = NatsServer::start();
    let cfg = test_config_with(&nats.url(), extra, NOBODY);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    (nats, cfg, worker, gw)
}

async fn run_py(gw: &GatewayHandle, script: &str) -> serde_json::Value {
    ended_run(&gw.api(), "py", script).await
}

async fn download(gw: &GatewayHandle, id: &str, name: &str) -> Vec<u8> {
    let url = format!("{}/v1/jobs/{id}/artifacts/{name}", gw.url);
    let r = reqwest::get(url).await.expect("download");
    assert_eq!(r.status(), 200, "{name}");
    r.bytes().await.expect("body").to_vec()
}

/// Links to the worker's environment and FIFOs planted where the worker keeps a job's logs are never followed,
/// blocked on or overwritten: the job ends and its logs hold exactly what it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_fifos_planted_where_the_worker_writes_its_logs_are_never_followed() {
    let (_nats, _cfg, worker, gw) = fleet(&[]).await;
    let script = r#"
import os, sys
tmp = os.environ["TMPDIR"]
root = os.path.dirname(tmp)
planted = []
for d in (tmp, root, os.getcwd()):
    for n in ("stdout.log", "stderr.log"):
        p = os.path.join(d, n)
        try:
            os.symlink("/proc/%d/environ" % os.getppid(), p)
            planted.append(p)
        except OSError:
            pass
try:
    os.mkfifo(os.path.join(root, "stdout.log.fifo"))
except OSError:
    pass
sys.stdout.buffer.write(b"\xff raw\n")
sys.stdout.flush()
sys.stderr.write("e" * 70000)
"#;
    let body = run_py(&gw, script).await;
    assert_eq!(body["status"], "completed", "{body}");
    let id = body["id"].as_str().unwrap();
    let stdout = download(&gw, id, "_logs/stdout.log").await;
    assert_eq!(
        stdout, b"\xff raw\n",
        "the stored stdout log is the job's own output"
    );
    let stderr = download(&gw, id, "_logs/stderr.log").await;
    assert_eq!(stderr, "e".repeat(70000).as_bytes());
    for log in [&stdout, &stderr] {
        let text = String::from_utf8_lossy(log);
        assert!(!text.contains("CARGO_"), "the worker's environment leaked");
    }
    worker.stop().await;
}

/// A daemon that left the job's process group and session is gone when the job ends, so it can neither swap
/// workspace files nor read the next job's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_forked_daemon_ends_with_its_job() {
    let (_nats, _cfg, worker, gw) = fleet(&[]).await;
    let script = r#"
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(os.getpid(), flush=True)
        time.sleep(120)
    os._exit(0)
time.sleep(0.3)
"#;
    let body = run_py(&gw, script).await;
    assert_eq!(body["status"], "completed", "{body}");
    let pid: i32 = body["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .expect("daemon pid");
    assert!(!process_alive(pid), "the daemon {pid} outlived its job");
    worker.stop().await;
}

/// Files the job names like the fleet's own (`_logs/...`) are skipped with the reason, never listed as the job's
/// files, and an input may not take such a name; the archive's bytes match its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_names_are_refused_as_inputs_and_skipped_as_outputs() {
    let (_nats, _cfg, worker, gw) = fleet(&[]).await;
    let script = r#"
import os, sys
os.makedirs("_logs", exist_ok=True)
open("_logs/stdout.log", "w").write("forged")
open("real.txt", "w").write("real")
sys.stdout.buffer.write(b"\xfe")
"#;
    let body = run_py(&gw, script).await;
    assert_eq!(body["status"], "completed", "{body}");
    let names: Vec<&str> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["real.txt"], "{body}");
    let skipped = body["skipped_files"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["name"] == "_logs" && s["reason"].as_str().unwrap().contains("reserved")),
        "{body}"
    );
    let id = body["id"].as_str().unwrap();
    assert_eq!(download(&gw, id, "_logs/stdout.log").await, b"\xfe");
    let tar_url = format!("{}/v1/jobs/{id}/artifacts.tar", gw.url);
    let tar = reqwest::get(tar_url).await.unwrap().bytes().await.unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let entries: Vec<(String, Vec<u8>)> = archive
        .entries()
        .expect("a readable archive")
        .map(|e| {
            let mut e = e.expect("entry");
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect();
    assert!(
        entries.contains(&("real.txt".to_string(), b"real".to_vec())),
        "{entries:?}"
    );

    let r = gw
        .api()
        .post(
            "/v1/jobs",
            &json!({"agent": "py", "message": "pass",
                    "input_files": [{"name": "_logs/stdout.log", "data_base64": "eA=="}]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["code"], "invalid_request");
    worker.stop().await;
}

/// A job's full log stops at the per-file limit with a line saying so, and the record flags it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_logs_stay_within_the_per_file_limit() {
    let (_nats, _cfg, worker, gw) = fleet(&[("FLEET_ARTIFACTS_MAX_FILE_BYTES", "1048576")]).await;
    let body = run_py(&gw, "import sys\nsys.stdout.write('x' * (3 << 20))").await;
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["stdout_bytes"], 3 << 20);
    let log = &body["logs"][0];
    assert_eq!(log["name"], "_logs/stdout.log", "{body}");
    assert_eq!(log["truncated"], true, "{body}");
    let size = log["size"].as_u64().unwrap();
    assert!((1 << 20..(1 << 20) + 200).contains(&size), "{size}");
    let id = body["id"].as_str().unwrap();
    let stored = download(&gw, id, "_logs/stdout.log").await;
    assert!(String::from_utf8_lossy(&stored).ends_with("per-file limit of 1048576 bytes]\n"));
    worker.stop().await;
}

/// Whatever a job produces, its terminal record fits in a NATS message: 20,000 long file names, or a message
/// near the limit with plenty of output, end the job with every cut counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_would_pass_the_message_size_are_trimmed_and_the_job_ends() {
    let (nats, _cfg, worker, gw) = fleet(&[]).await;
    let script = r#"
for i in range(20000):
    open("f%05d_%s" % (i, "n" * 200), "w").write("x")
"#;
    let body = run_py(&gw, script).await;
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["files"].as_array().unwrap().len(), 1000);
    assert_eq!(body["skipped_files"].as_array().unwrap().len(), 100);
    assert_eq!(
        body["skipped_files_omitted"], 18900,
        "{}",
        body["skipped_files_omitted"]
    );
    let id = body["id"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&download(&gw, id, "_logs/manifest.json").await).unwrap();
    assert_eq!(manifest["skipped_files"].as_array().unwrap().len(), 19000);
    assert_eq!(manifest["files"].as_array().unwrap().len(), 1000);

    // A direct publisher may send a message close to NATS's limit; the output must still fit beside it.
    let client = NatsClient::connect(&nats.url()).await;
    let filler = "#".repeat(950 * 1024);
    let script = format!(
        "import sys\nsys.stdout.write('o' * 70000)\nsys.stderr.write('e' * 70000)\n{filler}"
    );
    let record = client.run_job("pystdin", json!({"message": script})).await;
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.error);
    assert_eq!(
        record.stdout.len() as u64 + record.stdout_truncated_bytes,
        70000
    );
    assert_eq!(
        record.stderr.len() as u64 + record.stderr_truncated_bytes,
        70000
    );
    assert!(record.stdout_truncated_bytes > 0);
    let logs: Vec<&str> = record.logs.iter().map(|l| l.name.as_str()).collect();
    assert!(logs.contains(&"_logs/stdout.log"), "{logs:?}");
    worker.stop().await;
}

/// One message on the literal subject `fleet.jobs.>` (or any subject naming no agent) touches no other job:
/// queued jobs stay queued, the stray message is removed, and no job names a fleet subject as its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subject_never_wipes_the_queue() {
    require_root();
    let nats = NatsServer::start();
    // Consumers for `py` exist but no worker pulls them; a worker for `shell` alone runs the janitor.
    let waiting = test_config_with(&nats.url(), &[], NOBODY);
    declare_agents_without_worker(&waiting.config).await;
    let janitor = test_config(&nats.url(), &[("FLEET_WORKER_AGENTS", "shell")]);
    let worker = start_worker(&janitor.config).await;
    let client = NatsClient::connect(&nats.url()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = fleet_shared::wire::new_job_id();
        client
            .publish_job("py", &json!({"id": id, "message": "print(1)"}))
            .await;
        ids.push(id);
    }
    let jobs = |agent: &str| client.topology.jobs_subject(agent);
    for subject in [jobs(">"), jobs("*"), format!("{}.a.b", jobs("py"))] {
        client
            .js
            .publish(subject, r#"{"message":"stray"}"#.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    assert_eq!(client.queued_messages().await, 6);
    eventually(
        "the stray messages removed",
        Duration::from_secs(20),
        || async { client.queued_messages().await == 3 },
    )
    .await;
    // Three more grace periods: the queued jobs are still there, without records of any end.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client.queued_messages().await, 3);
    for id in &ids {
        assert!(client.record(*id).await.is_none(), "job {id} was touched");
    }

    let inbox = client.client.new_inbox();
    let mut replies = client.client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(fleet_shared::topology::REPLY_TO_HEADER, inbox.as_str());
    client
        .js
        .publish_with_headers(
            client.topology.jobs_subject("shell"),
            headers,
            serde_json::to_vec(
                &json!({"message": "echo hi", "reply_to": client.topology.jobs_subject("py")}),
            )
            .unwrap()
            .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (record, _) = next_reply(&mut replies, Duration::from_secs(20)).await;
    assert_eq!(record.status, JobStatus::Failed);
    let error = record.error.expect("error");
    assert_eq!(error.code.as_str(), "invalid_job");
    assert!(error.message.contains("reply_to"), "{}", error.message);
    assert_eq!(
        client.queued_messages().await,
        3,
        "nothing was published as a job"
    );
    worker.stop().await;
}

/// A direct publish reusing an ended job's id (with a fresh message id) does not run again: the publisher is
/// told, the record and the stored files stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_job_is_never_run_again_by_a_stray_publish() {
    let (nats, _cfg, worker, gw) = fleet(&[]).await;
    let client = NatsClient::connect(&nats.url()).await;
    let id = fleet_shared::wire::new_job_id();
    let first = client
        .run_job(
            "py",
            json!({"id": id, "message": "open('out.txt','w').write('first')"}),
        )
        .await;
    assert_eq!(first.status, JobStatus::Completed);
    let again = client
        .run_job(
            "py",
            json!({"id": id, "message": "open('out.txt','w').write('second')"}),
        )
        .await;
    assert_eq!(again.status, JobStatus::Failed);
    assert!(
        again.error.as_ref().unwrap().message.contains("is taken"),
        "{:?}",
        again.error
    );
    let stored = client.record(id).await.expect("record");
    assert_eq!(stored, first, "the ended job's record is unchanged");
    assert_eq!(download(&gw, &id.to_string(), "out.txt").await, b"first");
    worker.stop().await;
}

/// Jobs of an agent with a uid range never share a user while they run, so none can signal, trace or read what
/// another one is doing as "the same user".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_of_a_uid_range_run_as_different_users() {
    let (_nats, _cfg, worker, gw) = fleet(&[]).await;
    let script = "import os, time\nprint(os.getuid(), os.getgid())\ntime.sleep(1)";
    let submit = |gw: &GatewayHandle| {
        let api = gw.api();
        async move {
            api.post(
                "/v1/jobs?wait=60",
                &json!({"agent": "pyrange", "message": script}),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(submit(&gw), submit(&gw));
    let ids: Vec<String> = [a, b]
        .iter()
        .map(|r| {
            assert_eq!(r.body["record"]["status"], "completed", "{}", r.body);
            r.body["record"]["stdout"]
                .as_str()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1], "two running jobs shared a user");
    for id in &ids {
        let uid: u32 = id.split(' ').next().unwrap().parse().unwrap();
        assert!((62000..=62015).contains(&uid), "{id}");
    }
    worker.stop().await;
}

/// A publisher naming the revision of an ended job's record (as the gateway names its `queued` record's) cannot
/// have that record replaced: without the gateway's seal the revision is not taken, and the message is refused
/// like any other reuse of an ended job's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_revision_never_replaces_an_ended_job() {
    let (nats, _cfg, worker, gw) = fleet(&[]).await;
    let r = gw
        .api()
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "py", "message": "print('mine')"}),
        )
        .await;
    assert_eq!(r.body["record"]["status"], "completed", "{}", r.body);
    let id: uuid::Uuid = r.job_uuid();
    let client = NatsClient::connect(&nats.url()).await;
    let before = client.record(id).await.expect("record");
    let entry = client.records.entry(id.to_string()).await.unwrap().unwrap();

    let inbox = client.client.new_inbox();
    let mut replies = client.client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        fleet_shared::topology::RECORD_REVISION_HEADER,
        entry.revision.to_string().as_str(),
    );
    headers.insert(
        fleet_shared::topology::RECORD_SEAL_HEADER,
        "00000000000000000000000000000000",
    );
    let body = json!({"id": id, "message": "print('forged')", "reply_to": inbox});
    client
        .js
        .publish_with_headers(
            client.topology.jobs_subject("py"),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (answer, _) = next_reply(&mut replies, Duration::from_secs(20)).await;
    assert_eq!(answer.status, JobStatus::Failed);
    assert!(answer.error.unwrap().message.contains("is taken"));
    assert_eq!(
        client.record(id).await.expect("record"),
        before,
        "the ended job's record was replaced"
    );
    worker.stop().await;
}
