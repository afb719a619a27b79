//! A session's turn on the worker: it runs only once the turn before it has ended (until then the message goes
//! back to the queue with a delay and the record says what it waits for), it is given the session's history
//! (a model as chat messages, a command as `.fleet/history.json` in its workspace, `{history_file}`), and its end
//! is written into the session's turn, which is the history of the turns after it.

use std::time::Duration;

use chrono::Utc;
use fleet_shared::conversation::{self, ConversationStep};
use fleet_shared::record_store as records;
use fleet_shared::session::{self, Seen, SessionStoreError, SessionTurn, Turn};
use fleet_shared::session_workspace::WorkspaceRef;
use fleet_shared::wire::InputFile;
use fleet_shared::{JobRecord, JobRequest, JobStatus};
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
    Go(Box<Start>),
    /// The turn before it has not ended: hand the message back for this long; what it waits for.
    Wait(Duration, String),
    /// It never may: its session has no such turn for this job (deleted, or a publisher naming a session that
    /// is not its own: only a gateway, after the owner's check, gives a job a turn).
    Refuse(String),
    /// It never will: the conversation it is part of has ended before it.
    Stop(String),
}

/// What a turn starts from.
#[derive(Debug, Default)]
pub struct Start {
    pub history: Vec<Turn>,
    pub workspace: Option<WorkspaceRef>,
    /// The agent's own session id, as the turns before reported it.
    pub agent_session: Option<String>,
    /// A conversation's exchange: its message, the answer of the exchange before.
    pub message: Option<String>,
    /// The turn's entry (checked to be this job's) and the session as the gate read them, for writing the
    /// turn's end without reading them again.
    pub seen: Seen,
}

/// Decides whether `request`, turn `st` of its session, runs now; `delivered` counts the message's deliveries
/// (waits grow with it).
pub async fn gate(
    shared: &Shared,
    request: &JobRequest,
    st: &SessionTurn,
    delivered: i64,
) -> Result<Gate, SessionStoreError> {
    // Everything a turn that may go needs, read at once: its own entry, the history (whose last entry is the
    // turn before it) and the session; one round trip in the common case.
    let from = st.turn.saturating_sub(session::HISTORY_TURNS).max(1);
    let read = || async {
        tokio::try_join!(
            shared.sessions.turn(&st.session_id, st.turn),
            shared
                .sessions
                .turns(&st.session_id, from, st.turn.saturating_sub(1)),
            shared.sessions.session(&st.session_id)
        )
    };
    let (own, mut history, mut session) = read().await?;
    let Some(mut own) = own.filter(|t| t.value.job_id == request.id) else {
        return Ok(Gate::Refuse(format!(
            "session {} has no turn {} for this job (deleted, or not this job's to join)",
            st.session_id, st.turn
        )));
    };
    let steps = u32::try_from(delivered.clamp(1, 6)).unwrap_or(6);
    let delay = Duration::from_millis(100) * 2u32.pow(steps - 1);
    let previous = history.last().filter(|t| t.turn + 1 == st.turn).cloned();
    match previous_ended(shared, st, previous).await? {
        Previous::Ended => {}
        Previous::Reconciled => {
            let again = read().await?;
            (history, session) = (again.1, again.2);
            own = again.0.unwrap_or(own);
        }
        Previous::Running => {
            let why = format!("waiting for turn {} of its session to end", st.turn - 1);
            return Ok(Gate::Wait(delay, why));
        }
    }
    let message = match &request.conversation {
        None => None,
        Some(step) => match said_before(shared, step, request.submitted_at).await? {
            Said::Message(message) => message,
            Said::Wait => {
                let why = format!(
                    "waiting for exchange {} of its conversation to end",
                    step.exchange - 1
                );
                return Ok(Gate::Wait(delay, why));
            }
            Said::Stop(why) => return Ok(Gate::Stop(why)),
        },
    };
    if let Some(message) = &message {
        shared
            .sessions
            .set_turn_message(&st.session_id, st.turn, message)
            .await?;
    }
    let (workspace, agent_session) = session
        .as_ref()
        .map(|s| (s.value.workspace.clone(), s.value.agent_session_id.clone()))
        .unwrap_or_default();
    Ok(Gate::Go(Box::new(Start {
        history,
        workspace,
        agent_session,
        message,
        seen: Seen {
            turn: Some(own),
            session,
        },
    })))
}

/// What the exchange before a conversation's exchange said.
enum Said {
    /// Its answer, this exchange's message (none for the opening exchange, whose message is its own).
    Message(Option<String>),
    Wait,
    Stop(String),
}

async fn said_before(
    shared: &Shared,
    step: &ConversationStep,
    submitted_at: chrono::DateTime<Utc>,
) -> Result<Said, SessionStoreError> {
    let Some(follows) = step.follows else {
        return Ok(Said::Message(None));
    };
    let key = shared.topology.record_key(&follows);
    let held = records::current(&shared.records, &key)
        .await
        .map_err(|e| SessionStoreError::Unavailable(e.to_string()))?;
    let before = step.exchange - 1;
    let Some(held) = held else {
        if Utc::now() - submitted_at > UNQUEUED_GRACE {
            let why = format!("the conversation stopped: exchange {before} was never queued");
            return Ok(Said::Stop(why));
        }
        return Ok(Said::Wait);
    };
    let record = held.record;
    match record.status {
        JobStatus::Completed => {}
        status if status.is_terminal() => {
            let why = format!(
                "the conversation stopped: exchange {before} ended {}",
                status.as_str()
            );
            return Ok(Said::Stop(why));
        }
        _ => return Ok(Said::Wait),
    }
    let answer = record
        .answer
        .unwrap_or_else(|| record.stdout.trim_end().to_string());
    Ok(match conversation::next_runs(&answer, step) {
        Ok(()) => Said::Message(Some(answer)),
        Err(why) => Said::Stop(why),
    })
}

