//! `fleet bench --artifacts`: the file path of jobs against `object_store` used directly on the same kind of
//! store (local disk), in the same run. Upload: a job whose agent copies prepared files into its workspace; the
//! worker's storing time is the job's time minus the agent's own wall time. Download: the same files through
//! the gateway. Memory: the gateway's peak RSS while it streams a large file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::{JobRecord, JobStatus};
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};

/// The agent that copies a prepared directory into its workspace (argv only: `cp -r SRC/. .`).
pub const COPY_AGENT: &str = "copy-in";
pub const COPY_COMMAND: [&str; 4] = ["cp", "-r", "{message}", "."];

pub struct Fleet<'a> {
    pub client: &'a async_nats::Client,
    pub js: &'a async_nats::jetstream::Context,
    pub http: &'a reqwest::Client,
    pub base: &'a str,
    pub gateway_pid: u32,
    pub scratch: &'a Path,
}

struct Case {
    name: String,
    files: Vec<(String, usize)>,
}

pub async fn run(
    fleet: &Fleet<'_>,
    big_mb: usize,
    small_count: usize,
    flat_gb: usize,
) -> Result<()> {
    let cases = [
        Case {
            name: format!("1 × {big_mb} MB"),
            files: vec![("big.bin".into(), big_mb * 1024 * 1024)],
        },
        Case {
            name: format!("{small_count} × 4 KB"),
            files: (0..small_count)
                .map(|i| (format!("small/{i:05}.bin"), 4096))
                .collect(),
        },
    ];
    let direct_dir = fleet.scratch.join("direct");
    std::fs::create_dir_all(&direct_dir)?;
    let direct = object_store::local::LocalFileSystem::new_with_prefix(&direct_dir)?;

    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "artifacts, local store (MB/s)", "fleet", "direct", "ratio"
    );
    let mut ratios = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let src = fleet.scratch.join(format!("src-{i}"));
        let bytes = write_sources(&src, &case.files)?;
        let mb = bytes as f64 / (1024.0 * 1024.0);

        let started = Instant::now();
        for (name, _) in &case.files {
            let data = tokio::fs::read(src.join(name)).await?;
            direct
                .put(
                    &format!("{i}/{name}").as_str().into(),
                    PutPayload::from(data),
                )
                .await?;
        }
        let direct_up = mb / started.elapsed().as_secs_f64();

        let record = copy_job(fleet, &src).await?;
        if record.files.len() != case.files.len() {
            bail!(
                "the job stored {} of {} files: {:?}",
                record.files.len(),
                case.files.len(),
                record.skipped_files
            );
        }
        let fleet_up = mb / storing_secs(&record);

        let started = Instant::now();
        for (name, _) in &case.files {
            let got = direct.get(&format!("{i}/{name}").as_str().into()).await?;
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                chunk?;
            }
        }
        let direct_down = mb / started.elapsed().as_secs_f64();

        let started = Instant::now();
        for (name, _) in &case.files {
            gateway_download(fleet, &record, name).await?;
        }
        let fleet_down = mb / started.elapsed().as_secs_f64();

        for (what, f, d) in [
            ("upload", fleet_up, direct_up),
            ("download via gateway", fleet_down, direct_down),
        ] {
            println!(
                "{:<34} {:>12.1} {:>12.1} {:>7.2}×",
                format!("{} {what}", case.name),
                f,
                d,
                f / d
            );
            ratios.push((format!("{} {what}", case.name), f / d));
        }
        std::fs::remove_dir_all(&src)?;
    }

    let mut peak_kb = 0;
    if flat_gb > 0 {
        let src = fleet.scratch.join("src-flat");
        write_sources(&src, &[("huge.bin".into(), flat_gb * 1024 * 1024 * 1024)])?;
        let record = copy_job(fleet, &src).await?;
        std::fs::remove_dir_all(&src)?;
        peak_kb = gateway_peak_while(fleet, gateway_download(fleet, &record, "huge.bin")).await?;
        println!(
            "gateway peak RSS while streaming {flat_gb} GB: {:.1} MB",
            peak_kb as f64 / 1024.0
        );
    }
    println!();
    for (what, ratio) in &ratios {
        println!(
            "{} {what} ≥ 0.8 × direct",
            if *ratio >= 0.8 { "met    " } else { "MISSED " }
        );
    }
    if flat_gb > 0 {
        println!(
            "{} gateway RSS ≤ 64 MB while streaming",
            if peak_kb <= 64 * 1024 {
                "met    "
            } else {
                "MISSED "
            }
        );
    }
    Ok(())
}

/// Writes the files (a byte pattern) under `dir`; returns their total size.
fn write_sources(dir: &Path, files: &[(String, usize)]) -> Result<u64> {
    use std::io::Write;
    let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut total = 0;
    for (name, size) in files {
        let path: PathBuf = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = *size;
        while left > 0 {
            let n = left.min(block.len());
            f.write_all(&block[..n])?;
            left -= n;
        }
        f.flush()?;
        total += *size as u64;
    }
    Ok(total)
}

/// Runs the copy agent on `src` and returns the job's terminal record.
async fn copy_job(fleet: &Fleet<'_>, src: &Path) -> Result<JobRecord> {
    let inbox = fleet.client.new_inbox();
    let mut sub = fleet.client.subscribe(inbox.clone()).await?;
    let body = serde_json::json!({"message": format!("{}/.", src.display()), "reply_to": inbox});
    fleet
        .js
        .publish(format!("fleet.jobs.{COPY_AGENT}"), to_msgpack(&body).into())
        .await?
        .await?;
    let msg = tokio::time::timeout(Duration::from_secs(600), sub.next())
        .await?
        .context("reply subscription closed")?;
    let record: JobRecord = decode(&msg.payload, Format::MessagePack)?;
    if record.status != JobStatus::Completed {
        bail!("copy job ended {:?}: {:?}", record.status, record.error);
    }
    Ok(record)
}

/// Seconds the worker spent after the agent: the job's whole time less the agent's own wall time.
fn storing_secs(record: &JobRecord) -> f64 {
    let whole = match (record.started_at, record.finished_at) {
        (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    };
    let agent = record
        .resources
        .as_ref()
        .map_or(0.0, |r| r.wall_ms as f64 / 1000.0);
    (whole - agent).max(1e-6)
}

async fn gateway_download(fleet: &Fleet<'_>, record: &JobRecord, name: &str) -> Result<u64> {
    let url = format!("{}/v1/jobs/{}/artifacts/{}", fleet.base, record.id, name);
    let mut r = fleet.http.get(url).send().await?;
    if !r.status().is_success() {
        bail!("downloading {name}: {}", r.status());
    }
    // Chunk by chunk, as a client saving to disk would: the body is never held whole.
    let mut n = 0u64;
    while let Some(chunk) = r.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok(n)
}

/// The gateway's peak resident memory (KiB) sampled while `work` runs.
async fn gateway_peak_while(
    fleet: &Fleet<'_>,
    work: impl std::future::Future<Output = Result<u64>>,
) -> Result<u64> {
    let rss = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    tokio::pin!(work);
    let mut peak = rss(fleet.gateway_pid);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            done = &mut work => {
                done?;
                return Ok(peak.max(rss(fleet.gateway_pid)));
            }
            _ = tick.tick() => peak = peak.max(rss(fleet.gateway_pid)),
        }
    }
}
