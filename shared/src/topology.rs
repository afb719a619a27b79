//! The NATS topology: every stream, consumer, bucket and subject name is built here and nowhere else, and
//! `ensure_topology` creates what is missing. The prefix lets several fleets share one NATS.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use uuid::Uuid;

use crate::config::QueueConfig;

/// The longest a refresh-token family is kept, so the longest a refresh token can live.
pub const REFRESH_TOKEN_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Header carrying the job id so JetStream deduplicates resubmissions inside the duplicate window.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header with the KV revision of the `queued` record the gateway wrote, so the worker claims it in one step.
pub const RECORD_REVISION_HEADER: &str = "Fleet-Record-Revision";
/// The gateway's seal over the revision header (`seal::Sealer`): without it, the revision is not taken.
pub const RECORD_SEAL_HEADER: &str = "Fleet-Record-Seal";
/// Header of a done notice: `sent` when the job's output went out as events (and its `end` event is in the
/// events stream); absent when the job ended before its events went live, so its record holds all of them.
pub const OUTPUT_EVENTS_HEADER: &str = "Fleet-Output-Events";
/// Header naming which run of a job a message starts (absent: the first; one more per retry).
pub const GENERATION_HEADER: &str = "Fleet-Generation";
/// Header a direct publisher may use to name its reply subject, answered even when the body is garbage.
pub const REPLY_TO_HEADER: &str = "Fleet-Reply-To";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.prefix.to_ascii_uppercase())
    }

    pub fn jobs_subject(&self, agent: &str) -> String {
        format!("{}.jobs.{agent}", self.prefix)
    }

    /// The subject of a job submitted by an authenticated caller: the agent's subject plus a token of the owner,
    /// so the jobs stream itself counts each owner's unfinished jobs (`owner_jobs_filter`) for its queue cap.
    pub fn owned_jobs_subject(&self, agent: &str, owner: &str) -> String {
        format!("{}.jobs.{agent}.{}", self.prefix, owner_token(owner))
    }

    /// The subject a job's message is published on: its agent's, with its owner's token when it has one.
    pub fn subject_of(&self, request: &crate::JobRequest) -> String {
        match &request.owner {
            Some(owner) => self.owned_jobs_subject(&request.agent, owner),
            None => self.jobs_subject(&request.agent),
        }
    }

    /// The `Nats-Msg-Id` of run `generation` of a job: retries get their own, or the stream's duplicate window
    /// would swallow them.
    pub fn message_id(job_id: &Uuid, generation: u32) -> String {
        match generation {
            0 => job_id.to_string(),
            g => format!("{job_id}.{g}"),
        }
    }

    /// Every jobs subject of one owner, whatever the agent.
    pub fn owner_jobs_filter(&self, owner: &str) -> String {
        format!("{}.jobs.*.{}", self.prefix, owner_token(owner))
    }

    /// Every jobs subject: `<prefix>.jobs.<agent>` and `<prefix>.jobs.<agent>.<owner token>`.
    pub fn jobs_subject_wildcard(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }

    /// The agent named by a jobs subject, if the subject is exactly one the fleet publishes: a valid agent name,
    /// optionally followed by an owner token. Anything else (wildcard tokens, extra tokens) is not a job.
    pub fn agent_of_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".jobs.")?;
        let agent = match rest.split_once('.') {
            None => rest,
            Some((agent, owner)) if is_owner_token(owner) => agent,
            Some(_) => return None,
        };
        crate::wire::is_valid_agent_name(agent).then_some(agent)
    }

    /// Everything `JobRequest::validate` checks, and a reply subject outside the fleet's own names.
    pub fn validate_request(
        &self,
        request: &crate::JobRequest,
    ) -> Result<(), crate::wire::RequestInvalid> {
        request.validate()?;
        match &request.reply_to {
            Some(r) if !self.is_foreign_reply_subject(r) => {
                Err(crate::wire::RequestInvalid::ReplyToReserved)
            }
            _ => Ok(()),
        }
    }

    /// A subject a worker may publish a job's answer to: literal, well formed, and not one of the fleet's own.
    pub fn is_allowed_reply_subject(&self, subject: &str) -> bool {
        crate::wire::is_valid_publish_subject(subject) && self.is_foreign_reply_subject(subject)
    }

    /// Whether a job may name `subject` as its reply subject: a literal subject outside the fleet's own
    /// namespace and the server's (`$JS`, `$KV`, `$SYS`, ...), so no job can make a worker publish a job, a
    /// done notice, an event or an API request in its name.
    pub fn is_foreign_reply_subject(&self, subject: &str) -> bool {
        let own = subject == self.prefix || subject.starts_with(&format!("{}.", self.prefix));
        !own && !subject.starts_with('$')
    }

    pub fn agent_consumer(&self, agent: &str) -> String {
        format!("agent-{agent}")
    }

    pub fn agent_of_consumer<'a>(&self, consumer: &'a str) -> Option<&'a str> {
        consumer.strip_prefix("agent-")
    }

    pub fn jobs_bucket(&self) -> String {
        format!("{}_jobs", self.prefix)
    }

    /// The stream behind the jobs bucket, and the subjects of its keys, for scanning every record at once.
    pub fn jobs_bucket_stream(&self) -> String {
        bucket_stream(&self.jobs_bucket())
    }

    pub fn jobs_bucket_subjects(&self) -> String {
        format!("$KV.{}.>", self.jobs_bucket())
    }

    pub fn idempotency_bucket(&self) -> String {
        format!("{}_idempotency", self.prefix)
    }

    /// Cancel requests, key = job id; every worker watches the whole bucket.
    pub fn cancels_bucket(&self) -> String {
        format!("{}_cancels", self.prefix)
    }

    /// Refresh-token families of `POST /token`, by family id.
    pub fn tokens_bucket(&self) -> String {
        format!("{}_tokens", self.prefix)
    }

    /// Sessions by id, and their turns by `<session id>.<turn>` (`session.rs`).
    pub fn sessions_bucket(&self) -> String {
        format!("{}_sessions", self.prefix)
    }

    /// API keys (hashed), by key id.
    pub fn keys_bucket(&self) -> String {
        format!("{}_keys", self.prefix)
    }

    /// Subject of the NATS request API for cancelling job `job_id`.
    pub fn cancel_subject(&self, job_id: &Uuid) -> String {
        format!("{}.cancel.{job_id}", self.prefix)
    }

    pub fn cancel_subject_wildcard(&self) -> String {
        format!("{}.cancel.*", self.prefix)
    }

    /// The NATS service name every worker registers under (`$SRV.PING/INFO/STATS.<name>`).
    pub fn worker_service(&self) -> String {
        format!("{}-worker", self.prefix)
    }

    /// Where every worker answers with its service info (`$SRV.INFO.<service>`).
    pub fn worker_info_subject(&self) -> String {
        format!("$SRV.INFO.{}", self.worker_service())
    }

    /// Where every worker answers with its statistics (`$SRV.STATS.<service>`).
    pub fn worker_stats_subject(&self) -> String {
        format!("$SRV.STATS.{}", self.worker_service())
    }

    /// The queue group gateways share requests in (one gateway answers each cancel request).
    pub fn gateway_queue_group(&self) -> String {
        format!("{}-gateways", self.prefix)
    }

    /// The subject of a worker's own status endpoint.
    pub fn worker_status_subject(&self, worker_id: &str) -> String {
        let token: String = worker_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.workers.{token}.status", self.prefix)
    }

    /// Fleet-wide settings changed at run time (the sharing target), watched by workers.
    pub fn config_bucket(&self) -> String {
        format!("{}_config", self.prefix)
    }

    /// Core-NATS subject on which the writer of a terminal record announces it (gateways waiting on a job
    /// listen here; any gateway replica can).
    pub fn done_subject(&self, job_id: &Uuid) -> String {
        format!("{}.done.{job_id}", self.prefix)
    }

    /// Every job's done notice.
    pub fn done_subject_wildcard(&self) -> String {
        format!("{}.done.*", self.prefix)
    }

    pub fn events_subject(&self, job_id: &Uuid) -> String {
        format!("{}.events.{job_id}", self.prefix)
    }

    /// The stream keeping every job's events for replay.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_ascii_uppercase())
    }

    fn events_stream_config(&self, q: &QueueConfig) -> stream::Config {
        stream::Config {
            name: self.events_stream(),
            description: Some("fleet job events, replayed to late listeners".into()),
            subjects: vec![format!("{}.events.*", self.prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            max_age: clamp_duration(q.retention()),
            max_bytes: q.events_max_bytes,
            // When full, the oldest events go: a listener of a long-finished job still gets its end record.
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    pub fn record_key(&self, job_id: &Uuid) -> String {
        job_id.to_string()
    }

    pub fn jobs_stream_config(&self, q: &QueueConfig) -> stream::Config {
        stream::Config {
            name: self.jobs_stream(),
            description: Some("fleet jobs waiting for or held by a worker".into()),
            subjects: vec![self.jobs_subject_wildcard()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            duplicate_window: q.duplicate_window(),
            max_messages: q.max_jobs,
            // A full queue refuses new jobs (the gateway answers 503) instead of dropping old ones.
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    /// What an agent's consumer takes: jobs published to the agent with or without an owner token.
    pub fn agent_filter_subjects(&self, agent: &str) -> Vec<String> {
        let subject = self.jobs_subject(agent);
        vec![format!("{subject}.*"), subject]
    }

    pub fn agent_consumer_config(
        &self,
        agent: &str,
        q: &QueueConfig,
        metadata: HashMap<String, String>,
    ) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.agent_consumer(agent)),
            description: Some(format!("workers running agent {agent}")),
            filter_subjects: self.agent_filter_subjects(agent),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: q.ack_wait(),
            // Attempts are bounded by the record's attempt counter, not here: a message dropped by max-deliver
            // would leave its job without a terminal record.
            max_deliver: -1,
            max_ack_pending: -1,
            // Workers renew their pulls every few seconds; a consumer nobody pulls from for this long belongs to
            // an agent no worker runs any more, and the server removes it (the janitor then ends its jobs).
            inactive_threshold: q.agent_idle(),
            metadata,
            ..Default::default()
        }
    }

    fn jobs_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.jobs_bucket(),
            description: "fleet job records, key = job id".into(),
            history: 2,
            max_age: q.retention(),
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    fn idempotency_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.idempotency_bucket(),
            description: "Idempotency-Key -> job id".into(),
            history: 1,
            max_age: q.retention(),
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    fn cancels_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.cancels_bucket(),
            description: "cancel requests, key = job id".into(),
            history: 1,
            max_age: q.retention(),
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    fn keys_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.keys_bucket(),
            description: "fleet API keys, key = key id; secrets stored as SHA-256 only".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    fn sessions_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.sessions_bucket(),
            description:
                "fleet sessions, key = session id, and their turns, key = <session id>.<turn>"
                    .into(),
            history: 1,
            // Sessions outlive their turns' job records: they are kept until deleted.
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    fn tokens_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.tokens_bucket(),
            description: "refresh-token families: the one current token id of each, or revoked"
                .into(),
            history: 1,
            // Refresh tokens live at most this long (checked by the configuration).
            max_age: REFRESH_TOKEN_MAX_AGE,
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    fn config_bucket_config(&self, q: &QueueConfig) -> kv::Config {
        kv::Config {
            bucket: self.config_bucket(),
            description: "fleet settings changed at run time: `sharing` and the targets it named"
                .into(),
            history: 5,
            storage: stream::StorageType::File,
            num_replicas: q.replicas,
            ..Default::default()
        }
    }

    /// Creates the jobs stream and buckets if missing. Safe for every process to call at start-up.
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
        q: &QueueConfig,
    ) -> Result<Handles, TopologyError> {
        let jobs = get_or_create_stream(js, self.jobs_stream_config(q)).await?;
        let events = get_or_create_stream(js, self.events_stream_config(q)).await?;
        let records = get_or_create_bucket(js, self.jobs_bucket_config(q)).await?;
        let idempotency = get_or_create_bucket(js, self.idempotency_bucket_config(q)).await?;
        let config = get_or_create_bucket(js, self.config_bucket_config(q)).await?;
        let cancels = get_or_create_bucket(js, self.cancels_bucket_config(q)).await?;
        let keys = get_or_create_bucket(js, self.keys_bucket_config(q)).await?;
        let tokens = get_or_create_bucket(js, self.tokens_bucket_config(q)).await?;
        let sessions = get_or_create_bucket(js, self.sessions_bucket_config(q)).await?;
        Ok(Handles {
            sessions,
            tokens,
            keys,
            events,
            cancels,
            jobs,
            records,
            idempotency,
            config,
        })
    }
}

async fn get_or_create_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<stream::Stream, TopologyError> {
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(TopologyError::stream)?;
    let existing = &stream.cached_info().config;
    if existing.subjects != wanted.subjects {
        // Subjects only ever widen between versions (jobs gained owner tokens): adopting ours loses nothing.
        tracing::info!(stream = %wanted.name, from = ?existing.subjects, to = ?wanted.subjects, "updating the stream's subjects");
        let config = stream::Config {
            subjects: wanted.subjects.clone(),
            ..existing.clone()
        };
        js.update_stream(config)
            .await
            .map_err(TopologyError::stream)?;
        stream = js
            .get_stream(&wanted.name)
            .await
            .map_err(TopologyError::stream)?;
    }
    check_drift(
        &wanted.name,
        &wanted.name,
        &stream.cached_info().config,
        &wanted,
    )?;
    Ok(stream)
}

async fn get_or_create_bucket(
    js: &jetstream::Context,
    cfg: kv::Config,
) -> Result<kv::Store, TopologyError> {
    let bucket = cfg.bucket.clone();
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(cfg.clone())
            .await
            .map_err(TopologyError::bucket)?,
    };
    let stream_name = bucket_stream(&bucket);
    let existing = js
        .get_stream(&stream_name)
        .await
        .map_err(TopologyError::bucket)?
        .cached_info()
        .config
        .clone();
    let wanted = stream::Config {
        num_replicas: cfg.num_replicas.max(1),
        max_age: cfg.max_age,
        ..existing.clone()
    };
    check_drift(
        &format!("KV bucket {bucket}"),
        &stream_name,
        &existing,
        &wanted,
    )?;
    Ok(store)
}

/// A setting of an existing stream or bucket that differs from this process's configuration: an error, never
/// an overwrite, since the other processes sharing it were started with the existing setting.
#[derive(Debug)]
pub struct Drift {
    pub object: String,
    pub setting: &'static str,
    pub key: &'static str,
    pub existing: String,
    pub wanted: String,
    pub migrate: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exists with {} = {}, but this process is configured for {} (`{}`). Either set `{}` to match the \
             fleet, or migrate: {}",
            self.object, self.setting, self.existing, self.wanted, self.key, self.key, self.migrate
        )
    }
}

