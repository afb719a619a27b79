//! The worker: pulls jobs for its agents from JetStream, claims each with a KV compare-and-set, runs the agent
//! as a supervised subprocess, records exactly one terminal result and replies.
//!
//! Shutdown: `shutdown` stops pulling; running jobs may finish within `worker.shutdown_grace_secs`; then their
//! process groups are killed and the jobs handed back (record reset to `queued`, message nak'd) so another
//! worker takes them at once.

pub mod agent;
pub mod artifacts;
pub mod attempt;
pub mod beneath;
pub mod cancels;
pub mod cgroup;
pub mod delivery;
pub mod dir_stamp;
pub mod dirs;
pub mod discovery;
pub mod events;
pub mod fit;
pub mod http;
pub mod intake;
pub mod janitor;
pub mod job;
pub mod lines;
pub mod metrics;
pub mod model;
pub mod output;
pub mod presets;
pub mod pull;
pub mod report;
pub mod sandbox;
pub mod session;
pub mod session_workspace;
pub mod spawn;
pub mod supervisor;
pub mod sweeper;
pub mod template;
pub mod tree;

use std::sync::Arc;

use async_nats::jetstream::{self, kv, stream};
use fleet_shared::config::Config;
use fleet_shared::Topology;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for pending acks to reach NATS.
const FLUSH_ON_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What every job task of this worker shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub topology: Topology,
    pub client: async_nats::Client,
    pub records: kv::Store,
    pub jobs: stream::Stream,
    pub worker_id: String,
    pub dirs: dirs::DirPool,
    /// Cancel requests seen so far, and the running jobs they stop.
    pub cancels: cancels::Cancels,
    pub cancels_bucket: kv::Store,
    /// Artifact stores by target; follows the run-time sharing target.
    pub stores: fleet_shared::artifacts::targets::Stores,
    /// Cancelled when the worker stops taking new jobs.
    pub stop_pulling: CancellationToken,
    /// Cancelled when running jobs must end now (shutdown grace exhausted).
    pub kill_running: CancellationToken,
    pub metrics: metrics::WorkerMetrics,
    /// A cgroup per running job, where the machine offers them.
    pub cgroups: Option<cgroup::Cgroups>,
    /// The uids running jobs hold from their agents' `run_as` ranges.
    pub uids: sandbox::UidPool,
    /// Checks the gateway's seal on a message's record revision.
    pub sealer: fleet_shared::seal::FollowedSealer,
    /// The HTTP client model agents ask their servers through (one connection pool for the worker); none for a
    /// worker serving no model agent, which then never pays for making one.
    pub models: Option<reqwest::Client>,
    /// Sessions and their turns (history, order).
    pub sessions: fleet_shared::session::SessionStore,
    /// Where sessions' workspaces are kept between turns.
    pub session_files: fleet_shared::artifacts::ArtifactStore,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Topology(#[from] fleet_shared::topology::TopologyError),
    #[error("cannot create the consumer for agent `{agent}`: {source}")]
    Consumer {
        agent: String,
        source: async_nats::Error,
    },
    #[error(transparent)]
    Store(#[from] fleet_shared::artifacts::StoreError),
    #[error(transparent)]
    Seal(#[from] fleet_shared::seal::SealError),
    #[error("cannot make the model agents' HTTP client: {0}")]
    ModelClient(reqwest::Error),
    #[error("cannot listen on {addr} (worker.http_addr): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot create the work directory {dir}: {source}")]
    WorkDir { dir: String, source: std::io::Error },
}

/// Agents run as one fixed user with more than one job at a time: those jobs share the user, so each could reach
/// the others' workspaces and processes while they run. Said once at start-up; a uid range avoids it.
fn warn_of_shared_users(config: &Config) {
    if config.worker.max_concurrent < 2 {
        return;
    }
    for name in config.worker_agents() {
        let agent = &config.agents[&name];
        if let (Some(user), None) = (agent.run_as.as_deref(), agent.run_as_range()) {
            tracing::warn!(
                agent = %name,
                user,
                "concurrent jobs of this agent share one user and can reach each other's files; give run_as a uid range (\"61000-61999\") for a user per job"
            );
        }
    }
}

fn job_cgroups() -> Option<cgroup::Cgroups> {
    let found = cgroup::Cgroups::find();
    match &found {
        Some(c) => tracing::info!(cgroups = %c.path().display(), "each job runs in a cgroup of its own"),
        None => tracing::warn!(
            "no writable cgroup v2 hierarchy with cgroup.kill: a job's processes that leave its process group can outlive it"
        ),
    }
    found
}

/// A worker's identity when the configuration names none: host, pid and a random suffix.
pub fn default_worker_id() -> String {
    // The tail of a v7 id is random.
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{}-{}-{}",
        host_name(),
        std::process::id(),
        &id[id.len() - 6..]
    )
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its full length; gethostname NUL-terminates within it on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "worker".to_string()
    }
}

