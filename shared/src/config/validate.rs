//! Checks of a loaded configuration: each failure names the key at fault and what is wrong with it.

use super::{invalid, is_valid_target_name, listen_addr, Config, ConfigError};
use crate::wire::is_valid_agent_name;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_addresses()?;
        self.validate_auth()?;
        self.validate_nats()?;
        self.validate_durations()?;
        self.validate_artifacts()?;
        self.validate_counts()?;
        self.validate_agents()
    }

    fn validate_addresses(&self) -> Result<(), ConfigError> {
        if listen_addr(&self.http.addr).is_none() {
            return Err(invalid(
                "http.addr",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080 or localhost:8080",
                    self.http.addr
                ),
            ));
        }
        if !self.worker.http_addr.is_empty() && listen_addr(&self.worker.http_addr).is_none() {
            return Err(invalid(
                "worker.http_addr",
                format!(
                    "`{}` is not an address like 0.0.0.0:9090 (empty: no listener)",
                    self.worker.http_addr
                ),
            ));
        }
        Ok(())
    }

    fn validate_nats(&self) -> Result<(), ConfigError> {
        if self.nats.urls().is_empty()
            || self
                .nats
                .urls()
                .iter()
                .any(|u| u.parse::<async_nats::ServerAddr>().is_err())
        {
            return Err(invalid(
                "nats.url",
                "expected a URL like nats://127.0.0.1:4222, or several separated by commas",
            ));
        }
        self.validate_nats_credentials()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return Err(invalid(
                "auth.jwt_secret",
                "must be at least 32 bytes (e.g. `openssl rand -hex 32`)",
            ));
        }
        if !self.auth.users.is_empty() && self.auth.jwt_secret.is_empty() {
            return Err(invalid(
                "auth.jwt_secret",
                "[auth.users] are configured, so POST /token needs a signing secret",
            ));
        }
        for (name, user) in &self.auth.users {
            if !user.password_hash.starts_with("$argon2") {
                return Err(invalid(
                    format!("auth.users.{name}.password_hash"),
                    "expected an argon2 hash (`fleet hash-password` prints one)",
                ));
            }
        }
        if self.auth.refresh_token_secs > crate::topology::REFRESH_TOKEN_MAX_AGE.as_secs_f64() {
            return Err(invalid(
                "auth.refresh_token_secs",
                "refresh tokens live at most 30 days (2592000 s)",
            ));
        }
        if !(self.auth.access_token_secs > 0.0 && self.auth.refresh_token_secs > 0.0) {
            return Err(invalid(
                "auth.access_token_secs",
                "token lifetimes must be positive",
            ));
        }
        Ok(())
    }

    fn validate_nats_credentials(&self) -> Result<(), ConfigError> {
        let methods = [
            !self.nats.user.is_empty() || !self.nats.password.is_empty(),
            !self.nats.token.is_empty(),
            !self.nats.nkey_seed.is_empty(),
            !self.nats.creds_file.is_empty(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "nats.user",
                "give one NATS credential: user + password, token, nkey_seed or creds_file",
            ));
        }
        if self.nats.tls_cert_file.is_empty() != self.nats.tls_key_file.is_empty() {
            return Err(invalid(
                "nats.tls_cert_file",
                "a client certificate needs both nats.tls_cert_file and nats.tls_key_file",
            ));
        }
        if self.nats.prefix.is_empty()
            || !self
                .nats
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid("nats.prefix", "must be letters, digits or '_'"));
        }
        Ok(())
    }

    fn validate_durations(&self) -> Result<(), ConfigError> {
        let positive = [
            ("http.max_wait_secs", self.http.max_wait_secs),
            ("http.generate_wait_secs", self.http.generate_wait_secs),
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            (
                "queue.duplicate_window_secs",
                self.queue.duplicate_window_secs,
            ),
            ("queue.ack_wait_secs", self.queue.ack_wait_secs),
            ("queue.agent_idle_secs", self.queue.agent_idle_secs),
            ("queue.retention_hours", self.queue.retention_hours),
            (
                "worker.default_timeout_secs",
                self.worker.default_timeout_secs,
            ),
            (
                "worker.shutdown_grace_secs",
                self.worker.shutdown_grace_secs,
            ),
            (
                "worker.unknown_agent_grace_secs",
                self.worker.unknown_agent_grace_secs,
            ),
            (
                "artifacts.sweep_interval_secs",
                self.artifacts.sweep_interval_secs,
            ),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(
                    key,
                    format!("must be a positive number of {}", unit(key)),
                ));
            }
        }
        for (key, v) in [
            ("worker.kill_grace_secs", self.worker.kill_grace_secs),
            ("worker.claim_delay_secs", self.worker.claim_delay_secs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(key, "must be zero or a positive number of seconds"));
            }
        }
        Ok(())
    }

    fn validate_artifacts(&self) -> Result<(), ConfigError> {
        self.artifacts.default_target().validate("artifacts.")?;
        for (name, target) in &self.artifacts.targets {
            if !is_valid_target_name(name) {
                return Err(invalid(
                    format!("artifacts.targets.{name}"),
                    "target names are letters, digits, '-' or '_', and not `default`",
                ));
            }
            target.validate(&format!("artifacts.targets.{name}."))?;
        }
        self.validate_sessions_prefix()
    }

    /// Sessions' workspaces are kept until their session is deleted, so they must lie outside the keys the
    /// artifact sweeper removes after retention.
    fn validate_sessions_prefix(&self) -> Result<(), ConfigError> {
        let sessions = self.artifacts.sessions_prefix.trim_matches('/');
        let jobs = self.artifacts.prefix.trim_matches('/');
        let within = |inner: &str, outer: &str| {
            outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
        };
        if sessions.is_empty() || within(sessions, jobs) || within(jobs, sessions) {
            return Err(invalid(
                "artifacts.sessions_prefix",
                "must be a non-empty prefix outside artifacts.prefix (artifacts there are removed after retention)",
            ));
        }
        Ok(())
    }

    fn validate_counts(&self) -> Result<(), ConfigError> {
        if self.queue.max_jobs < 1 {
            return Err(invalid("queue.max_jobs", "must be at least 1"));
        }
        if !(1..=5).contains(&self.queue.replicas) {
            return Err(invalid("queue.replicas", "must be between 1 and 5"));
        }
        if self.queue.max_attempts < 1 {
            return Err(invalid("queue.max_attempts", "must be at least 1"));
        }
        if self.worker.max_concurrent < 1 {
            return Err(invalid("worker.max_concurrent", "must be at least 1"));
        }
        if self.http.live_buffer_events < 1 {
            return Err(invalid("http.live_buffer_events", "must be at least 1"));
        }
        if let Some(bad) = self
            .http
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .find(|p| !p.is_empty() && super::Cidr::parse(p).is_none())
        {
            return Err(invalid(
                "http.trusted_proxies",
                format!("`{bad}` is not an address or a network (address/prefix)"),
            ));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        Ok(())
    }

    fn validate_agents(&self) -> Result<(), ConfigError> {
        for (name, agent) in &self.agents {
            if !is_valid_agent_name(name) {
                return Err(invalid(
                    format!("agents.{name}"),
                    "agent names are letters, digits, '-' or '_'",
                ));
            }
            if agent.kind.is_model() {
                super::agent::validate_model(name, agent)?;
            } else if agent.command.is_empty() || agent.command[0].is_empty() {
                return Err(invalid(
                    format!("agents.{name}.command"),
                    "must name a program",
                ));
            } else if agent.base_url.is_some() || agent.model.is_some() {
                return Err(invalid(
                    format!("agents.{name}.base_url"),
                    "base_url and model are for model agents (kind = \"openai\" or \"ollama\")",
                ));
            }
            if let Some(t) = agent.timeout {
                if !(t.is_finite() && t > 0.0) {
                    return Err(invalid(
                        format!("agents.{name}.timeout"),
                        "must be a positive number of seconds",
                    ));
                }
            }
            if let Some(range) = agent.run_as_range() {
                let size = (u64::from(*range.end()) + 1).saturating_sub(u64::from(*range.start()));
                if range.is_empty()
                    || *range.start() == 0
                    || size < self.worker.max_concurrent as u64
                {
                    return Err(invalid(
                        format!("agents.{name}.run_as"),
                        format!(
                            "a uid range FIRST-LAST must leave out 0 and hold at least worker.max_concurrent ({}) uids",
                            self.worker.max_concurrent
                        ),
                    ));
                }
            }
        }
        for name in &self.worker.agents {
            if !self.agents.contains_key(name) {
                return Err(invalid(
                    "worker.agents",
                    format!("`{name}` is not configured under [agents]"),
                ));
            }
        }
        for (lang, agent) in &self.execute {
            if !self.agents.contains_key(agent) {
                return Err(invalid(
                    format!("execute.{lang}"),
                    format!("`{agent}` is not configured under [agents]"),
                ));
            }
        }
        if !self.agents.contains_key(&self.default_agent) {
            return Err(invalid(
                "default_agent",
                format!("`{}` is not configured under [agents]", self.default_agent),
            ));
        }
        Ok(())
    }
}

/// The unit a key's name ends with, for messages (`retention_hours` is in hours).
fn unit(key: &str) -> &'static str {
    if key.ends_with("_hours") {
        "hours"
    } else {
        "seconds"
    }
}
