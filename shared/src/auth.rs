//! API keys: what a key is (stored hashed in the keys bucket, never in clear) and what it may do. The gateway
//! checks them; `fleet keys` creates and revokes them. A key reads `fk_<id>_<secret>`: the id finds the stored
//! entry, the secret is compared by its SHA-256 (keys are random, so a slow hash buys nothing).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Scopes {
    /// Agents the key may run; `*` means every agent.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Read (and follow, download) every job, not only the key's own.
    #[serde(default)]
    pub read_all: bool,
    /// Cancel and retry jobs it can read.
    #[serde(default)]
    pub cancel: bool,
    /// Change the fleet's artifact target (`/configure-sharing`).
    #[serde(default)]
    pub configure_sharing: bool,
    /// Create, list and revoke keys.
    #[serde(default)]
    pub manage_keys: bool,
}

impl Scopes {
    /// Everything: what the gateway grants when authentication is off.
    pub fn all() -> Self {
        Self {
            agents: vec!["*".into()],
            read_all: true,
            cancel: true,
            configure_sharing: true,
            manage_keys: true,
        }
    }

    pub fn may_run(&self, agent: &str) -> bool {
        self.agents.iter().any(|a| a == "*" || a == agent)
    }
}

/// A key as stored in the keys bucket under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    /// Who or what the key is for; jobs it submits record it as their owner.
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

const PREFIX: &str = "fk_";

/// A new key: the stored entry and the full key, shown once.
pub fn generate(name: &str, scopes: Scopes) -> (StoredKey, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let stored = StoredKey {
        id: id.clone(),
        name: name.to_string(),
        secret_sha256: digest(&secret),
        scopes,
        created_at: Utc::now(),
        revoked_at: None,
    };
    (stored, format!("{PREFIX}{id}_{secret}"))
}

/// Splits a presented key into its id and secret, if it has the key format.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let well_formed =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (well_formed(id, 12) && well_formed(secret, 64)).then_some((id, secret))
}

impl StoredKey {
    /// Does `secret` belong to this key, and is the key still valid? Compares in constant time.
    pub fn accepts(&self, secret: &str) -> bool {
        let presented = digest(secret);
        let same = presented.len() == self.secret_sha256.len()
            && presented
                .bytes()
                .zip(self.secret_sha256.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same && self.revoked_at.is_none()
    }
}

fn digest(secret: &str) -> String {
    hex_lower(&Sha256::digest(secret.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_are_accepted_until_revoked() {
        let (mut stored, key) = generate("ci", Scopes::default());
        let (id, secret) = parse(&key).expect("well formed");
        assert_eq!(id, stored.id);
        assert!(stored.accepts(secret));
        assert!(!stored.accepts(&secret.replace('a', "b").replace('1', "2")));
        assert!(!key.contains(&stored.secret_sha256));
        stored.revoked_at = Some(Utc::now());
        assert!(!stored.accepts(secret));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in [
            "",
            "fk_",
            "fk_abc_def",
            "Bearer x",
            "fk_zzzzzzzzzzzz_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scopes_name_agents_or_all() {
        let s = Scopes {
            agents: vec!["echo".into()],
            ..Default::default()
        };
        assert!(s.may_run("echo") && !s.may_run("shell"));
        assert!(Scopes::all().may_run("anything"));
    }
}
