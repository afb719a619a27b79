//! The start-up summary a person reads: the effective configuration by section (secrets masked), the agents with
//! their commands, the listeners and where to point a browser. With `--log-format json` it is one log event instead.

use fleet_shared::config::{AgentConfig, AgentKind, AuthMode, Config};

/// What a process runs, so the summary shows only its sections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Worker,
    /// `fleet up`: both, with a managed (or the user's) nats-server.
    Up,
}

/// Facts known only once the process has started: where it listens and how it got there.
#[derive(Default)]
pub struct Started {
    /// The API's base URL (gateway, up), as this machine opens it.
    pub api: Option<String>,
    /// The console's address from elsewhere on the network, when the gateway listens beyond loopback.
    pub lan: Option<String>,
    /// Notes to show under the listeners (`8080 was busy`), in order.
    pub notes: Vec<String>,
    /// Where the configuration came from (`fleet.toml`, variables).
    pub sources: String,
}

impl Started {
    /// The addresses of a gateway listening on `addr`: as this machine opens it, and from the network.
    pub fn listening(addr: std::net::SocketAddr) -> Self {
        use fleet_gateway::console::address;
        Self {
            api: Some(address::local_url(addr).trim_end_matches('/').to_string()),
            lan: address::lan_url(addr, &address::interface_ips()),
            ..Default::default()
        }
    }
}

pub fn lines(config: &Config, role: Role, started: &Started) -> Vec<String> {
    let mut out = vec![format!(
        "fleet {} · {}",
        env!("CARGO_PKG_VERSION"),
        match role {
            Role::Gateway => "gateway",
            Role::Worker => "worker",
            Role::Up => "local fleet",
        }
    )];
    let mut row = |name: &str, value: String| out.push(format!("  {name:<12} {value}"));
    row("config", started.sources.clone());
    row("nats", nats(config));
    if role != Role::Worker {
        row("http", http(config, started));
        row("auth", auth(config));
    }
    row("queue", queue(config));
    if role != Role::Gateway {
        row("worker", worker(config));
    }
    row("artifacts", artifacts(config));
    for note in &started.notes {
        row("note", note.clone());
    }
    out.extend(agents(config, role));
    if let Some(api) = &started.api {
        out.push(format!(
            "  {:<12} {api}/  (the console; API docs at {api}/docs)",
            "open"
        ));
    }
    if let Some(lan) = &started.lan {
        out.push(format!("  {:<12} {lan}  (from a phone: scan)", "network"));
        if let Some(code) = fleet_gateway::console::qr::terminal(lan) {
            out.extend(code.lines().map(|l| format!("  {:<12} {l}", "")));
        }
    }
    out
}

fn nats(c: &Config) -> String {
    let credential = if !c.nats.creds_file.is_empty() {
        format!("creds file {}", c.nats.creds_file)
    } else if !c.nats.nkey_seed.is_empty() {
        "nkey ***".into()
    } else if !c.nats.token.is_empty() {
        "token ***".into()
    } else if !c.nats.user.is_empty() {
        format!("user {} password ***", c.nats.user)
    } else {
        "no credentials".into()
    };
    let tls = if c.nats.tls_required || !c.nats.tls_ca_file.is_empty() {
        ", TLS"
    } else {
        ""
    };
    format!(
        "{} (subjects {}.*, {credential}{tls})",
        fleet_shared::config::mask_url_credentials(&c.nats.url),
        c.nats.prefix
    )
}

fn http(c: &Config, started: &Started) -> String {
    let listen = started.api.clone().unwrap_or_else(|| c.http.addr.clone());
    format!(
        "{listen} · bodies up to {} · {} submits/s per caller",
        bytes(c.http.max_body_bytes as u64),
        c.http.submit_per_sec
    )
}

fn auth(c: &Config) -> String {
    match c.auth.mode {
        AuthMode::None => "none: anyone who reaches the API may use it".into(),
        AuthMode::Required => {
            let users = match c.auth.users.len() {
                0 => "no users".to_string(),
                n => format!("{n} users (POST /token)"),
            };
            format!("API keys (`fleet keys create`) · {users}")
        }
    }
}

fn queue(c: &Config) -> String {
    format!(
        "up to {} jobs · {} attempts · records kept {} h",
        c.queue.max_jobs, c.queue.max_attempts, c.queue.retention_hours
    )
}

fn worker(c: &Config) -> String {
    let health = match c.worker.http_addr.as_str() {
        "" => String::new(),
        addr => format!(" · health and metrics on {addr}"),
    };
    format!(
        "{} slots · jobs in {} · timeout {} s{health}",
        c.worker.max_concurrent,
        c.worker.work_dir.display(),
        c.worker.default_timeout_secs
    )
}

