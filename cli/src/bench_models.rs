//! `fleet bench --model-server URL`: the OpenAI-compatible front door against the same model server asked
//! directly, in the same run. Three figures: tokens per second with 8 concurrent streams (fleet against
//! direct), the first token's latency (fleet against direct, sequential, alternated), and each token's way from
//! the model server to the SSE client. For the last, the fleet's model agent is pointed at a relay inside this
//! bench process, which notes when each token leaves the server; the bench's SSE client notes when it arrives,
//! on the same clock. Requests run one at a time there, so the k-th token out is the k-th token in.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench_measure::verdict;

/// The model agent the front door asks (straight to the server), and the one behind the relay.
pub const MODEL_AGENT: &str = "bench-model";
pub const TAPPED_AGENT: &str = "bench-model-tapped";

const STREAMS: usize = 8;
const TOKENS: u32 = 32;

/// Configuration of the bench's two model agents on `server` (its OpenAI API root) and the relay's `port`.
pub fn agents_toml(server: &str, model: &str, relay_port: u16) -> String {
    let agent = |name: &str, base: &str| {
        format!("[agents.{name}]\nkind = \"openai\"\nbase_url = \"{base}\"\nmodel = \"{model}\"\ntemperature = 0.0\nseed = 1\n\n")
    };
    agent(MODEL_AGENT, server) + &agent(TAPPED_AGENT, &format!("http://127.0.0.1:{relay_port}/v1"))
}

pub struct Models<'a> {
    pub http: &'a reqwest::Client,
    /// The fleet's gateway.
    pub base: &'a str,
    /// The model server's OpenAI API root.
    pub server: &'a str,
    pub model: &'a str,
    pub relay: &'a Relay,
    pub rounds: usize,
}

pub async fn run(m: &Models<'_>) -> Result<()> {
    let fleet = format!("{}/v1", m.base);
    // Warm both paths (the server's prompt cache, the worker's connection pool).
    stream(m.http, m.server, m.model, TOKENS).await?;
    stream(m.http, &fleet, MODEL_AGENT, TOKENS).await?;
    let (mut direct_rate, mut fleet_rate) = (Vec::new(), Vec::new());
    let (mut direct_first, mut fleet_first) = (Vec::new(), Vec::new());
    for _ in 0..m.rounds.max(1) {
        direct_rate.push(rate(m.http, m.server, m.model).await?);
        fleet_rate.push(rate(m.http, &fleet, MODEL_AGENT).await?);
        for _ in 0..5 {
            direct_first.push(stream(m.http, m.server, m.model, 4).await?.first_ms);
            fleet_first.push(stream(m.http, &fleet, MODEL_AGENT, 4).await?.first_ms);
        }
    }
    let overhead = token_overhead(m, &fleet).await?;
    print(
        &direct_rate,
        &fleet_rate,
        &direct_first,
        &fleet_first,
        &overhead,
    );
    Ok(())
}

fn print(
    direct_rate: &[f64],
    fleet_rate: &[f64],
    direct_first: &[f64],
    fleet_first: &[f64],
    overhead: &[f64],
) {
    let med = |v: &[f64]| crate::bench::median(v.iter().copied());
    let (dr, fr) = (med(direct_rate), med(fleet_rate));
    let (df, ff) = (med(direct_first), med(fleet_first));
    let way = med(overhead);
    println!();
    println!("model agents: the front door against the model server asked directly ({} tokens an answer)", TOKENS);
    println!("  {STREAMS} concurrent streams (tokens/s)      direct {dr:>8.1}   fleet {fr:>8.1}   ({:.2}×)", fr / dr.max(f64::EPSILON));
    println!(
        "  first token p50                      direct {df:>8.1} ms fleet {ff:>8.1} ms (+{:.1} ms)",
        ff - df
    );
    println!(
        "  a token's way server → SSE client    p50 {way:>6.2} ms over {} tokens",
        overhead.len()
    );
    println!(
        "{} front door tokens/s with {STREAMS} streams ≥ 0.9× direct",
        verdict(fr >= 0.9 * dr)
    );
    println!(
        "{} first token through the fleet ≤ direct + 5 ms (p50)",
        verdict(ff <= df + 5.0)
    );
    println!(
        "{} a token's way from the model server to an SSE client ≤ 2 ms (p50)",
        verdict(way <= 2.0)
    );
}

