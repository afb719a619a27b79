//! The artifact stores tests run against (a real S3-compatible server and a real FTP server), and how the tests'
//! own stand-in servers say where they listen.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{eventually, test_config, TestConfig};

/// The port a test's own stand-in server (`tests/ftp_server.py`, `tests/llm/*.py`) announces on its first line,
/// `ready PORT`: it binds a port of its own choosing, so no other process can take it between a probe and the
/// bind. `what` names the server (and how to install it) when it does not start.
pub fn announced_port(child: &mut Child, what: &str) -> u16 {
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout piped");
    // An unreadable or empty first line is a server that did not start, said below.
    let _ = BufReader::new(stdout).read_line(&mut line);
    line.trim()
        .strip_prefix("ready ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{what} did not start (its first line: {line:?})"))
}

/// The port werkzeug (moto's server) says it runs on, from its stderr; the rest of its stderr is drained off
/// the test's threads, so its request log never fills the pipe.
fn werkzeug_port(stderr: ChildStderr) -> u16 {
    let mut lines = BufReader::new(stderr).lines();
    let port = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let (_, rest) = l.split_once("Running on http://127.0.0.1:")?;
            rest.trim().parse().ok()
        })
        .expect("moto_server did not start: install it with `pip install \"moto[server]\"`");
    std::thread::spawn(move || lines.for_each(drop));
    port
}

/// An S3-compatible server (moto) on a loopback port, with one bucket, killed on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    pub async fn start() -> Self {
        // Port 0: moto (werkzeug) binds one of its own choosing and names it on stderr.
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server not found: install it with `pip install \"moto[server]\"`");
        let stderr = child.stderr.take().expect("stderr piped");
        let endpoint = format!("http://127.0.0.1:{}", werkzeug_port(stderr));
        let server = Self {
            child,
            endpoint,
            bucket: "fleet-test".into(),
        };
        let http = reqwest::Client::new();
        let bucket_url = format!("{}/{}", server.endpoint, server.bucket);
        eventually(
            "moto_server up and bucket created",
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), bucket_url.clone());
                async move {
                    http.put(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
        server
    }

    /// Configuration settings that point the artifact store at this server.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLEET_ARTIFACTS_BACKEND", "s3".into()),
            ("FLEET_ARTIFACTS_S3_ENDPOINT", self.endpoint.clone()),
            ("FLEET_ARTIFACTS_S3_BUCKET", self.bucket.clone()),
            ("FLEET_ARTIFACTS_S3_ACCESS_KEY_ID", "test".into()),
            ("FLEET_ARTIFACTS_S3_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    /// A test fleet's configuration storing artifacts on this server, with `more` settings.
    pub fn config(&self, nats_url: &str, more: &[(&str, &str)]) -> TestConfig {
        let settings = self.settings();
        let mut extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        extra.extend_from_slice(more);
        test_config(nats_url, &extra)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real FTP server (pyftpdlib, via `tests/ftp_server.py`) on a loopback port, serving a temp dir, killed on
/// drop. With TLS it requires explicit FTPS and `ca_file` is the authority to trust.
pub struct FtpServer {
    child: Child,
    pub port: u16,
    pub root: TempDir,
    pub user: String,
    pub password: String,
    pub ca_file: Option<PathBuf>,
    _certs: TempDir,
}

impl FtpServer {
    pub fn start(tls: bool) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let certs = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ftp_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg(root.path())
            .args(["fleet", "ftp-s3cr3t"]);
        if tls {
            cmd.arg("--tls").arg(certs.path());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 not found");
        let port = announced_port(
            &mut child,
            "the FTP server (install it with `pip install pyftpdlib pyopenssl`)",
        );
        Self {
            child,
            port,
            user: "fleet".into(),
            password: "ftp-s3cr3t".into(),
            ca_file: tls.then(|| certs.path().join("ca.pem")),
            root,
            _certs: certs,
        }
    }

    /// Configuration settings that make this server the fleet's artifact store, files under `/results`.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut s = vec![
            ("FLEET_ARTIFACTS_BACKEND", "ftp".into()),
            ("FTP_HOST", "127.0.0.1".into()),
            ("FTP_PORT", self.port.to_string()),
            ("FTP_USER", self.user.clone()),
            ("FTP_PASSWORD", self.password.clone()),
            ("FTP_BASE_PATH", "/results".into()),
        ];
        if let Some(ca) = &self.ca_file {
            s.push(("FLEET_ARTIFACTS_FTP_TLS", "true".into()));
            s.push((
                "FLEET_ARTIFACTS_FTP_CA_FILE",
                ca.to_string_lossy().into_owned(),
            ));
        }
        s
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
