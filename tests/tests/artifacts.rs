//! Files jobs create: collected from the workspace only, stored, listed in the record, downloaded through the
//! gateway with ranges, never reachable by path tricks.

use fleet_tests::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The bytes the fake agent's `write:NAME=N` puts in a file.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The names of the files a record lists.
fn file_names(record: &Value) -> Vec<&str> {
    let files = record["files"].as_array().expect("files");
    files
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect()
}

async fn run(api: &Api, message: &str, extra: Value) -> Value {
    let mut body = json!({"agent": "fake", "message": message});
    let extra = extra
        .as_object()
        .expect("extra fields are an object")
        .clone();
    body.as_object_mut()
        .expect("the body is an object")
        .extend(extra);
    let r = api.post("/v1/jobs?wait=30", &body).await;
    match r.status {
        200 => r.body["record"].clone(),
        // Still storing (an unreachable store's retries back off for a while on a busy machine): wait on.
        202 => {
            fleet_tests::sessions::ended(api, r.body["job_id"].as_str().unwrap_or_default()).await
        }
        _ => panic!("{}", r.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_files_are_stored_listed_and_downloadable_and_nothing_else_is() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();

    let script = "write:a.txt=5 write:out/r%C3%A9sum%C3%A9%20final.txt=1000 symlink:escape=/etc/passwd print:done";
    let record = run(&api, script, json!({})).await;
    assert_eq!(record["status"], "completed", "{record}");
    let files = record["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.txt", "out/résumé final.txt"]);
    assert_eq!(files[1]["size"], 1000);
    assert_eq!(
        files[1]["sha256"],
        hex::encode(Sha256::digest(pattern(1000)))
    );
    assert_eq!(files[0]["content_type"], "text/plain");
    assert!(files[0]["location"]
        .as_str()
        .unwrap()
        .starts_with("file://"));
    assert_eq!(record["skipped_files"][0]["name"], "escape");
    let id = record["id"].as_str().unwrap().to_string();

    // Listing, seed-compatible names in /results.
    let listed = api.get(&format!("/v1/jobs/{id}/artifacts")).await.body;
    assert_eq!(listed["files"].as_array().unwrap().len(), 2);
    let results = api.get(&format!("/results/{id}")).await.body;
    assert_eq!(results["files"], json!(["a.txt", "out/résumé final.txt"]));

    // Whole file, with type and an exact unicode name.
    let url = format!("/v1/jobs/{id}/artifacts/out/r%C3%A9sum%C3%A9%20final.txt");
    let r = api.fetch(&url).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.ends_with("filename*=UTF-8''r%C3%A9sum%C3%A9%20final.txt"),
        "{disposition}"
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(1000));

    // A range.
    let r = api
        .request(reqwest::Method::GET, &url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), &pattern(1000)[10..20]);
    let r = api
        .send(
            api.request(reqwest::Method::GET, &url)
                .header("Range", "bytes=5000-"),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str().unwrap()),
        (416, "range_not_satisfiable")
    );

    // The seed path.
    let r = api.fetch(&format!("/download/{id}/a.txt")).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(5));

    // Path tricks: refused or not found, never a file outside the job's own.
    for bad in [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "a.txt%00",
        "out/..%2Fa.txt",
        "escape",
        "nope.txt",
    ] {
        for base in [
            format!("/v1/jobs/{id}/artifacts/"),
            format!("/download/{id}/"),
        ] {
            let r = api.get(&format!("{base}{bad}")).await;
            assert!(
                r.status == 400 || r.status == 404,
                "{base}{bad}: {} {}",
                r.status,
                r.body
            );
            assert!(
                r.body["code"].is_string(),
                "{base}{bad}: problem body expected"
            );
        }
    }
    // The local store cannot presign; say so rather than pretend.
    let r = api
        .get(&format!("/v1/jobs/{id}/artifacts/a.txt?presign=60"))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str().unwrap()),
        (422, "invalid_request")
    );
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("cannot hand out presigned URLs"));
    let other = uuid::Uuid::now_v7();
    assert_eq!(
        api.get(&format!("/v1/jobs/{other}/artifacts/a.txt"))
            .await
            .status,
        404
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_skip_files_with_a_reason_and_full_logs_are_stored() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[
        ("MAX_FILE_SIZE", "100"),
        ("FLEET_ARTIFACTS_MAX_FILES", "2"),
        ("FLEET_WORKER_OUTPUT_CAP_BYTES", "1000"),
    ])
    .await;
    let api = gw.api();

    let record = run(
        &api,
        "write:big.bin=101 write:a=1 write:b=2 write:c=3 flood:5000",
        json!({}),
    )
    .await;
    assert_eq!(record["status"], "completed", "{record}");
    let names = file_names(&record);
    assert_eq!(names, ["a", "b"]);
    let skipped: Vec<(&str, &str)> = record["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0].0 == "big.bin" && skipped[0].1.contains("per-file limit of 100"),
        "{skipped:?}"
    );
    assert!(
        skipped[1].0 == "c" && skipped[1].1.contains("limit of 2 files"),
        "{skipped:?}"
    );

    // stdout went over the record's cap: the full log is stored and downloadable, itself within the per-file cap
    // (100 bytes here), ending with a line that says so.
    assert_eq!(record["stdout_truncated_bytes"], 4000);
    assert_eq!(record["logs"][0]["name"], "_logs/stdout.log");
    assert_eq!(record["logs"][0]["truncated"], true);
    let id = record["id"].as_str().unwrap();
    let r = api
        .fetch(&format!("/v1/jobs/{id}/artifacts/_logs/stdout.log"))
        .await;
    let log = r.bytes().await.unwrap().to_vec();
    assert_eq!(&log[..100], &[b'x'; 100][..]);
    assert_eq!(
        String::from_utf8_lossy(&log[100..]),
        "\n[fleet: the log stops here, at the per-file limit of 100 bytes]\n"
    );

    // return_files: false stores nothing.
    let record = run(&api, "write:a=1", json!({"return_files": false})).await;
    assert_eq!(record["files"], json!([]));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_a_real_s3_server_including_multipart() {
    let nats = NatsServer::start();
    let s3 = S3Server::start().await;
    let cfg = s3.config(&nats.url(), &[]);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    // 20 MB goes up in parts; the small one in a single put.
    let big = 20 * 1024 * 1024;
    let record = run(
        &api,
        &format!("write:big.bin={big} write:small%20one.txt=10"),
        json!({}),
    )
    .await;
    assert_eq!(record["status"], "completed", "{record}");
    let files = record["files"].as_array().unwrap();
    assert_eq!(files[0]["name"], "big.bin");
    assert_eq!(
        files[0]["sha256"],
        hex::encode(Sha256::digest(pattern(big)))
    );
    assert!(files[0]["location"]
        .as_str()
        .unwrap()
        .starts_with("s3://fleet-test/jobs/"));
    let id = record["id"].as_str().unwrap();

    let r = api.fetch(&format!("/v1/jobs/{id}/artifacts/big.bin")).await;
    assert_eq!(r.headers()["content-length"], big.to_string().as_str());
    assert_eq!(
        hex::encode(Sha256::digest(r.bytes().await.unwrap())),
        hex::encode(Sha256::digest(pattern(big)))
    );
    let r = api
        .request(
            reqwest::Method::GET,
            &format!("/download/{id}/small%20one.txt"),
        )
        .header("Range", "bytes=-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), &pattern(10)[7..]);

    // A presigned URL fetches the file straight from the store, without the gateway.
    let p = api
        .get(&format!(
            "/v1/jobs/{id}/artifacts/small%20one.txt?presign=60"
        ))
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let url = p.body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&s3.endpoint) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    let direct = reqwest::get(url).await.unwrap();
    assert_eq!(direct.status().as_u16(), 200);
    assert_eq!(direct.bytes().await.unwrap().to_vec(), pattern(10));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_the_job_clearly_and_keeps_its_output() {
    let nats = NatsServer::start();
    // Nothing listens on this port: every upload attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let cfg = test_config(
        &nats.url(),
        &[
            ("FLEET_ARTIFACTS_BACKEND", "s3"),
            ("FLEET_ARTIFACTS_S3_ENDPOINT", &endpoint),
            ("FLEET_ARTIFACTS_S3_BUCKET", "nowhere"),
            ("FLEET_ARTIFACTS_S3_ACCESS_KEY_ID", "test"),
            ("FLEET_ARTIFACTS_S3_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let (worker, worker_addr) = start_worker_listening(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let record = run(&gw.api(), "write:a.txt=3 print:still-here", json!({})).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["code"], "artifact_upload_failed");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap()
            .contains("s3://nowhere"),
        "{record}"
    );
    assert_eq!(record["stdout"], "still-here\n");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["files"], json!([]));
    let metrics = fleet_tests::metrics::scrape(&format!("http://{worker_addr}/metrics")).await;
    assert_eq!(
        fleet_tests::metrics::sample(
            &metrics,
            r#"fleet_worker_upload_errors_total{target="default"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_files_are_written_first_and_only_changed_ones_come_back() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let script = "cat in/data.txt; echo more >> in/data.txt; cp in/data.txt out.txt";
    let body = json!({"agent": "shell", "message": script, "input_files": [
        {"name": "in/data.txt", "data_base64": b64("hello\n")},
        {"name": "keep.txt", "data_base64": b64("untouched")},
    ]});
    let r = api.post("/v1/jobs?wait=30", &body).await;
    let record = &r.body["record"];
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["stdout"], "hello\n");
    let names = file_names(record);
    assert_eq!(
        names,
        ["in/data.txt", "out.txt"],
        "an unchanged input is not an artifact"
    );
    // The record keeps input names and sizes, not their content.
    assert_eq!(
        record["request"]["input_files"][0],
        json!({"name": "in/data.txt", "size": 6})
    );
    let first = record["id"].as_str().unwrap().to_string();

    // A stored file of one job as the input of the next.
    let body = json!({"agent": "shell", "message": "cat out.txt", "input_files": [
        {"name": "out.txt", "from": {"job_id": first, "name": "out.txt"}},
    ]});
    let r = api.post("/v1/jobs?wait=30", &body).await;
    assert_eq!(r.body["record"]["stdout"], "hello\nmore\n", "{}", r.body);
    assert_eq!(r.body["record"]["files"], json!([]));

    // A reference to nothing fails the job clearly; bad names and content are refused at the door.
    let body = json!({"agent": "shell", "message": "true", "input_files": [
        {"name": "x", "from": {"job_id": first, "name": "missing.txt"}},
    ]});
    let record = api.post("/v1/jobs?wait=30", &body).await.body["record"].clone();
    assert_eq!(
        (record["status"].as_str(), record["error"]["code"].as_str()),
        (Some("failed"), Some("invalid_job"))
    );
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.txt"),
        "{record}"
    );
    for bad in [
        json!({"name": "../escape", "data_base64": b64("x")}),
        json!({"name": "a", "data_base64": "not base64!"}),
        json!({"name": "a"}),
    ] {
        let r = api
            .post(
                "/v1/jobs",
                &json!({"agent": "shell", "message": "true", "input_files": [bad]}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["code"].as_str().unwrap()),
            (422, "invalid_request"),
            "{}",
            r.body
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_artifacts_past_retention_are_removed() {
    let nats = NatsServer::start();
    // Retention of about two seconds (CLEANUP_AFTER_HOURS is the seed systems' name for it).
    let cfg = test_config(
        &nats.url(),
        &[
            ("CLEANUP_AFTER_HOURS", "0.0006"),
            ("FLEET_ARTIFACTS_SWEEP_INTERVAL_SECS", "0.5"),
        ],
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();
    let record = run(&api, "write:kept-briefly.txt=10", json!({})).await;
    let id = record["id"].as_str().unwrap().to_string();
    let stored = cfg
        .config
        .artifacts
        .local_dir
        .join("jobs")
        .join(&id)
        .join("kept-briefly.txt");
    assert!(stored.exists(), "stored at {}", stored.display());

    eventually("artifact swept", std::time::Duration::from_secs(15), || {
        let gone = !stored.exists();
        async move { gone }
    })
    .await;
    api.poll(&format!("/v1/jobs/{id}"), "record expired", |b| {
        b["code"] == "job_not_found"
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_upload_leaves_no_record_of_files_and_the_rerun_stores_them() {
    let server = NatsServer::start();
    let s3 = S3Server::start().await;
    let cfg = s3.config(
        &server.url(),
        &[
            ("FLEET_QUEUE_ACK_WAIT_SECS", "2"),
            // Over the default per-file cap of 100 MB, which would skip the file instead of storing it.
            ("FLEET_ARTIFACTS_MAX_FILE_BYTES", "1000000000"),
        ],
    );
    let nats = NatsClient::connect(&server.url()).await;
    let gw = start_gateway(&cfg.config).await;
    let first = FleetProcess::worker(&cfg);
    wait_for_agents(&cfg.config).await;
    let size = 200 * 1024 * 1024;
    let id = uuid::Uuid::now_v7();
    nats.publish_job(
        "fake",
        &json!({"id": id, "message": format!("write:big.bin={size}")}),
    )
    .await;
    // Kill the worker while S3 shows its multipart upload of the file open.
    let uploads = format!("{}/{}?uploads", s3.endpoint, s3.bucket);
    let key = format!("<Key>jobs/{id}/big.bin</Key>");
    let http = reqwest::Client::new();
    eventually(
        "upload in progress",
        std::time::Duration::from_secs(60),
        || {
            let (http, uploads, key) = (http.clone(), uploads.clone(), key.clone());
            async move {
                http.get(uploads)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
                    .contains(&key)
            }
        },
    )
    .await;
    first.signal(libc::SIGKILL);
    drop(first);
    let r = nats.record(id).await.expect("record");
    assert!(
        !r.status.is_terminal(),
        "the job was not finished: {:?}",
        r.status
    );
    assert!(
        r.files.is_empty(),
        "no file may be listed before it is stored"
    );

    let _second = FleetProcess::worker(&cfg);
    let r = nats
        .wait_record(id, "rerun finished", |r| r.status.is_terminal())
        .await;
    assert_eq!(
        r.status,
        fleet_shared::JobStatus::Completed,
        "{:?}",
        r.error
    );
    assert_eq!((r.attempt, r.files.len()), (2, 1));
    let got = gw
        .api()
        .request(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}/artifacts/big.bin"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(got.bytes().await.unwrap())),
        r.files[0].sha256
    );
    assert_eq!(
        r.files[0].sha256,
        hex::encode(Sha256::digest(pattern(size)))
    );
}

fn form_file(name: &str, data: Vec<u8>) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(data).file_name(name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_reach_the_workspace_within_their_own_limits() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[("MAX_FILE_SIZE", "6000000")]).await;
    let api = gw.api();

    // 5 MB: far over the 1 MiB JSON body limit, within the per-file cap. The script comes as a file part named
    // `message` (as `curl -F message=@script.sh` sends it) and is still the message.
    let big = pattern(5_000_000);
    let script =
        "wc -c < 'in/big data.bin'; sha256sum 'in/big data.bin' | cut -d' ' -f1; cat notes.txt";
    let form = || {
        reqwest::multipart::Form::new()
            .text("agent", "shell")
            .part(
                "message",
                form_file("script.sh", script.as_bytes().to_vec()),
            )
            .text("timeout", "30")
            .part("file", form_file("in/big data.bin", big.clone()))
            .part("file", form_file("notes.txt", b"hello\n".to_vec()))
    };
    let send = || {
        api.send(
            api.request(reqwest::Method::POST, "/v1/jobs?wait=30")
                .header("idempotency-key", "upload-1")
                .multipart(form()),
        )
    };
    let r = send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let record = &r.body["record"];
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        record["stdout"],
        format!("5000000\n{}\nhello\n", hex::encode(Sha256::digest(&big)))
    );
    // Inputs the job left alone are not returned as artifacts; the record keeps names and sizes only.
    assert_eq!(record["files"], json!([]), "{record}");
    let inputs = record["request"]["input_files"].as_array().unwrap();
    assert_eq!(inputs[0]["name"], "in/big data.bin");
    assert_eq!(inputs[0]["size"], 5_000_000);
    // The same upload again under the same key is the same job.
    let again = send().await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["job_id"], r.body["job_id"]);

    // Limits: per file (MAX_FILE_SIZE), names, and JSON bodies keep theirs.
    let post = |form| api.post_form("/v1/jobs", form);
    let shell = || {
        reqwest::multipart::Form::new()
            .text("agent", "shell")
            .text("message", "true")
    };
    let over = shell().part("file", form_file("big.bin", pattern(6_000_001)));
    post(over).await.assert_problem(413, "payload_too_large");
    let sneaky = shell().part("file", form_file("../escape.txt", b"x".to_vec()));
    post(sneaky).await.assert_problem(400, "invalid_name");
    let typo = reqwest::multipart::Form::new()
        .text("agent", "shell")
        .text("mesage", "true");
    let r = post(typo).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("mesage"),
        "{}",
        r.body
    );
    let huge_json = json!({"agent": "shell", "message": "x".repeat(2_000_000)});
    api.post("/v1/jobs", &huge_json)
        .await
        .assert_problem(413, "payload_too_large");

    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_files_of_a_job_download_as_one_tar_that_tar_extracts_exactly() {
    let (_nats, _cfg, worker, gw) = start_fleet(&[]).await;
    let api = gw.api();

    let long = format!("{}/{}", "deep".repeat(40), "n%C3%A4me%20".repeat(15));
    let script = format!("write:a.txt=5 write:empty.bin=0 write:sub/b.bin=70000 write:{long}=513");
    let record = run(&api, &script, json!({})).await;
    assert_eq!(record["status"], "completed", "{record}");
    let id = record["id"].as_str().unwrap();
    let r = api.fetch(&format!("/v1/jobs/{id}/artifacts.tar")).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), declared);

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("job.tar");
    std::fs::write(&archive, &bytes).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let decoded_long = format!("{}/{}", "deep".repeat(40), "näme ".repeat(15));
    for (name, size) in [
        ("a.txt", 5),
        ("empty.bin", 0),
        ("sub/b.bin", 70000),
        (decoded_long.as_str(), 513),
    ] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            pattern(size),
            "{name}"
        );
    }
    let r = api
        .get(&format!("/v1/jobs/{}/artifacts.tar", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(r.status, 404);
    worker.stop().await;
}
