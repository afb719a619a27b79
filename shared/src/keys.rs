//! The keys bucket: creating, listing and revoking API keys. `fleet keys` and the gateway's `/v1/keys` both
//! manage keys through here; gateways follow the bucket to check them.

use async_nats::jetstream::kv;
use chrono::Utc;
use futures::StreamExt;

use crate::auth::{self, Scopes, StoredKey};
use crate::codec::{decode, to_msgpack, Format};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("the key needs a name")]
    NoName,
    #[error("no key with id {0}")]
    NotFound(String),
    #[error("the keys bucket: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("an unreadable key entry: {0}")]
    Decode(#[from] crate::codec::CodecError),
}

fn nats(e: impl Into<async_nats::Error>) -> KeysError {
    KeysError::Nats(e.into())
}

/// Stores a new key and returns it with the full key, which exists nowhere else.
pub async fn create(
    bucket: &kv::Store,
    name: &str,
    scopes: Scopes,
) -> Result<(StoredKey, String), KeysError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(KeysError::NoName);
    }
    let (stored, key) = auth::generate(name, scopes);
    bucket
        .create(&stored.id, to_msgpack(&stored).into())
        .await
        .map_err(nats)?;
    Ok((stored, key))
}

/// Every key, oldest first, revoked ones included.
pub async fn list(bucket: &kv::Store) -> Result<Vec<StoredKey>, KeysError> {
    let mut keys = Vec::new();
    let mut ids = bucket.keys().await.map_err(nats)?;
    while let Some(id) = ids.next().await {
        if let Some(value) = bucket.get(id.map_err(nats)?).await.map_err(nats)? {
            keys.push(decode::<StoredKey>(&value, Format::MessagePack)?);
        }
    }
    keys.sort_by_key(|k| k.created_at);
    Ok(keys)
}

/// Marks a key revoked (kept, so listings show when); revoking a revoked key changes nothing.
pub async fn revoke(bucket: &kv::Store, id: &str) -> Result<StoredKey, KeysError> {
    let valid_id = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    let entry = match valid_id {
        true => bucket.entry(id).await.map_err(nats)?,
        false => None,
    }
    .filter(|e| e.operation == kv::Operation::Put)
    .ok_or_else(|| KeysError::NotFound(id.to_string()))?;
    let mut key: StoredKey = decode(&entry.value, Format::MessagePack)?;
    if key.revoked_at.is_none() {
        key.revoked_at = Some(Utc::now());
        bucket
            .update(id, to_msgpack(&key).into(), entry.revision)
            .await
            .map_err(nats)?;
    }
    Ok(key)
}
