//! The `fleet` client commands: drive a fleet through a gateway's HTTP API (`--url`, or `FLEET_URL`). Output is
//! plain lines for people (times to the second, tables with headers) or `--json` for scripts; an error is one
//! `fleet: code: message` line on stderr and exit code 1.

mod download;
mod http;
pub(crate) mod humane;
mod run;
mod show;

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use fleet_shared::{JobRecord, JobStatus};
use serde_json::{json, Value};

use http::Client;
pub use http::{ClientArgs, EarlyClientArgs};
use run::RunArgs;

use crate::failure::{failure, Coded};

#[derive(Subcommand, Clone)]
pub enum ClientCommand {
    /// Submit a job, wait for it (streaming its output with --follow) and exit with its exit code.
    Run(RunArgs),
    /// Show a job's record.
    Status {
        #[command(flatten)]
        conn: ClientArgs,
        id: String,
    },
    /// Print a job's output (the full logs when the record's copy was capped).
    Logs {
        #[command(flatten)]
        conn: ClientArgs,
        id: String,
        /// Follow a running job until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        conn: ClientArgs,
        id: String,
    },
    /// Run a failed, timed-out or cancelled job again.
    Retry {
        #[command(flatten)]
        conn: ClientArgs,
        id: String,
    },
    /// List jobs, newest first.
    Jobs {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        filters: JobFilters,
    },
    /// List the agents the fleet runs.
    Agents {
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// List the workers running now.
    Workers {
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Save a job's files into DIR (default: the current directory).
    Download {
        #[command(flatten)]
        conn: ClientArgs,
        id: String,
        dir: Option<PathBuf>,
    },
}

impl ClientCommand {
    fn conn(&mut self) -> &mut ClientArgs {
        match self {
            ClientCommand::Run(args) => &mut args.conn,
            ClientCommand::Status { conn, .. }
            | ClientCommand::Logs { conn, .. }
            | ClientCommand::Cancel { conn, .. }
            | ClientCommand::Retry { conn, .. }
            | ClientCommand::Jobs { conn, .. }
            | ClientCommand::Agents { conn }
            | ClientCommand::Workers { conn }
            | ClientCommand::Download { conn, .. } => conn,
        }
    }
}

impl EarlyClientArgs {
    /// `fleet --json up` would ignore `--json`: say so instead.
    pub fn refuse_for_non_client(&self, command: &impl CommandName) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        Err(failure(
            "invalid_option",
            format!(
                "--url, --api-key and --json are options of the client commands (run, status, jobs, ...), not of `fleet {}`",
                command.name()
            ),
        ))
    }
}

pub trait CommandName {
    fn name(&self) -> &'static str;
}

/// Runs a client command; returns the process exit code.
pub async fn run(early: EarlyClientArgs, mut command: ClientCommand) -> Result<i32> {
    early.apply(command.conn());
    let client = Client::new(command.conn())?;
    let now = chrono::Utc::now();
    match command {
        ClientCommand::Run(args) => run::run(&client, args).await,
        ClientCommand::Status { id, .. } => {
            let record: JobRecord = client.get(&format!("/v1/jobs/{id}")).await?;
            match client.json {
                true => println!("{}", serde_json::to_string_pretty(&record)?),
                false => show::status(&record, now),
            }
            Ok(0)
        }
        ClientCommand::Logs { id, follow, .. } => run::logs(&client, &id, follow).await,
        ClientCommand::Cancel { id, .. } => act(&client, &id, "cancel").await,
        ClientCommand::Retry { id, .. } => act(&client, &id, "retry").await,
        ClientCommand::Jobs { filters, .. } => {
            let path = filters.path();
            list(&client, &path, |l: &show::JobList| show::jobs(l, now)).await
        }
        ClientCommand::Agents { .. } => list(&client, "/v1/agents", show::agents).await,
        ClientCommand::Workers { .. } => {
            list(&client, "/v1/workers", |l: &show::WorkerList| {
                show::workers(l, now)
            })
            .await
        }
        ClientCommand::Download { id, dir, .. } => {
            let record: JobRecord = client.get(&format!("/v1/jobs/{id}")).await?;
            client
                .download(&record, &dir.unwrap_or_else(|| PathBuf::from(".")))
                .await
                .coded("download_failed")?;
            Ok(0)
        }
    }
}

/// Which jobs `fleet jobs` lists.
#[derive(clap::Args, Clone)]
pub struct JobFilters {
    #[arg(long)]
    agent: Option<String>,
    /// queued, running, completed, failed, timeout or cancelled.
    #[arg(long)]
    status: Option<String>,
    /// Text the message or the error contains.
    #[arg(long)]
    search: Option<String>,
    /// Oldest first (default: newest first).
    #[arg(long)]
    oldest: bool,
    /// Go on from where the previous page ended (the cursor it printed).
    #[arg(long)]
    cursor: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

impl JobFilters {
    fn path(&self) -> String {
        let mut url = reqwest::Url::parse("http://gateway/v1/jobs").expect("a valid base");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &self.limit.to_string());
            let optional = [
                ("agent", &self.agent),
                ("status", &self.status),
                ("q", &self.search),
                ("cursor", &self.cursor),
            ];
            for (name, value) in optional {
                if let Some(v) = value {
                    q.append_pair(name, v);
                }
            }
            if self.oldest {
                q.append_pair("order", "oldest");
            }
        }
        format!("/v1/jobs?{}", url.query().unwrap_or_default())
    }
}

/// `cancel` or `retry` a job and print its new state.
async fn act(client: &Client, id: &str, action: &str) -> Result<i32> {
    let answer: Value = client
        .post(&format!("/v1/jobs/{id}/{action}"), &json!({}))
        .await?;
    let line = format!("job {id}: {}", answer["status"].as_str().unwrap_or("?"));
    client.print_value(&answer, &line);
    Ok(0)
}

/// Prints a listing: the API's JSON with `--json`, else `show` of its typed form.
async fn list<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    show: impl Fn(&T),
) -> Result<i32> {
    let value: Value = client.get(path).await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    let typed: T = serde_json::from_value(value).coded("gateway_error")?;
    show(&typed);
    Ok(0)
}

/// The process exit code for a job's end: the agent's own code when it exited, else a shell-like one.
fn exit_code(r: &JobRecord) -> i32 {
    match (r.status, r.exit_code, r.signal) {
        (JobStatus::Completed, _, _) => 0,
        (JobStatus::Timeout, _, _) => 124,
        (JobStatus::Cancelled, _, _) => 130,
        (_, Some(code), _) if code != 0 => code,
        (_, _, Some(sig)) => 128 + sig,
        _ => 1,
    }
}