/// Where the turn before a turn stands.
enum Previous {
    Ended,
    /// It had ended without its entry saying so, which it says now.
    Reconciled,
    Running,
}

/// Whether the turn before `st` has ended, reconciling its entry with its job's record when the worker that ran
/// it did not get to write it.
async fn previous_ended(
    shared: &Shared,
    st: &SessionTurn,
    previous: Option<Turn>,
) -> Result<Previous, SessionStoreError> {
    let Some(previous) = previous else {
        return Ok(Previous::Ended); // the first turn, or deleted with its session
    };
    if previous.status.is_terminal() {
        return Ok(Previous::Ended);
    }
    let key = shared.topology.record_key(&previous.job_id);
    let held = records::current(&shared.records, &key)
        .await
        .map_err(|e| SessionStoreError::Unavailable(e.to_string()))?;
    let ended = match held {
        Some(held) if held.record.status.is_terminal() => ended_turn(previous, &held.record),
        Some(_) => return Ok(Previous::Running),
        None if Utc::now() - previous.submitted_at > UNQUEUED_GRACE => Turn {
            status: JobStatus::Failed,
            answer: Some("its job was never queued, or its record is gone".into()),
            ended_at: Some(Utc::now()),
            ..previous
        },
        None => return Ok(Previous::Running),
    };
    let seen = Seen::default();
    shared
        .sessions
        .end_turn(&st.session_id, &ended, None, seen)
        .await?;
    Ok(Previous::Reconciled)
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

/// Writes how a session's turn ended into the session, after its terminal record; `seen`: the turn's entry
/// and session as its gate read them (none for a job refused before it ran, whose turn may not be its own).
pub async fn turn_ended(shared: &Shared, record: &JobRecord, seen: Option<&Seen>) {
    let Some(st) = record.request.session else {
        return;
    };
    let ending = async {
        let seen = match seen.filter(|seen| seen.turn.is_some()) {
            Some(seen) => seen.clone(),
            None => own_turn(shared, &st, record).await?,
        };
        let Some(own) = &seen.turn else {
            return Ok(()); // deleted, or not this job's turn
        };
        let ended = ended_turn(own.value.clone(), record);
        let agent_session = record.agent_session_id.as_deref();
        let replaced = shared
            .sessions
            .end_turn(&st.session_id, &ended, agent_session, seen)
            .await?;
        if let (Some(old), Some(new)) = (replaced, ended.workspace) {
            forget_later(shared, st.session_id, old, new);
        }
        Ok::<(), SessionStoreError>(())
    };
    if let Err(e) = ending.await {
        // The next turn reconciles it from this job's record.
        tracing::warn!(session_id = %st.session_id, turn = st.turn, error = %e, "recording the turn's end in its session failed");
    }
}

/// The turn `record` names, if it is that job's (none: deleted, or a job naming a turn that is not its own,
/// which changes nothing there), and its session.
async fn own_turn(
    shared: &Shared,
    st: &SessionTurn,
    record: &JobRecord,
) -> Result<Seen, SessionStoreError> {
    let (own, session) = tokio::try_join!(
        shared.sessions.turn(&st.session_id, st.turn),
        shared.sessions.session(&st.session_id)
    )?;
    Ok(Seen {
        turn: own.filter(|own| own.value.job_id == record.id),
        session,
    })
}

/// Removes a replaced workspace state off the turn's path (the next turn reads only the new one).
fn forget_later(shared: &Shared, session: uuid::Uuid, old: WorkspaceRef, new: WorkspaceRef) {
    let store = shared.session_files.clone();
    tokio::spawn(async move {
        crate::session_workspace::forget(&store, &session, &old, &new).await;
    });
}

/// Says in a waiting turn's record what it waits for (once; the record stays `queued`).
pub async fn mark_waiting(shared: &Shared, key: &str, why: String) {
    let noting = amend_queued(shared, key, |record| {
        (record.waiting.as_deref() != Some(why.as_str())).then(|| record.waiting_for(why.clone()))
    });
    if let Err(e) = noting.await {
        tracing::debug!(error = %e, "noting what the turn waits for failed");
    }
}

/// Writes a conversation's exchange's message into its `queued` record before it is claimed, so its record
/// says what it was told from the moment it runs.
pub async fn record_message(
    shared: &Shared,
    key: &str,
    message: &str,
) -> Result<(), fleet_shared::record_store::RecordError> {
    amend_queued(shared, key, |record| {
        (record.request.message != message).then(|| record.told(message.to_string()))
    })
    .await
}

/// Replaces the job's stored `queued` record with `amend`'s (none: nothing to change). A record that moved on
/// meanwhile (claimed, cancelled) is left as it is: what moved it says more.
async fn amend_queued(
    shared: &Shared,
    key: &str,
    amend: impl Fn(JobRecord) -> Option<JobRecord>,
) -> Result<(), fleet_shared::record_store::RecordError> {
    let Some(held) = records::current(&shared.records, key).await? else {
        return Ok(());
    };
    let (Some(revision), JobStatus::Queued) = (held.revision, held.record.status) else {
        return Ok(());
    };
    let Some(amended) = amend(held.record) else {
        return Ok(());
    };
    records::replace(&shared.records, key, &amended, revision)
        .await
        .map(|_| ())
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
