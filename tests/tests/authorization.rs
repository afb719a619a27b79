//! What one caller may reach of another's (issue 15), through the real gateway and worker with keys on: a job's
//! files cannot be copied into a foreign caller's job, idempotency keys are each owner's own, and `/stats` counts
//! only the caller's jobs; a download link opens one file for its maker only. Nothing of the owner's data appears in
//! any answer the foreign caller gets.

use std::time::Duration;

use fleet_tests::*;
use serde_json::json;

/// A fleet that requires keys, and two callers of it, alice and mallory, each with a key for every agent.
struct TwoCallers {
    _nats: NatsServer,
    cfg: TestConfig,
    worker: WorkerHandle,
    gw: GatewayHandle,
    alice_id: String,
    alice: Api,
    mallory: Api,
}

impl TwoCallers {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let cfg = test_config(&nats.url(), &[("FLEET_AUTH_MODE", "required")]);
        let worker = start_worker(&cfg.config).await;
        let gw = start_gateway(&cfg.config).await;
        let (alice_id, alice_key) = create_key(&cfg, &["--name", "alice", "--agent", "*"]);
        let (_, mallory_key) = create_key(&cfg, &["--name", "mallory", "--agent", "*"]);
        let (alice, mallory) = (
            gw.api().with_key(&alice_key),
            gw.api().with_key(&mallory_key),
        );
        Self {
            _nats: nats,
            cfg,
            worker,
            gw,
            alice_id,
            alice,
            mallory,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_reaches_nothing_of_another_callers_jobs() {
    let c = TwoCallers::start().await;

    let secret = "the-secret-4f1c";
    let r = c
        .alice
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "shell", "message": format!("echo {secret} > secret.txt")}),
        )
        .await;
    assert_eq!(r.body["record"]["status"], "completed", "{}", r.body);
    let alice_job = r.job_id();

    // Copying alice's file into mallory's job: as if alice's job did not exist.
    let steal = json!({"agent": "shell", "message": "cat secret.txt",
        "input_files": [{"name": "secret.txt", "from": {"job_id": alice_job, "name": "secret.txt"}}]});
    let r = c.mallory.post("/v1/jobs?wait=30", &steal).await;
    r.assert_problem(404, "job_not_found");
    let made_up = json!({"agent": "shell", "message": "cat secret.txt",
        "input_files": [{"name": "secret.txt", "from": {"job_id": uuid::Uuid::now_v7(), "name": "secret.txt"}}]});
    let unknown = c.mallory.post("/v1/jobs?wait=30", &made_up).await;
    unknown.assert_problem(404, "job_not_found");
    assert!(!r.body.to_string().contains(secret));
    // Alice herself may.
    let r = c.alice.post("/v1/jobs?wait=30", &steal).await;
    assert_eq!(
        r.body["record"]["stdout"],
        format!("{secret}\n"),
        "{}",
        r.body
    );

    // The same Idempotency-Key: two callers, two jobs, and no conflict naming alice's job.
    let post_keyed = |api: fleet_tests::clients::Api, message: &'static str| async move {
        api.send(
            api.request(reqwest::Method::POST, "/v1/jobs")
                .header("idempotency-key", "order-42")
                .json(&json!({"agent": "echo", "message": message})),
        )
        .await
    };
    let a = post_keyed(c.alice.clone(), "alice's").await;
    assert_eq!(a.status, 202, "{}", a.body);
    let m = post_keyed(c.mallory.clone(), "mallory's").await;
    assert_eq!(m.status, 202, "{}", m.body);
    assert_ne!(a.body["job_id"], m.body["job_id"]);
    let again = post_keyed(c.mallory.clone(), "something else").await;
    again.assert_problem(409, "idempotency_conflict");
    assert!(!again
        .body
        .to_string()
        .contains(a.body["job_id"].as_str().unwrap()));
    let same = post_keyed(c.alice.clone(), "alice's").await;
    assert_eq!(same.body["job_id"], a.body["job_id"], "{}", same.body);

    // A key manager names a new key after alice: a label only, it reads and cancels nothing of hers.
    let (_, manager_key) = create_key(
        &c.cfg,
        &[
            "--name",
            "keys",
            "--agent",
            "*",
            "--manage-keys",
            "--cancel",
        ],
    );
    let manager = c.gw.api().with_key(&manager_key);
    let r = manager
        .post(
            "/v1/keys",
            &json!({"name": "alice", "scopes": {"agents": ["*"], "cancel": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let impostor = c.gw.api().with_key(r.body["key"].as_str().unwrap());
    fleet_tests::eventually(
        "the new key accepted",
        std::time::Duration::from_secs(5),
        || {
            let impostor = impostor.clone();
            async move { impostor.get("/v1/jobs").await.status == 200 }
        },
    )
    .await;
    impostor
        .get(&format!("/v1/jobs/{alice_job}"))
        .await
        .assert_problem(404, "job_not_found");
    let listed = impostor.get("/v1/jobs").await;
    assert_eq!(listed.body["count"], 0, "{}", listed.body);

    // Sharing may name no remote host while artifacts.sharing_hosts is empty (the default): refused before any
    // connection, this machine's FTP port included.
    let (_, sharer_key) = create_key(&c.cfg, &["--name", "sharer", "--configure-sharing"]);
    let r = c.gw
        .api()
        .with_key(&sharer_key)
        .post(
            "/configure-sharing",
            &json!({"method": "ftp", "ftp_host": "127.0.0.1", "ftp_port": 21, "ftp_user": "u", "ftp_pass": "p"}),
        )
        .await;
    r.assert_problem(403, "forbidden");

    // /stats: each caller counts its own jobs (queue depth stays fleet-wide).
    let alice_jobs = c.alice.get("/stats").await.body["total"].as_u64().unwrap();
    let mallory_jobs = c.mallory.get("/stats").await.body["total"]
        .as_u64()
        .unwrap();
    assert_eq!((alice_jobs, mallory_jobs), (3, 1));
    c.worker.stop().await;
}

/// The owner filter narrows what a caller may read, never widens it; `/v1/me` says who calls and what it may do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_filter_only_narrows_and_me_names_the_caller() {
    let c = TwoCallers::start().await;
    for caller in [&c.alice, &c.alice, &c.mallory] {
        let job = json!({"agent": "echo", "message": "mine"});
        let r = caller.post("/v1/jobs?wait=30", &job).await;
        assert_eq!(r.body["record"]["status"], "completed", "{}", r.body);
    }

    let alice_owner = format!("key:{}", c.alice_id);
    let of_alice = format!("/v1/jobs?owner={alice_owner}");
    c.mallory
        .get(&of_alice)
        .await
        .assert_count(0, "mallory asking for c.alice's jobs");
    c.alice.get(&of_alice).await.assert_count(2, "alice's own");
    let (_, auditor_key) = create_key(&c.cfg, &["--name", "audit", "--read-all"]);
    let auditor = c.gw.api().with_key(&auditor_key);
    auditor.get("/v1/jobs").await.assert_count(3, "everyone's");
    let listed = auditor.get(&of_alice).await;
    listed.assert_count(2, "a read_all caller asking for c.alice's");
    let owners = listed.body["jobs"].as_array().unwrap().iter();
    assert!(owners
        .map(|j| &j["request"]["owner"])
        .all(|o| *o == alice_owner.as_str()));
    auditor
        .get("/v1/jobs?owner=user:nobody")
        .await
        .assert_count(0, "an owner with no jobs");

    // `/v1/me`: who the caller is and what it may do, for a client to offer only that.
    let me = c.alice.get("/v1/me").await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["principal"], alice_owner.as_str());
    assert_eq!(me.body["name"], "alice");
    assert_eq!(me.body["scopes"]["agents"], json!(["*"]));
    assert_eq!(me.body["scopes"]["configure_sharing"], false);
    c.gw.api()
        .get("/v1/me")
        .await
        .assert_problem(401, "unauthorized");
    c.worker.stop().await;
}

/// Every route that takes a job id (the router's own list) answers a caller who may not read the job exactly as
/// it answers for a job that does not exist, and nothing of the job reaches that caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_taking_a_job_id_answers_a_foreign_caller_as_for_no_job() {
    let (_nats, cfg, worker, gw) = start_fleet(&[("FLEET_AUTH_MODE", "required")]).await;
    let (_, alice_key) = create_key(&cfg, &["--name", "alice", "--agent", "*", "--cancel"]);
    let (_, mallory_key) = create_key(&cfg, &["--name", "mallory", "--agent", "*", "--cancel"]);
    let (alice, mallory) = (
        gw.api().with_key(&alice_key),
        gw.api().with_key(&mallory_key),
    );
    let secret = "the-secret-9e2d";
    let r = alice
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "shell", "message": format!("echo {secret} > secret.txt; echo {secret}; exit 3")}),
        )
        .await;
    assert_eq!(r.body["record"]["status"], "failed", "{}", r.body);
    let alice_job = r.job_id();
    let nobody_job = uuid::Uuid::now_v7().to_string();

    let routes = fleet_gateway::job_routes();
    assert!(routes.len() >= 12, "the job routes went missing");
    for route in routes {
        let answer = |id: &str| {
            let path = route
                .path
                .replace("{id}", id)
                .replace("{*name}", "secret.txt")
                .replace("{*filename}", "secret.txt");
            let mut request = mallory
                .request(route.method.clone(), &path)
                .header("content-type", "application/json")
                .body("{}");
            if route.path.ends_with("/ws") {
                // A real WebSocket handshake, so the answer is the route's, not the upgrade's refusal.
                request = request
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
            }
            async move {
                let response = request.send().await.expect("request");
                let status = response.status().as_u16();
                let headers = format!("{:?}", response.headers());
                let body = response.text().await.unwrap_or_default();
                (status, headers, body)
            }
        };
        let (status, headers, body) = answer(&alice_job).await;
        let (none_status, _, none_body) = answer(&nobody_job).await;
        let code = |b: &str| {
            serde_json::from_str::<serde_json::Value>(b)
                .ok()
                .map(|v| v["code"].clone())
        };
        assert_eq!(
            (status, code(&body)),
            (none_status, code(&none_body)),
            "{} {}: a foreign job answers {status} {body}, no job {none_status} {none_body}",
            route.method,
            route.path
        );
        assert_eq!(status, 404, "{} {}: {body}", route.method, route.path);
        for leaked in [secret, "secret.txt"] {
            assert!(
                !body.contains(leaked) || body.contains("no job"),
                "{}: {body}",
                route.path
            );
            assert!(!headers.contains(leaked), "{}: {headers}", route.path);
        }
    }
    // And alice still reads her job and its file.
    let own = alice
        .get(&format!("/v1/jobs/{alice_job}/artifacts/secret.txt"))
        .await;
    assert_eq!(own.status, 200);
    worker.stop().await;
}

