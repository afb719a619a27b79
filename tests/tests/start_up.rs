//! What a person reads when a service starts: configuration errors once, on one line, naming the key, its unit
//! and where the value came from; misspelt `FLEET_*` variables warned about; a start-up summary by section with
//! secrets masked and no colour codes in a file; JSON logs behind `--log-format json`; `localhost` addresses.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet_tests::*;

fn fleet(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    Command::new(built_binary("fleet"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run fleet")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command line, its environment, and what its one error line must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn configuration_errors_are_one_line_naming_the_key_its_unit_and_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("negative.toml"),
        "default_agent = \"echo\"\n\n[queue]\nretention_hours = -1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("misspelt.toml"),
        "[queue]\nretenton_hours = 2\n",
    )
    .unwrap();
    let cases: [Case; 4] = [
        (
            &["gateway", "--config", "negative.toml"],
            &[],
            &["`queue.retention_hours`", "negative.toml line 4", "hours"],
        ),
        (
            &["worker", "--config", "misspelt.toml"],
            &[],
            &[
                "`queue.retenton_hours`",
                "misspelt.toml line 2",
                "no such key",
            ],
        ),
        (
            &["worker"],
            &[("FLEET_QUEUE_RETENTION_HOURS", "abc")],
            &["`queue.retention_hours`", "FLEET_QUEUE_RETENTION_HOURS"],
        ),
        (
            &["up", "--http", "nowhere"],
            &[],
            &["`http.addr`", "--http"],
        ),
    ];
    for (args, env, wanted) in cases {
        let out = fleet(args, env, dir.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: printed once: {err}");
        assert!(
            err.starts_with("fleet: invalid_config: "),
            "{args:?}: {err}"
        );
        for w in wanted {
            assert!(err.contains(w), "{args:?}: `{w}` missing from {err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("Error:"),
            "{err}"
        );
    }
}

/// A service started with its stderr in a pipe (not a terminal), read line by line.
struct Service {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Service {
    fn start(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Self {
        let mut child = Command::new(built_binary("fleet"))
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fleet");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Everything printed until a line containing `marker`.
    fn until(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen.iter().any(|l| l.contains(marker)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no `{marker}` in:\n{}", self.seen.join("\n")),
            }
        }
        self.seen.join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// The port written right after `prefix` in `text`.
fn port_after(text: &str, prefix: &str) -> u16 {
    text.split(prefix)
        .nth(1)
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no port after `{prefix}` in:\n{text}"))
}

/// Whether `url` answers 2xx within 20 s.
async fn answers(url: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_worker_start_with_a_summary_a_person_can_read() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work").display().to_string();
    let files = dir.path().join("files").display().to_string();
    let env = [
        ("FLEET_NATS_URL", nats.url()),
        ("FLEET_NATS_USER", "bob".into()),
        ("FLEET_NATS_PASSWORD", "hunter2".into()),
        ("FLEET_WORKR_MAX_CONCURRENT", "3".into()),
        ("FLEET_WORKER_WORK_DIR", work),
        ("FLEET_ARTIFACTS_LOCAL_DIR", files),
        ("FLEET_AUTH_MODE", "none".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // `localhost` names, on ports the services pick themselves (0) and say.
    let mut gateway = Service::start(&["gateway", "--http", "localhost:0"], &env, dir.path());
    let summary = gateway.until("open ");
    let gateway_port = port_after(&summary, "http://127.0.0.1:");
    let mut worker = Service::start(&["worker", "--http", "localhost:0"], &env, dir.path());
    let worker_summary = worker.until("agents");
    let worker_port = port_after(
        &worker.until("health and metrics listening"),
        "addr=127.0.0.1:",
    );
    for (name, text) in [("gateway", &summary), ("worker", &worker_summary)] {
        assert!(
            text.contains(&format!("fleet {} · {name}", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "{name}: colour codes in a pipe:\n{text}"
        );
        assert!(!text.contains("hunter2"), "{name}: a secret shown:\n{text}");
        assert!(text.contains("user bob password ***"), "{name}:\n{text}");
        assert!(
            text.contains("FLEET_WORKR_MAX_CONCURRENT is not a configuration variable"),
            "{name}: the misspelt variable not warned about:\n{text}"
        );
        for section in ["config", "nats", "queue", "artifacts", "agents"] {
            assert!(
                text.contains(&format!("  {section} ")),
                "{name}: no {section}:\n{text}"
            );
        }
        assert!(
            !text.contains("effective configuration"),
            "{name}: the JSON dump:\n{text}"
        );
    }
    assert!(
        summary.contains(&format!("http://127.0.0.1:{gateway_port}/docs")),
        "{summary}"
    );
    assert!(
        worker_summary.contains("echo {message}"),
        "agents with their commands:\n{worker_summary}"
    );
    // `localhost` addresses are taken, and the worker's `--http` listens.
    assert!(answers(&format!("http://127.0.0.1:{gateway_port}/health")).await);
    assert!(answers(&format!("http://127.0.0.1:{worker_port}/health")).await);
    drop(worker);
    drop(gateway);

    // JSON logs: every line on stderr is a JSON event, the summary one of them.
    let mut json = Service::start(
        &["gateway", "--http", "127.0.0.1:0", "--log-format", "json"],
        &env,
        dir.path(),
    );
    let logged = json.until("gateway listening");
    for line in logged.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
    }
    assert!(logged.contains("effective configuration"), "{logged}");
}
