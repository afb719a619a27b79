//! The `fleet` client commands: drive a fleet through a gateway's HTTP API (`--url`, or `FLEET_URL`). Output is
//! plain lines (or `--json` for scripts), with a spinner and progress bars when stderr is a terminal; an error
//! is one line on stderr and a non-zero exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fleet_shared::artifacts::is_safe_name;
use fleet_shared::{JobRecord, JobStatus};
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "FLEET_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key for the gateway (`fleet keys create` makes one).
    #[arg(long, env = "FLEET_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON (records, lists) instead of lines.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Clone)]
pub enum ClientCommand {
    /// Submit a job, wait for it (streaming its output with --follow) and exit with its exit code.
    Run {
        agent: String,
        message: String,
        #[arg(long)]
        context: Option<String>,
        /// An input file, written into the job's workspace under its file name (repeatable).
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Print the output as the job writes it.
        #[arg(long)]
        follow: bool,
        /// Save the job's files here when it ends.
        #[arg(long)]
        download: Option<PathBuf>,
    },
    /// Show a job's record.
    Status { id: String },
    /// Print a job's output (the full logs when the record's copy was capped).
    Logs {
        id: String,
        /// Follow a running job until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Run a failed, timed-out or cancelled job again.
    Retry { id: String },
    /// List jobs, newest first.
    Jobs {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// List the agents the fleet runs.
    Agents,
    /// List the workers running now.
    Workers,
    /// Save a job's files into DIR (default: the current directory).
    Download { id: String, dir: Option<PathBuf> },
}

struct Client {
    http: reqwest::Client,
    base: String,
    json: bool,
}

impl ClientArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Runs a client command; returns the process exit code.
pub async fn run(args: ClientArgs, command: ClientCommand) -> Result<i32> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .context("the API key holds characters a header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = Client {
        http: reqwest::Client::builder()
            .default_headers(headers)
            .build()?,
        base: args.url.trim_end_matches('/').to_string(),
        json: args.json,
    };
    match command {
        ClientCommand::Run {
            agent,
            message,
            context,
            files,
            timeout,
            follow,
            download,
        } => {
            let body =
                json!({"agent": agent, "message": message, "context": context, "timeout": timeout});
            let id = client.submit(body, &files).await?;
            if !client.json {
                eprintln!("job {id} queued");
            }
            let record = if follow {
                client.follow(&id).await?
            } else {
                let record = client.wait(&id).await?;
                if !client.json {
                    print_output(&record);
                }
                record
            };
            if let Some(dir) = download {
                client.download(&record, &dir).await?;
            }
            client.report_end(&record)?;
            Ok(exit_code(&record))
        }
        ClientCommand::Status { id } => {
            let record: JobRecord = client.get(&format!("/v1/jobs/{id}")).await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print_status(&record);
            }
            Ok(0)
        }
        ClientCommand::Logs { id, follow } => {
            let record: JobRecord = client.get(&format!("/v1/jobs/{id}")).await?;
            if follow && !record.status.is_terminal() {
                client.follow(&id).await?;
            } else {
                client.print_logs(&record).await?;
            }
            Ok(0)
        }
        ClientCommand::Cancel { id } => {
            let answer: Value = client
                .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
                .await?;
            client.print_value(
                &answer,
                &format!("job {id}: {}", answer["status"].as_str().unwrap_or("?")),
            );
            Ok(0)
        }
        ClientCommand::Retry { id } => {
            let answer: Value = client
                .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
                .await?;
            client.print_value(
                &answer,
                &format!("job {id}: {}", answer["status"].as_str().unwrap_or("?")),
            );
            Ok(0)
        }
        ClientCommand::Jobs {
            agent,
            status,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            query.extend(agent.map(|a| format!("agent={a}")));
            query.extend(status.map(|s| format!("status={s}")));
            let list: Value = client.get(&format!("/v1/jobs?{}", query.join("&"))).await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            for job in list["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {:<16} {}",
                    job["id"].as_str().unwrap_or(""),
                    job["status"].as_str().unwrap_or(""),
                    job["request"]["agent"].as_str().unwrap_or(""),
                    job["request"]["submitted_at"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ClientCommand::Agents => {
            let list: Value = client.get("/v1/agents").await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            for a in list["agents"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} queued {:<6} running {:<6} {}",
                    a["name"].as_str().unwrap_or(""),
                    a["queued"],
                    a["running"],
                    a["description"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ClientCommand::Workers => {
            let list: Value = client.get("/v1/workers").await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            for w in list["workers"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<20} running {}/{}  agents {}",
                    w["worker_id"].as_str().unwrap_or(""),
                    w["host"].as_str().unwrap_or(""),
                    w["in_flight"],
                    w["max_concurrent"],
                    w["agents"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        ClientCommand::Download { id, dir } => {
            let record: JobRecord = client.get(&format!("/v1/jobs/{id}")).await?;
            client
                .download(&record, &dir.unwrap_or_else(|| PathBuf::from(".")))
                .await?;
            Ok(0)
        }
    }
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The body of a successful answer, or an error made of the problem body (`code: message`).
    async fn answer(&self, r: reqwest::Response) -> Result<reqwest::Response> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        match (body["code"].as_str(), body["message"].as_str()) {
            (Some(code), Some(message)) => bail!("{code}: {message}"),
            _ => bail!("the gateway answered {status}"),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = request
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        self.answer(r).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(self.http.get(self.url(path))).await?;
        Ok(r.json().await?)
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let r = self.send(self.http.post(self.url(path)).json(body)).await?;
        Ok(r.json().await?)
    }

    fn print_value(&self, value: &Value, line: &str) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{line}");
        }
    }

    /// Submits a job (as multipart when it has files); returns its id.
    async fn submit(&self, mut body: Value, files: &[PathBuf]) -> Result<String> {
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
                    .with_context(|| format!("{} has no usable file name", path.display()))?
                    .to_string();
                let data = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                form = form.part(
                    "file",
                    reqwest::multipart::Part::bytes(data).file_name(name),
                );
            }
            request.multipart(form)
        };
        let answer: Value = self.send(request).await?.json().await?;
        answer["job_id"]
            .as_str()
            .map(str::to_string)
            .context("the gateway's answer has no job id")
    }

    /// Waits for the job's end; on a terminal, a spinner shows its state meanwhile.
    async fn wait(&self, id: &str) -> Result<JobRecord> {
        let spinner = (!self.json && std::io::stderr().is_terminal()).then(|| {
            let s = indicatif::ProgressBar::new_spinner();
            s.enable_steady_tick(Duration::from_millis(100));
            s
        });
        // Short waits on a terminal, so the spinner shows queued → running; long ones otherwise.
        let wait = if spinner.is_some() { 2 } else { 60 };
        loop {
            let record: JobRecord = self.get(&format!("/v1/jobs/{id}?wait={wait}")).await?;
            if let Some(s) = &spinner {
                s.set_message(format!("job {id}: {}", record.status.as_str()));
            }
            if record.status.is_terminal() {
                if let Some(s) = spinner {
                    s.finish_and_clear();
                }
                return Ok(record);
            }
        }
    }

    /// Prints the job's output as it comes (stdout to stdout, stderr to stderr) until it ends; returns the record.
    async fn follow(&self, id: &str) -> Result<JobRecord> {
        let mut r = self
            .send(self.http.get(self.url(&format!("/v1/jobs/{id}/events"))))
            .await?;
        let mut buf = Vec::new();
        while let Some(chunk) = r.chunk().await? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = find(&buf, b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data)?;
                match event["type"].as_str() {
                    Some("output") if !self.json => {
                        let text = event["text"].as_str().unwrap_or("");
                        if event["stream"] == "stderr" {
                            eprint!("{text}");
                        } else {
                            print!("{text}");
                            std::io::stdout().flush()?;
                        }
                    }
                    Some("output_limit") if !self.json => {
                        eprintln!("[fleet: live output stopped at its limit; `fleet logs {id}` has it all]");
                    }
                    Some("end") => return Ok(serde_json::from_value(event["record"].clone())?),
                    _ => {}
                }
            }
        }
        // The stream closed early (gateway restart): the record tells how it ended.
        self.wait(id).await
    }

    fn report_end(&self, record: &JobRecord) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(record)?);
            return Ok(());
        }
        let mut line = format!("job {} {}", record.id, record.status.as_str());
        if let Some(e) = &record.error {
            line.push_str(&format!(" ({}: {})", e.code, e.message));
        }
        eprintln!("{line}");
        Ok(())
    }

    /// The record's output, or the full logs when the record's copy is not the whole of it.
    async fn print_logs(&self, record: &JobRecord) -> Result<()> {
        for (stream, text, full) in [
            ("stdout", &record.stdout, "_logs/stdout.log"),
            ("stderr", &record.stderr, "_logs/stderr.log"),
        ] {
            let logged = record.logs.iter().any(|f| f.name == full);
            let bytes = if logged {
                let path = format!("/v1/jobs/{}/artifacts/{full}", record.id);
                self.send(self.http.get(self.url(&path)))
                    .await?
                    .bytes()
                    .await?
                    .to_vec()
            } else {
                text.as_bytes().to_vec()
            };
            if stream == "stdout" {
                std::io::stdout().write_all(&bytes)?;
            } else {
                std::io::stderr().write_all(&bytes)?;
            }
        }
        Ok(())
    }

    /// Saves every file the job stored under `dir`, keeping relative paths: several files come as one archive
    /// (one request instead of one per file), a single file by itself.
    async fn download(&self, record: &JobRecord, dir: &Path) -> Result<()> {
        if let Some(bad) = record.files.iter().find(|f| !is_safe_name(&f.name)) {
            bail!("refusing the unsafe file name `{}`", bad.name);
        }
        if record.files.len() > 1 {
            return self.download_archive(record, dir).await;
        }
        for file in &record.files {
            if !is_safe_name(&file.name) {
                bail!("refusing the unsafe file name `{}`", file.name);
            }
            let target = dir.join(&file.name);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let path = format!(
                "/v1/jobs/{}/artifacts/{}",
                record.id,
                encode_path(&file.name)
            );
            let mut r = self.send(self.http.get(self.url(&path))).await?;
            let mut out = tokio::fs::File::create(&target)
                .await
                .with_context(|| format!("creating {}", target.display()))?;
            self.save(&mut r, &mut out, file.size, file.name.clone())
                .await?;
            if !self.json {
                eprintln!("saved {} ({} bytes)", target.display(), file.size);
            }
        }
        Ok(())
    }
}

