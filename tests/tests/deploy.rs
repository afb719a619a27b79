//! The deployment files agree with the code they deploy: the systemd units run the right commands, give the worker
//! more time to stop than its own shutdown grace, and the install script is valid shell.

use std::collections::HashMap;
use std::path::Path;

/// `[Section] Key=Value` pairs of a systemd unit (later keys of the same name win, as for most settings).
fn unit(path: &Path) -> HashMap<(String, String), String> {
    let text = std::fs::read_to_string(path).expect("unit file");
    let mut section = String::new();
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=Value");
        out.insert((section.clone(), key.to_string()), value.to_string());
    }
    out
}

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn systemd_units_run_the_fleet_roles_and_let_workers_hand_jobs_back() {
    let defaults = fleet_shared::config::Config::load(&Default::default()).unwrap();
    for role in ["gateway", "worker"] {
        let u = unit(&deploy().join(format!("systemd/fleet-{role}.service")));
        let get = |s: &str, k: &str| {
            u.get(&(s.to_string(), k.to_string()))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            get("Service", "ExecStart"),
            format!("/usr/local/bin/fleet {role} --config /etc/fleet/fleet.toml")
        );
        assert_eq!(get("Service", "User"), "fleet");
        assert_eq!(get("Service", "KillSignal"), "SIGTERM");
        assert_eq!(get("Install", "WantedBy"), "multi-user.target");
        assert!(get("Service", "EnvironmentFile").ends_with(&format!("/etc/fleet/{role}.env")));
        if role == "worker" {
            // systemd must not SIGKILL the worker before its own grace period lets jobs finish or be handed back.
            let stop: f64 = get("Service", "TimeoutStopSec").parse().unwrap();
            assert!(stop > defaults.worker.shutdown_grace_secs + defaults.worker.kill_grace_secs);
            // Only the worker gets SIGTERM; it ends its agents' process groups itself.
            assert_eq!(get("Service", "KillMode"), "mixed");
        }
    }
}

#[test]
fn the_install_script_is_valid_shell_and_refuses_unknown_roles() {
    let script = deploy().join("systemd/install.sh");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success());
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("database")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role: database"));
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_str(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Loads the fleet's configuration exactly as a process given this environment (and config file) would: every
/// FLEET_* key must exist and every value must parse.
fn load(env: &HashMap<String, String>, file: Option<&Path>) -> fleet_shared::config::Config {
    let sources = fleet_shared::config::Sources {
        file: file.map(Path::to_path_buf),
        env: env.clone(),
        overrides: Vec::new(),
    };
    fleet_shared::config::Config::load(&sources)
        .unwrap_or_else(|e| panic!("environment {env:?} is not a valid fleet configuration: {e}"))
}

/// `docker-compose config` (Debian's docker-compose, installed by scripts/deps) validates and resolves the file.
fn compose_config() -> serde_yaml::Value {
    let out = std::process::Command::new("docker-compose")
        .args(["--profile", "observability", "-f"])
        .arg(repo().join("docker-compose.yml"))
        .arg("config")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("docker-compose not found: scripts/deps test installs it (Debian package docker-compose)");
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("compose config output")
}

fn service_env(service: &serde_yaml::Value) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = service["environment"]
        .as_mapping()
        .expect("environment")
        .iter()
        .map(|(k, v)| {
            (
                yaml_str(k),
                if v.is_null() {
                    String::new()
                } else {
                    yaml_str(v)
                },
            )
        })
        .filter(|(k, _)| k.starts_with("FLEET_"))
        .collect();
    env.insert("PATH".into(), "/usr/bin:/bin".into());
    env
}

fn seconds(text: &str) -> f64 {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let n: f64 = n.parse().expect("number");
    match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        other => panic!("unit {other}"),
    }
}

