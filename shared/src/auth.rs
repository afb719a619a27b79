//! API keys: what a key is (stored hashed in the keys bucket, never in clear) and what it may do. The gateway
//! checks them; `fleet keys` creates and revokes them. A key reads `fk_<id>_<secret>`: the id finds the stored
//! entry, the secret is compared by its SHA-256 (keys are random, so a slow hash buys nothing).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key may do.
#[serde_with::skip_serializing_none]
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
    /// Create, list and revoke keys (granting at most what it holds itself).
    #[serde(default)]
    pub manage_keys: bool,
    /// Jobs the caller may have queued or running at once; unset: `auth.max_queued_per_caller`.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_u64)
    )]
    pub max_queued: Option<u32>,
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
            max_queued: None,
        }
    }

    pub fn may_run(&self, agent: &str) -> bool {
        self.agents.iter().any(|a| a == "*" || a == agent)
    }

    /// Whether these scopes include everything `other` grants, so a holder of them may hand `other` out.
    pub fn covers(&self, other: &Scopes) -> bool {
        let agents = other
            .agents
            .iter()
            .all(|a| self.agents.iter().any(|mine| mine == "*" || mine == a));
        let flag = |mine: bool, theirs: bool| mine || !theirs;
        let queued = match (self.max_queued, other.max_queued) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => theirs <= mine,
            (Some(_), None) => false,
        };
        agents
            && flag(self.read_all, other.read_all)
            && flag(self.cancel, other.cancel)
            && flag(self.configure_sharing, other.configure_sharing)
            && flag(self.manage_keys, other.manage_keys)
            && queued
    }
}

/// A key as stored in the keys bucket under its id.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    /// Who or what the key is for; jobs it submits record it as their owner.
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key as listed: everything but its secret's hash.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl StoredKey {
    pub fn view(&self) -> KeyView {
        KeyView {
            id: self.id.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        }
    }
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
        crate::seal::same(&self.secret_sha256, &digest(secret)) && self.in_force()
    }

    /// Not revoked.
    pub fn in_force(&self) -> bool {
        self.revoked_at.is_none()
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

    #[test]
    fn a_holder_may_grant_only_what_it_holds() {
        let mine = Scopes {
            agents: vec!["echo".into(), "shell".into()],
            cancel: true,
            manage_keys: true,
            max_queued: Some(10),
            ..Default::default()
        };
        let grant = |f: &dyn Fn(&mut Scopes)| {
            let mut s = Scopes {
                agents: vec!["echo".into()],
                max_queued: Some(5),
                ..Default::default()
            };
            f(&mut s);
            mine.covers(&s)
        };
        assert!(grant(&|_| {}));
        assert!(grant(&|s| s.cancel = true));
        assert!(!grant(&|s| s.agents = vec!["*".into()]));
        assert!(!grant(&|s| s.agents.push("python".into())));
        assert!(!grant(&|s| s.read_all = true));
        assert!(!grant(&|s| s.configure_sharing = true));
        assert!(!grant(&|s| s.max_queued = Some(11)));
        assert!(!grant(&|s| s.max_queued = None));
        assert!(Scopes::all().covers(&mine));
        assert!(!mine.covers(&Scopes::all()));
    }
}