impl Client {
    /// Writes a response body to `out`, with a progress bar on a terminal (plain lines when piped).
    async fn save(
        &self,
        r: &mut reqwest::Response,
        out: &mut tokio::fs::File,
        size: u64,
        label: String,
    ) -> Result<()> {
        let bar = (!self.json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_message(label);
            bar
        });
        while let Some(chunk) = r.chunk().await? {
            tokio::io::AsyncWriteExt::write_all(out, &chunk).await?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        // A tokio file writes in the background: wait for the bytes to land before going on (or exiting).
        tokio::io::AsyncWriteExt::flush(out).await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(())
    }

    /// Streams `/artifacts.tar` into a temporary file, then unpacks exactly the files the record lists.
    async fn download_archive(&self, record: &JobRecord, dir: &Path) -> Result<()> {
        let total: u64 = record.files.iter().map(|f| f.size).sum();
        let path = format!("/v1/jobs/{}/artifacts.tar", record.id);
        let mut r = self.send(self.http.get(self.url(&path))).await?;
        let spool = tempfile::tempfile().context("creating a temporary file for the archive")?;
        let mut out = tokio::fs::File::from_std(spool);
        let label = format!("{} files", record.files.len());
        self.save(&mut r, &mut out, total, label).await?;
        let spool = out.into_std().await;
        let listed: std::collections::HashMap<String, u64> = record
            .files
            .iter()
            .map(|f| (f.name.clone(), f.size))
            .collect();
        let dir = dir.to_path_buf();
        let saved = tokio::task::spawn_blocking(move || unpack(spool, &dir, &listed)).await??;
        if !self.json {
            for (name, size) in saved {
                eprintln!("saved {name} ({size} bytes)");
            }
        }
        Ok(())
    }
}

