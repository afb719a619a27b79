//! The FTP artifact backend against a real FTP server (pyftpdlib), plain and FTPS; run-time sharing targets set with
//! `POST /configure-sharing`; and per-job targets.

use std::time::Duration;

use fleet_shared::artifacts::ArtifactStore;
use fleet_shared::config::TargetConfig;
use fleet_tests::*;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn ftp_target(server: &FtpServer) -> TargetConfig {
    TargetConfig {
        backend: "ftp".into(),
        ftp_host: "127.0.0.1".into(),
        ftp_port: server.port,
        ftp_user: server.user.clone(),
        ftp_password: server.password.clone(),
        ftp_base_path: "/results".into(),
        ftp_tls: server.ca_file.is_some(),
        ftp_ca_file: server
            .ca_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..TargetConfig::default()
    }
}

async fn read_all(
    store: &ArtifactStore,
    key: &fleet_shared::artifacts::StoreKey,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let d = store.download(key, range).await.expect("test step");
    let parts: Vec<bytes::Bytes> = d.body.map(|b| b.expect("test step")).collect().await;
    parts.concat()
}

async fn round_trip(server: &FtpServer) {
    let store = ArtifactStore::new(&ftp_target(server), "jobs").expect("test step");
    store.check().await.expect("test step");
    let dir = tempfile::tempdir().expect("test step");
    let src = dir.path().join("src");
    // Bytes that ASCII mode would mangle (LF, CR) and more than one read chunk.
    let data = pattern(3 * 1024 * 1024 + 17);
    std::fs::write(&src, &data).expect("test step");
    let id = Uuid::now_v7();
    let key = store.key(&id, "sub dir/résumé.bin");
    let up = store.upload_file(&key, &src).await.expect("test step");
    assert_eq!(up.size, data.len() as u64);
    assert_eq!(up.sha256, hex::encode(Sha256::digest(&data)));
    let port = server.port;
    assert_eq!(
        up.location,
        format!(
            "{}://fleet@127.0.0.1:{port}/results/jobs/{id}/sub%20dir/r%C3%A9sum%C3%A9.bin",
            if server.ca_file.is_some() {
                "ftps"
            } else {
                "ftp"
            }
        )
    );
    // On the server's disk under the base path, and no temporary file left beside it.
    let on_disk = server
        .root
        .path()
        .join(format!("results/jobs/{id}/sub dir"));
    assert_eq!(
        std::fs::read(on_disk.join("résumé.bin")).expect("test step"),
        data
    );
    assert_eq!(std::fs::read_dir(&on_disk).expect("test step").count(), 1);

    assert_eq!(
        store.size(&key).await.expect("test step"),
        data.len() as u64
    );
    assert_eq!(read_all(&store, &key, None).await, data);
    // Ranges: inside, to the end, and twice in a row on pooled connections.
    for _ in 0..2 {
        assert_eq!(read_all(&store, &key, Some(10..20)).await, &data[10..20]);
    }
    let n = data.len() as u64;
    assert_eq!(
        read_all(&store, &key, Some(n - 5..n)).await,
        &data[data.len() - 5..]
    );
    let missing = store.key(&id, "missing.txt");
    assert!(store
        .download(&missing, None)
        .await
        .err()
        .expect("test step")
        .is_not_found());
    assert!(store
        .size(&missing)
        .await
        .expect_err("missing")
        .is_not_found());

    // Retention: nothing is old yet; with a cutoff in the future everything goes, with its directories.
    assert_eq!(
        store
            .delete_older_than(chrono::Utc::now() - chrono::Duration::hours(1))
            .await
            .expect("test step"),
        0
    );
    let cutoff = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(store.delete_older_than(cutoff).await.expect("test step"), 1);
    assert!(!server
        .root
        .path()
        .join(format!("results/jobs/{id}"))
        .exists());
    assert_eq!(store.delete_older_than(cutoff).await.expect("test step"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_store_round_trips_binary_files_with_ranges_and_sweeps() {
    let server = FtpServer::start(false);
    round_trip(&server).await;

    let mut wrong = ftp_target(&server);
    wrong.ftp_password = "nope".into();
    let err = ArtifactStore::new(&wrong, "jobs")
        .unwrap()
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ftp://fleet@127.0.0.1") && !err.contains("nope"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_store_round_trips_and_refuses_an_untrusted_server() {
    let server = FtpServer::start(true);
    round_trip(&server).await;

    // Without the test authority the server's certificate is not trusted.
    let mut untrusted = ftp_target(&server);
    untrusted.ftp_ca_file = String::new();
    let err = ArtifactStore::new(&untrusted, "jobs")
        .unwrap()
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

async fn run_job(api: &Api, message: &str, extra: Value) -> Value {
    let mut body = json!({"agent": "fake", "message": message});
    body.as_object_mut()
        .expect("test step")
        .extend(extra.as_object().expect("test step").clone());
    let r = api.post("/v1/jobs?wait=30", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["record"].clone()
}

async fn fetch(api: &Api, path: &str) -> Vec<u8> {
    let r = api
        .request(reqwest::Method::GET, path)
        .send()
        .await
        .expect("test step");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.bytes().await.expect("test step").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_sharing_moves_new_jobs_to_ftp_at_run_time_and_old_files_stay_readable() {
    let nats = NatsServer::start();
    let ftp = FtpServer::start(false);
    let cfg = test_config(
        &nats.url(),
        &[("FLEET_ARTIFACTS_SHARING_HOSTS", "127.0.0.1, localhost")],
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    let before = run_job(&api, "write:a.txt=100", json!({})).await;
    assert!(
        before["files"][0]["location"]
            .as_str()
            .unwrap()
            .starts_with("file://"),
        "{before}"
    );

    // Bad settings are refused before anything changes, naming the field or the store; never echoing secrets.
    let r = api
        .post("/configure-sharing", &json!({"method": "ftp"}))
        .await;
    r.assert_problem(422, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("ftp_host"),
        "{}",
        r.body
    );
    let wrong = json!({"method": "ftp", "ftp_host": "127.0.0.1", "ftp_port": ftp.port,
        "ftp_user": "fleet", "ftp_pass": "wrong-pass-123", "ftp_path": "/ai_results"});
    let r = api.post("/configure-sharing", &wrong).await;
    r.assert_problem(422, "target_unreachable");
    assert!(!r.body.to_string().contains("wrong-pass-123"), "{}", r.body);
    let r = api
        .post("/configure-sharing", &json!({"method": "floppy"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // Only the listed hosts (artifacts.sharing_hosts), checked before any connection is made; and no value may
    // smuggle a line break into an FTP command or a control character into a signed header.
    for elsewhere in [
        json!({"method": "ftp", "ftp_host": "ftp.example.com"}),
        json!({"method": "s3", "s3_bucket": "b"}),
        json!({"method": "s3", "s3_bucket": "b", "s3_endpoint": "http://user@169.254.169.254:80/"}),
    ] {
        let r = api.post("/configure-sharing", &elsewhere).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (403, Some("forbidden")),
            "{elsewhere}: {}",
            r.body
        );
    }
    for smuggling in [
        json!({"method": "ftp", "ftp_host": "127.0.0.1", "ftp_port": ftp.port, "ftp_user": "fleet",
            "ftp_pass": "x\r\nDELE /ai_results/a.txt"}),
        json!({"method": "s3", "s3_bucket": "b", "s3_endpoint": "http://127.0.0.1:1",
            "s3_access_key_id": "AKIA\u{1}"}),
        json!({"method": "s3", "s3_bucket": "<b>", "s3_endpoint": "http://127.0.0.1:1"}),
    ] {
        let r = api.post("/configure-sharing", &smuggling).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some("invalid_request")),
            "{smuggling}: {}",
            r.body
        );
    }
    assert_eq!(
        api.get("/configure-sharing").await.body["method"],
        "default"
    );

    // The seed's body.
    let body = json!({"method": "ftp", "ftp_host": "127.0.0.1", "ftp_port": ftp.port,
        "ftp_user": "fleet", "ftp_pass": ftp.password, "ftp_path": "/ai_results"});
    let r = api.post("/configure-sharing", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.to_string().contains(&ftp.password), "{}", r.body);
    assert_eq!(r.body["settings"]["ftp_password"], "***");
    let target_id = r.body["target_id"].as_str().unwrap().to_string();
    assert!(target_id.starts_with("sharing:"), "{}", r.body);
    let read = api.get("/configure-sharing").await.body;
    assert_eq!(read["target_id"], target_id.as_str());
    assert!(!read.to_string().contains(&ftp.password), "{read}");

    // Workers follow without a restart (their watch sees the change within moments).
    let mut on_ftp = Value::Null;
    for _ in 0..50 {
        let r = run_job(&api, "write:out/report%201.txt=5000", json!({})).await;
        if r["artifact_store"] == target_id.as_str() {
            on_ftp = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        on_ftp["status"], "completed",
        "no job reached the FTP target: {on_ftp}"
    );
    let id = on_ftp["id"].as_str().unwrap();
    let location = on_ftp["files"][0]["location"].as_str().unwrap();
    assert_eq!(
        location,
        format!(
            "ftp://fleet@127.0.0.1:{}/ai_results/jobs/{id}/out/report%201.txt",
            ftp.port
        )
    );
    let on_disk = ftp
        .root
        .path()
        .join(format!("ai_results/jobs/{id}/out/report 1.txt"));
    assert_eq!(std::fs::read(on_disk).unwrap(), pattern(5000));
    // Through the gateway, whole and ranged, and the seed path.
    assert_eq!(
        fetch(&api, &format!("/v1/jobs/{id}/artifacts/out/report%201.txt")).await,
        pattern(5000)
    );
    assert_eq!(
        fetch(&api, &format!("/download/{id}/out/report%201.txt")).await,
        pattern(5000)
    );
    let r = api
        .request(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}/artifacts/out/report%201.txt"),
        )
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), &pattern(5000)[100..200]);
    // The earlier job's file still comes from where it went.
    let before_id = before["id"].as_str().unwrap();
    assert_eq!(
        fetch(&api, &format!("/v1/jobs/{before_id}/artifacts/a.txt")).await,
        pattern(100)
    );

    // A job may still name the default; and `default` resets the fleet.
    let named = run_job(
        &api,
        "write:b.txt=10",
        json!({"artifact_target": "default"}),
    )
    .await;
    assert_eq!(named["artifact_store"], "default", "{named}");
    let r = api
        .post(
            "/v1/jobs",
            &json!({"agent": "fake", "message": "x", "artifact_target": "nowhere"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = api
        .post("/configure-sharing", &json!({"method": "default"}))
        .await;
    assert_eq!(
        (r.status, r.body["target_id"].as_str()),
        (200, Some("default")),
        "{}",
        r.body
    );
    let mut back = Value::Null;
    for _ in 0..50 {
        back = run_job(&api, "write:c.txt=10", json!({})).await;
        if back["files"][0]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("file://"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back["files"][0]["location"]
            .as_str()
            .unwrap()
            .starts_with("file://"),
        "{back}"
    );
    // The FTP job's files stay readable after the fleet moved on.
    assert_eq!(
        fetch(&api, &format!("/v1/jobs/{id}/artifacts/out/report%201.txt")).await,
        pattern(5000)
    );

    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_can_name_a_configured_target_and_unreachable_ftp_fails_the_upload_clearly() {
    let nats = NatsServer::start();
    let ftp = FtpServer::start(false);
    let mut cfg = test_config(&nats.url(), &[]);
    cfg.config
        .artifacts
        .targets
        .insert("archive".into(), ftp_target(&ftp));
    let mut dead = ftp_target(&ftp);
    dead.ftp_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    cfg.config.artifacts.targets.insert("dead".into(), dead);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let api = gw.api();

    let r = run_job(
        &api,
        "write:x.bin=2000",
        json!({"artifact_target": "archive"}),
    )
    .await;
    assert_eq!(
        (r["status"].as_str(), r["artifact_store"].as_str()),
        (Some("completed"), Some("archive")),
        "{r}"
    );
    let id = r["id"].as_str().unwrap();
    assert!(ftp
        .root
        .path()
        .join(format!("results/jobs/{id}/x.bin"))
        .exists());
    assert_eq!(
        fetch(&api, &format!("/v1/jobs/{id}/artifacts/x.bin")).await,
        pattern(2000)
    );
    // Unnamed jobs still use the default.
    let r = run_job(&api, "write:y.bin=1", json!({})).await;
    assert_eq!(r["artifact_store"], "default", "{r}");

    let r = run_job(
        &api,
        "print:kept write:x.bin=10",
        json!({"artifact_target": "dead"}),
    )
    .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "artifact_upload_failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ftp://fleet@127.0.0.1"),
        "{r}"
    );
    assert_eq!(r["stdout"], "kept\n", "{r}");
    assert_eq!(r["files"], json!([]), "{r}");

    worker.stop().await;
}
