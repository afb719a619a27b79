//! `fleet bench`: runs a no-op agent (`/bin/echo hi`) through a real fleet — nats-server, `fleet gateway` and
//! `fleet worker` as separate processes on this machine — and prints, next to the raw cost of spawning the same
//! command measured in the same run: sequential submit→result latency over NATS and over HTTP, throughput with
//! many jobs in flight, and the idle memory of gateway and worker.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::bench_artifacts;
use crate::bench_console;
use crate::bench_depth;
use crate::bench_events;
use crate::bench_history;
pub(crate) use crate::bench_measure::{median, rss_kb, Samples};
use crate::bench_models;
pub(crate) use crate::bench_paths::{
    http_job, http_throughput, nats_job, nats_throughput, nats_throughput_of,
    wait_until_agent_known,
};
use crate::local_nats::{free_port, LocalNats};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Sequential jobs measured per path (NATS, HTTP) and raw spawns for the baseline.
    #[arg(long, default_value_t = 500)]
    pub(crate) samples: usize,
    /// Jobs in flight during the throughput runs.
    #[arg(long, default_value_t = 64)]
    pub(crate) in_flight: usize,
    /// Jobs per throughput run (and spawns per raw-rate run).
    #[arg(long, default_value_t = 4000)]
    pub(crate) throughput_jobs: usize,
    /// Rounds of raw-rate, NATS and HTTP throughput runs, alternated so a drift in machine speed hits both sides
    /// of each ratio; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Also measure the file path: artifact upload and download against object_store used directly.
    #[arg(long)]
    artifacts: bool,
    /// Also measure live events: agent line → SSE client latency, and 100 listeners' cost on throughput.
    #[arg(long)]
    events: bool,
    /// Size of the large artifact case, MB.
    #[arg(long, default_value_t = 100)]
    artifact_big_mb: usize,
    /// Number of 4 KB files in the small artifact case.
    #[arg(long, default_value_t = 1000)]
    artifact_small_count: usize,
    /// Size of the file streamed through the gateway while its memory is watched, GB (0: skip).
    #[arg(long, default_value_t = 1)]
    flat_memory_gb: usize,
    /// The worker's run slots (`worker.max_concurrent`).
    #[arg(long, default_value_t = 32)]
    worker_concurrency: usize,
    /// Also measure the job history: list queries and `/stats` at each of `--history-sizes` records, and a new
    /// gateway's index build.
    #[arg(long)]
    history: bool,
    /// Record counts the history part fills the bucket to, in order.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    history_sizes: Vec<usize>,
    /// With `--history`, also time `fleet pg-sink` into this (scratch) PostgreSQL database at each size, into a
    /// new table `bench_jobs_SIZE_PID` it leaves there: catching up from empty, and how far it trails while jobs
    /// flow.
    #[arg(long)]
    pg_sink: Option<String>,
    /// Also measure deep queues and many agents: a queue of `--depth-jobs` drained against one of 1,000, and a
    /// worker's idle memory with 200 agents against 3.
    #[arg(long)]
    depth: bool,
    #[arg(long, default_value_t = 100_000)]
    depth_jobs: usize,
    /// Also measure the web console: how soon its run form is usable after navigation, and its first load's
    /// bytes, in headless Chromium.
    #[arg(long)]
    console: bool,
    /// Cold loads of the console measured (each in a fresh browser context).
    #[arg(long, default_value_t = 10)]
    console_loads: usize,
    /// The Chromium the console part drives.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: std::path::PathBuf,
    /// Also measure model agents and the OpenAI-compatible front door against this model server (its OpenAI API
    /// root, e.g. `http://127.0.0.1:8080/v1`), asked directly in the same run.
    #[arg(long)]
    model_server: Option<String>,
    /// The model to ask the model server for.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Also measure sessions: a turn's cost over a plain job, and a 10 MB workspace's save and restore against a
    /// plain tar-and-put of it.
    #[arg(long)]
    sessions: bool,
    /// Also measure the hot path as deployed: HTTP through a gateway requiring API keys, then again with
    /// `--deployed-queued` jobs of another caller waiting in the jobs stream.
    #[arg(long)]
    deployed: bool,
    #[arg(long, default_value_t = 100_000)]
    deployed_queued: usize,
    /// Skip the core latency, throughput and memory measures (to run only the parts asked for).
    #[arg(long)]
    skip_core: bool,
}

pub(crate) const AGENT: &str = "noop";
/// The subject prefix of the bench's fleet, written into its configuration.
pub const PREFIX: &str = "bench";

/// The subject direct publishers send `agent`'s jobs to in the bench's fleet.
pub fn jobs_subject(agent: &str) -> String {
    fleet_shared::Topology::new(PREFIX).jobs_subject(agent)
}

