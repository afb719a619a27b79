//! `fleet export` and `fleet import`: a session, a conversation or your jobs since a time, carried to another
//! fleet as one archive.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::http::Client;
use crate::failure::{failure, Coded};

/// What `fleet export` takes.
#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
pub struct ExportWhat {
    /// A session: its turns, their jobs and files, and its workspace.
    #[arg(long)]
    session: Option<String>,
    /// A conversation: its participants' sessions.
    #[arg(long)]
    conversation: Option<String>,
    /// Your jobs submitted since then (RFC 3339, e.g. 2026-12-01T00:00:00Z), with their files.
    #[arg(long)]
    since: Option<String>,
}

impl ExportWhat {
    fn query(&self) -> (&'static str, &str) {
        match (&self.session, &self.conversation, &self.since) {
            (Some(id), _, _) => ("session", id),
            (_, Some(id), _) => ("conversation", id),
            (_, _, Some(since)) => ("since", since),
            // clap requires one of them.
            _ => ("session", ""),
        }
    }
}

/// Writes the archive to `out` (written whole or not at all).
pub async fn export(client: &Client, what: &ExportWhat, out: &Path) -> Result<i32> {
    let (name, value) = what.query();
    let url = reqwest::Url::parse_with_params(&client.url("/v1/export"), [(name, value)])
        .coded("invalid_option")?;
    let mut r = client.send(client.http.get(url)).await?;
    let partial = out.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| failure("cannot_write", format!("{}: {e}", partial.display())))?;
    let mut size = 0u64;
    while let Some(chunk) = r.chunk().await.coded("gateway_error")? {
        size += chunk.len() as u64;
        file.write_all(&chunk).await.coded("cannot_write")?;
    }
    file.flush().await.coded("cannot_write")?;
    tokio::fs::rename(&partial, out)
        .await
        .coded("cannot_write")?;
    let line = format!(
        "exported {name} {value} to {} ({size} bytes)",
        out.display()
    );
    client.print_value(&serde_json::json!({"file": out, "bytes": size}), &line);
    Ok(0)
}

pub async fn import(client: &Client, archive: &PathBuf) -> Result<i32> {
    let file = tokio::fs::File::open(archive)
        .await
        .map_err(|e| failure("invalid_file", format!("{}: {e}", archive.display())))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let request = client
        .http
        .post(client.url("/v1/import"))
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .body(body);
    let report: Value = client
        .send(request)
        .await?
        .json()
        .await
        .coded("gateway_error")?;
    let count = |k: &str| report[k].as_u64().unwrap_or(0);
    let line = format!(
        "imported {} sessions ({} turns), {} conversations, {} jobs, {} files; {} already here",
        count("sessions"),
        count("turns"),
        count("conversations"),
        count("jobs"),
        count("files"),
        count("already_there")
    );
    client.print_value(&report, &line);
    for why in report["left_out"].as_array().into_iter().flatten() {
        eprintln!("left out: {}", why.as_str().unwrap_or_default());
    }
    Ok(0)
}
