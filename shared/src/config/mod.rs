//! The one configuration loader: built-in defaults < `fleet.toml` < environment (`FLEET_SECTION_KEY`, plus the
//! seed systems' names such as `AGENT_TIMEOUT` as aliases) < command-line overrides. Raw values are parsed and
//! then validated into a typed [`Config`]; a bad value is an error naming its key. Only this module looks at
//! the process environment, and only in [`Sources::from_process`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::is_valid_agent_name;

mod agent;
mod cidr;
mod origin;
mod validate;

pub use agent::{AgentConfig, AgentKind, AgentLimits};
pub use cidr::Cidr;
pub use origin::Origin;

const DEFAULTS: &str = include_str!("../defaults.toml");

/// Variable names of the systems the fleet replaces, honoured so their deployments keep working.
const ALIASES: &[(&str, &str)] = &[
    ("AGENT_TIMEOUT", "worker.default_timeout_secs"),
    ("MAX_CONCURRENT", "worker.max_concurrent"),
    ("CLEANUP_AFTER_HOURS", "queue.retention_hours"),
    ("NATS_URL", "nats.url"),
    ("MAX_FILE_SIZE", "artifacts.max_file_bytes"),
    ("FTP_HOST", "artifacts.ftp_host"),
    ("FTP_PORT", "artifacts.ftp_port"),
    ("FTP_USER", "artifacts.ftp_user"),
    ("FTP_PASSWORD", "artifacts.ftp_password"),
    ("FTP_BASE_PATH", "artifacts.ftp_base_path"),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub default_agent: String,
    pub nats: NatsConfig,
    pub http: HttpConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    pub artifacts: ArtifactsConfig,
    pub auth: AuthConfig,
    pub agents: BTreeMap<String, AgentConfig>,
    pub execute: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub prefix: String,
    /// Credentials: one of user + password, token, an NKey seed, or a creds file (JWT + seed, as `nsc` writes).
    pub user: String,
    pub password: String,
    pub token: String,
    pub nkey_seed: String,
    pub creds_file: String,
    /// TLS: require it, trust these authorities (PEM) besides the system's, present this client certificate.
    pub tls_required: bool,
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    pub max_body_bytes: usize,
    pub max_wait_secs: f64,
    pub generate_wait_secs: f64,
    /// Live events a gateway buffers per running job for its slowest listener, which is told it fell behind and
    /// dropped past this (it resumes from where it was).
    pub live_buffer_events: usize,
    /// Submissions per second each caller (API key, or client IP without one) may make; 0: unlimited.
    pub submit_per_sec: u32,
    pub submit_burst: u32,
    /// Other requests per second each caller may make; 0: unlimited.
    pub read_per_sec: u32,
    pub read_burst: u32,
    /// Requests per second from one client IP, authenticated or not; 0: unlimited.
    pub ip_per_sec: u32,
    pub ip_burst: u32,
    /// A request's body must have arrived this many seconds after the request began (uploads included).
    pub body_timeout_secs: f64,
    /// A request's headers must have arrived this many seconds after its first byte (slowloris headers).
    pub header_timeout_secs: f64,
    /// Proxies (comma-separated CIDRs) whose `X-Forwarded-For` / `Forwarded` name the client; from any other peer
    /// those headers are ignored, so no client can choose the address its rate limit is counted by.
    pub trusted_proxies: String,
}

