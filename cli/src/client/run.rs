//! `fleet run` and `fleet logs`: submit, watch the job's events (saying when it starts running), and print its
//! whole output — live with `--follow`, from the record or the full logs otherwise — or, when the fleet did not
//! keep all of it, say what is missing and exit non-zero. Ctrl-C asks whether to cancel the job.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use fleet_shared::wire::{JobEvent, OutputStream};
use fleet_shared::JobRecord;
use serde_json::{json, Value};

use super::http::{Client, ClientArgs};
use crate::failure::{failure, Coded};

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: ClientArgs,
    pub agent: String,
    /// The message; `-` reads it from standard input (as does --stdin).
    #[arg(required_unless_present = "stdin")]
    pub message: Option<String>,
    /// Read the message from standard input (`fleet run python --stdin < script.py`).
    #[arg(long, conflicts_with = "message")]
    pub stdin: bool,
    #[arg(long)]
    pub context: Option<String>,
    /// An input file, written into the job's workspace under its file name (repeatable).
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// Seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Print the output as the job writes it.
    #[arg(long)]
    pub follow: bool,
    /// On Ctrl-C, cancel the job without asking (otherwise a terminal is asked, and a script leaves it running).
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// Save the job's files here when it ends.
    #[arg(long)]
    pub download: Option<PathBuf>,
}

/// Output already printed for the attempt being watched, so the end adds only what is missing.
#[derive(Default)]
pub(super) struct Printed {
    attempt: u32,
    stdout: u64,
    stderr: u64,
    /// Bytes of the agent's messages printed (`Follow::Chat`).
    pub(super) messages: u64,
    /// The last thing printed was a piece of a message not ending its line.
    pub(super) open_line: bool,
}

impl Printed {
    pub(super) fn anything(&self) -> bool {
        self.stdout + self.stderr + self.messages > 0
    }
}

/// What watching a job prints while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    /// Only that it started.
    Quiet,
    /// Its output as it comes.
    Output,
    /// A conversation: what the agent says (its messages, or its output where it has none) and the tools it
    /// calls, without the fleet's own lines.
    Chat,
}

pub async fn run(client: &Client, args: RunArgs) -> Result<i32> {
    let message = match (&args.message, args.stdin) {
        (Some(m), false) if m != "-" => m.clone(),
        _ => read_stdin()?,
    };
    let body = json!({"agent": args.agent, "message": message, "context": args.context, "timeout": args.timeout});
    let id = client.submit(body, &args.files).await?;
    if !client.json {
        eprintln!("job {id} queued");
    }
    let asked =
        std::io::stdin().is_terminal() && args.message.as_deref() != Some("-") && !args.stdin;
    let follow = if args.follow {
        Follow::Output
    } else {
        Follow::Quiet
    };
    let watched = tokio::select! {
        r = watch(client, &id, follow) => r?,
        _ = tokio::signal::ctrl_c() => return interrupted(client, &id, args.cancel_on_interrupt, asked).await,
    };
    let (record, printed) = watched;
    let gaps = if client.json {
        Vec::new()
    } else {
        client.print_rest(&record, &printed).await?
    };
    if let Some(dir) = &args.download {
        client.download(&record, dir).await?;
    }
    client.report_end(&record)?;
    Ok(end_code(&record, &gaps))
}

/// `fleet logs ID [--follow]`: the job's whole output.
pub async fn logs(client: &Client, id: &str, follow: bool) -> Result<i32> {
    let record: JobRecord = client.get(&format!("/v1/jobs/{id}")).await?;
    let (record, printed) = if follow && !record.status.is_terminal() {
        watch(client, id, Follow::Output).await?
    } else {
        (record, Printed::default())
    };
    let gaps = client.print_rest(&record, &printed).await?;
    Ok(if gaps.is_empty() { 0 } else { 1 })
}

/// The job's exit code, or 1 when the job succeeded but part of its output could not be given.
fn end_code(record: &JobRecord, gaps: &[String]) -> i32 {
    match super::exit_code(record) {
        0 if !gaps.is_empty() => 1,
        code => code,
    }
}

fn read_stdin() -> Result<String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).coded("stdin_unreadable")?;
    String::from_utf8(bytes).map_err(|_| {
        failure(
            "invalid_message",
            "standard input is not UTF-8 text; send binary data as a file (--file)",
        )
    })
}

