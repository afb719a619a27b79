//! The README's examples, run as copied: every ```` ```sh checked ```` block line by line against a `fleet up`
//! (only the address changed to the test's, `JOB_ID` to the last job an earlier line made, and curl told to fail
//! on an error status), and every ```` ```toml checked ```` block loaded by the configuration loader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_shared::config::{Config, Sources};
use fleet_tests::*;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(path).expect("README.md")
}

/// The bodies of the fenced blocks whose info string is exactly `info`.
fn blocks(text: &str, info: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(rest)) if rest.trim() == info => current = Some(String::new()),
            (Some(body), Some(_)) => {
                out.push(std::mem::take(body));
                current = None;
            }
            (Some(body), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// A block's commands: continuation lines joined, blank and comment-only lines left out.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        pending.push_str(line);
        if let Some(open) = pending.strip_suffix('\\') {
            pending = format!("{open} ");
            continue;
        }
        let command = std::mem::take(&mut pending);
        if !command.trim().is_empty() && !command.trim_start().starts_with('#') {
            out.push(command);
        }
    }
    // A quoted argument spanning lines (curl -d '{ ... }') continues until its quote closes.
    let mut joined: Vec<String> = Vec::new();
    for command in out {
        match joined.last_mut() {
            Some(last) if unclosed_quote(last) => {
                last.push('\n');
                last.push_str(&command);
            }
            _ => joined.push(command),
        }
    }
    joined
}

/// Whether a single quote is still open at the end, ignoring a trailing `  # comment` on each line.
fn unclosed_quote(command: &str) -> bool {
    let quotes: usize = command
        .lines()
        .map(|l| l.split("  #").next().unwrap_or("").matches('\'').count())
        .sum();
    quotes % 2 == 1
}

/// The command with each line's trailing `  # comment` (outside quotes) removed, so placeholders in comments
/// such as `fk_<id>_<secret>` are not mistaken for ones to fill in.
fn without_comments(command: &str) -> String {
    command
        .lines()
        .map(|l| match comment_start(l) {
            Some(at) => l[..at].trim_end(),
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn comment_start(line: &str) -> Option<usize> {
    line.match_indices("  #")
        .map(|(at, _)| at)
        .find(|&at| line[..at].matches('\'').count() % 2 == 0)
}

fn last_job_id(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .rfind(|w| w.len() == 36 && uuid::Uuid::parse_str(w).is_ok())
        .map(str::to_string)
}

#[test]
fn the_toml_examples_load() {
    let text = readme();
    let tomls = blocks(&text, "toml checked");
    assert!(!tomls.is_empty(), "no checked toml block");
    let dir = tempfile::tempdir().unwrap();
    for (i, body) in tomls.iter().enumerate() {
        let file = dir.path().join(format!("example{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let sources = Sources {
            file: Some(file),
            ..Default::default()
        };
        if let Err(e) = Config::load(&sources) {
            panic!("README toml example {i} does not load: {e}\n{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_examples_run_as_copied() {
    let text = readme();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    std::fs::write(
        dir.path().join("analyse.py"),
        "print(open('data.csv').read().upper())\n",
    )
    .unwrap();
    // Ports of its own choosing, read back from its summary: no other process can take them first.
    let mut fleet = FleetUp::start(
        dir.path(),
        &["--http", "127.0.0.1:0", "--nats-port", "0"],
        &[],
    );
    let summary = fleet.summary();
    let http = row(&summary, "http")
        .trim_start_matches("http://")
        .to_string();
    let nats_url = row(&summary, "nats");
    let bin_dir: PathBuf = built_binary("fleet").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut job_id: Option<String> = None;
    let mut key_id: Option<String> = None;
    let mut ran = 0;
    for block in blocks(&text, "sh checked") {
        for command in commands(&block) {
            let mut line = without_comments(&command)
                .replace("127.0.0.1:8080", &http)
                .replace("localhost:8080", &http)
                .replace("curl ", "curl --fail-with-body ");
            if line.contains("<id>") {
                let id = key_id
                    .clone()
                    .unwrap_or_else(|| panic!("no key yet for `{command}`"));
                line = line.replace("<id>", &id);
            }
            if line.contains("JOB_ID") {
                let id = job_id
                    .clone()
                    .unwrap_or_else(|| panic!("no job yet for `{command}`"));
                line = line.replace("JOB_ID", &id);
            }
            let to_run = line.clone();
            let cwd = dir.path().to_path_buf();
            let env_path = path.clone();
            let base = format!("http://{http}");
            let nats = nats_url.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("timeout")
                    .args(["60", "sh", "-c", &to_run])
                    .current_dir(cwd)
                    .env("PATH", env_path)
                    .env("FLEET_URL", base)
                    .env("FLEET_NATS_URL", nats)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .expect("sh")
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                out.status.success(),
                "README example failed ({}):\n$ {command}\n{stdout}\n{stderr}",
                out.status
            );
            if let Some(id) = last_job_id(&format!("{stdout}\n{stderr}")) {
                job_id = Some(id);
            }
            if let Some(id) = stdout
                .trim()
                .strip_prefix("fk_")
                .and_then(|k| k.split('_').next())
            {
                key_id = Some(id.to_string());
            }
            ran += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(ran >= 19, "only {ran} README commands ran");
    // `fleet run ... --download out/` and `fleet download JOB_ID out/` left the files where the README says.
    assert!(dir.path().join("out/n.txt").exists());
    drop(fleet);
}