fn check_drift(
    object: &str,
    stream_name: &str,
    existing: &stream::Config,
    wanted: &stream::Config,
) -> Result<(), TopologyError> {
    let drift = |setting, key, existing: String, wanted: String, flag: &str| {
        Err(TopologyError::Drift(Box::new(Drift {
            object: object.to_string(),
            setting,
            key,
            migrate: format!(
                "`nats stream edit {stream_name} {flag}={wanted}` (affects every process using it)"
            ),
            existing,
            wanted,
        })))
    };
    if existing.num_replicas.max(1) != wanted.num_replicas.max(1) {
        return drift(
            "replicas",
            "queue.replicas",
            existing.num_replicas.max(1).to_string(),
            wanted.num_replicas.max(1).to_string(),
            "--replicas",
        );
    }
    // Zero in a request means "unlimited", which the server reports as -1.
    let limit = |v: i64| if v <= 0 { -1 } else { v };
    if limit(existing.max_messages) != limit(wanted.max_messages) {
        return drift(
            "max messages",
            "queue.max_jobs",
            limit(existing.max_messages).to_string(),
            limit(wanted.max_messages).to_string(),
            "--max-msgs",
        );
    }
    if limit(existing.max_bytes) != limit(wanted.max_bytes) {
        return drift(
            "max bytes",
            "queue.events_max_bytes",
            limit(existing.max_bytes).to_string(),
            limit(wanted.max_bytes).to_string(),
            "--max-bytes",
        );
    }
    // Unset (zero): the server's default, whatever it is.
    if !wanted.duplicate_window.is_zero() && existing.duplicate_window != wanted.duplicate_window {
        return drift(
            "duplicate window",
            "queue.duplicate_window_secs",
            format!("{:?}", existing.duplicate_window),
            format!("{:?}", wanted.duplicate_window),
            "--dupe-window",
        );
    }
    if existing.max_age != wanted.max_age {
        return drift(
            "max age",
            "queue.retention_hours",
            format!("{:?}", existing.max_age),
            format!("{:?}", wanted.max_age),
            "--max-age",
        );
    }
    if existing.retention != wanted.retention {
        return Err(TopologyError::Drift(Box::new(Drift {
            object: object.to_string(),
            setting: "retention policy",
            key: "(none: set by the fleet's version)",
            existing: format!("{:?}", existing.retention),
            wanted: format!("{:?}", wanted.retention),
            migrate: format!(
                "the policy cannot be edited; drain the queue, then `nats stream rm {stream_name}` and restart"
            ),
        })));
    }
    Ok(())
}

