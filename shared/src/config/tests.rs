//! The loader's tests: layers, aliases, validation messages, the masked summary.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Sources {
    Sources {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn defaults_load_and_include_code_runners() {
    let c = Config::load(&Sources::default()).unwrap();
    assert_eq!(c.nats.prefix, "fleet");
    assert_eq!(c.execute["python"], "python");
    assert!(c.agents.contains_key("shell"));
}

#[test]
fn environment_overrides_defaults_and_names_the_key_when_bad() {
    let c = Config::load(&env(&[
        ("FLEET_WORKER_MAX_CONCURRENT", "3"),
        ("FLEET_HTTP_ADDR", "127.0.0.1:9"),
    ]))
    .unwrap();
    assert_eq!(c.worker.max_concurrent, 3);
    assert_eq!(c.http.addr, "127.0.0.1:9");
    let err = Config::load(&env(&[("FLEET_WORKER_MAX_CONCURRENT", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("worker.max_concurrent"), "{err}");
    let err = Config::load(&env(&[("FLEET_HTTP_ADDR", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("http.addr"), "{err}");
}

#[test]
fn seed_variable_names_are_aliases_and_fleet_names_win() {
    let c = Config::load(&env(&[("AGENT_TIMEOUT", "12"), ("MAX_CONCURRENT", "2")])).unwrap();
    assert_eq!(c.worker.default_timeout_secs, 12.0);
    assert_eq!(c.worker.max_concurrent, 2);
    let c = Config::load(&env(&[
        ("MAX_CONCURRENT", "2"),
        ("FLEET_WORKER_MAX_CONCURRENT", "5"),
    ]))
    .unwrap();
    assert_eq!(c.worker.max_concurrent, 5);
}

#[test]
fn file_agents_merge_with_built_ins_and_typos_are_named() {
    let dir = std::env::temp_dir().join(format!("fleet-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fleet.toml");
    std::fs::write(
        &file,
        "[agents.claude-full]\ncommand = [\"claude\", \"-p\", \"{message}\"]\ntimeout = 600\n",
    )
    .unwrap();
    let c = Config::load(&Sources {
        file: Some(file.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.agents["claude-full"].timeout, Some(600.0));
    assert!(c.agents.contains_key("python"));

    std::fs::write(&file, "[worker]\nmax_concurent = 3\n").unwrap();
    let err = Config::load(&Sources {
        file: Some(file),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_concurent"), "{err}");
}

#[test]
fn artifact_settings_are_validated_by_key() {
    let err = Config::load(&env(&[("FLEET_ARTIFACTS_BACKEND", "floppy")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("artifacts.backend"), "{err}");
    let err = Config::load(&env(&[("FLEET_ARTIFACTS_BACKEND", "s3")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("artifacts.s3_bucket"), "{err}");
    let err = Config::load(&env(&[("FLEET_ARTIFACTS_SWEEP_INTERVAL_SECS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("artifacts.sweep_interval_secs"), "{err}");
    let c = Config::load(&env(&[("MAX_FILE_SIZE", "42")])).unwrap();
    assert_eq!(c.artifacts.max_file_bytes, 42);
}

#[test]
fn target_defaults_are_the_built_in_artifacts_settings() {
    let t = TargetConfig::default();
    assert_eq!(
        (t.backend.as_str(), t.ftp_port, t.ftp_passive),
        ("local", 21, true)
    );
    let c = Config::load(&Sources::default()).unwrap();
    assert_eq!(t, c.artifacts.default_target());
}

#[test]
fn summary_masks_credentials() {
    let c = Config::load(&env(&[(
        "FLEET_NATS_URL",
        "nats://svc:hunter2@127.0.0.1:4222",
    )]))
    .unwrap();
    let s = c.summary().to_string();
    assert!(!s.contains("hunter2") && !s.contains("s3cr3t-value"), "{s}");
    assert!(s.contains("svc:***@127.0.0.1"), "{s}");
}

#[test]
fn lists_come_from_variables_comma_separated() {
    let c = Config::load(&env(&[("FLEET_WORKER_AGENTS", "echo, python")])).unwrap();
    assert_eq!(c.worker_agents(), vec!["echo", "python"]);
    let c = Config::load(&env(&[("FLEET_WORKER_AGENTS", "shell")])).unwrap();
    assert_eq!(c.worker_agents(), vec!["shell"]);
    let sources = env(&[("FLEET_WORKER_AGENTS", "echo")]);
    assert!(
        sources.unknown_variables().is_empty(),
        "a list variable is a known one"
    );
    let err = Config::load(&env(&[("FLEET_WORKER_AGENTS", "echo,nobody")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("worker.agents"), "{err}");
}
