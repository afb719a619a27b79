//! The job records in KV, for the gateway and the worker alike. Every write is a compare-and-set on the revision
//! the writer last saw, so concurrent workers, redeliveries, cancels and late finishers agree: exactly one
//! terminal record per run. The records written are the lifecycle's (`lifecycle.rs`); nothing here builds one.

use std::time::Duration;

use crate::codec::{decode, to_msgpack, Format};
use crate::{JobRecord, JobStatus};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use chrono::{DateTime, Utc};

/// Bound on compare-and-set retries against writers that keep moving the record.
const MAX_CAS_ROUNDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("job record store unavailable: {0}")]
    Store(#[source] async_nats::Error),
    #[error("job record kept changing under concurrent writers")]
    Contended,
}

fn store_err(e: impl Into<async_nats::Error>) -> RecordError {
    RecordError::Store(e.into())
}

/// A record this worker holds, with the revision its next write must expect (`None`: no record is stored yet).
#[derive(Debug, Clone)]
pub struct Held {
    pub record: JobRecord,
    pub revision: Option<u64>,
}

#[derive(Debug)]
pub enum Claim {
    /// This worker now runs the job.
    Claimed(Held),
    /// Another writer already ended the job: ack and skip.
    AlreadyTerminal,
    /// The job's last holder vanished and no attempt is left: record it failed.
    Exhausted(Held),
}

/// Reads the current record, treating a deleted or unreadable entry as absent.
pub async fn current(store: &kv::Store, key: &str) -> Result<Option<Held>, RecordError> {
    let Some(entry) = store.entry(key).await.map_err(store_err)? else {
        return Ok(None);
    };
    if entry.operation != Operation::Put {
        return Ok(None);
    }
    match decode::<JobRecord>(&entry.value, Format::MessagePack) {
        Ok(record) => Ok(Some(Held {
            record,
            revision: Some(entry.revision),
        })),
        Err(e) => {
            tracing::warn!(key, error = %e, "unreadable job record; it will be replaced");
            Ok(Some(Held {
                record: JobRecord::queued(placeholder_request(key)),
                revision: Some(entry.revision),
            }))
        }
    }
}

fn placeholder_request(key: &str) -> crate::JobRequest {
    let mut request = crate::JobRequest::new(
        // Keys are job ids; a stray key gets the nil id, which no job has.
        key.parse().unwrap_or_default(),
        "",
        String::new(),
        Utc::now(),
    );
    request.return_files = false;
    request
}

