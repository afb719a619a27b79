//! `fleet up`: the whole fleet on one machine — a managed nats-server (or the user's), a worker and a gateway —
//! on a data directory it holds a lock on, with the ports it found free and a summary of where everything is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use fleet_shared::config::{Config, Sources};
use tokio::net::TcpListener;

use crate::args::{self, ConfigArgs, LogArgs};
use crate::data_lock::{DataLock, Takeover};
use crate::failure::{failure, Coded};
use crate::local_nats::{self, LocalNats};
use crate::summary::{self, Role, Started};

#[derive(Args)]
pub struct UpArgs {
    /// `--nats URL` uses that NATS server instead of starting one.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// API listen address (FLEET_HTTP_ADDR); by default 127.0.0.1:8080, or the next free port when it is busy.
    #[arg(long)]
    pub http: Option<String>,
    /// Port of the managed nats-server; by default 4222, or the next free port when it is busy; 0: any free port.
    #[arg(long, conflicts_with = "nats")]
    pub nats_port: Option<u16>,
    /// Where NATS keeps its streams and the worker its workspaces; one `fleet up` at a time uses it.
    #[arg(long, default_value = ".fleet")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Ports tried after a busy default before taking any free one.
const NEXT_PORTS: u16 = 20;

pub async fn run(args: UpArgs) -> Result<()> {
    let sources = args
        .config
        .sources(&[("http.addr", args.http.as_ref(), "--http")]);
    let mut config = args::load(&sources)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))
        .coded("data_dir_unusable")?;
    let data_dir = std::fs::canonicalize(&args.data_dir).coded("data_dir_unusable")?;
    let (mut lock, takeover) = DataLock::acquire(&data_dir).coded("data_dir_unusable")?;
    let mut notes = takeover.map(takeover_note).into_iter().collect::<Vec<_>>();
    let nats = start_nats(&args, &sources, &config, &data_dir, &mut notes).await?;
    config.nats.url = nats.url(&config);
    let listener = bind_api(&sources, &config, &mut notes).await?;
    let api_addr = listener.local_addr()?;
    let listening = Started::listening(api_addr);
    let url = listening.api.clone().unwrap_or_default();
    config.http.addr = api_addr.to_string();
    // One machine's fleet: no keys while only this machine can reach it (a wider address keeps auth.mode).
    if api_addr.ip().is_loopback() {
        config.auth.mode = fleet_shared::config::AuthMode::None;
    }
    config.worker.work_dir = data_dir.join("work");
    config.artifacts.local_dir = data_dir.join("artifacts");
    lock.record(nats.pid(), &url)?;
    let config = Arc::new(config);
    let stop = crate::shutdown_signal();

    let worker_client = fleet_shared::nats::connect(&config.nats, "fleet-worker").await?;
    let worker = tokio::spawn(fleet_worker::run(
        config.clone(),
        worker_client.clone(),
        stop.clone(),
    ));
    local_nats::wait_for_agents(&config).await?;
    let gateway_client = fleet_shared::nats::connect(&config.nats, "fleet-gateway").await?;
    let gw_stop = stop.clone();
    let gateway = tokio::spawn(fleet_gateway::run(
        listener,
        config.clone(),
        gateway_client.clone(),
        async move { gw_stop.cancelled().await },
    ));

    let started = Started {
        notes,
        sources: format!(
            "{} · data in {}",
            summary::sources_line(&sources),
            data_dir.display()
        ),
        ..listening
    };
    summary::print(&config, Role::Up, &started, args.log.is_json());
    print_try(&config, &url);

    stop.cancelled().await;
    let (g, w) = tokio::join!(gateway, worker);
    g??;
    w??;
    // Closed before the server stops, so neither reports a lost connection.
    let _ = tokio::join!(worker_client.drain(), gateway_client.drain());
    nats.stop().await;
    drop(lock);
    Ok(())
}

