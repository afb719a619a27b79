//! A session's turn on the worker: it runs only once the turn before it has ended (until then the message goes
//! back to the queue with a delay and the record says what it waits for), it is given the session's history
//! (a model as chat messages, a command as `.fleet/history.json` in its workspace, `{history_file}`), and its end
//! is written into the session's turn, which is the history of the turns after it.

use std::time::Duration;

use chrono::Utc;
use fleet_shared::record_store::{self as records, Replaced};
use fleet_shared::session::{self, SessionStoreError, SessionTurn, Turn};
use fleet_shared::session_workspace::WorkspaceRef;
use fleet_shared::wire::InputFile;
use fleet_shared::{JobRecord, JobStatus};
use serde::Serialize;

use crate::Shared;

/// Where the history file goes in a turn's workspace.
pub const HISTORY_FILE: &str = ".fleet/history.json";

/// How long a turn whose job has no record (never queued: its gateway died) is waited for.
const UNQUEUED_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Whether a turn may run now.
pub enum Gate {
    /// It may: from the earlier turns, oldest first (at most `session::HISTORY_TURNS`), and the workspace the
    /// session keeps.
    Go(Start),
    /// The turn before it has not ended: hand the message back for this long.
    Wait(Duration),
    /// It never may: its session has no such turn for this job (deleted, or a publisher naming a session that
    /// is not its own: only a gateway, after the owner's check, gives a job a turn).
    Refuse(String),
}

/// What a turn starts from.
#[derive(Debug, Default)]
pub struct Start {
    pub history: Vec<Turn>,
    pub workspace: Option<WorkspaceRef>,
    /// The agent's own session id, as the turns before reported it.
    pub agent_session: Option<String>,
}

/// Decides whether turn `st` of job `job_id` runs now; `delivered` counts the message's deliveries (waits grow
/// with it).
pub async fn gate(
    shared: &Shared,
    job_id: &uuid::Uuid,
    st: &SessionTurn,
    delivered: i64,
) -> Result<Gate, SessionStoreError> {
    let own = shared.sessions.turn(&st.session_id, st.turn).await?;
    if own.as_ref().is_none_or(|t| t.value.job_id != *job_id) {
        return Ok(Gate::Refuse(format!(
            "session {} has no turn {} for this job (deleted, or not this job's to join)",
            st.session_id, st.turn
        )));
    }
    if st.turn > 1 && !previous_ended(shared, st).await? {
        let steps = u32::try_from(delivered.clamp(1, 6)).unwrap_or(6);
        return Ok(Gate::Wait(Duration::from_millis(100) * 2u32.pow(steps - 1)));
    }
    let from = st.turn.saturating_sub(session::HISTORY_TURNS).max(1);
    let history = shared
        .sessions
        .turns(&st.session_id, from, st.turn - 1)
        .await?;
    let session = shared.sessions.session(&st.session_id).await?;
    let (workspace, agent_session) = session
        .map(|s| (s.value.workspace, s.value.agent_session_id))
        .unwrap_or_default();
    Ok(Gate::Go(Start {
        history,
        workspace,
        agent_session,
    }))
}

/// Whether the turn before `st` has ended, reconciling its entry with its job's record when the worker that ran
/// it did not get to write it.
async fn previous_ended(shared: &Shared, st: &SessionTurn) -> Result<bool, SessionStoreError> {
    let Some(previous) = shared.sessions.turn(&st.session_id, st.turn - 1).await? else {
        return Ok(true); // deleted with its session
    };
    let previous = previous.value;
    if previous.status.is_terminal() {
        return Ok(true);
    }
    let key = shared.topology.record_key(&previous.job_id);
    let held = records::current(&shared.records, &key)
        .await
        .map_err(|e| SessionStoreError::Unavailable(e.to_string()))?;
    let ended = match held {
        Some(held) if held.record.status.is_terminal() => ended_turn(previous, &held.record),
        Some(_) => return Ok(false),
        None if Utc::now() - previous.submitted_at > UNQUEUED_GRACE => Turn {
            status: JobStatus::Failed,
            answer: Some("its job was never queued, or its record is gone".into()),
            ended_at: Some(Utc::now()),
            ..previous
        },
        None => return Ok(false),
    };
    shared
        .sessions
        .end_turn(&st.session_id, &ended, None)
        .await?;
    Ok(true)
}

