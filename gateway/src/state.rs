//! What every handler shares. Only handles on NATS objects, immutable configuration and copies of records that
//! can no longer change: the gateway keeps no state of its own, so any replica answers for any job.

use std::sync::Arc;

use async_nats::jetstream::{self, kv, stream};
use fleet_shared::config::Config;
use fleet_shared::Topology;

use crate::fleet::agents::AgentDirectory;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub topology: Topology,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub records: kv::Store,
    pub idempotency: kv::Store,
    pub jobs: stream::Stream,
    /// Every job's events, replayed to listeners.
    pub events: stream::Stream,
    pub agents: AgentDirectory,
    /// Where artifacts are read from (the same target configuration the workers write with).
    pub stores: fleet_shared::artifacts::targets::Stores,
    /// Live tails of running jobs, shared by their listeners on this gateway.
    pub live: crate::jobs::live::LiveHub,
    /// Cancel requests, watched by every worker.
    pub cancels: kv::Store,
    /// The config bucket, holding the run-time sharing target.
    pub config_bucket: kv::Store,
    /// The proxies whose forwarding headers name the client (`http.trusted_proxies`).
    pub trusted_proxies: Vec<fleet_shared::config::Cidr>,
    /// Seals the revision header of every job message this gateway publishes.
    pub sealer: fleet_shared::seal::Sealer,
    /// This gateway's own counters (the queue gauges are read from JetStream at scrape time).
    pub metrics: crate::http::metrics::GatewayMetrics,
    /// API keys, followed from the keys bucket.
    pub keys: crate::auth::KeyRing,
    pub rate: crate::http::rate::RateLimits,
    /// Refresh-token families of `POST /token`.
    pub tokens: kv::Store,
    /// Sessions and their turns.
    pub sessions: fleet_shared::session::SessionStore,
    /// Where sessions' workspaces are kept between turns.
    pub session_files: fleet_shared::artifacts::ArtifactStore,
    /// Sign-ins whose access tokens no longer count, followed from `tokens`.
    pub revoked: crate::auth::tokens::Revoked,
    /// Completed records read lately, for the file routes.
    pub completed: crate::jobs::completed::CompletedRecords,
    /// The OpenAPI document, serialized on its first request.
    pub openapi: std::sync::OnceLock<bytes::Bytes>,
    /// The job history lists and counts are served from (`run` keeps it in step with the bucket).
    pub history: Arc<crate::jobs::history::History>,
    /// The sessions lists are served from (`run` keeps it in step with the sessions bucket).
    pub session_list: Arc<crate::jobs::session_index::Sessions>,
    /// Where `run` listens (unset for a router driven without a listener), for the console's `/qr`.
    pub listen: std::sync::OnceLock<std::net::SocketAddr>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub async fn connect(
        config: Arc<Config>,
        client: async_nats::Client,
    ) -> Result<Self, crate::GatewayError> {
        let topology = Topology::new(&config.nats.prefix);
        let js = jetstream::new(client.clone());
        let handles = topology.ensure(&js, &config.queue).await?;
        let stores = fleet_shared::artifacts::targets::Stores::new(
            &config.artifacts,
            Some(handles.config.clone()),
        )?;
        let session_files = fleet_shared::session_workspace::store(&config.artifacts)?;
        let agents = AgentDirectory::new(handles.jobs.clone(), topology.clone());
        let live = crate::jobs::live::LiveHub::new(
            client.clone(),
            handles.events.clone(),
            topology.clone(),
            config.http.live_buffer_events,
        );
        let rate = crate::http::rate::RateLimits::new(&config.http);
        let sealer = fleet_shared::seal::Sealer::load(&handles.config).await?;
        let revoked = crate::auth::tokens::Revoked::follow(&handles.tokens)
            .await
            .map_err(|e| {
                crate::GatewayError::Auth(format!("cannot follow the tokens bucket: {e}"))
            })?;
        let sessions = fleet_shared::session::SessionStore::new(client.clone(), handles.sessions);
        Ok(Self(Arc::new(Inner {
            sealer,
            trusted_proxies: config.http.trusted_proxy_networks(),
            live,
            config,
            topology,
            client,
            js,
            records: handles.records,
            idempotency: handles.idempotency,
            jobs: handles.jobs,
            events: handles.events,
            agents,
            stores,
            config_bucket: handles.config,
            cancels: handles.cancels,
            metrics: crate::http::metrics::GatewayMetrics::new(),
            keys: crate::auth::KeyRing::new(handles.keys.clone()),
            rate,
            tokens: handles.tokens.clone(),
            sessions,
            session_files,
            revoked,
            completed: Default::default(),
            openapi: Default::default(),
            history: Default::default(),
            session_list: Default::default(),
            listen: Default::default(),
        })))
    }

    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.get().copied()
    }
}
