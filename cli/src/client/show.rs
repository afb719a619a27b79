//! What the client prints for people: a job's record, the job list as a table, agents and workers. Times are
//! to the second and relative where that helps; `--json` prints the API's own JSON instead (elsewhere).

use chrono::{DateTime, Utc};
use fleet_shared::JobRecord;
use serde::Deserialize;

use super::humane;

pub fn status(r: &JobRecord, now: DateTime<Utc>) {
    let row = |name: &str, value: String| println!("{name:<10} {value}");
    row("job", r.id.to_string());
    row("agent", r.request.agent.clone());
    row("status", r.status.as_str().to_string());
    row(
        "submitted",
        humane::time_and_age(r.request.submitted_at, now),
    );
    if let Some(st) = &r.request.session {
        row("session", format!("{} (turn {})", st.session_id, st.turn));
    }
    if let Some(w) = &r.session_workspace {
        let size = crate::summary::bytes(w.bytes);
        row(
            "workspace",
            format!("{} files, {size}, kept for the next turn", w.files),
        );
    }
    if r.attempt > 0 {
        row("attempt", r.attempt.to_string());
    }
    if let Some(w) = &r.worker {
        row("worker", w.clone());
    }
    if let Some(t) = r.started_at {
        row("started", humane::time_and_age(t, now));
    }
    if let Some(t) = r.finished_at {
        row("finished", humane::time_and_age(t, now));
    }
    if let Some(took) = took(r) {
        row("took", took);
    }
    if let Some(c) = r.exit_code {
        row("exit code", c.to_string());
    }
    if let Some(s) = r.signal {
        row("signal", s.to_string());
    }
    if let Some(e) = &r.error {
        row("error", format!("{}: {}", e.code, e.message));
    }
    if let Some(res) = &r.resources {
        row(
            "resources",
            format!(
                "cpu {} user + {} system · max memory {}",
                humane::duration(res.user_cpu_ms),
                humane::duration(res.system_cpu_ms),
                crate::summary::bytes(res.max_rss_kb * 1024)
            ),
        );
    }
    output_rows(r, &row);
    file_rows(r, &row);
    history_rows(r, &row);
}

/// The files the job left: uploaded, not listed, skipped.
fn file_rows(r: &JobRecord, row: &impl Fn(&str, String)) {
    for f in &r.files {
        let cut = if f.truncated {
            " (cut at the size limit)"
        } else {
            ""
        };
        row("file", format!("{} ({} bytes){cut}", f.name, f.size));
    }
    if r.files_omitted > 0 {
        row(
            "files",
            format!(
                "{} more not listed here (see `_logs/manifest.json`)",
                r.files_omitted
            ),
        );
    }
    for s in &r.skipped_files {
        row(
            "skipped",
            format!("{} ({} bytes): {}", s.name, s.size, s.reason),
        );
    }
}

/// The earlier runs of a retried or redelivered job.
fn history_rows(r: &JobRecord, row: &impl Fn(&str, String)) {
    for run in &r.history {
        let mut line = format!("attempt {} {}", run.attempt, run.status.as_str());
        if let Some(w) = &run.worker {
            line.push_str(&format!(" on {w}"));
        }
        if let (Some(a), Some(b)) = (run.started_at, run.finished_at) {
            line.push_str(&format!(" after {}", humane::between(a, b)));
        }
        if let Some(e) = &run.error {
            line.push_str(&format!(" ({}: {})", e.code, e.message));
        }
        row("earlier", line);
    }
}

/// How much output there was and whether the record holds all of it.
fn output_rows(r: &JobRecord, row: &impl Fn(&str, String)) {
    for (name, bytes, cut) in [
        ("stdout", r.stdout_bytes, r.stdout_truncated_bytes),
        ("stderr", r.stderr_bytes, r.stderr_truncated_bytes),
    ] {
        if bytes == 0 {
            continue;
        }
        let note = match cut {
            0 => String::new(),
            cut => format!(
                " — the record holds the first {} ({cut} left out; `fleet logs {}` prints all of it)",
                bytes - cut,
                r.id
            ),
        };
        row(name, format!("{bytes} bytes{note}"));
    }
}

/// How long the job ran (or has been running), if it started.
fn took(r: &JobRecord) -> Option<String> {
    if let Some(res) = &r.resources {
        return Some(humane::duration(res.wall_ms));
    }
    Some(humane::between(r.started_at?, r.finished_at?))
}

#[derive(Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
    #[serde(default)]
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
}

pub fn jobs(list: &JobList, now: DateTime<Utc>) {
    if list.jobs.is_empty() {
        eprintln!("no jobs");
        return;
    }
    println!(
        "{:<36}  {:<10} {:<16} {:<13} {:>10}",
        "JOB", "STATUS", "AGENT", "SUBMITTED", "TOOK"
    );
    for job in &list.jobs {
        println!(
            "{:<36}  {:<10} {:<16} {:<13} {:>10}",
            job.id,
            job.status.as_str(),
            job.request.agent,
            humane::age(job.request.submitted_at, now),
            took(job).unwrap_or_else(|| "-".into())
        );
    }
    let of = list.total.map_or(String::new(), |t| format!(" of {t}"));
    let shown = match list.jobs.len() {
        1 => "1 job shown".to_string(),
        n => format!("{n} jobs shown"),
    };
    match &list.next_cursor {
        Some(cursor) => eprintln!("{shown}{of}; more with --cursor {cursor}"),
        None => eprintln!("{shown}{of}"),
    }
}

#[derive(Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentRow>,
}

#[derive(Deserialize)]
pub struct AgentRow {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub queued: u64,
    pub running: u64,
}

pub fn agents(list: &AgentList) {
    println!(
        "{:<20} {:>7} {:>8}  DESCRIPTION",
        "AGENT", "QUEUED", "RUNNING"
    );
    for a in &list.agents {
        println!(
            "{:<20} {:>7} {:>8}  {}",
            a.name,
            a.queued,
            a.running,
            a.description.as_deref().unwrap_or("")
        );
    }
}

#[derive(Deserialize)]
pub struct WorkerList {
    pub workers: Vec<WorkerRow>,
}

#[derive(Deserialize)]
pub struct WorkerRow {
    pub worker_id: String,
    pub host: String,
    pub agents: Vec<String>,
    pub max_concurrent: Option<u64>,
    pub in_flight: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
}

pub fn workers(list: &WorkerList, now: DateTime<Utc>) {
    if list.workers.is_empty() {
        eprintln!("no workers are running");
        return;
    }
    println!(
        "{:<32} {:<20} {:>9} {:<12} AGENTS",
        "WORKER", "HOST", "RUNNING", "UP FOR"
    );
    for w in &list.workers {
        let slots = format!(
            "{}/{}",
            w.in_flight.map_or("?".into(), |n| n.to_string()),
            w.max_concurrent.map_or("?".into(), |n| n.to_string())
        );
        let since = w.started_at.map_or("-".into(), |t| {
            humane::age(t, now).trim_end_matches(" ago").to_string()
        });
        println!(
            "{:<32} {:<20} {:>9} {:<12} {}",
            w.worker_id,
            w.host,
            slots,
            since,
            w.agents.join(",")
        );
    }
}