#[test]
fn the_compose_file_is_valid_and_runs_a_replicated_fleet() {
    let c = compose_config();
    let services = &c["services"];
    let routes = "nats://nats1:6222,nats://nats2:6222,nats://nats3:6222";
    for node in ["nats1", "nats2", "nats3"] {
        let command: Vec<String> = services[node]["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .map(yaml_str)
            .collect();
        assert!(command.contains(&"-js".to_string()), "{node}: {command:?}");
        assert!(command.contains(&routes.to_string()), "{node}: {command:?}");
        assert!(
            command.contains(&node.to_string()),
            "{node} names itself: {command:?}"
        );
    }
    for name in [
        "minio",
        "minio-setup",
        "ftp",
        "gateway1",
        "gateway2",
        "lb",
        "worker",
    ] {
        assert!(services[name].is_mapping(), "service {name} missing");
    }
    for name in ["otel-collector", "jaeger", "prometheus", "grafana"] {
        let profiles: Vec<String> = services[name]["profiles"]
            .as_sequence()
            .expect("profiles")
            .iter()
            .map(yaml_str)
            .collect();
        assert_eq!(
            profiles,
            ["observability"],
            "{name} only runs with the observability profile"
        );
    }

    let worker = &services["worker"];
    assert_eq!(worker["deploy"]["replicas"].as_u64(), Some(3));
    // `--scale worker=N` needs replicas without fixed names or host ports.
    assert!(
        worker["container_name"].is_null() && worker["ports"].is_null(),
        "{worker:?}"
    );
    for name in ["gateway1", "gateway2", "worker"] {
        let config = load(&service_env(&services[name]), None);
        assert_eq!(config.queue.replicas, 3, "{name}");
        assert_eq!(config.nats.urls().len(), 3, "{name}");
        assert_eq!(config.artifacts.backend, "s3", "{name}");
        if name == "worker" {
            assert_eq!(config.worker.http_addr, "0.0.0.0:9090");
            let grace = seconds(&yaml_str(&worker["stop_grace_period"]));
            assert!(grace > config.worker.shutdown_grace_secs + config.worker.kill_grace_secs);
        } else {
            assert_eq!(config.http.addr, "0.0.0.0:8080");
        }
    }
    // Mounted files exist.
    for service in services.as_mapping().expect("services").values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = match volume {
                serde_yaml::Value::String(s) => s.split(':').next().unwrap_or_default().to_string(),
                other => yaml_str(&other["source"]),
            };
            if source.starts_with('/') {
                assert!(
                    Path::new(&source).exists(),
                    "{source} is mounted but missing"
                );
            }
        }
    }
}

/// Every `fleet_*` metric the dashboard, the Prometheus config or KEDA reads must be one the fleet exports; the
/// names come from scraping a real gateway and worker in `metric_names`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_only_metrics_the_fleet_exports() {
    let nats = fleet_tests::NatsServer::start();
    let cfg = fleet_tests::test_config(&nats.url(), &[]);
    let (worker, worker_addr) = fleet_tests::start_worker_listening(&cfg.config).await;
    let gw = fleet_tests::start_gateway(&cfg.config).await;
    let r = gw
        .api()
        .post(
            "/v1/jobs?wait=20",
            &serde_json::json!({"agent": "fake", "message": "write:a.txt=5 sleep:0.1"}),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    let mut exported = String::new();
    exported += &fleet_tests::metrics::scrape(&format!("{}/metrics", gw.url)).await;
    exported += &fleet_tests::metrics::scrape(&format!("http://{worker_addr}/metrics")).await;
    // Declared families, samples or not yet (a counter nothing has incremented has no sample).
    let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
    for line in exported.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declared.split_once(' ').expect("# TYPE name kind");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }

    // The image's health check command works against a real endpoint.
    let probe = std::process::Command::new(fleet_tests::built_binary("fleet"))
        .args(["probe", &format!("http://{worker_addr}/ready")])
        .status()
        .expect("fleet probe");
    assert!(probe.success());
    worker.stop().await;
    let probe = std::process::Command::new(fleet_tests::built_binary("fleet"))
        .args(["probe", &format!("http://{worker_addr}/ready")])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("fleet probe");
    assert!(!probe.success(), "a stopped worker is not ready");

    let dashboard = std::fs::read_to_string(deploy().join("compose/grafana/dashboards/fleet.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut used = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("fleet_") {
                    used += 1;
                    assert!(
                        names.contains(word),
                        "the dashboard reads {word}, which the fleet does not export"
                    );
                }
            }
        }
    }
    assert!(used >= 10, "{used}");
}