/// Unpacks the regular files of a job's archive under `dir`, each only if the record lists it with that size.
fn unpack(
    mut spool: std::fs::File,
    dir: &Path,
    listed: &std::collections::HashMap<String, u64>,
) -> Result<Vec<(String, u64)>> {
    std::io::Seek::rewind(&mut spool)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(spool));
    let mut saved = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .context("a file name in the archive is not UTF-8")?;
        let size = entry.size();
        if !is_safe_name(&name) || listed.get(&name) != Some(&size) {
            bail!(
                "the archive holds `{name}` ({size} bytes), which the job's record does not list"
            );
        }
        let target = dir.join(&name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        std::io::copy(&mut entry, &mut out)?;
        saved.push((target.display().to_string(), size));
    }
    if saved.len() != listed.len() {
        bail!(
            "the archive held {} of the job's {} files",
            saved.len(),
            listed.len()
        );
    }
    Ok(saved)
}

fn print_output(record: &JobRecord) {
    print!("{}", record.stdout);
    eprint!("{}", record.stderr);
    if record.stdout_truncated_bytes + record.stderr_truncated_bytes > 0 {
        eprintln!(
            "[fleet: output capped in the record; `fleet logs {}` prints all of it]",
            record.id
        );
    }
}

fn print_status(r: &JobRecord) {
    println!("job       {}", r.id);
    println!("agent     {}", r.request.agent);
    println!("status    {}", r.status.as_str());
    println!("attempt   {}", r.attempt);
    if let Some(w) = &r.worker {
        println!("worker    {w}");
    }
    if let Some(t) = r.started_at {
        println!("started   {t}");
    }
    if let Some(t) = r.finished_at {
        println!("finished  {t}");
    }
    if let Some(c) = r.exit_code {
        println!("exit code {c}");
    }
    if let Some(e) = &r.error {
        println!("error     {}: {}", e.code, e.message);
    }
    for f in &r.files {
        println!("file      {} ({} bytes)", f.name, f.size);
    }
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes each part of a relative path for a URL, keeping the `/` between parts.
fn encode_path(name: &str) -> String {
    name.split('/')
        .map(|part| {
            part.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_encoded_part_by_part() {
        assert_eq!(super::encode_path("out/r é.txt"), "out/r%20%C3%A9.txt");
    }
}