/// Runs a worker until `shutdown` is cancelled and its jobs are finished or handed back.
pub async fn run(
    config: Arc<Config>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_listening(config, client, shutdown, None).await
}

/// `run`, serving health, readiness and metrics on `http` when given (a listener bound by the caller, on a port
/// it already knows) instead of on `worker.http_addr`.
pub async fn run_listening(
    config: Arc<Config>,
    client: async_nats::Client,
    shutdown: CancellationToken,
    http: Option<tokio::net::TcpListener>,
) -> Result<(), WorkerError> {
    let topology = Topology::new(&config.nats.prefix);
    let js = jetstream::new(client.clone());
    let handles = topology.ensure(&js, &config.queue).await?;
    let work_dir = &config.worker.work_dir;
    std::fs::create_dir_all(work_dir).map_err(|source| WorkerError::WorkDir {
        dir: work_dir.display().to_string(),
        source,
    })?;
    let consumers = agent_consumers(&config, &topology, &handles.jobs).await?;
    warn_of_shared_users(&config);
    let shared = Arc::new(shared_state(&config, topology, &client, handles, &shutdown).await?);
    tracing::info!(worker_id = %shared.worker_id, agents = ?config.worker_agents(), max_concurrent = config.worker.max_concurrent, "worker started");

    let slots = Arc::new(Semaphore::new(config.worker.max_concurrent));
    // Discovery is a convenience: a worker that cannot register still runs jobs.
    let service = match discovery::register(&shared, slots.clone()).await {
        Ok(service) => Some(service),
        Err(e) => {
            tracing::warn!(error = %e, "cannot register with the NATS service API; `GET /v1/workers` will not list this worker");
            None
        }
    };
    let http_done = CancellationToken::new();
    let http = serve_http(&shared, &http_done, http).await?;
    let jobs = TaskTracker::new();
    let loops = start_loops(&shared, consumers, &slots, &jobs);

    shutdown.cancelled().await;
    announce_stop(&config, jobs.len());
    loops.wait().await;
    jobs.close();
    if tokio::time::timeout(config.worker.shutdown_grace(), jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over: killing running jobs and handing them back");
        shared.kill_running.cancel();
        jobs.wait().await;
    }
    // Acks and naks are published asynchronously: let them leave before the connection closes, but do not wait
    // forever for a NATS that is gone (the messages are redelivered anyway).
    match tokio::time::timeout(FLUSH_ON_EXIT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS on shutdown failed"),
        Err(_) => tracing::warn!("NATS unreachable on shutdown; unsent acks will be redelivered"),
    }
    if let Some(service) = service {
        if let Err(e) = service.stop().await {
            tracing::debug!(error = %e, "leaving the NATS service API failed; it forgets this worker anyway");
        }
    }
    http_done.cancel();
    if let Some(http) = http {
        // Its errors were logged where they happened.
        let _ = http.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// The durable consumer of each agent this worker serves, created (or widened, when an earlier version made it
/// for the agent's subject alone) with the agent's metadata.
async fn agent_consumers(
    config: &Config,
    topology: &Topology,
    jobs: &jetstream::stream::Stream,
) -> Result<Vec<(String, jetstream::consumer::PullConsumer)>, WorkerError> {
    let mut consumers = Vec::new();
    for agent_name in config.worker_agents() {
        let agent = &config.agents[&agent_name];
        let metadata = fleet_shared::services::AgentMetadata {
            description: agent.description.clone(),
            timeout_secs: agent.timeout,
            kind: agent.kind,
        }
        .to_map();
        let cfg = topology.agent_consumer_config(&agent_name, &config.queue, metadata);
        let consumer_error = |e: async_nats::Error| WorkerError::Consumer {
            agent: agent_name.clone(),
            source: e,
        };
        let mut consumer: jetstream::consumer::PullConsumer = jobs
            .get_or_create_consumer(&topology.agent_consumer(&agent_name), cfg.clone())
            .await
            .map_err(|e| consumer_error(e.into()))?;
        let existing = &consumer.cached_info().config;
        let outdated = existing.filter_subjects != cfg.filter_subjects
            || !existing.filter_subject.is_empty()
            || existing.inactive_threshold != cfg.inactive_threshold
            || existing.metadata != cfg.metadata;
        if outdated {
            // A consumer made by an earlier version filters on the agent's subject alone (and would never see
            // jobs carrying an owner token), or is never removed when its agent's workers are gone; or the
            // agent's description, timeout or kind changed.
            tracing::info!(agent = %agent_name, "updating the agent consumer's settings");
            consumer = jobs
                .update_consumer(cfg)
                .await
                .map_err(|e| consumer_error(e.into()))?;
        }
        consumers.push((agent_name, consumer));
    }
    Ok(consumers)
}

/// Whether this worker serves any model agent.
fn serves_models(config: &Config) -> bool {
    config
        .worker_agents()
        .iter()
        .any(|name| config.agents.get(name).is_some_and(|a| a.kind.is_model()))
}

async fn shared_state(
    config: &Arc<Config>,
    topology: Topology,
    client: &async_nats::Client,
    handles: fleet_shared::topology::Handles,
    shutdown: &CancellationToken,
) -> Result<Shared, WorkerError> {
    let worker_id = if config.worker.id.is_empty() {
        default_worker_id()
    } else {
        config.worker.id.clone()
    };
    Ok(Shared {
        config: config.clone(),
        topology,
        client: client.clone(),
        records: handles.records,
        jobs: handles.jobs,
        worker_id,
        dirs: dirs::DirPool::new(&config.worker.work_dir, config.worker.keep_workspaces).map_err(
            |source| WorkerError::WorkDir {
                dir: config.worker.work_dir.display().to_string(),
                source,
            },
        )?,
        cancels: cancels::Cancels::default(),
        cancels_bucket: handles.cancels.clone(),
        stores: fleet_shared::artifacts::targets::Stores::new(
            &config.artifacts,
            Some(handles.config.clone()),
        )?,
        stop_pulling: shutdown.child_token(),
        kill_running: CancellationToken::new(),
        metrics: metrics::WorkerMetrics::new(config.worker.max_concurrent),
        cgroups: job_cgroups(),
        uids: sandbox::UidPool::default(),
        sealer: fleet_shared::seal::FollowedSealer::follow(&handles.config).await?,
        models: serves_models(config)
            .then(model::client)
            .transpose()
            .map_err(WorkerError::ModelClient)?,
        sessions: fleet_shared::session::SessionStore::new(
            client.clone(),
            handles.sessions.clone(),
        ),
        session_files: fleet_shared::session_workspace::store(&config.artifacts)?,
    })
}

/// The worker's own listener (health, readiness, metrics): `given`, else the one `worker.http_addr` asks for.
async fn serve_http(
    shared: &Arc<Shared>,
    done: &CancellationToken,
    given: Option<tokio::net::TcpListener>,
) -> Result<Option<tokio::task::JoinHandle<()>>, WorkerError> {
    let listener = match given {
        Some(listener) => listener,
        None => match bind_http(&shared.config).await? {
            Some(listener) => listener,
            None => return Ok(None),
        },
    };
    let bound = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            addr: shared.config.worker.http_addr.clone(),
            source,
        })?;
    tracing::info!(addr = %bound, "worker health and metrics listening");
    Ok(Some(tokio::spawn(http::serve(
        listener,
        shared.clone(),
        done.clone(),
    ))))
}

