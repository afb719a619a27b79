//! The `fleet` binary: `up` (everything on one machine), `gateway`, `worker`, `keys`, `bench`, and the client
//! commands. Every error ends the process the same way: `fleet: code: message` on stderr, exit code 1.

mod bench;
mod bench_artifacts;
mod bench_console;
mod bench_core;
mod bench_deployed;
mod bench_depth;
mod bench_events;
mod bench_history;
mod bench_measure;
mod bench_models;
mod bench_paths;
mod bench_pg_sink;
mod bench_sessions;
mod bench_spawn;
mod cdp;
mod client;
mod data_lock;
mod keys;
mod local_nats;
mod summary;
mod up;

use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fleet_shared::config::Config;
use tokio_util::sync::CancellationToken;

use fleet_cli::{args, failure, telemetry};

use crate::args::ServiceArgs;
use crate::failure::{failure, Coded};
use crate::summary::{Role, Started};

#[derive(Parser)]
#[command(
    name = "fleet",
    version,
    about = "Run AI agents and code jobs on a NATS JetStream worker fleet"
)]
struct Cli {
    /// The client options may also come before the command (`fleet --json jobs`).
    #[command(flatten)]
    client: client::EarlyClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole fleet locally: a managed nats-server, one gateway and one worker.
    Up(up::UpArgs),
    /// Run an HTTP gateway.
    #[command(mut_arg("http", |a| a.help(
        "HTTP listen address (FLEET_HTTP_ADDR), e.g. 0.0.0.0:8080 or localhost:8080"
    )))]
    Gateway(ServiceArgs),
    /// Run a worker.
    #[command(mut_arg("http", |a| a.help(
        "The worker's health and metrics listener (FLEET_WORKER_HTTP_ADDR), e.g. 0.0.0.0:9090"
    )))]
    Worker(ServiceArgs),
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
    Keys(keys::KeysArgs),
    /// Keep a PostgreSQL table of every job in step with the jobs bucket (optional; resumes where it stopped).
    /// Runs `fleet-pg-sink`, built and installed beside `fleet`, with these arguments (`--help` for its own).
    #[command(disable_help_flag = true)]
    PgSink {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() {
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", failure::line(&e));
            1
        }
    };
    // `exit` skips destructors: output without a final newline would stay in the buffer.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code)
}

fn dispatch(mut cli: Cli) -> Result<i32> {
    if let Command::Keys(keys) = &mut cli.command {
        keys.json |= cli.client.take_json();
    }
    let service = match &cli.command {
        Command::Up(a) => Some(("fleet", a.log.format())),
        Command::Gateway(a) => Some(("fleet-gateway", a.log.format())),
        Command::Worker(a) => Some(("fleet-worker", a.log.format())),
        _ => None,
    };
    if !matches!(cli.command, Command::Client(_)) {
        cli.client.refuse_for_non_client(&cli.command)?;
    }
    match cli.command {
        Command::Tick { spec } => return bench_events::tick(&spec).map(|()| 0),
        Command::Probe { url } => return Ok(probe(&url)),
        Command::HashPassword => return hash_password().map(|()| 0),
        Command::PgSink { args } => return Err(run_beside("fleet-pg-sink", &args)),
        _ => {}
    }
    let telemetry = match service {
        Some((service, format)) => Some(telemetry::init_service(service, format)?),
        None => {
            telemetry::init_quiet();
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // block_on runs `up` on this, the main thread: the managed nats-server's parent-death signal relies on it.
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await.map(|()| 0),
            Command::Gateway(args) => gateway(&args).await.map(|()| 0),
            Command::Worker(args) => worker(&args).await.map(|()| 0),
            Command::Bench(args) => bench::run(args).await.map(|()| 0),
            Command::Keys(args) => keys::run(args).await.map(|()| 0),
            Command::Client(command) => client::run(cli.client, command).await,
            Command::Tick { .. }
            | Command::Probe { .. }
            | Command::HashPassword
            | Command::PgSink { .. } => Ok(0),
        }
    });
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    outcome
}