/// The turn as its job ended: status, the agent's answer (or what it printed), when.
pub fn ended_turn(turn: Turn, record: &JobRecord) -> Turn {
    let said = record.answer.as_deref().unwrap_or(record.stdout.trim_end());
    Turn {
        status: record.status,
        answer: Some(session::kept(said)),
        ended_at: Some(record.finished_at.unwrap_or_else(Utc::now)),
        workspace: record.session_workspace.clone(),
        ..turn
    }
}

/// Writes how a session's turn ended into the session, after its terminal record.
pub async fn turn_ended(shared: &Shared, record: &JobRecord) {
    let Some(st) = record.request.session else {
        return;
    };
    let ending = async {
        let Some(stored) = shared.sessions.turn(&st.session_id, st.turn).await? else {
            return Ok::<(), SessionStoreError>(()); // the session was deleted meanwhile
        };
        if stored.value.job_id != record.id {
            return Ok(()); // a job naming a turn that is not its own (refused) changes nothing there
        }
        let ended = ended_turn(stored.value, record);
        let agent_session = record.agent_session_id.as_deref();
        let replaced = shared
            .sessions
            .end_turn(&st.session_id, &ended, agent_session)
            .await?;
        if let (Some(old), Some(new)) = (replaced, ended.workspace) {
            forget_later(shared, st.session_id, old, new);
        }
        Ok(())
    };
    if let Err(e) = ending.await {
        // The next turn reconciles it from this job's record.
        tracing::warn!(session_id = %st.session_id, turn = st.turn, error = %e, "recording the turn's end in its session failed");
    }
}

/// Removes a replaced workspace state off the turn's path (the next turn reads only the new one).
fn forget_later(shared: &Shared, session: uuid::Uuid, old: WorkspaceRef, new: WorkspaceRef) {
    let store = shared.session_files.clone();
    tokio::spawn(async move {
        crate::session_workspace::forget(&store, &session, &old, &new).await;
    });
}

/// Says in a waiting turn's record what it waits for (once; the record stays `queued`).
pub async fn mark_waiting(shared: &Shared, key: &str, st: &SessionTurn) {
    let why = format!("waiting for turn {} of its session to end", st.turn - 1);
    let Ok(Some(held)) = records::current(&shared.records, key).await else {
        return;
    };
    let (Some(revision), JobStatus::Queued) = (held.revision, held.record.status) else {
        return;
    };
    if held.record.waiting.as_deref() == Some(why.as_str()) {
        return;
    }
    match records::replace(
        &shared.records,
        key,
        &held.record.waiting_for(why),
        revision,
    )
    .await
    {
        // Moved: a claim or a cancel came first, and says more than this would.
        Ok(Replaced::Written(_) | Replaced::Moved) => {}
        Err(e) => tracing::debug!(error = %e, "noting what the turn waits for failed"),
    }
}

#[derive(Serialize)]
struct HistoryEntry<'a> {
    turn: u32,
    message: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a str>,
}

/// The history as the input file a command agent finds in its workspace.
pub fn history_file(history: &[Turn]) -> InputFile {
    use base64::Engine;
    let entries: Vec<HistoryEntry<'_>> = history
        .iter()
        .map(|t| HistoryEntry {
            turn: t.turn,
            message: &t.message,
            status: t.status.as_str(),
            answer: t.answer.as_deref(),
        })
        .collect();
    // A list of plain structs always serializes.
    let json = serde_json::to_vec_pretty(&entries).unwrap_or_default();
    InputFile {
        name: HISTORY_FILE.to_string(),
        data_base64: Some(base64::engine::general_purpose::STANDARD.encode(json)),
        from: None,
        size: None,
    }
}