impl HttpConfig {
    /// `trusted_proxies`, parsed (validation refuses entries that do not parse).
    pub fn trusted_proxy_networks(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .filter_map(Cidr::parse)
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub max_jobs: i64,
    pub replicas: usize,
    pub duplicate_window_secs: f64,
    pub ack_wait_secs: f64,
    pub max_attempts: u32,
    /// An agent's consumer with no worker pulling from it for this long is removed by the server.
    pub agent_idle_secs: f64,
    pub retention_hours: f64,
    /// Bytes of job events kept for replay, all jobs together (oldest dropped first).
    pub events_max_bytes: i64,
    /// Output bytes per attempt published as events; the rest is only in the record and its full logs.
    pub events_output_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HS256 secret signing access and refresh tokens (at least 32 bytes); empty: `POST /token` is off.
    pub jwt_secret: String,
    pub access_token_secs: f64,
    pub refresh_token_secs: f64,
    /// Jobs one key or user may have queued or running at once, unless its own `max_queued` says otherwise;
    /// 0: no cap.
    pub max_queued_per_caller: u32,
    /// People who sign in at `POST /token`; set only in files (`[auth.users.NAME]`). There are no built-in users.
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    /// Bearer token `/metrics` (gateway and worker) asks for; empty: `/metrics` is open (keep it off the public
    /// network then). Not an API key: it reads metrics and nothing else.
    #[serde(default)]
    pub metrics_token: String,
}

impl AuthConfig {
    /// Whether a request's `Authorization` header value may read `/metrics`.
    pub fn may_read_metrics(&self, authorization: Option<&str>) -> bool {
        if self.metrics_token.is_empty() {
            return true;
        }
        let presented = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes())
            .unwrap_or_default();
        let expected = self.metrics_token.as_bytes();
        // Compared in full, so the time taken says nothing about how much of it was right.
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A user of `POST /token`: an argon2 password hash (`fleet hash-password` makes one) and the user's scopes,
/// written beside it (`agents`, `read_all`, …). Flattened: the scopes are one type wherever they are held; the
/// user's own `deny_unknown_fields` still refuses a misspelt scope (serde checks what the scopes left over).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub password_hash: String,
    #[serde(flatten)]
    pub scopes: crate::auth::Scopes,
}

/// Whether the gateway asks for API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every request but health, readiness, metrics and the API docs needs a key.
    Required,
    /// No keys: every caller may do everything. Refused unless the gateway listens on loopback only.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub id: String,
    pub agents: Vec<String>,
    pub max_concurrent: usize,
    pub work_dir: PathBuf,
    pub default_timeout_secs: f64,
    pub kill_grace_secs: f64,
    pub shutdown_grace_secs: f64,
    pub claim_delay_secs: f64,
    pub output_cap_bytes: usize,
    pub unknown_agent_grace_secs: f64,
    pub keep_workspaces: bool,
    pub agent_path: String,
    /// Where the worker serves `/health`, `/ready` and `/metrics`; empty: nowhere.
    pub http_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    pub backend: String,
    pub local_dir: PathBuf,
    pub prefix: String,
    pub max_file_bytes: u64,
    pub max_job_bytes: u64,
    pub max_files: usize,
    /// Where sessions' workspaces are kept in the default store: `<sessions_prefix>/<session id>/…`.
    pub sessions_prefix: String,
    /// A session's workspace past this many bytes or files fails the turn that left it so (`workspace_too_large`).
    pub session_workspace_max_bytes: u64,
    pub session_workspace_max_files: usize,
    pub sweep_interval_secs: f64,
    /// Hosts a run-time sharing target may name, comma-separated (`*.` prefixes match subdomains); empty: any.
    pub sharing_hosts: String,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_endpoint: String,
    pub s3_path_style: bool,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    pub ftp_host: String,
    pub ftp_port: u16,
    pub ftp_user: String,
    pub ftp_password: String,
    pub ftp_base_path: String,
    pub ftp_passive: bool,
    pub ftp_tls: bool,
    pub ftp_ca_file: String,
    /// Further stores a job may name in `artifact_target`; set only in files (`[artifacts.targets.NAME]`).
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
}

/// One place artifacts can go: a backend and its settings. The fleet's default target is the `[artifacts]`
/// section itself; named targets and the run-time sharing target (`POST /configure-sharing`) use this shape too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// local | s3 | ftp | memory
    pub backend: String,
    pub local_dir: PathBuf,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_endpoint: String,
    pub s3_path_style: bool,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    pub ftp_host: String,
    pub ftp_port: u16,
    pub ftp_user: String,
    pub ftp_password: String,
    pub ftp_base_path: String,
    /// Passive mode (the client opens data connections); false: active mode.
    pub ftp_passive: bool,
    /// Explicit FTPS (AUTH TLS) for control and data connections.
    pub ftp_tls: bool,
    /// PEM file of extra certificate authorities trusted for FTPS; empty: the system's roots only.
    pub ftp_ca_file: String,
}

