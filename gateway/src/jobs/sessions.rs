//! Sessions as the gateway serves them: created and read under the same ownership as jobs, listed for their
//! owner, deleted, and given messages: each message becomes the session's next turn, a job naming its session
//! and turn (the worker runs turns one at a time, in order, with the history so far).

use std::collections::BTreeMap;

use chrono::Utc;
use fleet_shared::session::{self, SessionRecord, SessionStoreError, Turn};
use fleet_shared::{ErrorCode, JobStatus};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::records;
use crate::jobs::session_index::SessionQuery;
use crate::jobs::submit::{submit, Submission, Submitted};
use crate::state::AppState;

pub fn store_error(e: SessionStoreError) -> ApiError {
    ApiError::unavailable("the session store failed", e)
}

pub fn not_found(id: &Uuid) -> ApiError {
    ApiError::new(
        ErrorCode::SessionNotFound,
        format!("no session with id {id}"),
    )
}

/// The session, if the caller may see it; one it may not see answers exactly as one that does not exist.
pub async fn get_or_404(
    state: &AppState,
    caller: &Caller,
    id: &Uuid,
) -> Result<SessionRecord, ApiError> {
    match state.sessions.session(id).await.map_err(store_error)? {
        Some(stored) if caller.may_read_owned_by(stored.value.owner.as_deref()) => Ok(stored.value),
        _ => Err(not_found(id)),
    }
}

/// What a new session is given.
pub struct NewSession {
    pub agent: String,
    pub title: Option<String>,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

pub async fn create(
    state: &AppState,
    caller: &Caller,
    new: NewSession,
) -> Result<SessionRecord, ApiError> {
    caller.may_run(&new.agent)?;
    if !fleet_shared::wire::is_valid_agent_name(&new.agent)
        || !state.agents.exists(&new.agent).await?
    {
        return Err(ApiError::new(
            ErrorCode::UnknownAgent,
            format!(
                "no agent `{}` in this fleet: GET /v1/agents lists them",
                new.agent
            ),
        ));
    }
    let session = SessionRecord {
        session_id: Uuid::now_v7(),
        agent: new.agent,
        title: new.title,
        metadata: new.metadata,
        owner: caller.owner(),
        owner_name: caller.principal().map(|p| p.name.clone()),
        created_at: Utc::now(),
        turn_count: 0,
        agent_session_id: None,
        workspace: None,
    };
    state.sessions.create(&session).await.map_err(store_error)?;
    Ok(session)
}

/// A turn as a reader sees it: its live status comes from its job while it has not ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnView {
    pub turn: u32,
    pub job_id: Uuid,
    pub message: String,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    pub submitted_at: chrono::DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<chrono::DateTime<Utc>>,
}

pub async fn turns(state: &AppState, session: &SessionRecord) -> Result<Vec<TurnView>, ApiError> {
    let turns = state
        .sessions
        .turns(&session.session_id, 1, session.turn_count)
        .await
        .map_err(store_error)?;
    let mut views = Vec::with_capacity(turns.len());
    for turn in turns {
        let status = match turn.status.is_terminal() {
            true => turn.status,
            false => records::get(state, &turn.job_id)
                .await?
                .map_or(turn.status, |r| r.status),
        };
        views.push(TurnView {
            turn: turn.turn,
            job_id: turn.job_id,
            message: turn.message,
            status,
            answer: turn.answer,
            submitted_at: turn.submitted_at,
            ended_at: turn.ended_at,
        });
    }
    Ok(views)
}

