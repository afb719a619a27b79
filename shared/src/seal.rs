//! The gateway's word that a job message's record revision is its own. The gateway passes its `queued` record's
//! revision in a header so a worker can claim (or end a short job) in one compare-and-set without reading the
//! record first; taken on trust, a publisher could name the revision of another job's *terminal* record and have
//! it replaced. So the header is sealed: an HMAC-SHA256 over the job id, the run and the revision, with a key the
//! fleet keeps in its config bucket. Publishers allowed only to publish jobs cannot read that bucket, so they cannot
//! seal; a message whose seal does not verify is treated as published straight to NATS (its record is read before
//! it runs).

use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Key of the sealing key in the config bucket (never served by any route).
const SEAL_KEY: &str = "seal_key";
const BLOCK: usize = 64;

#[derive(Clone)]
pub struct Sealer([u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("cannot load or create the fleet's sealing key: {0}")]
pub struct SealError(#[source] async_nats::Error);

impl Sealer {
    /// The fleet's key, made on first use: whichever process creates it first, every process then reads the same.
    pub async fn load(config: &kv::Store) -> Result<Self, SealError> {
        for _ in 0..3 {
            if let Some(value) = config
                .get(SEAL_KEY)
                .await
                .map_err(|e| SealError(e.into()))?
            {
                if let Ok(key) = <[u8; 32]>::try_from(value.as_ref()) {
                    return Ok(Self(key));
                }
            }
            let mut key = [0u8; 32];
            key[..16].copy_from_slice(Uuid::new_v4().as_bytes());
            key[16..].copy_from_slice(Uuid::new_v4().as_bytes());
            match config.create(SEAL_KEY, key.to_vec().into()).await {
                Ok(_) => return Ok(Self(key)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SealError(e.into())),
            }
        }
        Err(SealError("the sealing key kept changing".into()))
    }

    /// A sealer with a fixed key, for tests.
    pub fn with_key(key: [u8; 32]) -> Self {
        Self(key)
    }

    pub fn seal(&self, id: &Uuid, generation: u32, revision: u64) -> String {
        let mut message = Vec::with_capacity(28);
        message.extend_from_slice(id.as_bytes());
        message.extend_from_slice(&generation.to_be_bytes());
        message.extend_from_slice(&revision.to_be_bytes());
        hmac_sha256(&self.0, &message)[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn verifies(&self, id: &Uuid, generation: u32, revision: u64, seal: &str) -> bool {
        same(&self.seal(id, generation, revision), seal)
    }

    /// A key for `purpose`, derived from the fleet's, so a MAC made for one purpose never verifies for another.
    pub fn derived(&self, purpose: &str) -> [u8; 32] {
        hmac_sha256(&self.0, purpose.as_bytes())
    }
}

/// Whether two MACs (as text) are equal, compared in full whatever differs first, so the time taken says nothing
/// about the expected one.
pub fn same(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len()
        && expected
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The fleet's key as the config bucket has it, followed by a watch: for workers, which only read the bucket (the
/// gateway creates the key). Until the key is seen nothing verifies, and every message counts as a direct publish.
#[derive(Clone, Default)]
pub struct FollowedSealer(Arc<RwLock<Option<Sealer>>>);

impl FollowedSealer {
    pub async fn follow(config: &kv::Store) -> Result<Self, SealError> {
        let followed = Self::default();
        let first = config
            .watch_with_history(SEAL_KEY)
            .await
            .map_err(|e| SealError(e.into()))?;
        let target = followed.clone();
        let bucket = config.clone();
        tokio::spawn(crate::watch::follow(
            "the seal key",
            first,
            move || {
                let bucket = bucket.clone();
                async move { bucket.watch_with_history(SEAL_KEY).await }
            },
            move |entry| {
                // A value that is not a 32-byte key (a delete's empty value) leaves the key held as it is.
                let key = <[u8; 32]>::try_from(entry.value.as_ref()).ok();
                if let (Operation::Put, Some(key), Ok(mut slot)) =
                    (entry.operation, key, target.0.write())
                {
                    *slot = Some(Sealer(key));
                }
            },
        ));
        Ok(followed)
    }

    /// A followed sealer that already has its key, for tests.
    pub fn fixed(sealer: Sealer) -> Self {
        Self(Arc::new(RwLock::new(Some(sealer))))
    }

    pub fn verifies(&self, id: &Uuid, generation: u32, revision: u64, seal: &str) -> bool {
        self.0
            .read()
            .ok()
            .and_then(|s| {
                s.as_ref()
                    .map(|s| s.verifies(id, generation, revision, seal))
            })
            .unwrap_or(false)
    }
}

/// HMAC (RFC 2104) over SHA-256, for a key of one block (64 bytes) or less; a longer key is hashed first, as the
/// RFC says.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut padded = [0u8; BLOCK];
    if key.len() > BLOCK {
        padded[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        padded[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| padded.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2 has a 4-byte key ("Jefe"); padded to 32 bytes with zeros it is the same HMAC key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_seal_verifies_only_for_its_job_run_and_revision() {
        let sealer = Sealer::with_key([7; 32]);
        let id = Uuid::now_v7();
        let seal = sealer.seal(&id, 0, 42);
        assert!(sealer.verifies(&id, 0, 42, &seal));
        assert!(!sealer.verifies(&id, 0, 43, &seal));
        assert!(!sealer.verifies(&id, 1, 42, &seal));
        assert!(!sealer.verifies(&Uuid::now_v7(), 0, 42, &seal));
        assert!(!Sealer::with_key([8; 32]).verifies(&id, 0, 42, &seal));
    }
}