impl Default for TargetConfig {
    /// The store settings of the built-in `[artifacts]` section, so every default value is written once, in
    /// `defaults.toml`.
    fn default() -> Self {
        static BUILT_IN: std::sync::LazyLock<TargetConfig> = std::sync::LazyLock::new(|| {
            config::Config::builder()
                .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
                .build()
                .and_then(|c| c.get::<ArtifactsConfig>("artifacts"))
                .map(|a| a.default_target())
                .expect("the built-in defaults are valid")
        });
        BUILT_IN.clone()
    }
}

impl TargetConfig {
    /// Checks the settings the backend needs; the error names the field (prefixed with `key`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        self.check_characters(key)?;
        match self.backend.as_str() {
            "local" | "memory" => Ok(()),
            "s3" if self.s3_bucket.is_empty() => Err(invalid(
                format!("{key}s3_bucket"),
                "is required with the s3 backend",
            )),
            "s3" => Ok(()),
            "ftp" if self.ftp_host.is_empty() => Err(invalid(
                format!("{key}ftp_host"),
                "is required with the ftp backend",
            )),
            "ftp" if self.ftp_port == 0 => Err(invalid(format!("{key}ftp_port"), "must not be 0")),
            "ftp" => Ok(()),
            other => Err(invalid(
                format!("{key}backend"),
                format!("`{other}` is not one of local, s3, ftp, memory"),
            )),
        }
    }

    /// Values that end up in HTTP headers, URLs or FTP command lines must not be able to break out of them: an
    /// FTP password holding CR LF would send commands of its own, a control character in an S3 key id cannot be
    /// signed into a header.
    fn check_characters(&self, key: &str) -> Result<(), ConfigError> {
        let printable = |s: &str| s.chars().all(|c| !c.is_control());
        let token = |s: &str| s.chars().all(|c| c.is_ascii_graphic());
        let fields = [
            ("s3_access_key_id", token(&self.s3_access_key_id)),
            ("s3_region", token(&self.s3_region)),
            ("s3_endpoint", token(&self.s3_endpoint)),
            (
                "s3_secret_access_key",
                printable(&self.s3_secret_access_key),
            ),
            ("ftp_host", token(&self.ftp_host)),
            ("ftp_user", printable(&self.ftp_user)),
            ("ftp_password", printable(&self.ftp_password)),
            ("ftp_base_path", printable(&self.ftp_base_path)),
        ];
        for (field, ok) in fields {
            if !ok {
                return Err(invalid(
                    format!("{key}{field}"),
                    "holds control characters or spaces where none may be",
                ));
            }
        }
        let bucket_ok = self.s3_bucket.len() <= 255
            && self
                .s3_bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !bucket_ok {
            return Err(invalid(
                format!("{key}s3_bucket"),
                "a bucket name is letters, digits, '.', '-' and '_'",
            ));
        }
        Ok(())
    }

    /// The same settings with every secret replaced by `***` (empty secrets stay empty).
    pub fn masked(&self) -> Self {
        let mask = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                "***".into()
            }
        };
        Self {
            s3_secret_access_key: mask(&self.s3_secret_access_key),
            ftp_password: mask(&self.ftp_password),
            ..self.clone()
        }
    }
}

impl QueueConfig {
    pub fn duplicate_window(&self) -> Duration {
        secs(self.duplicate_window_secs)
    }
    pub fn ack_wait(&self) -> Duration {
        secs(self.ack_wait_secs)
    }
    pub fn agent_idle(&self) -> Duration {
        secs(self.agent_idle_secs)
    }
    pub fn retention(&self) -> Duration {
        secs(self.retention_hours * 3600.0)
    }
}

impl NatsConfig {
    /// The servers in `url`: one URL, or several separated by commas (the nodes of a cluster).
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

impl AuthConfig {
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Required
    }
}