/// `X-Forwarded-For` names the client only when a trusted proxy sends it: otherwise a client could take a fresh
/// address (and rate-limit bucket) per request, or everyone behind a proxy would share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let nats = NatsServer::start();
    let limits = [("FLEET_HTTP_IP_PER_SEC", "1"), ("FLEET_HTTP_IP_BURST", "2")];
    let send_as = |api: fleet_tests::clients::Api, client: &'static str| async move {
        api.send(
            api.request(reqwest::Method::GET, "/v1/agents")
                .header("x-forwarded-for", client),
        )
        .await
        .status
    };
    let clients = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ];

    // Untrusted: the header is ignored and every request counts against the one peer address.
    let cfg = test_config(&nats.url(), &limits);
    let direct = start_gateway(&cfg.config).await;
    let mut statuses = Vec::new();
    for client in clients {
        statuses.push(send_as(direct.api(), client).await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");

    // Behind a trusted proxy (loopback here): each client has its own bucket, and one client is still limited.
    let mut with_proxy = limits.to_vec();
    with_proxy.push(("FLEET_HTTP_TRUSTED_PROXIES", "127.0.0.1/32"));
    let cfg = test_config(&nats.url(), &with_proxy);
    let proxied = start_gateway(&cfg.config).await;
    for client in clients {
        assert_eq!(send_as(proxied.api(), client).await, 200, "{client}");
    }
    let mut same = Vec::new();
    for _ in 0..4 {
        same.push(send_as(proxied.api(), "203.0.113.5").await);
    }
    assert!(same.contains(&429), "{same:?}");
}

/// `/metrics` is an operator endpoint: with `auth.metrics_token` set, the gateway's and the worker's answer only
/// to that bearer token (an API key is not it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let nats = NatsServer::start();
    let cfg = test_config(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "required"),
            ("FLEET_AUTH_METRICS_TOKEN", "metrics-0f9e8d7c"),
        ],
    );
    let (worker, worker_addr) = start_worker_listening(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    let (_, key) = create_key(&cfg, &["--name", "ops", "--agent", "*", "--read-all"]);
    let client = reqwest::Client::new();
    for base in [gw.url.clone(), format!("http://{worker_addr}")] {
        let url = format!("{base}/metrics");
        let get = |bearer: Option<&str>| {
            let mut request = client.get(&url);
            if let Some(b) = bearer {
                request = request.bearer_auth(b);
            }
            async move { request.send().await.expect("metrics") }
        };
        assert_eq!(get(None).await.status(), 401, "{url}");
        assert_eq!(get(Some("wrong")).await.status(), 401, "{url}");
        assert_eq!(
            get(Some(&key)).await.status(),
            401,
            "{url}: an API key is not the metrics token"
        );
        let ok = get(Some("metrics-0f9e8d7c")).await;
        assert_eq!(ok.status(), 200, "{url}");
        assert!(ok.text().await.unwrap().contains("fleet_"), "{url}");
    }
    worker.stop().await;
}

