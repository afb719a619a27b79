//! `fleet sessions`, `fleet session ID` and `fleet chat AGENT`: a session's turns for people, and a terminal
//! conversation on a new or existing session, each answer printed as the agent writes it.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use chrono::{DateTime, Utc};
use fleet_shared::{JobRecord, JobStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::Client;
use super::humane;
use super::run::{watch, Follow};
use crate::failure::{failure, Coded};

#[derive(Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionRow>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
pub struct SessionRow {
    pub session_id: String,
    pub agent: String,
    #[serde(default)]
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
    pub turn_count: u32,
}

pub fn list(list: &SessionList, now: DateTime<Utc>) {
    if list.sessions.is_empty() {
        eprintln!("no sessions yet: `fleet chat AGENT` starts one");
        return;
    }
    println!(
        "{:<36}  {:<16} {:>5}  {:<13} TITLE",
        "SESSION", "AGENT", "TURNS", "CREATED"
    );
    for s in &list.sessions {
        println!(
            "{:<36}  {:<16} {:>5}  {:<13} {}",
            s.session_id,
            s.agent,
            s.turn_count,
            humane::age(s.created_at, now),
            s.title.as_deref().unwrap_or("")
        );
    }
    if let Some(cursor) = &list.next_cursor {
        eprintln!("more with --cursor {cursor}");
    }
}

#[derive(Deserialize)]
pub struct SessionView {
    #[serde(flatten)]
    pub session: SessionRow,
    pub turns: Vec<TurnRow>,
}

#[derive(Deserialize)]
pub struct TurnRow {
    pub turn: u32,
    pub job_id: String,
    pub message: String,
    pub status: JobStatus,
    #[serde(default)]
    pub answer: Option<String>,
}

/// A session and its turns: each message, and the first line of what the agent answered.
pub fn show(view: &SessionView, now: DateTime<Utc>) {
    let s = &view.session;
    println!("session  {}", s.session_id);
    println!("agent    {}", s.agent);
    if let Some(title) = &s.title {
        println!("title    {title}");
    }
    println!("created  {}", humane::time_and_age(s.created_at, now));
    for t in &view.turns {
        println!();
        println!("turn {} · {} · job {}", t.turn, t.status.as_str(), t.job_id);
        println!("  > {}", first_line(&t.message));
        if let Some(answer) = t.answer.as_deref().filter(|a| !a.is_empty()) {
            println!("  {}", first_line(answer));
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let more = text.len() > line.len();
    match line.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if more => format!("{line} …"),
        None => line.to_string(),
    }
}

/// `fleet chat AGENT [--session ID]`: reads messages line by line and prints each answer as it comes; Ctrl-C
/// during a turn cancels that turn, Ctrl-D (or Ctrl-C at the prompt) ends the chat and keeps the session.
pub async fn chat(client: &Client, agent: &str, session: Option<String>) -> Result<i32> {
    let id = match session {
        Some(id) => existing(client, agent, id).await?,
        None => {
            let created: Value = client
                .post("/v1/sessions", &json!({"agent": agent}))
                .await?;
            created["session_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| failure("gateway_error", "the gateway's answer has no session id"))?
        }
    };
    let terminal = std::io::stdin().is_terminal();
    if !client.json {
        eprintln!("session {id} with {agent}: one message per line; Ctrl-D ends the chat");
    }
    let mut lines = stdin_lines();
    loop {
        if terminal {
            eprint!("> ");
            // A prompt that cannot be shown does not stop the chat.
            let _ = std::io::stderr().flush();
        }
        let line = tokio::select! {
            line = lines.recv() => line.transpose().coded("stdin_unreadable")?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(message) = line else { break };
        if message.trim().is_empty() {
            continue;
        }
        turn(client, &id, &message).await?;
    }
    if !client.json {
        eprintln!("session {id} kept: `fleet chat {agent} --session {id}` goes on with it");
    }
    Ok(0)
}

/// Standard input's lines, read on a thread of their own (a blocked read must not hold up the runtime).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (send, receive) = tokio::sync::mpsc::channel(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if send.blocking_send(line).is_err() {
                return;
            }
        }
    });
    receive
}

/// The session `id`, checked to be one with `agent`.
async fn existing(client: &Client, agent: &str, id: String) -> Result<String> {
    let view: Value = client.get(&format!("/v1/sessions/{id}")).await?;
    match view["agent"].as_str() {
        Some(a) if a == agent => Ok(id),
        other => Err(failure(
            "invalid_option",
            format!(
                "session {id} is with agent {}, not {agent}",
                other.unwrap_or("?")
            ),
        )),
    }
}

/// One message and its answer.
async fn turn(client: &Client, session: &str, message: &str) -> Result<()> {
    let sent: Value = client
        .post(
            &format!("/v1/sessions/{session}/messages"),
            &json!({"message": message}),
        )
        .await?;
    let job = sent["job_id"]
        .as_str()
        .ok_or_else(|| failure("gateway_error", "the gateway's answer has no job id"))?;
    let watched = tokio::select! {
        r = watch(client, job, Follow::Chat) => r?,
        _ = tokio::signal::ctrl_c() => {
            let answer: Value = client.post(&format!("/v1/jobs/{job}/cancel"), &json!({})).await?;
            eprintln!("\n[turn cancelled: {}]", answer["status"].as_str().unwrap_or("cancel requested"));
            return Ok(());
        }
    };
    let (record, printed) = watched;
    if client.json {
        println!("{}", serde_json::to_string(&record)?);
        return Ok(());
    }
    if printed.open_line {
        println!();
    }
    if !printed.anything() {
        print_answer(&record);
    }
    if record.status != JobStatus::Completed {
        let why = record
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(": {}: {}", e.code, e.message));
        eprintln!("[turn {}{why}]", record.status.as_str());
    }
    Ok(())
}

/// The answer (or what the agent printed) of a turn whose run showed nothing as it went.
fn print_answer(record: &JobRecord) {
    let said = record.answer.as_deref().unwrap_or(&record.stdout);
    if said.is_empty() {
        return;
    }
    print!("{said}");
    if !said.ends_with('\n') {
        println!();
    }
}