impl WorkerConfig {
    pub fn default_timeout(&self) -> Duration {
        secs(self.default_timeout_secs)
    }
    pub fn kill_grace(&self) -> Duration {
        secs(self.kill_grace_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        secs(self.shutdown_grace_secs)
    }
    pub fn claim_delay(&self) -> Duration {
        secs(self.claim_delay_secs)
    }
    pub fn unknown_agent_grace(&self) -> Duration {
        secs(self.unknown_agent_grace_secs)
    }
}

impl ArtifactsConfig {
    pub fn sweep_interval(&self) -> Duration {
        secs(self.sweep_interval_secs)
    }

    /// The fleet's default target: the store settings of the `[artifacts]` section.
    pub fn default_target(&self) -> TargetConfig {
        TargetConfig {
            backend: self.backend.clone(),
            local_dir: self.local_dir.clone(),
            s3_bucket: self.s3_bucket.clone(),
            s3_region: self.s3_region.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_path_style: self.s3_path_style,
            s3_access_key_id: self.s3_access_key_id.clone(),
            s3_secret_access_key: self.s3_secret_access_key.clone(),
            ftp_host: self.ftp_host.clone(),
            ftp_port: self.ftp_port,
            ftp_user: self.ftp_user.clone(),
            ftp_password: self.ftp_password.clone(),
            ftp_base_path: self.ftp_base_path.clone(),
            ftp_passive: self.ftp_passive,
            ftp_tls: self.ftp_tls,
            ftp_ca_file: self.ftp_ca_file.clone(),
        }
    }
}

impl WorkerConfig {
    /// The health and metrics listener's address, if one is configured (checked by `Config::validate`).
    pub fn http_socket_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.http_addr)
    }
}

impl HttpConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        // Checked by `Config::validate`.
        listen_addr(&self.addr).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// A listen address: `IP:PORT`, or `localhost:PORT` for the IPv4 loopback (no name lookup for a listener).
pub fn listen_addr(text: &str) -> Option<SocketAddr> {
    if let Some(port) = text.strip_prefix("localhost:") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?)));
    }
    text.parse().ok()
}

/// Seconds as a Duration; validation has ruled out negative and non-finite values.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s)
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(100 * 365 * 24 * 3600))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value that is wrong, with where it was set once the loader knows (`origin`).
    #[error("configuration key `{key}`{}: {reason}", origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default())]
    Invalid {
        key: String,
        reason: String,
        origin: Option<Origin>,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
        origin: None,
    }
}

/// Where configuration comes from. Tests build this from a map; binaries from the process.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env: HashMap<String, String>,
    /// Values from the command line (`--http`, `--nats`), the highest layer.
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: String,
    /// The flag that set it, for messages (`--http`).
    pub flag: String,
}

impl Sources {
    pub fn from_process(file: Option<&Path>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            env: std::env::vars().collect(),
            overrides: Vec::new(),
        }
    }

    pub fn with_override(self, key: &str, value: impl Into<String>) -> Self {
        let flag = format!("the override of {key}");
        self.with_flag(key, value, &flag)
    }

    /// A value set by a command-line flag, named in messages about it.
    pub fn with_flag(mut self, key: &str, value: impl Into<String>, flag: &str) -> Self {
        self.overrides.push(Override {
            key: key.to_string(),
            value: value.into(),
            flag: flag.to_string(),
        });
        self
    }
}

