//! The `--deployed` part of `fleet bench`: the hot path as a fleet is deployed, not as `fleet up` runs it. A
//! second gateway requires API keys and is driven with one; then `--deployed-queued` jobs of another caller
//! wait in the jobs stream (for an agent no worker serves) while the same measures run again. Each condition
//! has its own raw spawn figures, measured in the same run.

use std::process::Child;

use anyhow::{Context, Result};
use futures::StreamExt;

use crate::bench::{
    http_job, http_throughput, jobs_subject_of_owner, nats_job, nats_throughput, Paths, AGENT,
};
use crate::bench_depth::DEPTH_AGENT;
use crate::bench_measure::{
    median, verdict, Samples, HTTP_MAX_P99_OVER_MS, HTTP_MIN_RATIO, NATS_MAX_P99_OVER_MS,
    NATS_MIN_RATIO,
};
use crate::bench_spawn::{raw_spawn, raw_spawn_rate};

/// Starts a gateway with these settings on top of the bench's, listening at the address given.
pub type SpawnGateway<'a> = &'a dyn Fn(&str, &[(&str, String)]) -> Result<Child>;

/// What the part is given.
pub struct Deployed<'a> {
    pub paths: &'a Paths<'a>,
    pub spawn_gateway: SpawnGateway<'a>,
    /// The depth part's agent no worker serves here, whose consumer is declared (so the parked jobs wait
    /// rather than fail as unknown).
    pub parked: &'a crate::bench_depth::Depth<'a>,
    pub samples: usize,
    pub jobs: usize,
    pub in_flight: usize,
    pub rounds: usize,
    pub queued: usize,
}

/// One condition's figures.
struct Figures {
    raw: Samples,
    nats: Samples,
    http: Samples,
    raw_rate: f64,
    nats_rate: f64,
    http_rate: f64,
}

pub async fn run(d: &Deployed<'_>) -> Result<()> {
    let addr = format!("127.0.0.1:{}", crate::local_nats::free_port()?);
    let keys_on = [("FLEET_AUTH_MODE", "required".to_string())];
    let gateway = GatewayGuard((d.spawn_gateway)(&addr, &keys_on)?);
    let base = format!("http://{addr}");
    let key = create_key(d.paths.js).await?;
    let http = keyed_client(&key)?;
    crate::bench::wait_until_agent_known(&http, &base).await?;
    let keyed = Paths {
        client: d.paths.client,
        js: d.paths.js,
        http: &http,
        base: &base,
    };
    let quiet = measure(d, &keyed).await?;
    crate::bench_depth::declare(d.parked).await?;
    park(d.paths.js, d.queued).await?;
    let deep = measure(d, &keyed).await;
    unpark(d.paths.js).await?;
    drop(gateway);
    report(d, &quiet, &deep?);
    Ok(())
}

/// Ends the keyed gateway however the part ends.
struct GatewayGuard(Child);