/// Open handles on the fleet's JetStream objects.
#[derive(Clone)]
pub struct Handles {
    pub jobs: stream::Stream,
    pub events: stream::Stream,
    pub records: kv::Store,
    pub idempotency: kv::Store,
    pub config: kv::Store,
    pub cancels: kv::Store,
    pub keys: kv::Store,
    pub tokens: kv::Store,
    pub sessions: kv::Store,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot create or open the jobs stream: {0}")]
    Stream(#[source] async_nats::Error),
    #[error("cannot create or open a KV bucket: {0}")]
    Bucket(#[source] async_nats::Error),
    #[error("{0}")]
    Drift(Box<Drift>),
}

impl TopologyError {
    fn stream(e: impl Into<async_nats::Error>) -> Self {
        Self::Stream(e.into())
    }
    fn bucket(e: impl Into<async_nats::Error>) -> Self {
        Self::Bucket(e.into())
    }
}

/// Keeps a duration expressible to JetStream (nanoseconds in an i64).
/// A subject token standing for an owner (key and user names may hold any character): 64 bits of its SHA-256.
fn is_owner_token(token: &str) -> bool {
    token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The stream JetStream keeps a KV bucket in.
pub fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn owner_token(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(owner.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn clamp_duration(d: Duration) -> Duration {
    d.min(Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("fleet");
        assert_eq!(t.jobs_stream(), "FLEET_JOBS");
        assert_eq!(t.jobs_subject("echo"), "fleet.jobs.echo");
        assert_eq!(t.agent_of_subject("fleet.jobs.echo"), Some("echo"));
        assert_eq!(t.agent_of_subject("other.jobs.echo"), None);
        let owned = t.owned_jobs_subject("echo", "alice smith.*>");
        assert!(
            owned.starts_with("fleet.jobs.echo.") && owned.split('.').count() == 4,
            "{owned}"
        );
        assert_eq!(t.agent_of_subject(&owned), Some("echo"));
        assert_eq!(t.agent_of_subject("fleet.jobs.echo.a.b"), None);
        assert_ne!(owned, t.owned_jobs_subject("echo", "bob"));
        assert_eq!(
            t.owner_jobs_filter("alice smith.*>").rsplit('.').next(),
            owned.rsplit('.').next()
        );
        assert_eq!(t.agent_of_consumer(&t.agent_consumer("py")), Some("py"));
        assert_eq!(t.jobs_bucket(), "fleet_jobs");
    }
}