/// A listener on `worker.http_addr`, if it names one.
async fn bind_http(config: &Config) -> Result<Option<tokio::net::TcpListener>, WorkerError> {
    let Some(addr) = config.worker.http_socket_addr() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    Ok(Some(listener))
}

/// The pull loop of each agent, and the watches and sweeps that run beside them.
fn start_loops(
    shared: &Arc<Shared>,
    consumers: Vec<(String, jetstream::consumer::PullConsumer)>,
    slots: &Arc<Semaphore>,
    jobs: &TaskTracker,
) -> TaskTracker {
    let loops = TaskTracker::new();
    for (agent, consumer) in consumers {
        loops.spawn(pull::pull_loop(
            shared.clone(),
            agent,
            consumer,
            slots.clone(),
            jobs.clone(),
        ));
    }
    loops.spawn(janitor::run(shared.clone()));
    loops.spawn(sweeper::run(shared.clone()));
    loops.spawn(keep_watching(
        shared.clone(),
        "the sharing target",
        |s| async move { s.stores.follow_sharing().await },
    ));
    loops.spawn(keep_watching(
        shared.clone(),
        "cancel requests",
        |s| async move {
            s.cancels
                .follow(&s.cancels_bucket, s.config.queue.retention())
                .await
        },
    ));
    loops.close();
    loops
}

fn announce_stop(config: &Config, running: usize) {
    match running {
        0 => tracing::info!("worker stopping"),
        running => tracing::info!(
            "worker stopping: {} up to {} s to finish, then go back to the queue \
             (a second Ctrl-C or SIGTERM stops at once)",
            match running {
                1 => "1 running job gets".to_string(),
                n => format!("{n} running jobs get"),
            },
            config.worker.shutdown_grace_secs
        ),
    }
}

/// Runs a KV watch (`watch`) until the worker stops taking jobs, starting it again after NATS trouble.
async fn keep_watching<F, Fut>(shared: Arc<Shared>, what: &'static str, watch: F)
where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<(), async_nats::Error>>,
{
    loop {
        tokio::select! {
            biased;
            _ = shared.stop_pulling.cancelled() => return,
            r = watch(shared.clone()) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "watching {what} failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = shared.stop_pulling.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