fn manifests(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(deploy().join("kubernetes").join(file)).expect("manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .collect()
}

#[test]
fn kubernetes_manifests_pass_the_schema_check_and_match_the_code() {
    // Schema check (kubernetes-validate from PyPI, installed by scripts/deps) of every built-in kind.
    let dir = deploy().join("kubernetes");
    let files = [
        "namespace.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "gateway.yaml",
        "worker.yaml",
    ];
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files.iter().map(|f| dir.join(f)))
        .output()
        .expect("kubernetes-validate not found: scripts/deps test installs it");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !report.contains("ERROR"),
        "{report}"
    );
    assert_eq!(report.matches("passed for resource").count(), 6, "{report}");

    // The ConfigMap's settings and fleet.toml load as the fleet's configuration.
    let configmap = &manifests("configmap.yaml")[0];
    let data = configmap["data"].as_mapping().expect("data");
    let mut env: HashMap<String, String> = data
        .iter()
        .map(|(k, v)| (yaml_str(k), yaml_str(v)))
        .filter(|(k, _)| k.starts_with("FLEET_"))
        .collect();
    let secret = &manifests("secret.example.yaml")[0];
    for (k, v) in secret["stringData"].as_mapping().expect("stringData") {
        env.insert(yaml_str(k), yaml_str(v));
    }
    let toml_dir = tempfile::tempdir().expect("tempdir");
    let toml = toml_dir.path().join("fleet.toml");
    std::fs::write(&toml, yaml_str(&configmap["data"]["fleet.toml"])).expect("write");

    let topology = fleet_shared::Topology::new("fleet");
    for (file, role, port) in [
        ("gateway.yaml", "gateway", 8080),
        ("worker.yaml", "worker", 9090),
    ] {
        let deployment = manifests(file)
            .into_iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<String> = container["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .map(yaml_str)
            .collect();
        assert_eq!(args, [role, "--config", "/etc/fleet/fleet.toml"]);
        let mut env = env.clone();
        for var in container["env"].as_sequence().expect("env") {
            if let Some(value) = var.get("value") {
                env.insert(yaml_str(&var["name"]), yaml_str(value));
            } else {
                env.insert(yaml_str(&var["name"]), "from-the-pod".into());
            }
        }
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        let config = load(&env, Some(&toml));
        assert_eq!(config.queue.replicas, 3);
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
        if role == "worker" {
            assert!(config.worker.http_addr.ends_with(&format!(":{port}")));
            let grace = pod["terminationGracePeriodSeconds"]
                .as_f64()
                .expect("grace");
            assert!(grace > config.worker.shutdown_grace_secs + config.worker.kill_grace_secs);

            // KEDA scales on every agent this worker serves: one trigger per agent consumer of the jobs stream.
            let scaled = &manifests("keda-scaledobject.yaml")[0];
            assert_eq!(
                scaled["spec"]["scaleTargetRef"]["name"],
                deployment["metadata"]["name"]
            );
            let mut consumers: Vec<String> = Vec::new();
            for trigger in scaled["spec"]["triggers"].as_sequence().expect("triggers") {
                assert_eq!(trigger["type"], "nats-jetstream");
                assert_eq!(
                    yaml_str(&trigger["metadata"]["stream"]),
                    topology.jobs_stream()
                );
                consumers.push(yaml_str(&trigger["metadata"]["consumer"]));
            }
            let mut wanted: Vec<String> = config
                .worker_agents()
                .iter()
                .map(|a| topology.agent_consumer(a))
                .collect();
            consumers.sort();
            wanted.sort();
            assert_eq!(consumers, wanted);
        } else {
            assert!(config.http.addr.ends_with(&format!(":{port}")));
        }
    }
}

#[test]
fn the_dockerfile_builds_with_the_script_ci_runs_and_its_stages_fit_together() {
    let text = std::fs::read_to_string(deploy().join("docker/Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    assert_eq!(stages, ["build", "base", "gateway", "worker"]);
    for line in text.lines().filter(|l| l.contains("--from=")) {
        let from = line
            .split("--from=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("stage");
        assert!(stages.contains(&from), "{line}");
    }
    assert!(text.contains("deploy/build-release.sh /out"));
    assert!(text.contains("COPY --from=build /out/fleet /usr/local/bin/fleet"));
    let script = deploy().join("build-release.sh");
    let status = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(status.success());
    // Health checks and listen addresses agree.
    assert!(text.contains("FLEET_HTTP_ADDR=0.0.0.0:8080") && text.contains("EXPOSE 8080"));
    assert!(text.contains("FLEET_WORKER_HTTP_ADDR=0.0.0.0:9090") && text.contains("EXPOSE 9090"));
    assert!(
        text.contains(r#"CMD ["/usr/local/bin/fleet", "probe", "http://127.0.0.1:9090/ready"]"#)
    );
}