/// Claims the job for `worker` in as few round trips as the common cases allow: with `queued_revision` (the
/// gateway's `queued` record, named in a header) one compare-and-set; without it (a direct publisher, first
/// delivery) one create. Anything else — redeliveries, races — reads the record and decides.
pub async fn claim(
    store: &kv::Store,
    key: &str,
    queued: JobRecord,
    queued_revision: Option<u64>,
    worker: &str,
    max_attempts: u32,
    started_at: DateTime<Utc>,
) -> Result<Claim, RecordError> {
    let record = queued.clone().claimed(worker, started_at);
    let payload: bytes::Bytes = to_msgpack(&record).into();
    let fast = match queued_revision {
        Some(rev) => store
            .update(key, payload, rev)
            .await
            .map_err(|e| (e.kind() == UpdateErrorKind::WrongLastRevision, store_err(e))),
        None => store
            .create(key, payload)
            .await
            .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, store_err(e))),
    };
    match fast {
        Ok(revision) => {
            return Ok(Claim::Claimed(Held {
                record,
                revision: Some(revision),
            }))
        }
        // Someone wrote the record first: read it and decide below.
        Err((true, _)) => {}
        Err((false, e)) => return Err(e),
    }
    for _ in 0..MAX_CAS_ROUNDS {
        match current(store, key).await? {
            // A stored record always has a revision; the second pattern only satisfies the type.
            None | Some(Held { revision: None, .. }) => {
                let record = queued.clone().claimed(worker, started_at);
                match store.create(key, to_msgpack(&record).into()).await {
                    Ok(revision) => {
                        return Ok(Claim::Claimed(Held {
                            record,
                            revision: Some(revision),
                        }))
                    }
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(store_err(e)),
                }
            }
            Some(held) if held.record.status.is_terminal() => return Ok(Claim::AlreadyTerminal),
            Some(held)
                if held.record.status == JobStatus::Running
                    && held.record.attempts_this_run() >= max_attempts =>
            {
                return Ok(Claim::Exhausted(held));
            }
            Some(Held {
                record,
                revision: Some(revision),
            }) => {
                let record = record.claimed(worker, started_at);
                match store
                    .update(key, to_msgpack(&record).into(), revision)
                    .await
                {
                    Ok(revision) => {
                        return Ok(Claim::Claimed(Held {
                            record,
                            revision: Some(revision),
                        }))
                    }
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
    }
    Err(RecordError::Contended)
}

/// The `running` record of a job this worker starts before claiming it (a deferred claim): not written yet, so
/// its revision is the one the claim — or, for a short job, the terminal write — must expect.
pub fn unclaimed(queued: JobRecord, queued_revision: Option<u64>, worker: &str) -> Held {
    Held {
        record: queued.claimed(worker, Utc::now()),
        revision: queued_revision,
    }
}

/// A record with its MessagePack encoding, made once: the bytes stored are the bytes announced.
#[derive(Debug, Clone)]
pub struct Encoded {
    record: JobRecord,
    msgpack: bytes::Bytes,
}

impl Encoded {
    pub fn new(record: JobRecord) -> Self {
        let msgpack = to_msgpack(&record).into();
        Self { record, msgpack }
    }

    pub fn record(&self) -> &JobRecord {
        &self.record
    }

    /// The encoding, shared (not copied) by every message that carries it.
    pub fn msgpack(&self) -> bytes::Bytes {
        self.msgpack.clone()
    }

    pub fn len(&self) -> usize {
        self.msgpack.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgpack.is_empty()
    }

    pub fn into_record(self) -> JobRecord {
        self.record
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    /// Our terminal record is the job's terminal record.
    Written,
    /// Someone else's terminal record was there first; ours was not written.
    AlreadyTerminal,
}

/// Writes `terminal` unless the job already has a terminal record. Store outages are waited out with backoff
/// (a result is never dropped because NATS was briefly away); only `give_up` stops the retries.
pub async fn finish(
    store: &kv::Store,
    key: &str,
    expected: Option<u64>,
    terminal: &Encoded,
    give_up: &tokio_util::sync::CancellationToken,
) -> Result<Finish, RecordError> {
    debug_assert!(terminal.record.status.is_terminal());
    let payload = &terminal.msgpack;
    let mut expected = expected;
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = match expected {
            Some(rev) => store
                .update(key, payload.clone(), rev)
                .await
                .map_err(|e| (e.kind() == UpdateErrorKind::WrongLastRevision, store_err(e))),
            None => store
                .create(key, payload.clone())
                .await
                .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, store_err(e))),
        };
        match attempt {
            Ok(_) => return Ok(Finish::Written),
            Err((true, _)) => match current(store, key).await {
                // Our own earlier write, whose answer was lost (a NATS node failed over): it is ours.
                Ok(Some(held)) if held.record == terminal.record => return Ok(Finish::Written),
                Ok(Some(held)) if held.record.status.is_terminal() => {
                    return Ok(Finish::AlreadyTerminal)
                }
                Ok(Some(held)) => expected = held.revision,
                Ok(None) => expected = None,
                Err(e) => {
                    tracing::warn!(key, error = %e, "reading the job record failed; retrying")
                }
            },
            Err((false, e)) => {
                tracing::warn!(key, error = %e, retry_in_ms = backoff.as_millis() as u64, "writing the terminal record failed; retrying");
                tokio::select! {
                    _ = give_up.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes `record` only if the job has no record at all: for messages the fleet refuses, which must never end
/// a job someone else submitted under the same id. `false`: a record was there and is left alone.
pub async fn create_only(
    store: &kv::Store,
    key: &str,
    record: &Encoded,
) -> Result<bool, RecordError> {
    match store.create(key, record.msgpack.clone()).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(store_err(e)),
    }
}

/// Hands a job this worker could not finish back to the queue (worker shutdown). Leaves the record alone if
/// another writer moved it meanwhile.
pub async fn requeue(store: &kv::Store, key: &str, held: &Held) -> Result<(), RecordError> {
    let Some(revision) = held.revision else {
        return Ok(());
    };
    replace(store, key, &held.record.clone().handed_back(), revision)
        .await
        .map(drop)
}

/// What a compare-and-set replacement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// Written; the record's new revision.
    Written(u64),
    /// Another writer moved the record since `revision`: read it again and decide.
    Moved,
}

/// Replaces the record at `revision` with `record`, a transition of it.
pub async fn replace(
    store: &kv::Store,
    key: &str,
    record: &JobRecord,
    revision: u64,
) -> Result<Replaced, RecordError> {
    match store.update(key, to_msgpack(record).into(), revision).await {
        Ok(revision) => Ok(Replaced::Written(revision)),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Replaced::Moved),
        Err(e) => Err(store_err(e)),
    }
}
