//! Secrets never leave where they belong: with an S3 secret, an FTP password, a NATS password, a JWT secret and
//! API keys in play, none of them appears in the gateway's or the worker's log (at debug level), in records, in
//! events, in `/configure-sharing` answers or in error bodies.

use fleet_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_records_events_or_answers() {
    let nats = NatsServer::start_with(&["--user", "fleet", "--pass", "nats-pass-5ecret"]);
    let s3 = S3Server::start().await;
    let ftp = FtpServer::start(false);
    let jwt = "jwt-5ecret-0123456789abcdef0123456789";
    // moto takes any credentials: give the store a secret distinctive enough to search the logs for.
    let s3_secret = "s3-5ecret-value-0123";
    let mut extra: Vec<(String, String)> = s3
        .settings()
        .into_iter()
        .map(|(k, v)| {
            let v = if k.ends_with("SECRET_ACCESS_KEY") {
                s3_secret.to_string()
            } else {
                v
            };
            (k.to_string(), v)
        })
        .collect();
    extra.extend([
        ("FLEET_AUTH_MODE".to_string(), "required".to_string()),
        (
            "FLEET_ARTIFACTS_SHARING_HOSTS".to_string(),
            "127.0.0.1".to_string(),
        ),
        ("FLEET_AUTH_JWT_SECRET".to_string(), jwt.to_string()),
        ("FLEET_NATS_USER".to_string(), "fleet".to_string()),
        (
            "FLEET_NATS_PASSWORD".to_string(),
            "nats-pass-5ecret".to_string(),
        ),
        (
            "RUST_LOG".to_string(),
            "debug,async_nats=info,aws=info,hyper=info".to_string(),
        ),
        ("RUST_LOG_FORMAT".to_string(), "json".to_string()),
    ]);
    let extra_refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cfg = test_config(&nats.url(), &extra_refs);
    let logs = tempfile::tempdir().expect("tempdir");
    let (worker_log, gateway_log) = (
        logs.path().join("worker.log"),
        logs.path().join("gateway.log"),
    );
    let _worker = FleetProcess::start_with_log("worker", &cfg, &extra_refs, &worker_log);
    wait_for_agents(&cfg.config).await;
    let (_gateway, anonymous) = FleetProcess::gateway(&cfg, &extra_refs, &gateway_log).await;
    let (_, key) = create_key(
        &cfg,
        &[
            "--name",
            "ops",
            "--agent",
            "*",
            "--configure-sharing",
            "--read-all",
        ],
    );
    let (_, key_secret) = key.rsplit_once('_').expect("key");
    let api = anonymous.with_key(&key);

    // A job with files (S3), the sharing target moved to FTP and back, a failing login, a bad key.
    let r = api
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "fake", "message": "write:a.txt=5 print:done"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    let id = r.job_id();
    let mut answers = vec![r.body.to_string()];
    let ftp_settings: std::collections::HashMap<_, _> = ftp.settings().into_iter().collect();
    let ftp_password = ftp_settings["FTP_PASSWORD"].clone();
    let sharing = json!({
        "method": "ftp",
        "ftp_host": ftp_settings["FTP_HOST"],
        "ftp_port": ftp_settings["FTP_PORT"].parse::<u16>().expect("port"),
        "ftp_user": ftp_settings["FTP_USER"],
        "ftp_pass": ftp_password,
    });
    let r = api.post("/configure-sharing", &sharing).await;
    assert_eq!(r.status, 200, "{}", r.body);
    answers.push(r.body.to_string());
    answers.push(api.get("/configure-sharing").await.body.to_string());
    let mut wrong = sharing.clone();
    wrong["ftp_pass"] = json!("wrong-ftp-5ecret");
    let r = api.post("/configure-sharing", &wrong).await;
    assert_eq!(r.status, 422, "{}", r.body);
    answers.push(r.body.to_string());
    answers.push(
        api.post("/configure-sharing", &json!({"method": "default"}))
            .await
            .body
            .to_string(),
    );
    answers.push(
        anonymous
            .with_key(&format!("{key}0"))
            .get("/v1/jobs")
            .await
            .body
            .to_string(),
    );
    answers.push(api.get(&format!("/v1/jobs/{id}")).await.body.to_string());
    let events = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{id}/events", anonymous.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("text");
    answers.push(events);

    let secrets = [
        ("S3 secret", s3_secret.to_string()),
        ("FTP password", ftp_password.clone()),
        ("wrong FTP password", "wrong-ftp-5ecret".to_string()),
        ("NATS password", "nats-pass-5ecret".to_string()),
        ("JWT secret", jwt.to_string()),
        ("API key secret", key_secret.to_string()),
    ];
    std::thread::sleep(std::time::Duration::from_millis(300));
    let worker_text = std::fs::read_to_string(&worker_log).expect("worker log");
    let gateway_text = std::fs::read_to_string(&gateway_log).expect("gateway log");
    assert!(
        gateway_text.contains("effective configuration"),
        "the log was captured"
    );
    for (what, secret) in &secrets {
        assert!(
            !worker_text.contains(secret.as_str()),
            "{what} in the worker log"
        );
        assert!(
            !gateway_text.contains(secret.as_str()),
            "{what} in the gateway log"
        );
        for answer in &answers {
            assert!(
                !answer.contains(secret.as_str()),
                "{what} in an answer: {answer}"
            );
        }
    }
}
