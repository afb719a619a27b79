//! The `fleet` binary: `up` (everything on one machine), `gateway`, `worker`, `bench`.

mod bench;
mod bench_artifacts;
mod bench_events;
mod client;
mod keys;
mod local_nats;
mod telemetry;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fleet_shared::config::{Config, Sources};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fleet",
    version,
    about = "Run AI agents and code jobs on a NATS JetStream worker fleet"
)]
struct Cli {
    #[command(flatten)]
    client: client::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole fleet locally: a managed nats-server, one gateway and one worker.
    Up(UpArgs),
    /// Run an HTTP gateway.
    Gateway(CommonArgs),
    /// Run a worker.
    Worker(CommonArgs),
    /// Measure latency, throughput and idle memory of a no-op agent through a fleet started for the purpose.
    Bench(bench::BenchArgs),
    /// The benchmark's chatty agent: prints the time in microseconds COUNT times, INTERVAL_MS apart ("COUNT
    /// INTERVAL_MS" as one argument).
    #[command(hide = true)]
    Tick { spec: String },
    /// Container health check: exits 0 if URL answers 2xx within 3 s, else 1 (slim images have no curl).
    #[command(hide = true)]
    Probe { url: String },
    /// Read a password from stdin and print its argon2 hash, for `[auth.users.NAME] password_hash`.
    HashPassword,
    /// Manage the gateway's API keys (straight in NATS: needs the fleet's NATS settings).
    Keys {
        #[command(flatten)]
        common: CommonArgs,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Configuration file (TOML); settings can also come from FLEET_* variables.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// HTTP listen address (FLEET_HTTP_ADDR).
    #[arg(long)]
    http: Option<String>,
    /// NATS server URL (FLEET_NATS_URL).
    #[arg(long)]
    nats: Option<String>,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where NATS keeps its streams and the worker its workspaces.
    #[arg(long, default_value = ".fleet")]
    data_dir: PathBuf,
}

impl CommonArgs {
    fn load(&self) -> Result<Config> {
        let mut sources = Sources::from_process(self.config.as_deref());
        if let Some(h) = &self.http {
            sources = sources.with_override("http.addr", h.clone());
        }
        if let Some(n) = &self.nats {
            sources = sources.with_override("nats.url", n.clone());
        }
        Config::load(&sources).context("invalid configuration")
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Tick { spec } = &cli.command {
        return bench_events::tick(spec);
    }
    if let Command::Probe { url } = &cli.command {
        std::process::exit(probe(url));
    }
    if let Command::HashPassword = &cli.command {
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            anyhow::bail!("no password on stdin");
        }
        let hash = fleet_gateway::tokens::hash_password(password).map_err(anyhow::Error::msg)?;
        println!("{hash}");
        return Ok(());
    }
    let service = match &cli.command {
        Command::Up(_) => Some("fleet"),
        Command::Gateway(_) => Some("fleet-gateway"),
        Command::Worker(_) => Some("fleet-worker"),
        _ => None,
    };
    let telemetry = match service {
        Some(service) => Some(telemetry::init_service(service)?),
        None => {
            telemetry::init_logs();
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Gateway(args) => gateway(args.load()?).await,
            Command::Worker(args) => worker(args.load()?).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Tick { .. } | Command::Probe { .. } | Command::HashPassword => Ok(()),
            Command::Keys { common, command } => {
                keys::run(&common.load()?, command, cli.client.json()).await
            }
            Command::Client(command) => match client::run(cli.client, command).await {
                Ok(code) => {
                    // `exit` skips destructors: output without a final newline would stay in the buffer.
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    std::process::exit(code)
                }
                Err(e) => {
                    eprintln!("fleet: {e:#}");
                    std::process::exit(1);
                }
            },
        }
    });
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    outcome
}

fn probe(url: &str) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return 1,
    };
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let answer = client
            .get(url)
            .timeout(std::time::Duration::from_secs(3))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => 0,
            Ok(r) => {
                eprintln!("{url}: {}", r.status());
                1
            }
            Err(e) => {
                eprintln!("{url}: {e}");
                1
            }
        }
    })
}

/// Cancelled on the first SIGINT or SIGTERM; a second one ends the process at once.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for attempt in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if attempt == 0 {
                tracing::info!("shutdown requested; a second signal stops at once");
                t.cancel();
            } else {
                tracing::warn!("second shutdown signal: exiting without waiting");
                std::process::exit(130);
            }
        }
    });
    token
}

fn print_config(config: &Config) {
    tracing::info!(config = %config.summary(), "effective configuration");
}

async fn gateway(config: Config) -> Result<()> {
    print_config(&config);
    let config = Arc::new(config);
    let client = fleet_shared::nats::connect(&config.nats, "fleet-gateway").await?;
    let listener = tokio::net::TcpListener::bind(config.http.socket_addr())
        .await
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    let stop = shutdown_signal();
    fleet_gateway::run(
        listener,
        config,
        client,
        async move { stop.cancelled().await },
    )
    .await?;
    Ok(())
}

async fn worker(config: Config) -> Result<()> {
    print_config(&config);
    let config = Arc::new(config);
    let client = fleet_shared::nats::connect(&config.nats, "fleet-worker").await?;
    fleet_worker::run(config, client, shutdown_signal()).await?;
    Ok(())
}

async fn up(args: UpArgs) -> Result<()> {
    let mut config = args.common.load()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let nats = local_nats::LocalNats::start(
        &data_dir.join("nats"),
        local_nats::LocalNats::default_port()?,
    )
    .await?;
    config.nats.url = nats.url();
    // One machine's fleet: no keys while only this machine can reach it (a wider address keeps auth.mode).
    if config.http.socket_addr().ip().is_loopback() {
        config.auth.mode = fleet_shared::config::AuthMode::None;
    }
    config.worker.work_dir = data_dir.join("work");
    config.artifacts.local_dir = data_dir.join("artifacts");
    print_config(&config);
    let config = Arc::new(config);
    let stop = shutdown_signal();

    let worker_client = fleet_shared::nats::connect(&config.nats, "fleet-worker").await?;
    let worker = tokio::spawn(fleet_worker::run(
        config.clone(),
        worker_client,
        stop.clone(),
    ));
    local_nats::wait_for_agents(&config).await?;

    let listener = tokio::net::TcpListener::bind(config.http.socket_addr())
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set --http or FLEET_HTTP_ADDR)",
                config.http.addr
            )
        })?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway_client = fleet_shared::nats::connect(&config.nats, "fleet-gateway").await?;
    let gw_stop = stop.clone();
    let gateway = tokio::spawn(fleet_gateway::run(
        listener,
        config.clone(),
        gateway_client,
        async move { gw_stop.cancelled().await },
    ));

    println!();
    println!("fleet is up");
    println!("  API:   {url}   (interactive docs: {url}/docs)");
    println!(
        "  NATS:  {}   (jobs on {}.jobs.<agent>)",
        config.nats.url, config.nats.prefix
    );
    println!("  agents: {}", config.worker_agents().join(", "));
    println!("  try:   curl -s -X POST '{url}/v1/jobs?wait=30' -H 'content-type: application/json' -d '{{\"agent\":\"echo\",\"message\":\"hello\"}}'");
    println!("Ctrl-C stops everything.");

    stop.cancelled().await;
    let (g, w) = tokio::join!(gateway, worker);
    g??;
    w??;
    nats.stop().await;
    Ok(())
}