/// The subject of `agent`'s jobs submitted by authenticated caller `owner` in the bench's fleet.
pub(crate) fn jobs_subject_of_owner(agent: &str, owner: &str) -> String {
    fleet_shared::Topology::new(PREFIX).owned_jobs_subject(agent, owner)
}
pub(crate) const COMMAND: [&str; 2] = ["/bin/echo", "hi"];

struct Processes {
    children: Vec<Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: signalling our own children.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        for c in &mut self.children {
            // Reaped so none is left a zombie; how it exited does not matter here.
            let _ = c.wait();
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = LocalNats::start(
        &dir.path().join("nats"),
        &dir.path().join("nats.log"),
        free_port()?,
    )
    .await?;
    let http_addr = format!("127.0.0.1:{}", free_port()?);
    let s3 = match args.artifacts {
        true => bench_artifacts::start_s3(free_port()?).await?,
        false => None,
    };
    let relay = match &args.model_server {
        Some(server) => Some(bench_models::Relay::start(bench_models::upstream_of(server)?).await?),
        None => None,
    };
    let models_toml = match (&args.model_server, &relay) {
        (Some(server), Some(relay)) => {
            Some(bench_models::agents_toml(server, &args.model, relay.port))
        }
        _ => None,
    };
    let bench_config = write_config(
        dir.path(),
        s3.as_ref().map(|(_, e)| e.as_str()),
        models_toml.as_deref(),
    )?;
    let roles = Roles {
        config: &bench_config,
        nats_url: nats.url(),
        http_addr: &http_addr,
        scratch: dir.path(),
        concurrency: args.worker_concurrency,
    };
    let worker = roles.spawn("worker")?;
    let gateway = roles.spawn("gateway")?;
    let (worker_pid, gateway_pid) = (worker.id(), gateway.id());
    let (s3_child, s3_endpoint) = s3.unzip();
    let processes = Processes {
        children: [gateway, worker].into_iter().chain(s3_child).collect(),
    };

    let base = format!("http://{http_addr}");
    let http = reqwest::Client::new();
    wait_until_agent_known(&http, &base).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());

    announce(&args);
    let pids = [
        ("nats-server", nats.pid().unwrap_or(0)),
        ("worker", worker_pid),
        ("agents (worker's children)", 0),
        ("gateway", gateway_pid),
    ];
    let paths = Paths {
        client: &client,
        js: &js,
        http: &http,
        base: &base,
    };
    run_parts(&args, &paths, &roles, &pids, s3_endpoint.as_deref()).await?;
    if let (Some(server), Some(relay)) = (&args.model_server, &relay) {
        let models = bench_models::Models {
            http: &http,
            base: &base,
            server,
            model: &args.model,
            relay,
            rounds: args.rounds,
        };
        bench_models::run(&models).await?;
    }
    // Gateway and worker first, so they never see NATS vanish under them.
    drop(processes);
    nats.stop().await;
    Ok(())
}

/// The parts asked for, in an order where none disturbs the next one's figures.
async fn run_parts(
    args: &BenchArgs,
    paths: &Paths<'_>,
    roles: &Roles<'_>,
    pids: &[(&str, u32); 4],
    s3_endpoint: Option<&str>,
) -> Result<()> {
    if !args.skip_core {
        let core = crate::bench_core::measure_core(args, paths, roles.scratch, pids).await?;
        core.print(args, pids);
    }
    if args.deployed {
        run_deployed(args, paths, roles).await?;
    }
    if args.console {
        let chromium = bench_console::find_chromium(&args.chromium)?.to_path_buf();
        let (base, loads) = (paths.base.to_string(), args.console_loads);
        tokio::task::spawn_blocking(move || bench_console::run(&chromium, &base, loads)).await??;
    }
    if args.sessions {
        crate::bench_sessions::run(paths.http, paths.base, roles.scratch).await?;
    }
    if args.depth {
        run_depth(args, paths, roles, roles.scratch).await?;
    }
    if args.history {
        run_history(args, paths, roles).await?;
    }
    if args.artifacts {
        let fleet = bench_artifacts::Fleet {
            client: paths.client,
            js: paths.js,
            http: paths.http,
            base: paths.base,
            gateway_pid: pids[3].1,
            scratch: roles.scratch,
        };
        run_artifacts(args, &fleet, roles.scratch, s3_endpoint).await?;
    }
    // After the artifact cases: a hundred listeners leave the gateway's allocator holding memory that would
    // otherwise count against the streaming measurement.
    if args.events {
        let throughput = async || {
            nats_throughput(paths.client, paths.js, args.throughput_jobs, args.in_flight).await
        };
        bench_events::run(paths.http, paths.base, throughput, args.rounds).await?;
    }
    Ok(())
}