impl Config {
    /// The configuration from `sources`, or the first thing wrong with it, naming the key and where it was set.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Self::load_unlocated(sources).map_err(|e| e.located(sources))
    }

    fn load_unlocated(sources: &Sources) -> Result<Self, ConfigError> {
        let defaults = config::File::from_str(DEFAULTS, config::FileFormat::Toml);
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = &sources.file {
            builder = builder.add_source(config::File::from(path.as_path()).required(true));
        }
        let leaf_keys = leaf_keys()?;
        for (alias, key) in ALIASES {
            if let Some(v) = sources.env.get(*alias) {
                builder = builder.set_override(*key, v.clone())?;
            }
        }
        for (key, list) in &leaf_keys {
            if let Some(v) = sources.env.get(&env_name(key)) {
                builder = match list {
                    // A list from a variable: comma-separated (`FLEET_WORKER_AGENTS=echo,python`).
                    true => builder.set_override(key.as_str(), comma_list(v))?,
                    false => builder.set_override(key.as_str(), v.clone())?,
                };
            }
        }
        // The seeds' FTP_ENABLED switch chooses the backend rather than setting a value.
        if let Some(v) = sources.env.get("FTP_ENABLED") {
            if matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on") {
                builder = builder.set_override("artifacts.backend", "ftp")?;
            }
        }
        for o in &sources.overrides {
            builder = builder.set_override(o.key.as_str(), o.value.clone())?;
        }
        let mut config: Config = builder.build()?.try_deserialize()?;
        if config.worker.agent_path.is_empty() {
            config.worker.agent_path = sources
                .env
                .get("PATH")
                .cloned()
                .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
        }
        agent::resolve(&mut config.agents, &sources.env)?;
        config.validate()?;
        Ok(config)
    }

    /// The agents this worker serves.
    pub fn worker_agents(&self) -> Vec<String> {
        if self.worker.agents.is_empty() {
            self.agents.keys().cloned().collect()
        } else {
            self.worker.agents.clone()
        }
    }

    /// The effective configuration for start-up logs, with credentials masked.
    pub fn summary(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["nats"]["url"] = serde_json::Value::String(mask_url_credentials(&self.nats.url));
        for secret in ["password", "token", "nkey_seed"] {
            if value["nats"][secret]
                .as_str()
                .is_some_and(|v| !v.is_empty())
            {
                value["nats"][secret] = "***".into();
            }
        }
        let masked = self.artifacts.default_target().masked();
        value["artifacts"]["s3_secret_access_key"] = masked.s3_secret_access_key.into();
        value["artifacts"]["ftp_password"] = masked.ftp_password.into();
        if !self.auth.jwt_secret.is_empty() {
            value["auth"]["jwt_secret"] = "***".into();
        }
        if !self.auth.metrics_token.is_empty() {
            value["auth"]["metrics_token"] = "***".into();
        }
        for user in value["auth"]["users"]
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            user["password_hash"] = "***".into();
        }
        for (name, target) in &self.artifacts.targets {
            value["artifacts"]["targets"][name] =
                // A configuration struct always serializes.
                serde_json::to_value(target.masked()).unwrap_or_default();
        }
        for agent in value["agents"]
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            for v in agent["env"]
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                *v = serde_json::Value::String("***".into());
            }
        }
        value
    }
}

/// Names of configured artifact targets: like agent names; `default` is reserved for the fleet's default.
pub fn is_valid_target_name(name: &str) -> bool {
    name != "default" && is_valid_agent_name(name)
}

/// `nats://user:pass@host` → `nats://user:***@host`.
pub fn mask_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split(':').next().unwrap_or("");
    format!("{scheme}://{user}:***@{host}")
}

/// `FLEET_` + the key with dots as underscores, upper case: `worker.max_concurrent` → `FLEET_WORKER_MAX_CONCURRENT`.
pub fn env_name(key: &str) -> String {
    format!("FLEET_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Every scalar key of the defaults outside the `agents` and `execute` tables, which are only set in files.
/// Every settable key of the defaults, and whether it holds a list.
fn leaf_keys() -> Result<Vec<(String, bool)>, ConfigError> {
    let defaults = config::File::from_str(DEFAULTS, config::FileFormat::Toml);
    let tree: serde_json::Value = config::Config::builder()
        .add_source(defaults)
        .build()?
        .try_deserialize()?;
    let mut keys = Vec::new();
    collect_leaves(&tree, String::new(), &mut keys);
    keys.retain(|(k, _)| !k.starts_with("agents.") && !k.starts_with("execute."));
    Ok(keys)
}

fn collect_leaves(v: &serde_json::Value, path: String, out: &mut Vec<(String, bool)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                collect_leaves(child, p, out);
            }
        }
        serde_json::Value::Array(_) => out.push((path, true)),
        _ => out.push((path, false)),
    }
}

fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;
