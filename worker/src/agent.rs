//! From a job and its agent's configuration to a [`RunSpec`]: the rendered argv and stdin, the scrubbed
//! environment and the effective timeout.

use std::time::Duration;

use fleet_shared::config::{secs, AgentConfig, ArtifactsConfig, WorkerConfig};
use fleet_shared::JobRecord;

use crate::dirs::JobDirs;
use crate::output::LogTarget;
use crate::supervisor::RunSpec;
use crate::template::{render, Vars};

pub fn timeout(record: &JobRecord, agent: &AgentConfig, worker: &WorkerConfig) -> Duration {
    record
        .request
        .timeout
        .or(agent.timeout)
        .map(secs)
        .unwrap_or_else(|| worker.default_timeout())
}

/// What the run is given beyond its record: for a session turn, the agent's own session to resume.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resume<'a> {
    pub agent_session: Option<&'a str>,
}

pub fn run_spec(
    record: &JobRecord,
    resume: Resume<'_>,
    agent: &AgentConfig,
    worker: &WorkerConfig,
    artifacts: &ArtifactsConfig,
    dirs: &JobDirs,
    sandbox: crate::sandbox::Sandbox,
) -> RunSpec {
    let log = |path: &std::path::Path| LogTarget {
        path: path.to_path_buf(),
        max_bytes: artifacts.max_file_bytes,
    };
    let job_id = record.id.to_string();
    let workspace = dirs.workspace.to_string_lossy().into_owned();
    let history_file = match record.request.session {
        Some(_) => dirs
            .workspace
            .join(crate::session::HISTORY_FILE)
            .to_string_lossy()
            .into_owned(),
        None => String::new(),
    };
    let vars = Vars {
        message: &record.request.message,
        context: record.request.context.as_deref().unwrap_or(""),
        job_id: &job_id,
        workspace: &workspace,
        history_file: &history_file,
        agent_session: resume.agent_session.unwrap_or(""),
    };
    // A turn after one that reported the agent's own session resumes it, where the agent says how.
    let command = match resume.agent_session {
        Some(_) if !agent.resume.is_empty() => &agent.resume,
        _ => &agent.command,
    };
    let argv = command.iter().map(|t| render(t, &vars)).collect();
    let stdin = agent.stdin.as_ref().map(|t| render(t, &vars).into_bytes());
    // A minimal base; the worker's own environment (its NATS credentials, FLEET_* settings) never reaches agents.
    let mut env = vec![
        ("PATH".to_string(), worker.agent_path.clone()),
        ("HOME".to_string(), workspace.clone()),
        (
            "TMPDIR".to_string(),
            dirs.tmp.to_string_lossy().into_owned(),
        ),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("FLEET_JOB_ID".to_string(), job_id.clone()),
        ("FLEET_AGENT".to_string(), record.request.agent.clone()),
        ("FLEET_ATTEMPT".to_string(), record.attempt.to_string()),
    ];
    if let Some(st) = record.request.session {
        env.push(("FLEET_SESSION_ID".to_string(), st.session_id.to_string()));
        env.push(("FLEET_TURN".to_string(), st.turn.to_string()));
    }
    for (k, v) in &agent.env {
        env.retain(|(existing, _)| existing != k);
        env.push((k.clone(), v.clone()));
    }
    RunSpec {
        parse: Some(agent.kind).filter(|k| k.is_preset()),
        pty: agent.pty,
        events: None,
        sandbox,
        cancel: tokio_util::sync::CancellationToken::new(),
        argv,
        stdin,
        env,
        cwd: dirs.workspace.clone(),
        agent_dirs: dirs.agent_owned(),
        timeout: timeout(record, agent, worker),
        kill_grace: worker.kill_grace(),
        output_cap: worker.output_cap_bytes,
        stdout_log: Some(log(&dirs.stdout_log)),
        stderr_log: Some(log(&dirs.stderr_log)),
    }
}
