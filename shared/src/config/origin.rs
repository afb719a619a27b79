//! Where a configuration value came from, so an error sends a person to the one place to fix it: the file and
//! line, the variable, or the command-line flag.

use std::fmt;
use std::path::PathBuf;

use super::{env_name, ConfigError, Sources, ALIASES};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Not set anywhere: the built-in default.
    Default,
    File {
        path: PathBuf,
        line: Option<usize>,
    },
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, by name (`--http`).
    Flag(String),
}

impl Origin {
    /// Whether a person chose this value (anything but the built-in default).
    pub fn is_chosen(&self) -> bool {
        *self != Origin::Default
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "the default"),
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{} line {line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "the variable {name}"),
            Origin::Flag(name) => write!(f, "{name}"),
        }
    }
}

impl Sources {
    /// Where `key` (`queue.retention_hours`) was set, by the loader's precedence: flag, `FLEET_*` variable, alias
    /// variable, file, default. A key under a table that the file sets as a whole (`[agents.x]`) names that table's
    /// line.
    pub fn origin(&self, key: &str) -> Origin {
        if let Some(o) = self.overrides.iter().rev().find(|o| o.key == key) {
            return Origin::Flag(o.flag.clone());
        }
        let var = env_name(key);
        if self.env.contains_key(&var) {
            return Origin::Env(var);
        }
        if let Some((alias, _)) = ALIASES
            .iter()
            .find(|(alias, k)| *k == key && self.env.contains_key(*alias))
        {
            return Origin::Env(alias.to_string());
        }
        if let Some(path) = &self.file {
            // Only to find a line number: an unreadable file names no line.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Some(line) = line_of(&text, key) {
                return Origin::File {
                    path: path.clone(),
                    line: Some(line),
                };
            }
        }
        Origin::Default
    }

    /// The `FLEET_*` variables that set nothing: misspelt keys, or keys only a file can set, for a warning.
    pub fn unknown_variables(&self) -> Vec<String> {
        // The built-in defaults always parse; without them there is nothing to compare against.
        let known = super::leaf_keys().unwrap_or_default();
        let mut unknown: Vec<String> = self
            .env
            .keys()
            .filter(|var| var.starts_with("FLEET_"))
            .filter(|var| !CLIENT_VARIABLES.contains(&var.as_str()))
            .filter(|var| !known.iter().any(|(key, _)| env_name(key) == **var))
            .cloned()
            .collect();
        unknown.sort();
        unknown
    }
}

impl ConfigError {
    /// The error as a wrong value of a named key, with where that value was set; the config crate's own errors
    /// (types, unknown keys) are turned into the same shape.
    pub(super) fn located(self, sources: &Sources) -> Self {
        let (key, reason) = match self {
            ConfigError::Invalid { key, reason, .. } => (key, reason),
            ConfigError::Load(e) => match key_and_reason(&e) {
                Some(pair) => pair,
                None => return ConfigError::Load(e),
            },
        };
        let origin = sources.origin(&key);
        ConfigError::Invalid {
            key,
            reason,
            origin: origin.is_chosen().then_some(origin),
        }
    }
}

/// The key and a plain reason from a config crate error, when it names a key.
fn key_and_reason(e: &config::ConfigError) -> Option<(String, String)> {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => Some((
            key.clone(),
            format!("expected {expected}, found {unexpected}"),
        )),
        config::ConfigError::At { error, key, .. } => {
            let message = error.to_string();
            unknown_key(&message, key.as_deref()).or_else(|| Some((key.clone()?, message)))
        }
        config::ConfigError::Message(message) => unknown_key(message, None),
        _ => None,
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" as the unknown key itself, under `parent`.
fn unknown_key(message: &str, parent: Option<&str>) -> Option<(String, String)> {
    let (field, known) = message.strip_prefix("unknown field `")?.split_once('`')?;
    let known = known.trim_start_matches(", expected one of ");
    let known = known.trim_start_matches(", expected ");
    let key = match parent {
        Some(parent) => format!("{parent}.{field}"),
        None => field.to_string(),
    };
    Some((key, format!("no such key; the keys here are {known}")))
}

/// Variables the `fleet` binary reads besides configuration keys.
const CLIENT_VARIABLES: &[&str] = &[
    "FLEET_URL",
    "FLEET_API_KEY",
    "FLEET_LOG",
    "FLEET_LOG_FORMAT",
    "FLEET_PG_SINK_URL",
    "FLEET_PG_SINK_TABLE",
];

/// The 1-based line of a TOML file that sets `key`, through `[table]` headers and dotted keys; a key inside a
/// table the file only names as a whole (`[agents.x]` for `agents.x.command`) resolves to the deepest one found.
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut best: Option<(usize, usize)> = None; // (depth of match, line)
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let full = if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            table = unquote(header.split(']').next().unwrap_or(""));
            table.clone()
        } else if let Some((k, _)) = line.split_once('=') {
            if line.starts_with('#') {
                continue;
            }
            match table.is_empty() {
                true => unquote(k),
                false => format!("{table}.{}", unquote(k)),
            }
        } else {
            continue;
        };
        if full == key {
            return Some(index + 1);
        }
        let depth = full.split('.').count();
        let prefix = key.starts_with(&full) && key[full.len()..].starts_with('.');
        if prefix && best.is_none_or(|(d, _)| depth > d) {
            best = Some((depth, index + 1));
        }
    }
    best.map(|(_, line)| line)
}

fn unquote(key: &str) -> String {
    key.split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_through_tables_and_dotted_keys() {
        let text =
            "default_agent = \"echo\"\n[queue]\n# retention_hours = 1\nretention_hours = -1\n\n\
                    [agents.\"my-agent\"]\ncommand = [\"x\"]\n[worker]\nhttp.addr = 1\n";
        assert_eq!(line_of(text, "default_agent"), Some(1));
        assert_eq!(line_of(text, "queue.retention_hours"), Some(4));
        assert_eq!(line_of(text, "agents.my-agent.command"), Some(7));
        assert_eq!(line_of(text, "agents.my-agent.timeout"), Some(6));
        assert_eq!(line_of(text, "worker.http.addr"), Some(9));
        assert_eq!(line_of(text, "nats.url"), None);
    }

    #[test]
    fn the_highest_layer_names_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet.toml");
        std::fs::write(&file, "[nats]\nurl = \"nats://a:1\"\n").unwrap();
        let mut sources = Sources {
            file: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(
            sources.origin("nats.url").to_string(),
            format!("{} line 2", file.display())
        );
        sources.env.insert("NATS_URL".into(), "nats://b:1".into());
        assert_eq!(sources.origin("nats.url"), Origin::Env("NATS_URL".into()));
        sources
            .env
            .insert("FLEET_NATS_URL".into(), "nats://c:1".into());
        assert_eq!(
            sources.origin("nats.url"),
            Origin::Env("FLEET_NATS_URL".into())
        );
        let sources = sources.with_flag("nats.url", "nats://d:1", "--nats");
        assert_eq!(sources.origin("nats.url").to_string(), "--nats");
        assert_eq!(sources.origin("http.addr"), Origin::Default);
    }
}
