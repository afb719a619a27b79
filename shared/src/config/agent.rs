//! An agent is configuration, not code: what kind of agent it is, and how to run it. A command (any argv), a
//! coding CLI preset (its non-interactive argv and the parser of its machine-readable stream), or a model the
//! worker asks over HTTP itself (no process at all).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// An agent is configuration, not code: an argv template and how to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// What the agent is; `command` (the default) runs `command` as it stands.
    #[serde(default)]
    pub kind: AgentKind,
    /// argv template; `{message}`, `{context}`, `{job_id}` and `{workspace}` are replaced inside each element,
    /// never re-split, and no shell ever sees the result. A CLI preset left without one runs its own
    /// ([`AgentKind::preset_command`]); model agents have none.
    #[serde(default)]
    pub command: Vec<String>,
    /// argv template of a session turn that resumes the agent's own session (`{agent_session}`: the id the
    /// session's earlier turns reported). A CLI preset that resumes has one made from `command`; empty: every
    /// turn runs `command`.
    #[serde(default)]
    pub resume: Vec<String>,
    /// Template written to the child's stdin; absent means stdin is empty.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Variables given to the child on top of a minimal base environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds; absent means `worker.default_timeout_secs`.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub description: Option<String>,
    /// Run the agent with stdout and stderr on a pseudo-terminal, for CLIs that only flush (or only print
    /// progress) on a TTY. A terminal has one output stream: stderr arrives merged into stdout.
    #[serde(default)]
    pub pty: bool,
    /// Resource limits of the agent's processes; a job that hits one fails with the limit named.
    #[serde(default)]
    pub limits: AgentLimits,
    /// Run the agent as this user (a name, or `uid:gid`) instead of the worker's; needs a worker running as root.
    /// A range `FIRST-LAST` of uids gives each running job a uid of its own (gid the same number), so jobs never
    /// share a user at the same time: see [`AgentConfig::run_as_range`].
    #[serde(default)]
    pub run_as: Option<String>,
    /// false: the agent runs in a network namespace of its own with no interfaces up (needs root).
    #[serde(default = "network_default")]
    pub network: bool,
    /// Model agents: the server's base URL. `openai`: the API root holding `/chat/completions`
    /// (`http://127.0.0.1:8080/v1`); `ollama`: the server (`http://127.0.0.1:11434`), whose native `/api/chat`
    /// is used, or its OpenAI-compatible root when the URL ends in `/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Model agents: the model's name on that server.
    #[serde(default)]
    pub model: Option<String>,
    /// Model agents: the system prompt, sent before the job's context and message.
    #[serde(default)]
    pub system: Option<String>,
    /// Model agents: sampling temperature (0–2); absent: the server's default.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Model agents: the most tokens one answer may have; absent: the server's default.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Model agents: the sampling seed, for repeatable answers where the server honours it.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Model agents: the worker's environment variable holding the API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model agents: a file holding the API key (a mounted secret), read when the configuration loads.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The API key, resolved by the loader from `api_key_env` or `api_key_file`; never serialized or logged.
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

impl AgentConfig {
    /// The uid range of `run_as = "FIRST-LAST"`, if it is one.
    pub fn run_as_range(&self) -> Option<std::ops::RangeInclusive<u32>> {
        let (first, last) = self.run_as.as_deref()?.split_once('-')?;
        Some(first.trim().parse().ok()?..=last.trim().parse().ok()?)
    }
}

fn network_default() -> bool {
    true
}

/// rlimits applied to an agent's process (and inherited by its children).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLimits {
    /// CPU seconds (RLIMIT_CPU): SIGXCPU when spent.
    pub cpu_secs: Option<u64>,
    /// Address space in bytes (RLIMIT_AS): allocations past it fail.
    pub memory_bytes: Option<u64>,
    /// Largest file the agent may write, in bytes (RLIMIT_FSIZE).
    pub file_bytes: Option<u64>,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: Option<u64>,
    /// Processes of the agent's user (RLIMIT_NPROC): with `run_as`, a fork bomb stops here. Ignored for root.
    pub processes: Option<u64>,
}