/// Takes `sub` as the session's next turn and queues its job (its agent and its place in the session are the
/// session's to set; its id, where given, was picked beforehand). A turn whose job could not be queued is
/// recorded as failed, so the turns after it do not wait for it.
pub async fn take_turn(
    state: &AppState,
    caller: &Caller,
    session: &SessionRecord,
    mut sub: Submission,
) -> Result<(Turn, Submitted), ApiError> {
    caller.may_run(&session.agent)?;
    let job_id = *sub.id.get_or_insert_with(fleet_shared::wire::new_job_id);
    let kept = session::kept(&sub.message);
    let make = |turn| Turn {
        turn,
        job_id,
        message: kept.clone(),
        submitted_at: Utc::now(),
        status: JobStatus::Queued,
        answer: None,
        ended_at: None,
        workspace: None,
    };
    let id = session.session_id;
    let turn = state
        .sessions
        .append(session, make)
        .await
        .map_err(store_error)?;
    sub.agent.clone_from(&session.agent);
    sub.session = Some(session::SessionTurn {
        session_id: id,
        turn: turn.turn,
    });
    // The count is raised while the job is queued: neither waits for the other. A count left behind is
    // raised again when the turn ends.
    let raising = state.sessions.raise_count(&id, turn.turn);
    let (raised, submitted) = tokio::join!(raising, submit(state, caller, sub));
    if let Err(e) = raised {
        tracing::warn!(session_id = %id, turn = turn.turn, error = %e, "raising the session's turn count failed");
    }
    match submitted {
        Ok(submitted) => Ok((turn, submitted)),
        Err(e) => {
            let failed = Turn {
                status: JobStatus::Failed,
                answer: Some(format!("not queued: {}", e.message)),
                ended_at: Some(Utc::now()),
                ..turn
            };
            let seen = session::Seen::default();
            if let Err(undo) = state.sessions.end_turn(&id, &failed, None, seen).await {
                tracing::warn!(session_id = %id, error = %undo, "recording a turn that was not queued failed");
            }
            Err(e)
        }
    }
}

/// Sessions read per request at most when listing without the index, past which the page ends early with a
/// cursor to go on from.
const READ_BUDGET: usize = 5_000;

/// A page of the caller's sessions, newest first, optionally of one agent, after the session `after`; and the
/// cursor of the next page when there may be more. From the gateway's index once it has read the bucket; until
/// then from the bucket itself.
pub async fn list(
    state: &AppState,
    caller: &Caller,
    asked: SessionQuery<'_>,
) -> Result<(Vec<SessionRecord>, Option<Uuid>), ApiError> {
    if !state.session_list.is_ready() {
        return list_from_bucket(state, caller, asked).await;
    }
    state.session_list.catch_up(state.sessions.bucket()).await;
    let owners = caller.readable_owners();
    let query = SessionQuery {
        owners: owners.as_deref(),
        ..asked
    };
    let (ids, next) = state.session_list.read().page(&query);
    let page = state.sessions.sessions(&ids).await.map_err(store_error)?;
    Ok((page, next))
}

async fn list_from_bucket(
    state: &AppState,
    caller: &Caller,
    asked: SessionQuery<'_>,
) -> Result<(Vec<SessionRecord>, Option<Uuid>), ApiError> {
    let SessionQuery {
        agent,
        after,
        limit,
        ..
    } = asked;
    let ids = state.sessions.session_ids().await.map_err(store_error)?;
    let start = after.map_or(0, |after| ids.partition_point(|id| *id >= after));
    let rest = &ids[start..];
    let mut page = Vec::with_capacity(limit);
    let block = limit.clamp(16, fleet_shared::kv_batch::MAX_KEYS);
    for (n, ids) in rest.chunks(block).enumerate() {
        for session in state.sessions.sessions(ids).await.map_err(store_error)? {
            let id = session.session_id;
            if caller.may_read_owned_by(session.owner.as_deref())
                && agent.is_none_or(|a| a == session.agent)
            {
                page.push(session);
            }
            if page.len() == limit {
                // Go on after the last session looked at, if any is left.
                return Ok((page, rest.last().filter(|last| **last != id).map(|_| id)));
            }
        }
        if (n + 1) * block >= READ_BUDGET && (n + 1) * block < rest.len() {
            return Ok((page, ids.last().copied()));
        }
    }
    Ok((page, None))
}

/// Removes the session's workspace files, then the session and its turns (files first: a failure leaves the
/// session there to delete again, never files nothing names).
pub async fn delete(state: &AppState, session: &SessionRecord) -> Result<(), ApiError> {
    state
        .session_files
        .delete_under(&session.session_id)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("removing the session's files: {e}"),
            )
        })?;
    state.sessions.delete(session).await.map_err(store_error)
}
