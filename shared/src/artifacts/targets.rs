//! Which store holds a job's artifacts. A job's record names its target id: `default` (the `[artifacts]` section),
//! a configured name (`[artifacts.targets.NAME]`), or `sharing:<uuid>` — a target set at run time with
//! `POST /configure-sharing`. Run-time targets are written once to the `fleet_config` bucket under
//! `targets.<uuid>` and never changed, so a record can always find the store its files went to; the key `sharing`
//! holds the one new jobs use, and workers watch it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{ArtifactStore, StoreError};
use crate::config::{ArtifactsConfig, TargetConfig};

/// The target id of the fleet's configured default.
pub const DEFAULT: &str = "default";
const SHARING_ID_PREFIX: &str = "sharing:";
/// Key of the current run-time sharing target in the config bucket.
pub const SHARING_KEY: &str = "sharing";

/// The value under [`SHARING_KEY`] (and, by id, under `targets.<uuid>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharingSetting {
    /// `sharing:<uuid>`, what job records name.
    pub id: String,
    /// The seed systems' name for it: `ftp`, `s3`, `local`.
    pub method: String,
    pub target: TargetConfig,
    pub updated_at: DateTime<Utc>,
}

impl SharingSetting {
    pub fn new(method: &str, target: TargetConfig) -> Self {
        Self {
            id: format!("{SHARING_ID_PREFIX}{}", uuid::Uuid::now_v7()),
            method: method.to_string(),
            target,
            updated_at: Utc::now(),
        }
    }

    /// Config-bucket key under which this setting stays readable after it stops being current.
    pub fn target_key(&self) -> String {
        target_key(&self.id).unwrap_or_default()
    }
}

