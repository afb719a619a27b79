//! Connecting to NATS the same way from every process: named connection, reconnect forever (services), or
//! one attempt with a plain error (tools such as `fleet keys`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::NatsConfig;

pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    logging_events(options(cfg).await?, shown_urls(cfg))
        .name(name)
        // A worker or gateway outlives NATS restarts: keep trying, and start even if NATS comes up later.
        .max_reconnects(None)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(cfg.urls())
        .await
}

/// One attempt, for a command a person waits on: an unreachable server is an error at once, not a retry loop.
pub async fn connect_once(
    cfg: &NatsConfig,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    logging_events(options(cfg).await?, shown_urls(cfg))
        .name(name)
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(cfg.urls())
        .await
}

/// Logs the connection events that matter, once each: losing the server, failing to reach it (not every retry),
/// getting it back, and server errors. The first connection and the closing one are routine.
fn logging_events(options: async_nats::ConnectOptions, urls: String) -> async_nats::ConnectOptions {
    let state = Arc::new(EventState::default());
    options.event_callback(move |event| {
        let state = state.clone();
        let urls = urls.clone();
        async move { state.log(event, &urls) }
    })
}

fn shown_urls(cfg: &NatsConfig) -> String {
    let urls: Vec<String> = cfg
        .urls()
        .iter()
        .map(|u| crate::config::mask_url_credentials(u))
        .collect();
    urls.join(",")
}

#[derive(Default)]
struct EventState {
    /// Connected once and lost since.
    lost: AtomicBool,
    /// Said that the server cannot be reached, since the last connection.
    complained: AtomicBool,
}

impl EventState {
    fn log(&self, event: async_nats::Event, urls: &str) {
        use async_nats::Event;
        match event {
            Event::Disconnected => {
                self.lost.store(true, Ordering::Relaxed);
                tracing::warn!("lost the NATS connection to {urls}; reconnecting");
            }
            Event::Connected => {
                self.complained.store(false, Ordering::Relaxed);
                match self.lost.swap(false, Ordering::Relaxed) {
                    true => tracing::info!("reconnected to NATS"),
                    false => tracing::debug!("connected to NATS"),
                }
            }
            Event::ClientError(e) => {
                if !self.complained.swap(true, Ordering::Relaxed) {
                    tracing::warn!("cannot reach NATS at {urls} ({e}); still trying");
                }
            }
            Event::Closed | Event::Draining => tracing::debug!(%event, "nats connection event"),
            other => tracing::warn!(event = %other, "nats connection event"),
        }
    }
}

/// Credentials and TLS from the configuration (validation allows at most one kind of credential).
async fn options(cfg: &NatsConfig) -> Result<async_nats::ConnectOptions, async_nats::ConnectError> {
    // Two rustls crypto back ends are linked (async-nats brings ring, the FTP and S3 clients aws-lc-rs), so
    // rustls cannot pick one by itself: name it once per process before any TLS connection.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut options = if !cfg.creds_file.is_empty() {
        async_nats::ConnectOptions::with_credentials_file(&cfg.creds_file)
            .await
            .map_err(|e| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, e)
            })?
    } else if !cfg.nkey_seed.is_empty() {
        async_nats::ConnectOptions::with_nkey(cfg.nkey_seed.clone())
    } else if !cfg.token.is_empty() {
        async_nats::ConnectOptions::with_token(cfg.token.clone())
    } else if !cfg.user.is_empty() {
        async_nats::ConnectOptions::with_user_and_password(cfg.user.clone(), cfg.password.clone())
    } else {
        async_nats::ConnectOptions::new()
    };
    if cfg.tls_required {
        options = options.require_tls(true);
    }
    if !cfg.tls_ca_file.is_empty() {
        options = options.add_root_certificates(cfg.tls_ca_file.clone().into());
    }
    if !cfg.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            cfg.tls_cert_file.clone().into(),
            cfg.tls_key_file.clone().into(),
        );
    }
    Ok(options)
}

/// Publishes one of a job's events on its events subject (a core publish; the events stream keeps it).
pub async fn publish_event(
    client: &async_nats::Client,
    topology: &crate::Topology,
    job_id: &uuid::Uuid,
    event: &crate::wire::JobEvent,
) {
    let payload = crate::codec::to_msgpack(event);
    if let Err(e) = client
        .publish(topology.events_subject(job_id), payload.into())
        .await
    {
        tracing::debug!(job_id = %job_id, error = %e, "publishing a job event failed");
    }
}

/// The client port that nats-server `pid`, started with `--ports_file_dir ports_dir`, wrote to its ports file
/// (`{"nats": ["nats://127.0.0.1:PORT"]}`), once written: how a server asked for any free port (`-p -1`) says
/// which one it took.
pub fn announced_port(ports_dir: &std::path::Path, pid: u32) -> Option<u16> {
    let text = std::fs::read_to_string(ports_dir.join(format!("nats-server_{pid}.ports"))).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
}
