//! API keys at the gateway: no key, a malformed, unknown, wrongly signed or revoked one → 401 and nothing queued;
//! a key running an agent outside its scopes → 403 and nothing queued; keys see only their own jobs unless they
//! may read all; cancel and sharing need their scopes; `fleet keys` creates, lists and revokes keys; authentication
//! may be off only on loopback.

use std::time::Duration;

use fleet_tests::clients::NatsClient;
use fleet_tests::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_authenticate_and_scopes_decide_what_each_may_do() {
    let (nats, cfg, worker, gw) = start_fleet(&[("FLEET_AUTH_MODE", "required")]).await;
    let anonymous = gw.api();
    let probe = NatsClient::connect(&nats.url()).await;

    let (alice_id, alice_key) =
        create_key(&cfg, &["--name", "alice", "--agent", "echo", "--cancel"]);
    let (_, bob_key) = create_key(&cfg, &["--name", "bob", "--agent", "fake"]);
    let (_, admin_key) = create_key(
        &cfg,
        &[
            "--name",
            "admin",
            "--agent",
            "*",
            "--read-all",
            "--cancel",
            "--configure-sharing",
        ],
    );
    let (alice, bob, admin) = (
        anonymous.with_key(&alice_key),
        anonymous.with_key(&bob_key),
        anonymous.with_key(&admin_key),
    );

    // Refused before anything runs: no key, other schemes, malformed, unknown, wrong secret.
    let job = json!({"agent": "echo", "message": "hi"});
    let (_, secret) = alice_key.rsplit_once('_').expect("key");
    let wrong_secret = alice_key.replace(secret, &"0".repeat(64));
    let unknown = format!("fk_{}_{}", "a".repeat(12), "b".repeat(64));
    let r = anonymous.post("/v1/jobs", &job).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["code"], "unauthorized");
    for header in [
        format!("Basic {}", "YWxpY2U6c2VjcmV0"),
        "Bearer not-a-key".to_string(),
        format!("Bearer {unknown}"),
        format!("Bearer {wrong_secret}"),
        format!("Bearer {alice_key}x"),
        "Bearer ".to_string(),
    ] {
        let r = anonymous
            .send(
                anonymous
                    .request(reqwest::Method::POST, "/v1/jobs")
                    .header("authorization", &header)
                    .json(&job),
            )
            .await;
        assert_eq!(r.status, 401, "{header}: {}", r.body);
    }
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/jobs", anonymous.base))
        .json(&job)
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.headers()["www-authenticate"], "Bearer realm=\"fleet\"");
    // Forbidden agent: 403, nothing queued either.
    let r = alice
        .post("/v1/jobs", &json!({"agent": "fake", "message": "exit:0"}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "forbidden");
    assert_eq!(probe.queued_messages().await, 0);
    assert_eq!(admin.get("/v1/jobs").await.body["count"], 0);

    // Probes, metrics and the API description stay open.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let r = reqwest::get(format!("{}{path}", anonymous.base))
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "{path}");
    }

    // Jobs belong to their key.
    let r = alice.post("/v1/jobs?wait=20", &job).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Owned by the key itself (its id, which no other key can take); the name is a label.
    assert_eq!(
        r.body["record"]["request"]["owner"],
        format!("key:{alice_id}")
    );
    assert_eq!(r.body["record"]["request"]["owner_name"], "alice");
    let alices = r.job_id();
    // The X-API-Key header works as well.
    let r = anonymous
        .send(
            anonymous
                .request(reqwest::Method::POST, "/v1/jobs?wait=20")
                .header("x-api-key", &bob_key)
                .json(&json!({"agent": "fake", "message": "write:b.txt=3 sleep:30"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let bobs = r.job_id();

    for path in [
        format!("/v1/jobs/{alices}"),
        format!("/v1/jobs/{alices}/events"),
        format!("/v1/jobs/{alices}/artifacts"),
        format!("/results/{alices}"),
        format!("/jobs/{alices}/status"),
    ] {
        let r = bob.get(&path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    // A finished job's files stay its owner's, also while the gateway keeps the record from the owner's own
    // download a moment ago.
    let r = bob
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "fake", "message": "write:c.txt=4"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let finished = r.job_id();
    let file = format!("/v1/jobs/{finished}/artifacts/c.txt");
    assert_eq!(bob.get(&file).await.status, 200);
    for path in [
        file.clone(),
        format!("/v1/jobs/{finished}/artifacts"),
        format!("/v1/jobs/{finished}/artifacts.tar"),
        format!("/download/{finished}/c.txt"),
    ] {
        let r = alice.get(&path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.body["code"], "job_not_found", "{path}");
    }
    assert_eq!(admin.get(&file).await.status, 200);
    let ids = |list: &Value| -> Vec<String> {
        list["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_str().expect("id").to_string())
            .collect()
    };
    let mut bobs_list = ids(&bob.get("/v1/jobs").await.body);
    bobs_list.sort();
    let mut expected = vec![bobs.clone(), finished.clone()];
    expected.sort();
    assert_eq!(bobs_list, expected);
    assert_eq!(ids(&alice.get("/v1/jobs").await.body), vec![alices.clone()]);
    let everything = ids(&admin.get("/v1/jobs").await.body);
    assert!(
        everything.contains(&alices) && everything.contains(&bobs),
        "{everything:?}"
    );
    assert_eq!(admin.get(&format!("/v1/jobs/{alices}")).await.status, 200);

    // Cancelling needs the scope, and a job the key can see.
    let r = bob
        .post(&format!("/v1/jobs/{bobs}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = alice
        .post(&format!("/v1/jobs/{bobs}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin
        .post(&format!("/v1/jobs/{bobs}/cancel"), &json!({}))
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.body);

    // Sharing needs its scope.
    assert_eq!(alice.get("/configure-sharing").await.status, 403);
    assert_eq!(admin.get("/configure-sharing").await.status, 200);

    // The CLI client sends its key.
    let base = anonymous.base.clone();
    let with_key = std::process::Command::new(built_binary("fleet"))
        .args(["run", "echo", "from the cli", "--url", &base])
        .env("FLEET_API_KEY", &alice_key)
        .output()
        .expect("fleet run");
    assert!(
        with_key.status.success(),
        "{}",
        String::from_utf8_lossy(&with_key.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&with_key.stdout), "from the cli\n");
    let without = std::process::Command::new(built_binary("fleet"))
        .args(["run", "echo", "from the cli", "--url", &base])
        .env_remove("FLEET_API_KEY")
        .output()
        .expect("fleet run");
    assert_eq!(without.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&without.stderr).contains("unauthorized"));

    // Listing shows no secret; revoking stops the key on every gateway.
    let list = fleet_cli(&cfg, &["keys", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        listed.contains("alice") && listed.contains(&alice_id),
        "{listed}"
    );
    assert!(!listed.contains(secret), "{listed}");
    assert!(listed.starts_with("ID "), "a header first: {listed}");
    // `--json` after the subcommand, after `keys`, or before both: the same JSON list.
    for args in [
        &["keys", "list", "--json"][..],
        &["keys", "--json", "list"],
        &["--json", "keys", "list"],
    ] {
        let out = fleet_cli(&cfg, args);
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            keys.as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == alice_id.as_str()),
            "{args:?}: {keys}"
        );
    }
    let second = start_gateway(&cfg.config).await;
    let alice_there = second.api().with_key(&alice_key);
    assert_eq!(alice_there.get("/v1/jobs").await.status, 200);
    let out = fleet_cli(&cfg, &["keys", "revoke", &alice_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for api in [alice.clone(), alice_there.clone()] {
        eventually("the revoked key refused", Duration::from_secs(5), || {
            let api = api.clone();
            async move { api.get("/v1/jobs").await.status == 401 }
        })
        .await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_may_be_off_only_on_loopback() {
    let nats = NatsServer::start();
    let cfg = test_config(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "none"),
            ("FLEET_HTTP_ADDR", "0.0.0.0:8080"),
        ],
    );
    let client = fleet_shared::nats::connect(&cfg.config.nats, "auth-test")
        .await
        .expect("connect");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = fleet_gateway::run(
        listener,
        std::sync::Arc::new(cfg.config.clone()),
        client,
        std::future::pending(),
    )
    .await
    .expect_err("refused");
    assert!(
        err.to_string()
            .contains("auth.mode = none is allowed only on a loopback address"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_managed_over_http_granting_at_most_what_the_manager_holds() {
    let (_nats, cfg, worker, gw) = start_fleet(&[("FLEET_AUTH_MODE", "required")]).await;
    let anonymous = gw.api();
    let (_, manager_key) = create_key(
        &cfg,
        &[
            "--name",
            "ops",
            "--agent",
            "echo",
            "--agent",
            "fake",
            "--cancel",
            "--manage-keys",
        ],
    );
    let (_, plain_key) = create_key(&cfg, &["--name", "plain", "--agent", "*", "--read-all"]);
    let (manager, plain) = (
        anonymous.with_key(&manager_key),
        anonymous.with_key(&plain_key),
    );

    // Without `manage_keys`: no listing, creating or revoking.
    let wanted = json!({"name": "ci", "scopes": {"agents": ["echo"]}});
    assert_eq!(plain.get("/v1/keys").await.status, 403);
    let r = plain.post("/v1/keys", &wanted).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(anonymous.post("/v1/keys", &wanted).await.status, 401);

    // A manager grants what it holds, and nothing more.
    let r = manager.post("/v1/keys", &wanted).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (ci_id, ci_key) = (
        r.body["id"].as_str().expect("id").to_string(),
        r.body["key"].as_str().expect("key").to_string(),
    );
    assert_eq!(r.body["name"], "ci");
    assert_eq!(r.body["scopes"]["agents"], json!(["echo"]));
    for beyond in [
        json!({"agents": ["*"]}),
        json!({"agents": ["echo", "python"]}),
        json!({"agents": ["echo"], "read_all": true}),
        json!({"agents": ["echo"], "configure_sharing": true}),
    ] {
        let r = manager
            .post("/v1/keys", &json!({"name": "greedy", "scopes": beyond}))
            .await;
        assert_eq!(r.status, 403, "{beyond}: {}", r.body);
    }
    for bad in [
        json!({"name": "  "}),
        json!({"name": "x", "scopes": {"agents": "echo"}}),
        json!({"name": "x", "extra": 1}),
        json!({"name": "x".repeat(201)}),
    ] {
        let r = manager.post("/v1/keys", &bad).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert_eq!(r.body["code"], "invalid_request", "{bad}");
    }

    // The new key works at once, for what it was granted.
    let ci = anonymous.with_key(&ci_key);
    eventually("the new key accepted", Duration::from_secs(5), || {
        let ci = ci.clone();
        async move { ci.get("/v1/jobs").await.status == 200 }
    })
    .await;
    let r = ci
        .post(
            "/v1/jobs?wait=20",
            &json!({"agent": "echo", "message": "made over http"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    assert_eq!(r.body["record"]["request"]["owner"], format!("key:{ci_id}"));
    assert_eq!(r.body["record"]["request"]["owner_name"], "ci");
    let r = ci
        .post("/v1/jobs", &json!({"agent": "fake", "message": "no"}))
        .await;
    assert_eq!(r.status, 403);

    // Listing shows every key without secrets or their hashes.
    let r = manager.get("/v1/keys").await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["ops", "plain", "ci"]);
    let listed = r.body.to_string();
    let (_, ci_secret) = ci_key.rsplit_once('_').expect("key");
    assert!(
        !listed.contains(ci_secret) && !listed.contains("secret_sha256"),
        "{listed}"
    );

    // Revoking: the key stops working; again is harmless; unknown ids are 404.
    let r = manager
        .send(manager.request(reqwest::Method::DELETE, &format!("/v1/keys/{ci_id}")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["revoked_at"].is_string(), "{}", r.body);
    eventually("the revoked key refused", Duration::from_secs(5), || {
        let ci = ci.clone();
        async move { ci.get("/v1/jobs").await.status == 401 }
    })
    .await;
    let again = manager
        .send(manager.request(reqwest::Method::DELETE, &format!("/v1/keys/{ci_id}")))
        .await;
    assert_eq!(again.body["revoked_at"], r.body["revoked_at"]);
    for unknown in ["000000000000", "..", "a%2Fb"] {
        let r = manager
            .send(manager.request(reqwest::Method::DELETE, &format!("/v1/keys/{unknown}")))
            .await;
        assert_eq!(r.status, 404, "{unknown}: {}", r.body);
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_may_have_only_so_many_jobs_unfinished() {
    let (nats, cfg, worker, gw) = start_fleet(&[
        ("FLEET_AUTH_MODE", "required"),
        ("FLEET_AUTH_MAX_QUEUED_PER_CALLER", "3"),
    ])
    .await;
    let probe = NatsClient::connect(&nats.url()).await;
    let (_, capped_key) = create_key(
        &cfg,
        &[
            "--name",
            "capped",
            "--agent",
            "fake",
            "--agent",
            "echo",
            "--cancel",
            "--max-queued",
            "2",
        ],
    );
    let (_, default_key) = create_key(&cfg, &["--name", "defaulted", "--agent", "fake"]);
    let (capped, defaulted) = (
        gw.api().with_key(&capped_key),
        gw.api().with_key(&default_key),
    );
    let slow = json!({"agent": "fake", "message": "sleep:30"});

    // Two unfinished jobs (running or waiting alike) fill the capped key's allowance.
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = capped.post("/v1/jobs", &slow).await;
        assert_eq!(r.status, 202, "{}", r.body);
        held.push(r.job_id());
    }
    let queued = probe.queued_messages().await;
    let r = capped
        .post("/v1/jobs", &json!({"agent": "echo", "message": "one more"}))
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["code"], "too_many_jobs");
    assert_eq!(r.retry_after.as_deref(), Some("5"));
    assert_eq!(probe.queued_messages().await, queued, "nothing queued");
    // Submitting a job that exists again creates nothing, so the cap does not refuse it.
    let again = capped
        .post(
            "/v1/jobs",
            &json!({"id": held[0], "agent": "fake", "message": "sleep:30"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["job_id"], held[0].as_str());

    // Other callers have their own allowance: the configured default, 3.
    for _ in 0..3 {
        assert_eq!(defaulted.post("/v1/jobs", &slow).await.status, 202);
    }
    let r = defaulted.post("/v1/jobs", &slow).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (429, Some("too_many_jobs"))
    );

    // A job that ends gives its place back.
    let r = capped
        .post(&format!("/v1/jobs/{}/cancel?wait=20", held[0]), &json!({}))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    eventually(
        "the cancelled job's place given back",
        Duration::from_secs(10),
        || {
            let capped = capped.clone();
            async move {
                capped
                    .post(
                        "/v1/jobs?wait=20",
                        &json!({"agent": "echo", "message": "fits again"}),
                    )
                    .await
                    .body["status"]
                    == "completed"
            }
        },
    )
    .await;
    worker.stop().await;
}
