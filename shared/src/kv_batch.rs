//! Reading many keys of a KV bucket in one request: JetStream's batched direct get (`multi_last`, NATS ≥ 2.11),
//! which answers with the latest message of each subject and an end-of-batch marker. A session's history of a
//! hundred turns is one round trip instead of a hundred gets.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

/// A multi-subject get may name at most this many subjects (the server answers 413 past it).
pub const MAX_KEYS: usize = 1024;

/// How long the whole batch may take before the read counts as failed.
const BATCH_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("batched read failed: {0}")]
    Failed(String),
    /// The server does not know batched gets (before NATS 2.11): the caller reads key by key.
    #[error("the server does not support batched reads")]
    Unsupported,
}

#[derive(Serialize)]
struct MultiLast<'a> {
    multi_last: &'a [String],
    batch: usize,
}

/// The current value of each of `keys` that holds one (deleted and purged keys are left out), as (key, value).
/// `keys` are at most [`MAX_KEYS`].
pub async fn latest(
    client: &Client,
    bucket: &kv::Store,
    keys: &[String],
) -> Result<Vec<(String, Bytes)>, BatchError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let subjects: Vec<String> = keys
        .iter()
        .map(|key| format!("{}{key}", bucket.prefix))
        .collect();
    let body = serde_json::to_vec(&MultiLast {
        multi_last: &subjects,
        batch: subjects.len(),
    })
    .map_err(|e| BatchError::Failed(e.to_string()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BatchError::Failed(e.to_string()))?;
    // The default JetStream API prefix: the fleet's contexts are made with `jetstream::new`.
    let api = format!("$JS.API.DIRECT.GET.{}", bucket.stream_name);
    client
        .publish_with_reply(api, inbox, body.into())
        .await
        .map_err(|e| BatchError::Failed(e.to_string()))?;
    let collecting = async {
        let mut found = Vec::with_capacity(keys.len());
        while let Some(message) = replies.next().await {
            // 204: the end of the batch; 404: none of the keys holds a value.
            match message.status.map(|s| s.as_u16()) {
                Some(204 | 404) => return Ok(found),
                Some(status) if status != 200 => {
                    return Err(BatchError::Failed(format!("the server answered {status}")))
                }
                _ => {}
            }
            let headers = message.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
            if header("Nats-Num-Pending").is_none() {
                return Err(BatchError::Unsupported); // an old server answers one message, unbatched
            }
            let removed = matches!(header("KV-Operation"), Some("DEL" | "PURGE"));
            let key = header("Nats-Subject")
                .and_then(|s| s.strip_prefix(bucket.prefix.as_str()))
                .map(str::to_string);
            if let (Some(key), false) = (key, removed) {
                found.push((key, message.payload));
            }
        }
        Err(BatchError::Failed("the reply subscription ended".into()))
    };
    tokio::time::timeout(BATCH_WAIT, collecting)
        .await
        .map_err(|_| BatchError::Failed("no end of batch in time".into()))?
}
