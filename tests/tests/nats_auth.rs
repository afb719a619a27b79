//! Every connection the fleet makes can authenticate to NATS and use TLS: a server requiring a user and password
//! over TLS with a private certificate authority runs jobs end to end; the password never reaches the logged
//! configuration; conflicting credentials are refused at start-up.

use fleet_tests::*;
use serde_json::json;

fn certificates(dir: &std::path::Path) {
    let helper = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv[1]); import ftp_server; ftp_server.make_certificates(sys.argv[2])")
        .arg(helper)
        .arg(dir)
        .status()
        .expect("python3");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_runs_on_a_nats_that_requires_a_password_and_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    certificates(certs.path());
    let cert = certs.path().join("server.pem");
    let key = certs.path().join("server.key");
    let ca = certs.path().join("ca.pem");
    let nats = NatsServer::start_with(&[
        "--user",
        "fleet",
        "--pass",
        "n4ts-s3cret",
        "--tlsverify=false",
        "--tls",
        "--tlscert",
        cert.to_str().expect("utf-8"),
        "--tlskey",
        key.to_str().expect("utf-8"),
    ]);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let ca_file = ca.to_str().expect("utf-8");
    let settings = [
        ("FLEET_NATS_USER", "fleet"),
        ("FLEET_NATS_PASSWORD", "n4ts-s3cret"),
        ("FLEET_NATS_TLS_REQUIRED", "true"),
        ("FLEET_NATS_TLS_CA_FILE", ca_file),
    ];
    let cfg = test_config(&url, &settings);
    let summary = cfg.config.summary().to_string();
    assert!(!summary.contains("n4ts-s3cret"), "{summary}");
    assert!(summary.contains("\"password\":\"***\""), "{summary}");

    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let r = gw
        .api()
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": "over tls"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    assert_eq!(r.body["record"]["stdout"], "over tls\n");

    // The `fleet` binary connects the same way (here: the key tool).
    let out = std::process::Command::new(built_binary("fleet"))
        .args(["keys", "list"])
        .env_clear()
        .envs(cfg.env_for_subprocess())
        .output()
        .expect("fleet keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    worker.stop().await;
}

#[test]
fn conflicting_or_incomplete_nats_settings_are_refused() {
    let load = |pairs: &[(&str, &str)]| {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fleet_shared::config::Config::load(&fleet_shared::config::Sources {
            file: None,
            env,
            overrides: Vec::new(),
        })
    };
    let e =
        load(&[("FLEET_NATS_USER", "a"), ("FLEET_NATS_TOKEN", "t")]).expect_err("two credentials");
    assert!(e.to_string().contains("nats.user"), "{e}");
    let e =
        load(&[("FLEET_NATS_TLS_CERT_FILE", "/x.pem")]).expect_err("a certificate without its key");
    assert!(e.to_string().contains("nats.tls_cert_file"), "{e}");
    assert!(load(&[("FLEET_NATS_TOKEN", "t")]).is_ok());
}
