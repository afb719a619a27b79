//! `fleet bench --artifacts`: the file path of jobs against `object_store` used directly on the same store, in the
//! same run, for the local disk and for an S3 server (moto, when `moto_server` is installed; the fleet reaches it
//! as a named artifact target). Upload: a job whose agent copies prepared files into its workspace; the worker's
//! storing time is the job's time minus the agent's own wall time. Download: the same files through the gateway,
//! one request per file and as one tar archive. Memory: the gateway's peak RSS while it streams a large file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench_measure::verdict;
use anyhow::{bail, Context, Result};
use fleet_shared::codec::{decode, to_msgpack, Format};
use fleet_shared::{JobRecord, JobStatus};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

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

/// A store measured both ways: through the fleet (jobs naming `target`) and with `object_store` directly.
pub struct Target {
    pub label: String,
    /// The job's `artifact_target`; `None`: the fleet's default store.
    pub target: Option<String>,
    pub direct: Arc<dyn ObjectStore>,
}

/// Name of the bench's S3 artifact target in the fleet's configuration.
pub const S3_TARGET: &str = "bench_s3";
const S3_BUCKET: &str = "fleet-bench";

/// An S3 server for the bench: moto on a loopback port with one bucket, or `None` if moto is not installed.
pub async fn start_s3(port: u16) -> Result<Option<(std::process::Child, String)>> {
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(child) = child else {
        return Ok(None);
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let made = http.put(format!("{endpoint}/{S3_BUCKET}")).send().await;
        if made.is_ok_and(|r| r.status().is_success()) {
            return Ok(Some((child, endpoint)));
        }
        if Instant::now() > deadline {
            bail!("moto_server did not come up on {endpoint}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fleet configuration naming the S3 server as target [`S3_TARGET`].
pub fn s3_target_toml(endpoint: &str) -> String {
    format!(
        "\n[artifacts.targets.{S3_TARGET}]\nbackend = \"s3\"\ns3_endpoint = \"{endpoint}\"\ns3_bucket = \"{S3_BUCKET}\"\ns3_access_key_id = \"test\"\ns3_secret_access_key = \"test\"\n"
    )
}

/// `object_store` straight to the same S3 server.
pub fn s3_direct(endpoint: &str) -> Result<Arc<dyn ObjectStore>> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(S3_BUCKET)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()?;
    Ok(Arc::new(store))
}

pub async fn run(
    fleet: &Fleet<'_>,
    targets: &[Target],
    big_mb: usize,
    small_count: usize,
    flat_gb: usize,
    rounds: usize,
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
    let mut ratios = Vec::new();
    for target in targets {
        println!();
        println!(
            "{:<44} {:>10} {:>10} {:>8}",
            format!("artifacts, {} (MB/s)", target.label),
            "fleet",
            "direct",
            "ratio"
        );
        for (i, case) in cases.iter().enumerate() {
            for (what, f, d) in measure_case(fleet, target, i, case, rounds).await? {
                let what = format!("{} {what}", case.name);
                println!("{what:<44} {f:>10.1} {d:>10.1} {:>7.2}×", f / d);
                ratios.push((format!("{}: {what}", target.label), f / d));
            }
        }
    }

    let floor = round_trip_floor(fleet, small_count.max(100)).await?;
    println!(
        "\nan empty request (GET /health), one at a time: {:.0} µs each — the floor under a request per file",
        floor.as_secs_f64() * 1e6
    );

    let mut peak_kb = 0;
    if flat_gb > 0 {
        let src = fleet.scratch.join("src-flat");
        write_sources(&src, &[("huge.bin".into(), flat_gb * 1024 * 1024 * 1024)])?;
        let record = copy_job(fleet, &src, None).await?;
        std::fs::remove_dir_all(&src)?;
        let path = format!("{}/huge.bin", record.id);
        peak_kb = gateway_peak_while(fleet, gateway_download(fleet, &path)).await?;
        println!(
            "gateway peak RSS while streaming {flat_gb} GB: {:.1} MB",
            peak_kb as f64 / 1024.0
        );
    }
    println!();
    for (what, ratio) in &ratios {
        println!("{} {what} ≥ 0.8 × direct", verdict(*ratio >= 0.8));
    }
    if flat_gb > 0 {
        println!(
            "{} gateway RSS ≤ 64 MB while streaming",
            verdict(peak_kb <= 64 * 1024)
        );
    }
    Ok(())
}

/// One case on one target: (what, fleet MB/s, direct MB/s) for upload, per-file download and, for many files, the
/// tar download. Downloads are measured in `rounds` rounds alternating the direct reads with the gateway's, so a
/// drift in machine speed hits both sides; medians are reported.
async fn measure_case(
    fleet: &Fleet<'_>,
    target: &Target,
    i: usize,
    case: &Case,
    rounds: usize,
) -> Result<Vec<(&'static str, f64, f64)>> {
    let src = fleet.scratch.join(format!("src-{i}"));
    let bytes = write_sources(&src, &case.files)?;
    let mb = bytes as f64 / (1024.0 * 1024.0);
    let direct_key = |name: &str| object_store::path::Path::from(format!("direct/{i}/{name}"));

    let started = Instant::now();
    for (name, _) in &case.files {
        let data = tokio::fs::read(src.join(name)).await?;
        target
            .direct
            .put(&direct_key(name), PutPayload::from(data))
            .await?;
    }
    let direct_up = mb / started.elapsed().as_secs_f64();

    let record = copy_job(fleet, &src, target.target.as_deref()).await?;
    std::fs::remove_dir_all(&src)?;
    if record.files.len() != case.files.len() {
        bail!(
            "the job stored {} of {} files: {:?}",
            record.files.len(),
            case.files.len(),
            record.skipped_files
        );
    }
    let fleet_up = mb / storing_secs(&record);

    let (mut direct_down, mut fleet_down, mut tar_down) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        for (name, _) in &case.files {
            let got = target.direct.get(&direct_key(name)).await?;
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                chunk?;
            }
        }
        direct_down.push(mb / started.elapsed().as_secs_f64());

        let started = Instant::now();
        for (name, _) in &case.files {
            gateway_download(fleet, &format!("{}/{name}", record.id)).await?;
        }
        fleet_down.push(mb / started.elapsed().as_secs_f64());

        if case.files.len() > 1 {
            let started = Instant::now();
            let got = gateway_get(fleet, &format!("/v1/jobs/{}/artifacts.tar", record.id)).await?;
            if got < bytes {
                bail!("the archive held {got} bytes for {bytes} bytes of files");
            }
            tar_down.push(mb / started.elapsed().as_secs_f64());
        }
    }
    let direct_down = median(direct_down);
    let mut rates = vec![
        ("upload", fleet_up, direct_up),
        ("download via gateway", median(fleet_down), direct_down),
    ];
    if !tar_down.is_empty() {
        rates.push((
            "download via gateway, one .tar",
            median(tar_down),
            direct_down,
        ));
    }
    Ok(rates)
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// The time of one empty request through the gateway (`GET /health`), requests made one after another.
async fn round_trip_floor(fleet: &Fleet<'_>, count: usize) -> Result<Duration> {
    let started = Instant::now();
    for _ in 0..count {
        gateway_get(fleet, "/health").await?;
    }
    Ok(started.elapsed() / count as u32)
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

/// Runs the copy agent on `src`, storing into `target`, and returns the job's terminal record.
async fn copy_job(fleet: &Fleet<'_>, src: &Path, target: Option<&str>) -> Result<JobRecord> {
    let inbox = fleet.client.new_inbox();
    let mut sub = fleet.client.subscribe(inbox.clone()).await?;
    let body = serde_json::json!({"message": format!("{}/.", src.display()), "reply_to": inbox,
        "artifact_target": target});
    fleet
        .js
        .publish(
            crate::bench::jobs_subject(COPY_AGENT),
            to_msgpack(&body).into(),
        )
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

/// Downloads artifact `path` (`<job id>/<name>`) through the gateway; returns its size.
async fn gateway_download(fleet: &Fleet<'_>, path: &str) -> Result<u64> {
    let (id, name) = path.split_once('/').context("path is <job id>/<name>")?;
    gateway_get(fleet, &format!("/v1/jobs/{id}/artifacts/{name}")).await
}

async fn gateway_get(fleet: &Fleet<'_>, path: &str) -> Result<u64> {
    let mut r = fleet
        .http
        .get(format!("{}{path}", fleet.base))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("GET {path}: {}", r.status());
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
        // A process already gone reads as no memory.
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