fn announce(args: &BenchArgs) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "fleet bench: agent `{AGENT}` = {COMMAND:?}; nats-server, `fleet gateway` and `fleet worker` (concurrency {}) on this machine ({cpus} CPUs)",
        args.worker_concurrency
    );
}

/// Deep queues and many agents, with workers started for the purpose.
async fn run_depth(
    args: &BenchArgs,
    paths: &Paths<'_>,
    roles: &Roles<'_>,
    scratch: &std::path::Path,
) -> Result<()> {
    let spawn_worker = |config: Option<&std::path::Path>, extra: &[(&str, String)]| {
        roles.spawn_worker(config, extra)
    };
    let depth = bench_depth::Depth {
        paths,
        spawn_worker: &spawn_worker,
        scratch,
        shallow: 1_000,
        deep: args.depth_jobs,
    };
    bench_depth::run(&depth).await
}

/// The hot path with keys on and a deep queue of another caller's jobs.
async fn run_deployed(args: &BenchArgs, paths: &Paths<'_>, roles: &Roles<'_>) -> Result<()> {
    let spawn_worker = |config: Option<&std::path::Path>, extra: &[(&str, String)]| {
        roles.spawn_worker(config, extra)
    };
    let parked = bench_depth::Depth {
        paths,
        spawn_worker: &spawn_worker,
        scratch: roles.scratch,
        shallow: 0,
        deep: 0,
    };
    let spawn_gateway = |addr: &str, extra: &[(&str, String)]| {
        roles.spawn_configured("gateway", addr, roles.config, extra)
    };
    let deployed = crate::bench_deployed::Deployed {
        paths,
        spawn_gateway: &spawn_gateway,
        parked: &parked,
        samples: args.samples,
        jobs: args.throughput_jobs,
        in_flight: args.in_flight,
        rounds: args.rounds,
        queued: args.deployed_queued,
    };
    crate::bench_deployed::run(&deployed).await
}