impl client::CommandName for Command {
    /// The command's name as typed, for messages.
    fn name(&self) -> &'static str {
        match self {
            Command::Up(_) => "up",
            Command::Gateway(_) => "gateway",
            Command::Worker(_) => "worker",
            Command::Bench(_) => "bench",
            Command::Tick { .. } => "tick",
            Command::Probe { .. } => "probe",
            Command::HashPassword => "hash-password",
            Command::Keys(_) => "keys",
            Command::PgSink { .. } => "pg-sink",
            Command::Client(_) => "client",
        }
    }
}

fn hash_password() -> Result<()> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(failure("no_password", "no password on stdin"));
    }
    let hash = fleet_gateway::auth::tokens::hash_password(password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
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

async fn gateway(args: &ServiceArgs) -> Result<()> {
    let sources = args
        .config
        .sources(&[("http.addr", args.http.as_ref(), "--http")]);
    let config = Arc::new(args::load(&sources)?);
    let listener = tokio::net::TcpListener::bind(config.http.socket_addr())
        .await
        .map_err(|e| {
            failure(
                "cannot_listen",
                format!(
                    "cannot listen on {} (from {}): {e}",
                    config.http.addr,
                    sources.origin("http.addr")
                ),
            )
        })?;
    let started = Started {
        sources: summary::sources_line(&sources),
        ..Started::listening(listener.local_addr()?)
    };
    summary::print(&config, Role::Gateway, &started, args.log.is_json());
    let client = connect(&config, "fleet-gateway").await?;
    let stop = shutdown_signal();
    let ran = fleet_gateway::run(listener, config.clone(), client.clone(), async move {
        stop.cancelled().await
    })
    .await;
    ran.map_err(|e| explained(e.into(), &client, &config))
}

async fn worker(args: &ServiceArgs) -> Result<()> {
    let sources = args
        .config
        .sources(&[("worker.http_addr", args.http.as_ref(), "--http")]);
    let config = Arc::new(args::load(&sources)?);
    let started = Started {
        sources: summary::sources_line(&sources),
        ..Default::default()
    };
    summary::print(&config, Role::Worker, &started, args.log.is_json());
    let client = connect(&config, "fleet-worker").await?;
    let ran = fleet_worker::run(config.clone(), client.clone(), shutdown_signal()).await;
    ran.map_err(|e| explained(e.into(), &client, &config))
}

/// Replaces this process with the program `name` installed beside it (an optional part kept out of `fleet`, so
/// its code and dependencies cost the fleet's own processes nothing); returns only why that failed.
fn run_beside(name: &str, args: &[std::ffi::OsString]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let program = match std::env::current_exe() {
        Ok(fleet) => fleet.with_file_name(name),
        Err(e) => return e.into(),
    };
    if !program.exists() {
        return failure(
            "program_missing",
            format!(
                "{} is not installed beside fleet; `cargo build --release` builds it with fleet",
                program.display()
            ),
        );
    }
    let e = std::process::Command::new(&program).args(args).exec();
    failure(
        "program_missing",
        format!("cannot run {}: {e}", program.display()),
    )
}

/// A service that failed while NATS was out of reach failed because of that: say so.
fn explained(e: anyhow::Error, client: &async_nats::Client, config: &Config) -> anyhow::Error {
    if client.connection_state() == async_nats::connection::State::Connected {
        return e;
    }
    failure(
        "nats_unreachable",
        format!(
            "NATS at {} did not answer ({e:#}); start it, or point --nats / FLEET_NATS_URL at it",
            fleet_shared::config::mask_url_credentials(&config.nats.url)
        ),
    )
}

/// A service's NATS connection: it keeps retrying a server that is down, saying so.
async fn connect(config: &Config, name: &str) -> Result<async_nats::Client> {
    fleet_shared::nats::connect(&config.nats, name)
        .await
        .coded("nats_unreachable")
}