impl Drop for GatewayGuard {
    fn drop(&mut self) {
        // Already gone is as good as stopped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A key that may run every agent, straight into the keys bucket (as `fleet keys create` does).
async fn create_key(js: &async_nats::jetstream::Context) -> Result<String> {
    let topology = fleet_shared::Topology::new(crate::bench::PREFIX);
    let bucket = js.get_key_value(topology.keys_bucket()).await?;
    let scopes = fleet_shared::auth::Scopes {
        agents: vec!["*".into()],
        ..Default::default()
    };
    let (_, key) = fleet_shared::keys::create(&bucket, "bench", scopes)
        .await
        .map_err(|e| anyhow::anyhow!("creating the bench's key: {e}"))?;
    Ok(key)
}

fn keyed_client(key: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

async fn measure(d: &Deployed<'_>, p: &Paths<'_>) -> Result<Figures> {
    for _ in 0..50 {
        http_job(p.http, p.base).await?;
    }
    let raw = Samples::collect(d.samples, || async { raw_spawn() }).await?;
    let nats = Samples::collect(d.samples, || nats_job(p.client, p.js)).await?;
    let http = Samples::collect(d.samples, || http_job(p.http, p.base)).await?;
    let (mut raw_rates, mut nats_rates, mut http_rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..d.rounds.max(1) {
        raw_rates.push(raw_spawn_rate(d.jobs)?);
        nats_rates.push(nats_throughput(p.client, p.js, d.jobs, d.in_flight).await?);
        http_rates.push(http_throughput(p.http, p.base, d.jobs, d.in_flight).await?);
    }
    Ok(Figures {
        raw,
        nats,
        http,
        raw_rate: median(raw_rates.into_iter()),
        nats_rate: median(nats_rates.into_iter()),
        http_rate: median(http_rates.into_iter()),
    })
}

/// The other caller's owner, whose jobs wait under its own subject as an authenticated caller's do.
const OTHER_CALLER: &str = "bench-other-caller";

/// Queues `n` jobs of another caller for the parked agent, which no worker serves.
async fn park(js: &async_nats::jetstream::Context, n: usize) -> Result<()> {
    let subject = jobs_subject_of_owner(DEPTH_AGENT, OTHER_CALLER);
    let body = fleet_shared::codec::to_msgpack(&serde_json::json!({"message": "parked"}));
    let publishes = futures::stream::iter(0..n).map(|_| {
        let (js, subject, body) = (js.clone(), subject.clone(), body.clone());
        async move {
            let ack = js.publish(subject, body.into()).await?;
            ack.await.map(drop).map_err(anyhow::Error::from)
        }
    });
    let mut publishes = publishes.buffer_unordered(512);
    while let Some(done) = publishes.next().await {
        done.context("queueing the other caller's jobs")?;
    }
    Ok(())
}

/// Takes the parked jobs off the queue again, so the parts after this one see the queue as it was.
async fn unpark(js: &async_nats::jetstream::Context) -> Result<()> {
    let topology = fleet_shared::Topology::new(crate::bench::PREFIX);
    let stream = js.get_stream(topology.jobs_stream()).await?;
    stream
        .purge()
        .filter(jobs_subject_of_owner(DEPTH_AGENT, OTHER_CALLER))
        .await?;
    Ok(())
}

fn report(d: &Deployed<'_>, quiet: &Figures, deep: &Figures) {
    println!();
    println!(
        "as deployed (agent `{AGENT}`; HTTP through a gateway requiring API keys, with a key; the deep queue \
         holds {} jobs of another caller)",
        d.queued
    );
    println!("{:<44} {:>22} {:>22}", "", "empty queue", "deep queue");
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        println!("{name:<44} {:>22} {:>22}", f(quiet), f(deep));
    };
    let p50_p99 = |s: &Samples| format!("{:.3} / {:.3}", s.ms(0.5), s.ms(0.99));
    row("raw spawn, p50 / p99 (ms)", &|f| p50_p99(&f.raw));
    row("job over NATS, p50 / p99 (ms)", &|f| p50_p99(&f.nats));
    row("job over HTTP with a key, p50 / p99 (ms)", &|f| {
        p50_p99(&f.http)
    });
    row("raw spawn rate (jobs/s)", &|f| format!("{:.0}", f.raw_rate));
    row("NATS, jobs/s (× raw)", &|f| {
        format!("{:.0} ({:.2} ×)", f.nats_rate, f.nats_rate / f.raw_rate)
    });
    row("HTTP with a key, jobs/s (× raw)", &|f| {
        format!("{:.0} ({:.2} ×)", f.http_rate, f.http_rate / f.raw_rate)
    });
    println!();
    for (when, f) in [("empty queue", quiet), ("deep queue", deep)] {
        print_targets(when, f);
    }
}

fn print_targets(when: &str, f: &Figures) {
    let (nats, http) = (f.nats_rate / f.raw_rate, f.http_rate / f.raw_rate);
    let raw_p99 = f.raw.ms(0.99);
    let targets = [
        (
            format!("NATS ≥ {NATS_MIN_RATIO} × raw ({nats:.2} ×)"),
            nats >= NATS_MIN_RATIO,
        ),
        (
            format!("HTTP with a key ≥ {HTTP_MIN_RATIO} × raw ({http:.2} ×)"),
            http >= HTTP_MIN_RATIO,
        ),
        (
            format!("NATS p99 ≤ raw p99 + {NATS_MAX_P99_OVER_MS} ms"),
            f.nats.ms(0.99) <= raw_p99 + NATS_MAX_P99_OVER_MS,
        ),
        (
            format!("HTTP p99 with a key ≤ raw p99 + {HTTP_MAX_P99_OVER_MS} ms"),
            f.http.ms(0.99) <= raw_p99 + HTTP_MAX_P99_OVER_MS,
        ),
    ];
    for (target, met) in targets {
        println!("{} {target}, {when}", verdict(met));
    }
}