fn artifacts(c: &Config) -> String {
    let a = &c.artifacts;
    let place = match a.backend.as_str() {
        "local" => format!("local {}", a.local_dir.display()),
        "s3" => format!(
            "s3 bucket {}{}{}",
            a.s3_bucket,
            if a.s3_endpoint.is_empty() {
                String::new()
            } else {
                format!(" at {}", a.s3_endpoint)
            },
            if a.s3_access_key_id.is_empty() {
                String::new()
            } else {
                format!(", key {} secret ***", a.s3_access_key_id)
            }
        ),
        "ftp" => format!(
            "ftp{} {}@{}:{}{}{}",
            if a.ftp_tls { "s" } else { "" },
            a.ftp_user,
            a.ftp_host,
            a.ftp_port,
            a.ftp_base_path,
            if a.ftp_password.is_empty() {
                ""
            } else {
                " (password ***)"
            }
        ),
        other => other.to_string(),
    };
    let targets = match a.targets.len() {
        0 => String::new(),
        n => format!(" · {n} more targets"),
    };
    format!("{place} · files up to {}{targets}", bytes(a.max_file_bytes))
}

/// One row per agent this process serves: the gateway names them, a worker shows how it runs them.
fn agents(c: &Config, role: Role) -> Vec<String> {
    let names = c.worker_agents();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let label = if i == 0 { "agents" } else { "" };
            let agent = &c.agents[name];
            let how = match role {
                Role::Gateway => agent.description.clone().unwrap_or_default(),
                _ => command_line(agent),
            };
            format!("  {label:<12} {name:<width$}  {how}")
        })
        .collect()
}

/// The agent's argv as a person would type it (quoted where needed), its stdin and the settings that change
/// how it runs; environment values are never shown.
fn command_line(agent: &AgentConfig) -> String {
    let mut line = match agent.kind {
        AgentKind::Command => String::new(),
        kind => format!("[{}] ", kind.as_str()),
    };
    if agent.kind.is_model() {
        let (url, model) = (agent.base_url.as_deref(), agent.model.as_deref());
        line.push_str(&format!(
            "{} model {}",
            url.unwrap_or(""),
            model.unwrap_or("")
        ));
    } else {
        let argv: Vec<_> = agent.command.iter().map(|arg| quoted(arg)).collect();
        line.push_str(&argv.join(" "));
    }
    if let Some(stdin) = &agent.stdin {
        line.push_str(&format!(" < {}", quoted(stdin)));
    }
    let mut extras = Vec::new();
    if let Some(var) = &agent.api_key_env {
        extras.push(format!("key from ${var}"));
    }
    if let Some(file) = &agent.api_key_file {
        extras.push(format!("key from {}", file.display()));
    }
    if let Some(t) = agent.timeout {
        extras.push(format!("timeout {t} s"));
    }
    if let Some(user) = &agent.run_as {
        extras.push(format!("as {user}"));
    }
    if !agent.network {
        extras.push("no network".into());
    }
    if agent.pty {
        extras.push("pty".into());
    }
    if !agent.env.is_empty() {
        let names: Vec<_> = agent.env.keys().map(|k| format!("{k}=***")).collect();
        extras.push(names.join(" "));
    }
    if !extras.is_empty() {
        line.push_str(&format!("  ({})", extras.join(", ")));
    }
    line
}

fn quoted(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./{}=:,@+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match value.fract() == 0.0 {
        true => format!("{value} {}", UNITS[unit]),
        false => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// Prints the summary to stderr (the service's log stream) as text, or logs it as one JSON event.
pub fn print(config: &Config, role: Role, started: &Started, json: bool) {
    if json {
        tracing::info!(config = %config.summary(), api = started.api.as_deref(), "effective configuration");
        return;
    }
    let mut text = lines(config, role, started).join("\n");
    text.push('\n');
    if role == Role::Up {
        print!("{text}");
    } else {
        eprint!("{text}");
    }
}

/// Where the configuration came from, for the summary's first row.
pub fn sources_line(sources: &fleet_shared::config::Sources) -> String {
    let vars = sources
        .env
        .keys()
        .filter(|k| {
            k.starts_with("FLEET_")
                && !matches!(
                    k.as_str(),
                    "FLEET_URL" | "FLEET_API_KEY" | "FLEET_LOG_FORMAT"
                )
        })
        .count();
    let file = sources
        .file
        .as_ref()
        .map_or("built-in defaults".to_string(), |f| f.display().to_string());
    match vars {
        0 => file,
        n => format!("{file} + {n} FLEET_* variables"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_their_largest_whole_unit() {
        assert_eq!(bytes(65536), "64 KiB");
        assert_eq!(bytes(104857600), "100 MiB");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(6_266_880), "6.0 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn arguments_are_quoted_only_when_needed() {
        assert_eq!(quoted("{message}"), "{message}");
        assert_eq!(quoted("a b"), "'a b'");
        assert_eq!(quoted("it's"), "'it'\\''s'");
    }
}