fn target_key(id: &str) -> Option<String> {
    let uuid = id.strip_prefix(SHARING_ID_PREFIX)?;
    uuid::Uuid::parse_str(uuid)
        .ok()
        .map(|u| format!("targets.{u}"))
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no artifact target is named `{0}`")]
    Unknown(String),
    #[error("artifact target `{id}` cannot be read from the config bucket: {reason}")]
    Unavailable { id: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every store this process may write to or read from, by target id.
#[derive(Clone)]
pub struct Stores {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    default: ArtifactStore,
    named: BTreeMap<String, ArtifactStore>,
    config: Option<kv::Store>,
    /// Run-time targets seen so far, by id; they never change, so they never go stale.
    sharing: RwLock<HashMap<String, ArtifactStore>>,
    /// The sharing target new jobs use, as the last watched value left it.
    current: RwLock<Option<String>>,
}

impl Stores {
    /// The default and named stores of `cfg`; `config` is the fleet's config bucket (absent in unit tests).
    pub fn new(cfg: &ArtifactsConfig, config: Option<kv::Store>) -> Result<Self, StoreError> {
        let default = ArtifactStore::from_config(cfg)?;
        let named = cfg
            .targets
            .iter()
            .map(|(name, t)| Ok((name.clone(), ArtifactStore::new(t, &cfg.prefix)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                prefix: cfg.prefix.clone(),
                default,
                named,
                config,
                sharing: RwLock::default(),
                current: RwLock::default(),
            }),
        })
    }

    pub fn default_store(&self) -> &ArtifactStore {
        &self.inner.default
    }

    /// Is `name` a target a job may ask for (`default` or a configured name)?
    pub fn is_known_name(&self, name: &str) -> bool {
        name == DEFAULT || self.inner.named.contains_key(name)
    }

    /// The target id and store for a new job: the one it names, else the current sharing target, else the default.
    pub fn for_job(&self, requested: Option<&str>) -> Result<(String, ArtifactStore), TargetError> {
        match requested {
            Some(DEFAULT) => Ok((DEFAULT.into(), self.inner.default.clone())),
            Some(name) => self
                .inner
                .named
                .get(name)
                .map(|s| (name.to_string(), s.clone()))
                .ok_or_else(|| TargetError::Unknown(name.to_string())),
            None => {
                let current = self.inner.current.read().ok().and_then(|c| c.clone());
                let store = current.as_ref().and_then(|id| self.cached(id));
                match (current, store) {
                    (Some(id), Some(store)) => Ok((id, store)),
                    _ => Ok((DEFAULT.into(), self.inner.default.clone())),
                }
            }
        }
    }

    fn cached(&self, id: &str) -> Option<ArtifactStore> {
        self.inner.sharing.read().ok()?.get(id).cloned()
    }

    /// The store behind a record's target id (`None`: records from before targets, which used the default).
    pub async fn resolve(&self, id: Option<&str>) -> Result<ArtifactStore, TargetError> {
        let id = match id {
            None | Some(DEFAULT) => return Ok(self.inner.default.clone()),
            Some(id) => id,
        };
        if let Some(store) = self.inner.named.get(id) {
            return Ok(store.clone());
        }
        if let Some(store) = self.cached(id) {
            return Ok(store);
        }
        let key = target_key(id).ok_or_else(|| TargetError::Unknown(id.to_string()))?;
        let unavailable = |reason: String| TargetError::Unavailable {
            id: id.to_string(),
            reason,
        };
        let bucket = self
            .inner
            .config
            .as_ref()
            .ok_or_else(|| unavailable("no config bucket".into()))?;
        let bytes = bucket
            .get(key)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| TargetError::Unknown(id.to_string()))?;
        let setting: SharingSetting =
            crate::codec::decode(&bytes, crate::codec::Format::MessagePack)
                .map_err(|e| unavailable(e.to_string()))?;
        self.remember(&setting)
    }

    fn remember(&self, setting: &SharingSetting) -> Result<ArtifactStore, TargetError> {
        let store = ArtifactStore::new(&setting.target, &self.inner.prefix)?;
        if let Ok(mut map) = self.inner.sharing.write() {
            map.insert(setting.id.clone(), store.clone());
        }
        Ok(store)
    }

    /// Every store a sweeper should clean: the default, the named ones, and the current sharing target.
    pub fn sweepable(&self) -> Vec<ArtifactStore> {
        let mut all = vec![self.inner.default.clone()];
        all.extend(self.inner.named.values().cloned());
        let current = self.inner.current.read().ok().and_then(|c| c.clone());
        all.extend(current.and_then(|id| self.cached(&id)));
        all
    }

    /// Follows the config bucket's `sharing` key for as long as the connection lasts: every change applies to
    /// the next job. A value that cannot be used is logged and leaves the default in force.
    pub async fn follow_sharing(&self) -> Result<(), async_nats::Error> {
        let Some(bucket) = self.inner.config.clone() else {
            return Ok(());
        };
        let mut watch = bucket.watch_with_history(SHARING_KEY).await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let next = match entry.operation {
                kv::Operation::Put => match crate::codec::decode::<SharingSetting>(
                    &entry.value,
                    crate::codec::Format::MessagePack,
                ) {
                    Ok(setting) => match self.remember(&setting) {
                        Ok(store) => {
                            tracing::info!(target_id = %setting.id, store = store.name(),
                                "artifact sharing target changed");
                            Some(setting.id)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "sharing target unusable; using the default");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "sharing setting unreadable; using the default");
                        None
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    tracing::info!("artifact sharing reset to the configured default");
                    None
                }
            };
            if let Ok(mut current) = self.inner.current.write() {
                *current = next;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_ids_map_to_target_keys_and_nothing_else_does() {
        let s = SharingSetting::new("ftp", TargetConfig::default());
        assert!(s.target_key().starts_with("targets."));
        assert_eq!(target_key("sharing:not-a-uuid"), None);
        assert_eq!(target_key("default"), None);
    }

    #[tokio::test]
    async fn jobs_get_the_target_they_name_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let sources = crate::config::Sources::default()
            .with_override("artifacts.local_dir", dir.path().to_string_lossy())
            .with_override("artifacts.targets.mem.backend", "memory");
        let cfg = crate::config::Config::load(&sources).unwrap();
        let stores = Stores::new(&cfg.artifacts, None).unwrap();
        assert_eq!(stores.for_job(None).unwrap().0, DEFAULT);
        assert_eq!(stores.for_job(Some("mem")).unwrap().1.name(), "memory://");
        assert!(matches!(
            stores.for_job(Some("nope")),
            Err(TargetError::Unknown(_))
        ));
        assert!(stores.resolve(Some("sharing:x")).await.is_err());
        assert_eq!(
            stores.resolve(Some("mem")).await.unwrap().name(),
            "memory://"
        );
    }
}