/// The job history at each of `--history-sizes` records.
async fn run_history(args: &BenchArgs, paths: &Paths<'_>, roles: &Roles<'_>) -> Result<()> {
    let records = paths
        .js
        .get_key_value(fleet_shared::Topology::new(PREFIX).jobs_bucket())
        .await?;
    let spawn_gateway = |addr: &str| roles.spawn_at("gateway", addr);
    let sink_env = |table: &str| {
        let url = args.pg_sink.clone().unwrap_or_default();
        [
            ("FLEET_PG_SINK_URL", url),
            ("FLEET_PG_SINK_TABLE", table.to_string()),
        ]
    };
    let spawn_sink = |table: &str| {
        roles.spawn_configured("pg-sink", roles.http_addr, roles.config, &sink_env(table))
    };
    let sink_status = |table: &str, more: &[&str]| -> Result<String> {
        let mut status =
            roles.command("pg-sink", roles.http_addr, roles.config, &sink_env(table))?;
        let out = status.arg("--status").args(more).output()?;
        if !out.status.success() {
            anyhow::bail!(
                "fleet pg-sink --status: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let history = bench_history::History {
        paths,
        records,
        spawn_gateway: &spawn_gateway,
        sizes: args.history_sizes.clone(),
        samples: 200,
        sink: args
            .pg_sink
            .as_ref()
            .map(|_| crate::bench_pg_sink::SinkBench {
                spawn: &spawn_sink,
                status: &sink_status,
            }),
    };
    bench_history::run(&history).await
}

/// The bench fleet's configuration file: its agents (the no-op one, the copier, the ticker, and the model agents
/// when there is a model server), its prefix, and the S3 target when there is one.
fn write_config(
    dir: &std::path::Path,
    s3_endpoint: Option<&str>,
    models_toml: Option<&str>,
) -> Result<std::path::PathBuf> {
    let config = dir.join("bench.toml");
    let models = match models_toml {
        Some(_) => format!(
            ", \"{}\", \"{}\"",
            bench_models::MODEL_AGENT,
            bench_models::TAPPED_AGENT
        ),
        None => String::new(),
    };
    let mut toml = format!(
        "[agents.{AGENT}]\ncommand = [\"{}\", \"{}\"]\n\n[agents.{copy}]\ncommand = {copy_cmd:?}\n\n[agents.{tick}]\ncommand = [{fleet:?}, \"tick\", \"{{message}}\"]\n\n[agents.{depth}]\ncommand = [\"{}\", \"{}\"]\n\n[worker]\nagents = [\"{AGENT}\", \"{copy}\", \"{tick}\"{models}]\n\n[nats]\nprefix = \"{PREFIX}\"\n",
        COMMAND[0],
        COMMAND[1],
        COMMAND[0],
        COMMAND[1],
        depth = bench_depth::DEPTH_AGENT,
        copy = bench_artifacts::COPY_AGENT,
        copy_cmd = bench_artifacts::COPY_COMMAND,
        tick = bench_events::TICK_AGENT,
        fleet = std::env::current_exe()?.display().to_string(),
    );
    if let Some(endpoint) = s3_endpoint {
        toml.push_str(&bench_artifacts::s3_target_toml(endpoint));
    }
    toml.push_str(models_toml.unwrap_or(""));
    std::fs::write(&config, toml)?;
    Ok(config)
}

/// How the bench starts `fleet gateway` and `fleet worker`.
struct Roles<'a> {
    config: &'a std::path::Path,
    nats_url: String,
    http_addr: &'a str,
    scratch: &'a std::path::Path,
    concurrency: usize,
}

impl Roles<'_> {
    fn spawn(&self, role: &str) -> Result<Child> {
        self.spawn_at(role, self.http_addr)
    }

    /// `fleet ROLE` with the bench's settings, its HTTP listener on `http_addr`.
    fn spawn_at(&self, role: &str, http_addr: &str) -> Result<Child> {
        self.spawn_configured(role, http_addr, self.config, &[])
    }

    /// `fleet worker` with configuration file `config` (none: the bench's) and `extra` on top.
    fn spawn_worker(
        &self,
        config: Option<&std::path::Path>,
        extra: &[(&str, String)],
    ) -> Result<Child> {
        let config = config.unwrap_or(self.config);
        self.spawn_configured("worker", self.http_addr, config, extra)
    }

    /// `fleet ROLE` with configuration file `config`, the bench's settings and `extra` on top.
    fn spawn_configured(
        &self,
        role: &str,
        http_addr: &str,
        config: &std::path::Path,
        extra: &[(&str, String)],
    ) -> Result<Child> {
        self.command(role, http_addr, config, extra)?
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `fleet {role}`"))
    }

    /// `fleet ROLE --config CONFIG` with the bench's settings and `extra` on top, not started.
    fn command(
        &self,
        role: &str,
        http_addr: &str,
        config: &std::path::Path,
        extra: &[(&str, String)],
    ) -> Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg(role)
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("RUST_LOG", "warn")
            .env("FLEET_NATS_URL", &self.nats_url)
            .env("FLEET_HTTP_ADDR", http_addr)
            // The bench's gateway listens on loopback only.
            .env("FLEET_AUTH_MODE", "none")
            // The bench measures the fleet, not its rate limits.
            .env("FLEET_HTTP_SUBMIT_PER_SEC", "0")
            .env("FLEET_HTTP_READ_PER_SEC", "0")
            .env("FLEET_HTTP_IP_PER_SEC", "0")
            .env("FLEET_WORKER_WORK_DIR", self.scratch.join("work"))
            .env("FLEET_WORKER_MAX_CONCURRENT", self.concurrency.to_string())
            .env("FLEET_QUEUE_MAX_JOBS", "1000000")
            .env("FLEET_ARTIFACTS_LOCAL_DIR", self.scratch.join("artifacts"))
            .env("FLEET_ARTIFACTS_MAX_FILE_BYTES", "100000000000")
            .env("FLEET_ARTIFACTS_MAX_JOB_BYTES", "100000000000")
            .env("FLEET_ARTIFACTS_MAX_FILES", "100000")
            .envs(extra.iter().map(|(k, v)| (*k, v)));
        Ok(command)
    }
}

/// The two ways into the fleet the bench drives.
pub(crate) struct Paths<'a> {
    pub client: &'a async_nats::Client,
    pub js: &'a async_nats::jetstream::Context,
    pub http: &'a reqwest::Client,
    pub base: &'a str,
}

/// The file path: local disk, and S3 when a moto server could be started.
async fn run_artifacts(
    args: &BenchArgs,
    fleet: &bench_artifacts::Fleet<'_>,
    scratch: &std::path::Path,
    s3_endpoint: Option<&str>,
) -> Result<()> {
    let local_dir = scratch.join("direct");
    std::fs::create_dir_all(&local_dir)?;
    let mut targets = vec![bench_artifacts::Target {
        label: "local disk".into(),
        target: None,
        direct: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
            &local_dir,
        )?),
    }];
    match s3_endpoint {
        Some(endpoint) => targets.push(bench_artifacts::Target {
            label: "S3 (moto)".into(),
            target: Some(bench_artifacts::S3_TARGET.into()),
            direct: bench_artifacts::s3_direct(endpoint)?,
        }),
        None => {
            println!("\nS3 cases skipped: `moto_server` not found (pip install \"moto[server]\")")
        }
    }
    bench_artifacts::run(
        fleet,
        &targets,
        args.artifact_big_mb,
        args.artifact_small_count,
        args.flat_memory_gb,
        args.rounds,
    )
    .await
}