/// Ctrl-C while watching: cancel (when told to, or when the person at the terminal says so), or leave the job
/// running; either way say what happened.
async fn interrupted(client: &Client, id: &str, cancel: bool, ask: bool) -> Result<i32> {
    let cancel = cancel || (ask && confirm(&format!("\ncancel job {id}? [y/N] ")).await);
    if !cancel {
        eprintln!("job {id} keeps running: `fleet logs --follow {id}` watches it, `fleet cancel {id}` stops it");
        return Ok(130);
    }
    let answer: Value = client
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await?;
    eprintln!(
        "job {id}: {}",
        answer["status"].as_str().unwrap_or("cancel requested")
    );
    Ok(130)
}

/// Asks on the terminal; a second Ctrl-C (or end of input) means no.
async fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    });
    tokio::select! {
        line = line => matches!(line, Ok(Ok(l)) if l.trim().eq_ignore_ascii_case("y") || l.trim().eq_ignore_ascii_case("yes")),
        _ = tokio::signal::ctrl_c() => { eprintln!(); false }
    }
}

/// Follows the job's events until its end: prints `running` when a worker starts it and, as `follow` says, the output
/// as it comes. Reconnects where it left off when the gateway says the listener fell behind or the stream drops.
pub(super) async fn watch(
    client: &Client,
    id: &str,
    follow: Follow,
) -> Result<(JobRecord, Printed)> {
    let mut printed = Printed::default();
    let mut last_id: Option<String> = None;
    for round in 0..100 {
        let mut request = client
            .http
            .get(client.url(&format!("/v1/jobs/{id}/events")));
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last);
        }
        let mut r = match client.send(request).await {
            Ok(r) => r,
            Err(e) if round == 0 => return Err(e),
            Err(_) => return Err(lost_gateway(client, id)),
        };
        let mut buf = Vec::new();
        while let Some(chunk) = r.chunk().await.unwrap_or(None) {
            buf.extend_from_slice(&chunk);
            while let Some(end) = find(&buf, b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                if let Some(event_id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                    last_id = Some(event_id.to_string());
                }
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<JobEvent>(data) else {
                    continue;
                };
                if let JobEvent::End { record, .. } = event {
                    return Ok((*record, printed));
                }
                client.show_event(id, event, follow, &mut printed)?;
            }
        }
    }
    Err(failure(
        "events_lost",
        format!("the events of job {id} kept breaking off; `fleet status {id}` shows where it is"),
    ))
}

impl Client {
    fn show_event(
        &self,
        id: &str,
        event: JobEvent,
        follow: Follow,
        printed: &mut Printed,
    ) -> Result<()> {
        let live = follow != Follow::Quiet && !self.json;
        match event {
            JobEvent::Status {
                attempt, worker, ..
            } => {
                if attempt != printed.attempt && printed.attempt != 0 && live {
                    eprintln!("[fleet: attempt {attempt} starts over]");
                }
                *printed = Printed {
                    attempt,
                    ..Printed::default()
                };
                if !self.json && follow != Follow::Chat {
                    eprintln!("job {id} running on {worker} (attempt {attempt})");
                }
            }
            JobEvent::Output {
                stream,
                attempt,
                text,
                ..
            } if live => {
                if attempt != printed.attempt {
                    *printed = Printed {
                        attempt,
                        ..Printed::default()
                    };
                }
                match stream {
                    OutputStream::Stdout => {
                        print!("{text}");
                        std::io::stdout().flush()?;
                        printed.stdout += text.len() as u64;
                    }
                    OutputStream::Stderr => {
                        eprint!("{text}");
                        printed.stderr += text.len() as u64;
                    }
                }
            }
            JobEvent::Message { text, delta, .. } if live && follow == Follow::Chat => {
                print!("{text}");
                if !delta {
                    println!();
                }
                std::io::stdout().flush()?;
                printed.messages += text.len() as u64;
                printed.open_line = delta && !text.ends_with('\n');
            }
            JobEvent::ToolCall { name, .. } if live && follow == Follow::Chat => {
                eprintln!("[tool: {name}]");
            }
            _ => {}
        }
        Ok(())
    }

