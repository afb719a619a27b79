//! `fleet up` as a subprocess: its summary read from stdout, its log in a file, stopped with Ctrl-C on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::built_binary;

/// A running `fleet up`: its stdout lines arrive on a channel (the summary), its stderr goes to a file.
pub struct FleetUp {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::path::PathBuf,
    seen: Vec<String>,
}

impl FleetUp {
    /// `fleet up ARGS` in `dir` with only PATH and `env` in its environment.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> FleetUp {
        let stderr = dir.join(format!("up-{}.log", uuid::Uuid::new_v4()));
        let mut child = Command::new(built_binary("fleet"))
            .arg("up")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start fleet up");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        FleetUp {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits for the summary's last line; returns the whole summary.
    pub fn summary(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let done = line.starts_with("Ctrl-C stops everything");
                    self.seen.push(line);
                    if done {
                        return self.seen.join("\n");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("fleet up exited ({status}): {}", self.stderr());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no summary from fleet up: {}\n{}",
            self.seen.join("\n"),
            self.stderr()
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status, waiting at most `patience`.
    pub fn exit_within(&mut self, patience: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for fleet up") {
                return status;
            }
            assert!(Instant::now() < deadline, "fleet up is still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for FleetUp {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `name` in a summary row (`  http         http://127.0.0.1:1234 · …`).
pub fn row(summary: &str, name: &str) -> String {
    summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no `{name}` row in\n{summary}"))
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("an empty `{name}` row in\n{summary}"))
        .to_string()
}
