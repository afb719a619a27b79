//! Sessions: a conversation with one agent that continues on any worker. A session is kept in the sessions bucket
//! under its id; each turn under `<session id>.<turn>`, written when the turn is accepted and again when it ends
//! (its message and the agent's answer: the history the next turn is given). A turn is a job like any other,
//! whose request names its session and turn; turns of one session run one at a time, in order: a worker holding
//! turn N waits until turn N-1 has ended.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{decode, to_msgpack, Format};
use crate::session_workspace::WorkspaceRef;
use crate::wire::JobStatus;

/// Where a job stands in a session: carried in the job's request (and so in its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionTurn {
    pub session_id: Uuid,
    /// 1 for the first turn.
    pub turn: u32,
}

/// A session as stored.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionRecord {
    pub session_id: Uuid,
    pub agent: String,
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The creating caller's principal, as jobs record theirs; decides who may see the session.
    pub owner: Option<String>,
    pub owner_name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Turns accepted so far (each has a key of its own).
    pub turn_count: u32,
    /// The agent's own session id (a CLI's), from the last turn that reported one.
    pub agent_session_id: Option<String>,
    /// The workspace the next turn starts from: the latest turn's that saved one.
    pub workspace: Option<WorkspaceRef>,
}

/// One turn as stored: what was asked and, once it ended, how and what the agent answered.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Turn {
    pub turn: u32,
    pub job_id: Uuid,
    pub message: String,
    pub submitted_at: DateTime<Utc>,
    /// `queued` until the turn's job ends (its live status is the job's record).
    pub status: JobStatus,
    /// The agent's answer, or what it printed when it has no answer of its own; at most [`KEPT_BYTES`].
    pub answer: Option<String>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The workspace as this turn left it, where it saved one.
    pub workspace: Option<WorkspaceRef>,
}

/// A message or an answer is kept in its turn up to this many bytes (a KV value must fit a NATS message).
pub const KEPT_BYTES: usize = 64 * 1024;

/// The most earlier turns a turn is given as history.
pub const HISTORY_TURNS: u32 = 100;

/// The first `KEPT_BYTES` of `text`, on a character boundary.
pub fn kept(text: &str) -> String {
    let mut end = text.len().min(KEPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

pub fn session_key(id: &Uuid) -> String {
    id.to_string()
}

pub fn turn_key(id: &Uuid, turn: u32) -> String {
    format!("{id}.{turn}")
}

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("unreadable session entry `{0}`")]
    Unreadable(String),
}

fn unavailable(e: impl std::fmt::Display) -> SessionStoreError {
    SessionStoreError::Unavailable(e.to_string())
}

/// A value as stored, with the revision a compare-and-set must expect.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub value: T,
    pub revision: u64,
}

/// The sessions bucket's operations, shared by the gateway and the worker.
#[derive(Clone)]
pub struct SessionStore {
    bucket: kv::Store,
    /// For the batched reads async-nats has no call for.
    client: async_nats::Client,
}

impl SessionStore {
    pub fn new(client: async_nats::Client, bucket: kv::Store) -> Self {
        Self { bucket, client }
    }