    /// Prints the output not printed yet, from the record's copy or the full logs; returns what could not be
    /// given (and says so on stderr).
    async fn print_rest(&self, record: &JobRecord, printed: &Printed) -> Result<Vec<String>> {
        let same_attempt = printed.attempt == record.attempt || printed.attempt == 0;
        let mut gaps = Vec::new();
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let already = match (same_attempt, stream) {
                (false, _) => 0,
                (true, OutputStream::Stdout) => printed.stdout,
                (true, OutputStream::Stderr) => printed.stderr,
            };
            if let Some(gap) = self.print_stream(record, stream, already).await? {
                gaps.push(gap);
            }
        }
        for gap in &gaps {
            eprintln!("[fleet: {gap}]");
        }
        Ok(gaps)
    }

    async fn print_stream(
        &self,
        record: &JobRecord,
        stream: OutputStream,
        already: u64,
    ) -> Result<Option<String>> {
        let (name, total, copy, cut) = match stream {
            OutputStream::Stdout => (
                "stdout",
                record.stdout_bytes,
                &record.stdout,
                record.stdout_truncated_bytes,
            ),
            OutputStream::Stderr => (
                "stderr",
                record.stderr_bytes,
                &record.stderr,
                record.stderr_truncated_bytes,
            ),
        };
        let log_name = format!("_logs/{name}.log");
        let (kept, full_log) = match record.logs.iter().find(|f| f.name == log_name) {
            Some(log) => (
                if log.truncated {
                    log.size.min(total)
                } else {
                    total
                },
                Some(log),
            ),
            None => (total - cut, None),
        };
        if already < kept {
            let bytes = match full_log {
                Some(_) => self.log_from(record, &log_name, already).await?,
                None => copy
                    .as_bytes()
                    .get(already as usize..)
                    .unwrap_or_default()
                    .to_vec(),
            };
            match stream {
                OutputStream::Stdout => std::io::stdout().write_all(&bytes)?,
                OutputStream::Stderr => std::io::stderr().write_all(&bytes)?,
            }
        }
        Ok((kept < total).then(|| {
            format!(
                "the job wrote {total} bytes of {name}; the fleet kept the first {kept} ({} left out by artifacts.max_file_bytes or the record's cap)",
                total - kept
            )
        }))
    }

    /// The full log from byte `from` on.
    async fn log_from(&self, record: &JobRecord, log_name: &str, from: u64) -> Result<Vec<u8>> {
        let path = format!("/v1/jobs/{}/artifacts/{log_name}", record.id);
        let mut request = self.http.get(self.url(&path));
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let r = self.send(request).await?;
        Ok(r.bytes().await.coded("gateway_error")?.to_vec())
    }

    /// Submits a job (as multipart when it has files); returns its id.
    pub async fn submit(&self, mut body: Value, files: &[PathBuf]) -> Result<String> {
        if let Some(map) = body.as_object_mut() {
            map.retain(|_, v| !v.is_null());
        }
        let request = self.http.post(self.url("/v1/jobs"));
        let request = if files.is_empty() {
            request.json(&body)
        } else {
            let mut form = reqwest::multipart::Form::new().text("job", body.to_string());
            for path in files {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        failure(
                            "invalid_file",
                            format!("{} has no usable file name", path.display()),
                        )
                    })?
                    .to_string();
                let data = tokio::fs::read(path).await.map_err(|e| {
                    failure(
                        "invalid_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                form = form.part(
                    "file",
                    reqwest::multipart::Part::bytes(data).file_name(name),
                );
            }
            request.multipart(form)
        };
        let answer: Value = self
            .send(request)
            .await?
            .json()
            .await
            .coded("gateway_error")?;
        answer["job_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failure("gateway_error", "the gateway's answer has no job id"))
    }

    pub fn report_end(&self, record: &JobRecord) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(record)?);
            return Ok(());
        }
        let mut line = format!("job {} {}", record.id, record.status.as_str());
        if let Some(res) = &record.resources {
            line.push_str(&format!(" after {}", super::humane::duration(res.wall_ms)));
        }
        if let Some(e) = &record.error {
            line.push_str(&format!(" ({}: {})", e.code, e.message));
        }
        eprintln!("{line}");
        Ok(())
    }
}

fn lost_gateway(client: &Client, id: &str) -> anyhow::Error {
    failure(
        "gateway_unreachable",
        format!(
            "lost the gateway at {} while following job {id}; once it is back, `fleet status {id}` says how the job went",
            client.base
        ),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