/// Tokens per second of `STREAMS` streams at once.
async fn rate(http: &reqwest::Client, api: &str, model: &str) -> Result<f64> {
    let started = Instant::now();
    let streams = (0..STREAMS).map(|_| stream(http, api, model, TOKENS));
    let answers = futures::future::try_join_all(streams).await?;
    let tokens: usize = answers.iter().map(|a| a.arrivals.len()).sum();
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

/// One streamed answer: when its first token came (ms after asking) and when each token arrived.
struct Streamed {
    first_ms: f64,
    arrivals: Vec<Instant>,
}

async fn stream(http: &reqwest::Client, api: &str, model: &str, tokens: u32) -> Result<Streamed> {
    let body = json!({
        "model": model, "stream": true, "max_tokens": tokens, "temperature": 0.0, "seed": 1,
        "messages": [{"role": "user", "content": "Tell a story about a lighthouse."}],
    });
    let asked = Instant::now();
    let response = http
        .post(format!("{api}/chat/completions"))
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "{api}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let mut response = response;
    let (mut pending, mut arrivals) = (String::new(), Vec::new());
    while let Some(chunk) = response.chunk().await? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        let now = Instant::now();
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if has_content(&line) {
                arrivals.push(now);
            }
        }
    }
    let first = arrivals.first().context("the answer had no tokens")?;
    Ok(Streamed {
        first_ms: (*first - asked).as_secs_f64() * 1000.0,
        arrivals,
    })
}

/// Whether an SSE line is a chunk carrying answer text.
fn has_content(line: &str) -> bool {
    let Some(data) = line.trim().strip_prefix("data:") else {
        return false;
    };
    let chunk: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
    chunk["choices"][0]["delta"]["content"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
}

/// Each token's arrival at the client less its departure from the server (ms), over sequential answers.
async fn token_overhead(m: &Models<'_>, fleet: &str) -> Result<Vec<f64>> {
    let mut overhead = Vec::new();
    for _ in 0..m.rounds.max(1) * 5 {
        m.relay
            .departures
            .lock()
            .map_err(|_| anyhow::anyhow!("relay poisoned"))?
            .clear();
        let answer = stream(m.http, fleet, TAPPED_AGENT, TOKENS).await?;
        let departed = m
            .relay
            .departures
            .lock()
            .map_err(|_| anyhow::anyhow!("relay poisoned"))?
            .clone();
        if departed.len() != answer.arrivals.len() {
            bail!(
                "the relay saw {} tokens leave, the client {} arrive",
                departed.len(),
                answer.arrivals.len()
            );
        }
        overhead.extend(
            answer
                .arrivals
                .iter()
                .zip(&departed)
                .map(|(a, d)| (*a - *d).as_secs_f64() * 1000.0),
        );
    }
    Ok(overhead)
}

/// A TCP relay in front of the model server that notes when each token passes toward the worker.
pub struct Relay {
    pub port: u16,
    departures: Arc<Mutex<Vec<Instant>>>,
}

impl Relay {
    /// Listens on a loopback port, relaying each connection to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let departures = Arc::new(Mutex::new(Vec::new()));
        let noted = departures.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, noted) = (upstream.clone(), noted.clone());
                tokio::spawn(async move {
                    // A relayed connection ends when either side closes; nothing to report.
                    let _ = relay(client, &upstream, noted).await;
                });
            }
        });
        Ok(Self { port, departures })
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    upstream: &str,
    noted: Arc<Mutex<Vec<Instant>>>,
) -> Result<()> {
    let server = tokio::net::TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::io::copy(&mut client_read, &mut server_write);
    let answers = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            let tokens = count_tokens(&buf[..n]);
            client_write.write_all(&buf[..n]).await?;
            let now = Instant::now();
            if let Ok(mut departures) = noted.lock() {
                departures.extend(std::iter::repeat_n(now, tokens));
            }
        }
    };
    // Whichever side closes ends the relayed connection, so the worker sees the server's close and does not
    // reuse a connection nobody answers on.
    tokio::select! {
        sent = requests => sent.map(drop).map_err(Into::into),
        answered = answers => answered,
    }
}

/// Chunks with answer text in a piece of the server's stream (its events arrive whole, one a write).
fn count_tokens(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| has_content(l))
        .count()
}

/// The relay's upstream address (`host:port`) from the server's API root.
pub fn upstream_of(server: &str) -> Result<String> {
    let url = reqwest::Url::parse(server).with_context(|| format!("--model-server {server}"))?;
    let host = url.host_str().context("--model-server has no host")?;
    let port = url
        .port_or_known_default()
        .context("--model-server has no port")?;
    Ok(format!("{host}:{port}"))
}