fn print_try(config: &Config, url: &str) {
    let agents = config.worker_agents();
    let agent = agents
        .iter()
        .find(|a| *a == "echo")
        .or(agents.first())
        .map_or("echo", String::as_str);
    println!(
        "  {:<12} curl -s -X POST '{url}/v1/jobs?wait=30' -H 'content-type: application/json' -d '{{\"agent\":\"{agent}\",\"message\":\"hello\"}}'",
        "try"
    );
    println!("  {:<12} fleet run {agent} hello --url {url}", "");
    println!(
        "Ctrl-C stops everything (running jobs get up to {} s to finish; a second Ctrl-C stops at once).",
        config.worker.shutdown_grace_secs
    );
}

fn takeover_note(t: Takeover) -> String {
    match t.stopped_nats {
        Some(nats) => format!(
            "took over the data directory from `fleet up` pid {}, which is gone, and stopped the nats-server it left (pid {nats})",
            t.dead_pid
        ),
        None => format!(
            "took over the data directory from `fleet up` pid {}, which is gone",
            t.dead_pid
        ),
    }
}

/// The NATS this fleet uses: one it manages, or the user's (`--nats`, FLEET_NATS_URL, NATS_URL, the file).
enum Nats {
    Managed(LocalNats),
    External,
}

impl Nats {
    fn url(&self, config: &Config) -> String {
        match self {
            Nats::Managed(n) => n.url(),
            Nats::External => config.nats.url.clone(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Nats::Managed(n) => n.pid(),
            Nats::External => None,
        }
    }

    async fn stop(self) {
        if let Nats::Managed(n) = self {
            n.stop().await;
        }
    }
}

async fn start_nats(
    args: &UpArgs,
    sources: &Sources,
    config: &Config,
    data_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Nats> {
    let origin = sources.origin("nats.url");
    if origin.is_chosen() {
        fleet_shared::nats::connect_once(&config.nats, "fleet-up")
            .await
            .map_err(|e| {
                failure(
                    "nats_unreachable",
                    format!(
                        "cannot reach NATS at {} (from {origin}): {e}",
                        config.nats.url
                    ),
                )
            })?;
        notes.push(format!(
            "using your NATS server (from {origin}), not a managed one"
        ));
        return Ok(Nats::External);
    }
    let port = match args.nats_port {
        Some(port) if port == 0 || local_nats::port_is_free(port) => port,
        Some(port) => {
            return Err(failure(
                "port_in_use",
                format!("port {port} (--nats-port) is in use; pick another or leave it out to take a free one"),
            ))
        }
        None => free_near(4222, notes, "NATS")?,
    };
    let nats = LocalNats::start(&data_dir.join("nats"), &data_dir.join("nats.log"), port).await?;
    Ok(Nats::Managed(nats))
}

/// `default` when it is free, else the next free port after it (said in a note).
fn free_near(default: u16, notes: &mut Vec<String>, what: &str) -> Result<u16> {
    let port = (default..default + NEXT_PORTS)
        .find(|p| local_nats::port_is_free(*p))
        .map_or_else(local_nats::free_port, Ok)?;
    if port != default {
        notes.push(format!("port {default} was busy: {what} is on {port}"));
    }
    Ok(port)
}

/// The API's listener: exactly the address the user named (a busy one is an error), or the default's port or
/// the next free one.
async fn bind_api(
    sources: &Sources,
    config: &Config,
    notes: &mut Vec<String>,
) -> Result<TcpListener> {
    let wanted = config.http.socket_addr();
    let origin = sources.origin("http.addr");
    if origin.is_chosen() {
        return TcpListener::bind(wanted).await.map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::AddrInUse => "port_in_use",
                _ => "cannot_listen",
            };
            failure(
                code,
                format!("cannot listen on {wanted} (from {origin}): {e}"),
            )
        });
    }
    for port in wanted.port()..wanted.port().saturating_add(NEXT_PORTS) {
        if let Ok(listener) = TcpListener::bind(SocketAddr::new(wanted.ip(), port)).await {
            if port != wanted.port() {
                notes.push(format!(
                    "port {} was busy: the API is on {port}",
                    wanted.port()
                ));
            }
            return Ok(listener);
        }
    }
    let listener = TcpListener::bind(SocketAddr::new(wanted.ip(), 0)).await?;
    notes.push(format!(
        "ports {}–{} were busy: the API is on {}",
        wanted.port(),
        wanted.port() + NEXT_PORTS - 1,
        listener.local_addr()?.port()
    ));
    Ok(listener)
}
