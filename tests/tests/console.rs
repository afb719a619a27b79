//! The web console end to end in a real browser: `tests/console/console.mjs` (Playwright driving headless
//! Chromium) against a fleet started here: run a job and see it live, download a file, cancel, retry, filter the
//! history, the fleet screen, sharing, `/qr`, the phone viewport, a 100,000-line log; and, on a gateway that
//! requires it, sign-in with a key and with a password, the owner filter, a screen hidden without its scope. Screenshots of every screen land in `<target>/console-screenshots/`.
//! `scripts/deps test` installs Chromium and playwright-core.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_tests::*;

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

fn screenshots() -> PathBuf {
    built_binary("fleet")
        .parent()
        .expect("target dir")
        .join("console-screenshots")
}

/// One browser at a time: two headless Chromiums on two cores slowed each other past the checks' deadlines.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one suite of console.mjs and fails with its output unless every check passed.
fn run_suite(suite: &str, url: &str, env: &[(&str, &str)]) {
    let _turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let modules = suite_dir().join("node_modules/playwright-core");
    assert!(
        modules.exists(),
        "{} missing: run `scripts/deps test`",
        modules.display()
    );
    let out = Command::new("node")
        .arg(suite_dir().join("console.mjs"))
        .env("FLEET_URL", url)
        .env("FLEET_CONSOLE_SUITE", suite)
        .env("SCREENSHOTS", screenshots())
        .envs(env.iter().copied())
        .output()
        .expect("run node (scripts/deps test installs it)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{printed}");
    assert!(
        out.status.success(),
        "console suite `{suite}` failed:\n{printed}"
    );
    assert!(
        printed.contains(&format!("console {suite}:")),
        "the suite did not finish:\n{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_follows_cancels_retries_and_browses_jobs() {
    let nats = NatsServer::start();
    // A Claude Code preset replaying its documented stream, for the job page's messages, tool calls and answer.
    let transcript =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("transcripts/claude-code.jsonl");
    let claude = format!(
        "[agents.claude]\nkind = \"claude-code\"\ncommand = [\"{}\", \"cat:{}\", \"{{message}}\"]\n",
        fake_agent(),
        transcript.display()
    );
    let cfg = test_config_with(
        &nats.url(),
        &[("FLEET_WORKER_MAX_CONCURRENT", "4")],
        &claude,
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    wait_for_agents(&cfg.config).await;
    let url = gw.url.clone();
    tokio::task::spawn_blocking(move || run_suite("open", &url, &[]))
        .await
        .expect("suite");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_with_a_key_or_a_password() {
    let nats = NatsServer::start();
    let users = format!(
        "[auth.users.carol]\npassword_hash = \"{}\"\nagents = [\"fake\"]\ncancel = true\n",
        hash_password("console password")
    );
    let cfg = test_config_with(
        &nats.url(),
        &[
            ("FLEET_AUTH_MODE", "required"),
            (
                "FLEET_AUTH_JWT_SECRET",
                "console-test-secret-0123456789abcdef",
            ),
        ],
        &users,
    );
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    wait_for_agents(&cfg.config).await;
    let (_, key) = create_key(&cfg, &["--name", "console", "--agent", "fake", "--cancel"]);
    let (_, audit_key) = create_key(&cfg, &["--name", "audit", "--read-all"]);
    let url = gw.url.clone();
    tokio::task::spawn_blocking(move || {
        run_suite(
            "auth",
            &url,
            &[
                ("FLEET_API_KEY", &key),
                ("FLEET_AUDIT_KEY", &audit_key),
                ("FLEET_USER", "carol"),
                ("FLEET_PASSWORD", "console password"),
            ],
        )
    })
    .await
    .expect("suite");
    worker.stop().await;
}
