//! The `fleet` client commands: drive a fleet through a gateway's HTTP API (`--url`, or `FLEET_URL`). Output is
//! plain lines for people (times to the second, tables with headers) or `--json` for scripts; an error is one
//! `fleet: code: message` line on stderr and exit code 1.

mod download;
mod http;
pub(crate) mod humane;
mod run;
mod sessions;
mod show;
mod transfer;

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
    /// Talk with an agent in a session: one message per line, each answer printed as it comes. A new session
    /// unless --session names one.
    Chat {
        #[command(flatten)]
        conn: ClientArgs,
        agent: String,
        /// Go on with this session.
        #[arg(long)]
        session: Option<String>,
    },
    /// List your sessions, newest first.
    Sessions {
        #[command(flatten)]
        conn: ClientArgs,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Go on from where the previous page ended (the cursor it printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a session's turns (or delete it, its history and its files, with --delete).
    Session {
        #[command(flatten)]
        conn: ClientArgs,
        id: String,
        #[arg(long)]
        delete: bool,
    },
    /// Save a session, a conversation, or your jobs since a time, as one archive another fleet imports.
    Export {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        what: transfer::ExportWhat,
        /// Where to write the archive.
        #[arg(short, long, default_value = "fleet-export.tar")]
        output: PathBuf,
    },
    /// Bring an archive of `fleet export` into this fleet (importing it twice changes nothing).
    Import {
        #[command(flatten)]
        conn: ClientArgs,
        archive: PathBuf,
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
            | ClientCommand::Chat { conn, .. }
            | ClientCommand::Sessions { conn, .. }
            | ClientCommand::Session { conn, .. }
            | ClientCommand::Export { conn, .. }
            | ClientCommand::Import { conn, .. }
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
        ClientCommand::Chat { agent, session, .. } => {
            sessions::chat(&client, &agent, session).await
        }
        ClientCommand::Sessions {
            agent,
            limit,
            cursor,
            ..
        } => {
            let params = [
                ("limit", Some(limit.to_string())),
                ("agent", agent),
                ("cursor", cursor),
            ];
            let path = with_query("/v1/sessions", &params);
            list(&client, &path, |l: &sessions::SessionList| {
                sessions::list(l, now)
            })
            .await
        }
        ClientCommand::Session {
            id, delete: true, ..
        } => {
            let path = client.url(&format!("/v1/sessions/{id}"));
            client.send(client.http.delete(path)).await?;
            let line = format!("session {id} deleted");
            client.print_value(&json!({"session_id": id, "deleted": true}), &line);
            Ok(0)
        }
        ClientCommand::Session { id, .. } => {
            let path = format!("/v1/sessions/{id}");
            list(&client, &path, |v: &sessions::SessionView| {
                sessions::show(v, now)
            })
            .await
        }
        ClientCommand::Export { what, output, .. } => {
            transfer::export(&client, &what, &output).await
        }
        ClientCommand::Import { archive, .. } => transfer::import(&client, &archive).await,
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
        let params = [
            ("limit", Some(self.limit.to_string())),
            ("agent", self.agent.clone()),
            ("status", self.status.clone()),
            ("q", self.search.clone()),
            ("cursor", self.cursor.clone()),
            ("order", self.oldest.then(|| "oldest".to_string())),
        ];
        with_query("/v1/jobs", &params)
    }
}

/// `path` with the query parameters that have a value.
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let mut url = reqwest::Url::parse("http://gateway/").expect("a valid base");
    url.set_path(path);
    for (name, value) in params {
        if let Some(value) = value {
            url.query_pairs_mut().append_pair(name, value);
        }
    }
    match url.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
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
