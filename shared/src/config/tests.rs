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

/// Loads `toml` as the configuration file with `pairs` as the environment.
fn load_file(name: &str, toml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("fleet-cfg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fleet.toml");
    std::fs::write(&file, toml).unwrap();
    Config::load(&Sources {
        file: Some(file),
        ..env(pairs)
    })
}

#[test]
fn model_agents_take_their_key_from_the_environment_or_a_file_and_never_show_it() {
    let toml = "[agents.m]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8080/v1\"\nmodel = \"x\"\napi_key_env = \"M_KEY\"\n";
    let c = load_file("model-key", toml, &[("M_KEY", "sk-hidden")]).unwrap();
    let agent = &c.agents["m"];
    assert_eq!(
        agent.api_key.as_ref().map(|k| k.expose()),
        Some("sk-hidden")
    );
    assert!(agent.command.is_empty(), "a model agent runs no process");
    assert!(!format!("{agent:?}").contains("sk-hidden"));
    assert!(!serde_json::to_string(agent).unwrap().contains("sk-hidden"));
    let err = load_file("model-nokey", toml, &[]).unwrap_err().to_string();
    assert!(
        err.contains("agents.m.api_key_env") && err.contains("M_KEY"),
        "{err}"
    );
}

#[test]
fn model_agents_are_refused_without_a_server_or_a_model_or_with_a_command() {
    let cases = [
        ("kind = \"openai\"\nmodel = \"x\"", "agents.m.base_url"),
        ("kind = \"ollama\"\nbase_url = \"ftp://h/\"\nmodel = \"x\"", "agents.m.base_url"),
        ("kind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"", "agents.m.model"),
        (
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"x\"\ncommand = [\"sh\"]",
            "agents.m.command",
        ),
        (
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"x\"\ntemperature = 3.0",
            "agents.m.temperature",
        ),
        ("command = [\"echo\"]\nmodel = \"x\"", "agents.m.base_url"),
        ("kind = \"gpt\"\ncommand = [\"echo\"]", "agents.m"),
    ];
    for (i, (agent, key)) in cases.iter().enumerate() {
        let err = load_file(
            &format!("model-bad-{i}"),
            &format!("[agents.m]\n{agent}\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(key), "{agent}: {err}");
    }
}

#[test]
fn a_cli_preset_runs_its_own_argv_unless_given_one() {
    let toml = "[agents.claude]\nkind = \"claude-code\"\n[agents.mine]\nkind = \"codex\"\ncommand = [\"/opt/codex\", \"exec\", \"--json\", \"{message}\"]\n";
    let c = load_file("presets", toml, &[]).unwrap();
    assert_eq!(
        c.agents["claude"].command[..3],
        ["claude", "-p", "{message}"].map(String::from)
    );
    assert!(c.agents["claude"]
        .command
        .contains(&"stream-json".to_string()));
    assert_eq!(c.agents["mine"].command[0], "/opt/codex");
    // Resuming the CLI's own session: Claude Code takes an option, Codex a subcommand with the id before the
    // prompt; a plain command resumes nothing unless told how.
    assert_eq!(
        c.agents["claude"].resume[c.agents["claude"].resume.len() - 2..],
        ["--resume", "{agent_session}"].map(String::from)
    );
    assert_eq!(
        c.agents["mine"].resume,
        [
            "/opt/codex",
            "exec",
            "resume",
            "--json",
            "{agent_session}",
            "{message}"
        ]
        .map(String::from)
    );
    assert!(c.agents["echo"].resume.is_empty());
}

#[test]
fn a_users_scopes_sit_beside_its_hash_and_a_misspelt_scope_is_named() {
    let user = "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n[auth.users.ana]\n\
                password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n\
                agents = [\"echo\"]\nread_all = true\nmax_queued = 7\n";
    let c = load_file("users", user, &[]).unwrap();
    let scopes = &c.auth.users["ana"].scopes;
    assert_eq!(scopes.agents, vec!["echo".to_string()]);
    assert!(scopes.read_all && !scopes.cancel);
    assert_eq!(scopes.max_queued, Some(7));

    let misspelt = user.replace("read_all", "read_everything");
    let err = load_file("users-typo", &misspelt, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("read_everything"), "{err}");
}