    pub fn bucket(&self) -> &kv::Store {
        &self.bucket
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Stored<T>>, SessionStoreError> {
        let entry = self.bucket.entry(key).await.map_err(unavailable)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let value = decode(&entry.value, Format::MessagePack)
            .map_err(|_| SessionStoreError::Unreadable(key.to_string()))?;
        Ok(Some(Stored {
            value,
            revision: entry.revision,
        }))
    }

    pub async fn session(
        &self,
        id: &Uuid,
    ) -> Result<Option<Stored<SessionRecord>>, SessionStoreError> {
        self.read(&session_key(id)).await
    }

    pub async fn turn(
        &self,
        id: &Uuid,
        turn: u32,
    ) -> Result<Option<Stored<Turn>>, SessionStoreError> {
        self.read(&turn_key(id, turn)).await
    }

    pub async fn create(&self, session: &SessionRecord) -> Result<(), SessionStoreError> {
        let key = session_key(&session.session_id);
        self.bucket
            .create(&key, to_msgpack(session).into())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    pub async fn conversation(
        &self,
        id: &Uuid,
    ) -> Result<Option<crate::conversation::ConversationRecord>, SessionStoreError> {
        let key = crate::conversation::conversation_key(id);
        Ok(self.read(&key).await?.map(|stored| stored.value))
    }

    pub async fn create_conversation(
        &self,
        conversation: &crate::conversation::ConversationRecord,
    ) -> Result<(), SessionStoreError> {
        let key = crate::conversation::conversation_key(&conversation.conversation_id);
        self.bucket
            .create(&key, to_msgpack(conversation).into())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Stores `turn` as it is, unless the session already has that turn (an import); whether it was stored.
    pub async fn create_turn(&self, id: &Uuid, turn: &Turn) -> Result<bool, SessionStoreError> {
        match self
            .bucket
            .create(turn_key(id, turn.turn), to_msgpack(turn).into())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Takes the next turn number after `session`'s count for `make(turn)`: the turn's key is created (never
    /// overwritten, so two gateways accepting at once get different numbers). The caller raises the session's
    /// count after ([`Self::raise_count`]); until then a reader of the session does not list the turn.
    pub async fn append(
        &self,
        session: &SessionRecord,
        make: impl Fn(u32) -> Turn,
    ) -> Result<Turn, SessionStoreError> {
        let id = &session.session_id;
        let mut number = session.turn_count + 1;
        loop {
            let turn = make(number);
            let key = turn_key(id, number);
            match self.bucket.create(&key, to_msgpack(&turn).into()).await {
                Ok(_) => return Ok(turn),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => number += 1,
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// Makes the session's count at least `number`.
    pub async fn raise_count(&self, id: &Uuid, number: u32) -> Result<(), SessionStoreError> {
        self.update_session(id, |session| {
            let raise = session.turn_count < number;
            session.turn_count = session.turn_count.max(number);
            raise
        })
        .await
    }

    /// Changes the session by compare-and-set, reading it again when another writer came first; `change` says
    /// whether there is anything to write. A deleted session is left deleted.
    async fn update_session(
        &self,
        id: &Uuid,
        change: impl Fn(&mut SessionRecord) -> bool,
    ) -> Result<(), SessionStoreError> {
        self.update(&session_key(id), None, change).await
    }

    /// Changes the entry at `key` by compare-and-set, as `update_session` does, starting from `seen` where the
    /// caller has just read it; a missing entry is left missing.
    async fn update<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        seen: Option<Stored<T>>,
        change: impl Fn(&mut T) -> bool,
    ) -> Result<(), SessionStoreError> {
        let mut seen = seen;
        for _ in 0..20 {
            let stored = match seen.take() {
                Some(stored) => stored,
                None => match self.read::<T>(key).await? {
                    Some(stored) => stored,
                    None => return Ok(()),
                },
            };
            let mut value = stored.value;
            if !change(&mut value) {
                return Ok(());
            }
            let payload = to_msgpack(&value).into();
            if self
                .bucket
                .update(key, payload, stored.revision)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(SessionStoreError::Unavailable(format!(
            "`{key}` kept changing"
        )))
    }

    /// Records how a turn ended (once: a turn already ended is left as it is) and, in the session, the turn's
    /// count, the agent's session id and the workspace the turn left; the two writes go together. Returns the
    /// workspace state this one replaced, which nothing reads any more.
    pub async fn end_turn(
        &self,
        id: &Uuid,
        ended: &Turn,
        agent_session_id: Option<&str>,
        seen: Seen,
    ) -> Result<Option<WorkspaceRef>, SessionStoreError> {
        let (turn_key, session_key) = (turn_key(id, ended.turn), session_key(id));
        let turn_written = self.update(&turn_key, seen.turn, |turn: &mut Turn| {
            // Only the ending's fields: the message may have been set since `ended` was read.
            let open = !turn.status.is_terminal();
            if open {
                turn.status = ended.status;
                turn.answer.clone_from(&ended.answer);
                turn.ended_at = ended.ended_at;
                turn.workspace.clone_from(&ended.workspace);
            }
            open
        });
        let replaced = std::sync::Mutex::new(None);
        let session_written = self.update(&session_key, seen.session, |session| {
            let replacing = session_after(session, ended, agent_session_id);
            if let Ok(mut replaced) = replaced.lock() {
                *replaced = replacing.clone().flatten();
            }
            replacing.is_some()
        });
        tokio::try_join!(turn_written, session_written)?;
        Ok(replaced.into_inner().unwrap_or_default())
    }

    /// Sets what turn `turn` was asked (a conversation's exchange learns its message only when it runs).
    pub async fn set_turn_message(
        &self,
        id: &Uuid,
        turn: u32,
        message: &str,
    ) -> Result<(), SessionStoreError> {
        let message = kept(message);
        self.update(&turn_key(id, turn), None, |t: &mut Turn| {
            let changed = t.message != message;
            t.message = message.clone();
            changed
        })
        .await
    }

    /// Turns `from..=to` that exist, in order; one round trip for a hundred turns.
    pub async fn turns(
        &self,
        id: &Uuid,
        from: u32,
        to: u32,
    ) -> Result<Vec<Turn>, SessionStoreError> {
        let keys: Vec<String> = (from.max(1)..=to).map(|n| turn_key(id, n)).collect();
        let mut turns: Vec<Turn> = self.read_many(&keys).await?;
        turns.sort_unstable_by_key(|t| t.turn);
        Ok(turns)
    }

    /// The sessions of `ids` that exist, in the order of `ids`.
    pub async fn sessions(&self, ids: &[Uuid]) -> Result<Vec<SessionRecord>, SessionStoreError> {
        let keys: Vec<String> = ids.iter().map(session_key).collect();
        let read: Vec<SessionRecord> = self.read_many(&keys).await?;
        let mut found: std::collections::HashMap<Uuid, SessionRecord> =
            read.into_iter().map(|s| (s.session_id, s)).collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The values of `keys` that hold one, in no particular order: in batches, or many gets at a time from a
    /// server without batched reads.
    async fn read_many<T: serde::de::DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<T>, SessionStoreError> {
        use futures::{StreamExt, TryStreamExt};
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(crate::kv_batch::MAX_KEYS) {
            match crate::kv_batch::latest(&self.client, &self.bucket, chunk).await {
                Ok(found) => {
                    for (key, value) in found {
                        let value = decode(&value, Format::MessagePack)
                            .map_err(|_| SessionStoreError::Unreadable(key))?;
                        values.push(value);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading key by key");
                    let read: Vec<Option<Stored<T>>> = futures::stream::iter(chunk.to_vec())
                        .map(|key| async move { self.read(&key).await })
                        .buffered(32)
                        .try_collect()
                        .await?;
                    values.extend(read.into_iter().flatten().map(|s| s.value));
                }
            }
        }
        Ok(values)
    }

    /// The ids of every session, newest first (they are UUID v7): the bucket's one-token subjects, so turns and
    /// conversations are never read.
    pub async fn session_ids(&self) -> Result<Vec<Uuid>, SessionStoreError> {
        use futures::TryStreamExt;
        let filter = format!("{}*", self.bucket.prefix);
        let stream = self.bucket.stream.clone();
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(filter)
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut ids: Vec<Uuid> = subjects
            .iter()
            .filter_map(|(subject, _)| subject.strip_prefix(&self.bucket.prefix)?.parse().ok())
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// Removes the session and its turns.
    pub async fn delete(&self, session: &SessionRecord) -> Result<(), SessionStoreError> {
        let id = session.session_id;
        for number in 1..=session.turn_count {
            self.bucket
                .purge(turn_key(&id, number))
                .await
                .map_err(unavailable)?;
        }
        self.bucket
            .purge(session_key(&id))
            .await
            .map_err(unavailable)
    }
}

/// What a writer has just read, so its compare-and-set need not read again.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub turn: Option<Stored<Turn>>,
    pub session: Option<Stored<SessionRecord>>,
}

/// Changes `session` as `ended` leaves it: its count covers the turn, the agent's session id and the newest
/// workspace are kept. None when nothing changes; else the workspace state replaced, if nothing reads it now.
fn session_after(
    session: &mut SessionRecord,
    ended: &Turn,
    agent_session_id: Option<&str>,
) -> Option<Option<WorkspaceRef>> {
    let mut changed = session.turn_count < ended.turn;
    session.turn_count = session.turn_count.max(ended.turn);
    if let Some(agent_session_id) = agent_session_id {
        changed |= session.agent_session_id.as_deref() != Some(agent_session_id);
        session.agent_session_id = Some(agent_session_id.to_string());
    }
    let newer = |new: &WorkspaceRef| {
        session
            .workspace
            .as_ref()
            .is_none_or(|now| new.turn > now.turn)
    };
    let mut replaced = None;
    if let Some(new) = ended.workspace.as_ref().filter(|new| newer(new)) {
        let old = session.workspace.replace(new.clone());
        replaced = old.filter(|old| old.manifest != new.manifest);
        changed = true;
    }
    changed.then_some(replaced)
}

/// A session's history as chat messages: each earlier turn's message, then its answer where it has one.
pub fn history_chat(turns: &[Turn]) -> Vec<crate::chat::ChatMessage> {
    use crate::chat::{ChatMessage, ChatRole};
    turns
        .iter()
        .flat_map(|t| {
            let answer = t.answer.as_ref().filter(|a| !a.is_empty());
            std::iter::once(ChatMessage::new(ChatRole::User, t.message.clone()))
                .chain(answer.map(|a| ChatMessage::new(ChatRole::Assistant, a.clone())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(n: u32, answer: Option<&str>) -> Turn {
        Turn {
            turn: n,
            job_id: Uuid::now_v7(),
            message: format!("m{n}"),
            submitted_at: Utc::now(),
            status: JobStatus::Completed,
            answer: answer.map(str::to_string),
            ended_at: None,
            workspace: None,
        }
    }

    #[test]
    fn history_alternates_messages_and_answers_skipping_missing_answers() {
        let chat = history_chat(&[turn(1, Some("a1")), turn(2, None), turn(3, Some("a3"))]);
        let texts: Vec<_> = chat.iter().map(|m| (m.role, m.content.as_str())).collect();
        use crate::chat::ChatRole::{Assistant, User};
        assert_eq!(
            texts,
            [
                (User, "m1"),
                (Assistant, "a1"),
                (User, "m2"),
                (User, "m3"),
                (Assistant, "a3")
            ]
        );
    }

    #[test]
    fn kept_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(KEPT_BYTES);
        let cut = kept(&long);
        assert!(cut.len() <= KEPT_BYTES && cut.len() > KEPT_BYTES - 2);
        assert_eq!(kept("short"), "short");
        assert_eq!(
            turn_key(&Uuid::nil(), 3),
            "00000000-0000-0000-0000-000000000000.3"
        );
    }
}