impl AgentLimits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What an agent is, which decides how the worker runs it and reads what it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// Any argv; its stdout is text.
    #[default]
    Command,
    /// Claude Code (`claude -p --output-format stream-json`).
    ClaudeCode,
    /// OpenAI's Codex CLI (`codex exec --json`).
    Codex,
    /// OpenCode (`opencode run --format json`).
    Opencode,
    /// Gemini CLI (`gemini -p --output-format stream-json`).
    Gemini,
    /// Qwen Code (Gemini CLI's fork, the same stream).
    Qwen,
    /// aider (no machine-readable stream: its stdout is the answer).
    Aider,
    /// Any OpenAI-compatible `/chat/completions`, asked by the worker itself.
    Openai,
    /// Ollama's native `/api/chat`, asked by the worker itself.
    Ollama,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::ClaudeCode => "claude-code",
            Self::Codex => "codex",
            Self::Opencode => "opencode",
            Self::Gemini => "gemini",
            Self::Qwen => "qwen",
            Self::Aider => "aider",
            Self::Openai => "openai",
            Self::Ollama => "ollama",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub const ALL: [AgentKind; 9] = [
        Self::Command,
        Self::ClaudeCode,
        Self::Codex,
        Self::Opencode,
        Self::Gemini,
        Self::Qwen,
        Self::Aider,
        Self::Openai,
        Self::Ollama,
    ];

    /// A coding CLI whose machine-readable output the worker parses.
    pub fn is_preset(self) -> bool {
        !matches!(self, Self::Command | Self::Openai | Self::Ollama)
    }

    /// A model the worker asks over HTTP: no process, no command.
    pub fn is_model(self) -> bool {
        matches!(self, Self::Openai | Self::Ollama)
    }

    /// The argv of a session turn that resumes the CLI's own session: `command` with the CLI's resume option,
    /// `{agent_session}` standing for the id the earlier turns reported. Empty where the kind cannot resume.
    pub fn resume_command(self, command: &[String]) -> Vec<String> {
        let mut argv = command.to_vec();
        let with =
            |argv: &mut Vec<String>, more: &[&str]| argv.extend(more.iter().map(|s| s.to_string()));
        match self {
            Self::ClaudeCode | Self::Gemini | Self::Qwen => {
                with(&mut argv, &["--resume", "{agent_session}"])
            }
            Self::Opencode => with(&mut argv, &["--session", "{agent_session}"]),
            // Aider keeps its chat in the workspace, which follows the session.
            Self::Aider => with(&mut argv, &["--restore-chat-history"]),
            Self::Codex => {
                // `codex exec resume [OPTIONS] ID PROMPT`: the subcommand right after `exec`, the id before the
                // prompt.
                let Some(exec) = argv.iter().position(|a| a == "exec") else {
                    return Vec::new();
                };
                argv.insert(exec + 1, "resume".into());
                let prompt = argv
                    .iter()
                    .position(|a| a.contains("{message}"))
                    .unwrap_or(argv.len());
                argv.insert(prompt, "{agent_session}".into());
            }
            Self::Command | Self::Openai | Self::Ollama => return Vec::new(),
        }
        argv
    }

    /// The non-interactive argv a CLI preset runs when its agent gives no `command`.
    pub fn preset_command(self) -> &'static [&'static str] {
        match self {
            Self::Command | Self::Openai | Self::Ollama => &[],
            Self::ClaudeCode => &[
                "claude",
                "-p",
                "{message}",
                "--output-format",
                "stream-json",
                "--verbose",
            ],
            Self::Codex => &[
                "codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "{message}",
            ],
            Self::Opencode => &["opencode", "run", "--format", "json", "{message}"],
            Self::Gemini => &[
                "gemini",
                "-p",
                "{message}",
                "--output-format",
                "stream-json",
            ],
            Self::Qwen => &["qwen", "-p", "{message}", "--output-format", "stream-json"],
            Self::Aider => &[
                "aider",
                "--message",
                "{message}",
                "--yes-always",
                "--no-pretty",
                "--no-stream",
                "--no-auto-commits",
            ],
        }
    }
}

/// A credential held in memory only: it prints as `***` and serializes nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Completes each agent as the loader read it: a preset's argv where none was given, and a model agent's API
/// key from the variable or file it names.
pub(super) fn resolve(
    agents: &mut BTreeMap<String, AgentConfig>,
    env: &std::collections::HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, agent) in agents {
        if agent.command.is_empty() {
            agent.command = agent
                .kind
                .preset_command()
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        if agent.resume.is_empty() {
            agent.resume = agent.kind.resume_command(&agent.command);
        }
        agent.api_key = api_key(name, agent, env)?;
    }
    Ok(())
}

fn api_key(
    name: &str,
    agent: &AgentConfig,
    env: &std::collections::HashMap<String, String>,
) -> Result<Option<Secret>, ConfigError> {
    match (&agent.api_key_env, &agent.api_key_file) {
        (Some(_), Some(_)) => Err(invalid(
            format!("agents.{name}.api_key_file"),
            "give the API key by api_key_env or api_key_file, not both",
        )),
        (Some(var), None) => match env.get(var).map(|v| v.trim()) {
            Some(key) if !key.is_empty() => Ok(Some(Secret::new(key))),
            _ => Err(invalid(
                format!("agents.{name}.api_key_env"),
                format!("the worker's environment has no variable {var} (or it is empty)"),
            )),
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(key) if !key.trim().is_empty() => Ok(Some(Secret::new(key.trim()))),
            Ok(_) => Err(invalid(
                format!("agents.{name}.api_key_file"),
                format!("{} is empty", path.display()),
            )),
            Err(e) => Err(invalid(
                format!("agents.{name}.api_key_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
        },
        (None, None) => Ok(None),
    }
}

/// The checks only a model agent needs: where to ask, what, and nothing that only a process could use.
pub(super) fn validate_model(name: &str, agent: &AgentConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("agents.{name}.{field}");
    let url = agent.base_url.as_deref().unwrap_or("");
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(invalid(
            key("base_url"),
            format!(
                "a {} agent needs the server's http:// or https:// URL",
                agent.kind.as_str()
            ),
        ));
    }
    if agent.model.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            key("model"),
            "a model agent needs the model's name",
        ));
    }
    if !agent.command.is_empty() || !agent.resume.is_empty() || agent.stdin.is_some() || agent.pty {
        return Err(invalid(
            key("command"),
            "a model agent runs no process: leave out command, resume, stdin and pty",
        ));
    }
    if agent.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(invalid(key("temperature"), "must be between 0 and 2"));
    }
    if agent.max_tokens == Some(0) {
        return Err(invalid(key("max_tokens"), "must be at least 1"));
    }
    Ok(())
}
