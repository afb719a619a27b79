//! The sessions part of `fleet bench`: what a session's turn costs over a job outside a session (same agent,
//! same gateway, alternating), and what saving and restoring a 10 MB workspace through the store costs over a
//! plain tar-and-put (and get-and-untar) of the same files to the same store.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use fleet_shared::artifacts::ArtifactStore;
use fleet_shared::config::TargetConfig;
use fleet_worker::session_workspace::{self, Baseline, Caps};
use serde_json::{json, Value};

use crate::bench::AGENT;
use crate::bench_measure::{median, verdict};

/// Turns (and as many plain jobs) timed.
const ROUNDS: usize = 200;
/// The workspace saved and restored: this many files of `FILE_BYTES`.
const FILES: usize = 100;
const FILE_BYTES: usize = 100_000;

pub async fn run(http: &reqwest::Client, base: &str, scratch: &Path) -> Result<()> {
    let (plain, turn) = turn_cost(http, base).await?;
    let (tar_put, ours) = workspace_round_trips(scratch).await?;
    println!();
    println!("sessions (agent `{AGENT}`, {ROUNDS} turns and as many plain jobs, alternating)");
    println!("  a plain job, p50: {plain:.2} ms; a session's turn, p50: {turn:.2} ms");
    println!(
        "  a {} MB workspace ({FILES} files): tar + put + get + untar {:.1} ms; session save + restore {:.1} ms",
        FILES * FILE_BYTES / 1_000_000,
        tar_put * 1000.0,
        ours * 1000.0
    );
    println!();
    let more = turn - plain;
    println!(
        "{} a turn with an empty workspace costs ≤ 3 ms p50 more than a job without one ({more:.2} ms)",
        verdict(more <= 3.0)
    );
    let ratio = ours / tar_put;
    println!(
        "{} saving and restoring a 10 MB workspace takes ≤ 1.2 × a plain tar-and-put of it ({ratio:.2} ×)",
        verdict(ratio <= 1.2)
    );
    Ok(())
}

/// Median milliseconds of a plain job and of a session's turn, each waited for over HTTP.
async fn turn_cost(http: &reqwest::Client, base: &str) -> Result<(f64, f64)> {
    let session: Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"agent": AGENT}))
        .send()
        .await?
        .json()
        .await?;
    let id = session["session_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no session: {session}"))?;
    let plain_url = format!("{base}/v1/jobs?wait=30");
    let turn_url = format!("{base}/v1/sessions/{id}/messages?wait=30");
    let (mut plain, mut turn) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(timed(http, &plain_url, json!({"agent": AGENT, "message": "x"})).await?);
        turn.push(timed(http, &turn_url, json!({"message": "x"})).await?);
    }
    Ok((median(plain.into_iter()), median(turn.into_iter())))
}

async fn timed(http: &reqwest::Client, url: &str, body: Value) -> Result<f64> {
    let started = Instant::now();
    let r = http.post(url).json(&body).send().await?;
    let status = r.status();
    let answer: Value = r.json().await?;
    if status.as_u16() != 200 || answer["record"]["status"] != "completed" {
        return Err(anyhow!("a bench job did not complete: {status} {answer}"));
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Median seconds of five round trips each way: (tar + put + get + untar, session save + restore).
async fn workspace_round_trips(scratch: &Path) -> Result<(f64, f64)> {
    let root = scratch.join("session-bench");
    let files = root.join("files");
    std::fs::create_dir_all(&files)?;
    for i in 0..FILES {
        let data: Vec<u8> = (0..FILE_BYTES).map(|b| (b * 31 + i * 7) as u8).collect();
        std::fs::write(files.join(format!("f{i:03}.bin")), data)?;
    }
    let target = TargetConfig {
        backend: "local".into(),
        local_dir: root.join("store"),
        ..TargetConfig::default()
    };
    let store = ArtifactStore::new(&target, "bench")?;
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let work = root.join(format!("round-{round}"));
        std::fs::create_dir_all(&work)?;
        plain.push(tar_and_put(&store, &files, &work).await?.as_secs_f64());
        ours.push(save_and_restore(&store, &files, &work).await?.as_secs_f64());
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::remove_dir_all(&root)?;
    Ok((median(plain.into_iter()), median(ours.into_iter())))
}

/// The baseline: the files as one tar, put, got back and unpacked.
async fn tar_and_put(store: &ArtifactStore, files: &Path, work: &Path) -> Result<Duration> {
    let started = Instant::now();
    let archive = work.join("plain.tar");
    let (from, to) = (files.to_path_buf(), archive.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(to)?));
        builder.append_dir_all(".", from)?;
        builder.into_inner()?;
        Ok(())
    })
    .await??;
    let key = store.key(&uuid::Uuid::now_v7(), "plain.tar");
    store.upload_file(&key, &archive).await?;
    let mut download = store.download(&key, None).await?;
    let got = work.join("got.tar");
    let mut file = tokio::fs::File::create(&got).await?;
    while let Some(chunk) = futures::StreamExt::next(&mut download.body).await {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?).await?;
    }
    let into = work.join("plain-unpacked");
    tokio::task::spawn_blocking(move || tar::Archive::new(std::fs::File::open(got)?).unpack(into))
        .await??;
    Ok(started.elapsed())
}

/// The session's own: saved as a turn leaves it, restored into a fresh workspace.
async fn save_and_restore(store: &ArtifactStore, files: &Path, work: &Path) -> Result<Duration> {
    let session = uuid::Uuid::now_v7();
    let caps = Caps {
        max_bytes: u64::MAX,
        max_files: usize::MAX,
    };
    let restored = work.join("session-restored");
    std::fs::create_dir_all(&restored)?;
    let started = Instant::now();
    let saved =
        session_workspace::save(store, &session, 1, files, work, &Baseline::default(), caps)
            .await?
            .ok_or_else(|| anyhow!("nothing was saved"))?;
    session_workspace::restore(store, &session, Some(&saved), &restored, None)
        .await
        .map_err(|e| anyhow!(e))?;
    Ok(started.elapsed())
}