/// A GET of `url` (a path on `api`'s gateway) with no credentials: its status and body bytes.
async fn fetch_without_credentials(api: &Api, url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(format!("{}{url}", api.base))
        .await
        .expect("gateway answers");
    (r.status().as_u16(), r.bytes().await.expect("body").to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_link_opens_one_file_for_its_maker_and_nothing_else() {
    let c = TwoCallers::start().await;
    let r = c
        .alice
        .post(
            "/v1/jobs?wait=30",
            &json!({"agent": "fake", "message": "write:a%20b/r%C3%BCckblick.txt=100 write:other.txt=5"}),
        )
        .await;
    assert_eq!(r.body["record"]["status"], "completed", "{}", r.body);
    let job = r.job_id();
    let links = format!("/v1/jobs/{job}/links");

    let r = c
        .alice
        .post(&links, &json!({"file": "a b/rückblick.txt"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.body["url"].as_str().unwrap().to_string();
    assert!(r.body["expires_at"].is_string(), "{}", r.body);
    assert!(!url.contains("fk_"), "the key went into the link: {url}");
    let (status, body) = fetch_without_credentials(&c.alice, &url).await;
    assert_eq!((status, body.len()), (200, 100));

    // The ticket opens its own path only: not another file, not the archive, not with a changed character.
    let ticket = url.split_once("?ticket=").unwrap().1.to_string();
    let mut forged = ticket.clone();
    forged.replace_range(
        forged.len() - 1..,
        if ticket.ends_with('0') { "1" } else { "0" },
    );
    for other in [
        format!("/v1/jobs/{job}/artifacts/other.txt?ticket={ticket}"),
        format!("/v1/jobs/{job}/artifacts.tar?ticket={ticket}"),
        format!("/v1/jobs/{job}?ticket={ticket}"),
        format!("/v1/jobs/{job}/artifacts/a%20b/r%C3%BCckblick.txt?ticket={forged}"),
    ] {
        let (status, _) = fetch_without_credentials(&c.alice, &other).await;
        assert_eq!(status, 401, "{other}");
    }

    // All files as one archive; a link is asked for only what the caller may read.
    let r = c.alice.post(&links, &json!({})).await;
    let (status, tar) = fetch_without_credentials(&c.alice, r.body["url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["a b/rückblick.txt", "other.txt"]);
    c.mallory
        .post(&links, &json!({}))
        .await
        .assert_problem(404, "job_not_found");
    let r = c.alice.post(&links, &json!({"file": "missing.txt"})).await;
    r.assert_problem(404, "not_found");
    let r = c.alice.post(&links, &json!({"file": "../x"})).await;
    r.assert_problem(400, "invalid_name");

    // A link dies with the key that made it.
    let out = fleet_cli(&c.cfg, &["keys", "revoke", &c.alice_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the revoked key's link refused",
        Duration::from_secs(5),
        || {
            let (api, url) = (c.alice.clone(), url.clone());
            async move { fetch_without_credentials(&api, &url).await.0 == 401 }
        },
    )
    .await;
    c.worker.stop().await;
}
