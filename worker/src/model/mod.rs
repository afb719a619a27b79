//! Model agents (`kind = "openai"` or `"ollama"`): the worker asks the model server itself, no process. Tokens
//! go out as `message` events as they arrive; a cancel, the timeout or the worker's stop drops the request at
//! once (the server sees its connection close and stops generating); 429 and 5xx are asked again with backoff
//! within the job's deadline; anything else the server refuses or garbles ends as `model_error`.

mod ollama;
mod openai;
mod retry;

use std::time::Duration;

use fleet_shared::chat::{ChatMessage, ChatRole, Sampling};
use fleet_shared::config::AgentConfig;
use fleet_shared::session::Turn;
use fleet_shared::wire::Usage;
use fleet_shared::{JobRecord, JobRequest};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::lines::Lines;
use crate::output::Captured;
use crate::report::Report;
use crate::supervisor::{Ending, KillReason, RunOutcome};
use fleet_shared::wire::Resources;

/// The worker's client for model servers. No overall timeout: a job's own deadline bounds each request.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("fleet-worker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What a line of a model server's stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Usage(Usage),
    /// The answer is complete (a finish reason, Ollama's `done`).
    Finished,
    /// The stream is over.
    Done,
    Failed(String),
}

/// The conversation a job asks: the agent's system prompt, then the job's own conversation where it carries one
/// (the front door's), else its context, its session's history and its message.
pub fn messages(agent: &AgentConfig, request: &JobRequest, history: &[Turn]) -> Vec<ChatMessage> {
    let system = agent.system.iter().filter(|s| !s.is_empty());
    let system = system.map(|s| ChatMessage::new(ChatRole::System, s.clone()));
    if !request.chat.is_empty() {
        return system.chain(request.chat.iter().cloned()).collect();
    }
    let context = request.context.iter().filter(|c| !c.is_empty());
    system
        .chain(context.map(|c| ChatMessage::new(ChatRole::System, c.clone())))
        .chain(fleet_shared::session::history_chat(history))
        .chain([ChatMessage::new(ChatRole::User, request.message.clone())])
        .collect()
}

/// The job's sampling over the agent's.
fn sampling(agent: &AgentConfig, request: &JobRequest) -> Sampling {
    request.sampling.or(Sampling {
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        seed: agent.seed,
    })
}

/// The API an agent's server is asked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    OpenAi,
    OllamaNative,
}

impl Protocol {
    fn of(agent: &AgentConfig) -> Self {
        let base = agent
            .base_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/');
        match agent.kind {
            fleet_shared::config::AgentKind::Ollama if !base.ends_with("/v1") => Self::OllamaNative,
            _ => Self::OpenAi,
        }
    }

    fn url(self, base: &str) -> String {
        match self {
            Self::OpenAi => openai::url(base),
            Self::OllamaNative => ollama::url(base),
        }
    }

    /// The request's JSON body.
    fn body(
        self,
        agent: &AgentConfig,
        request: &JobRequest,
        history: &[Turn],
    ) -> serde_json::Result<Vec<u8>> {
        let model = agent.model.as_deref().unwrap_or("");
        let messages = messages(agent, request, history);
        let sampling = sampling(agent, request);
        match self {
            Self::OpenAi => serde_json::to_vec(&openai::body(model, messages, sampling)),
            Self::OllamaNative => serde_json::to_vec(&ollama::body(model, messages, sampling)),
        }
    }

    fn line(self, line: &str) -> Vec<Piece> {
        match self {
            Self::OpenAi => openai::line(line),
            Self::OllamaNative => ollama::line(line),
        }
    }
}

/// One job's question to its model.
pub struct Ask<'a> {
    pub agent: &'a AgentConfig,
    pub record: &'a JobRecord,
    /// A session turn's earlier turns, asked as the conversation so far.
    pub history: &'a [Turn],
    pub events: &'a Events,
    pub timeout: Duration,
    /// The job's cancel.
    pub cancel: CancellationToken,
    /// The worker's stop (shutdown past its grace, or the job superseded).
    pub stop: CancellationToken,
    /// Answer bytes the record keeps.
    pub answer_cap: usize,
}

/// How the question ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Answered,
    /// The server refused, failed or garbled the answer: why, in its words where it gave some.
    Refused(String),
    Stopped(KillReason),
}

/// The answer (its first `answer_cap` bytes and its full length), the tokens it cost, and how it ended.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub total: u64,
    pub usage: Option<Usage>,
    pub end: End,
    pub wall: Duration,
    cap: usize,
}

impl Answer {
    fn push(&mut self, text: &str) {
        self.total += text.len() as u64;
        let room = self.cap.saturating_sub(self.text.len());
        let mut take = room.min(text.len());
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.text.push_str(&text[..take]);
    }
}

/// Asks the agent's model the job's question, streaming its answer as events, until it ends or is stopped.
pub async fn ask(http: &reqwest::Client, ask: &Ask<'_>) -> Answer {
    let started = Instant::now();
    let deadline = started + ask.timeout;
    let mut answer = Answer {
        text: String::new(),
        total: 0,
        usage: None,
        end: End::Answered,
        wall: Duration::ZERO,
        cap: ask.answer_cap,
    };
    answer.end = tokio::select! {
        biased;
        _ = ask.stop.cancelled() => End::Stopped(KillReason::Requested),
        _ = ask.cancel.cancelled() => End::Stopped(KillReason::Cancelled),
        _ = tokio::time::sleep_until(deadline) => End::Stopped(KillReason::Timeout),
        end = converse(http, ask, deadline, &mut answer) => end,
    };
    answer.wall = started.elapsed();
    if let Some(usage) = &answer.usage {
        ask.events.usage(usage.clone()).await;
    }
    answer
}

/// An answer that never was: the question could not be asked.
pub fn unasked(why: &str) -> Answer {
    Answer {
        text: String::new(),
        total: 0,
        usage: None,
        end: End::Refused(why.to_string()),
        wall: Duration::ZERO,
        cap: 0,
    }
}

/// The run's outcome from the model's answer: the answer is the run's stdout too, and the report carries it,
/// its usage, and why the server refused, if it did.
pub fn outcome(answer: Answer) -> RunOutcome {
    let killed = match &answer.end {
        End::Stopped(reason) => Some(*reason),
        _ => None,
    };
    let refused = match answer.end {
        End::Refused(why) => Some(why),
        _ => None,
    };
    let stdout = Captured {
        head: answer.text.clone().into_bytes(),
        total: answer.total,
        ..Captured::default()
    };
    RunOutcome {
        ending: Ending::NoProcess,
        killed,
        limit: None,
        stdout,
        stderr: Captured::default(),
        resources: Resources {
            wall_ms: answer.wall.as_millis() as u64,
            ..Resources::default()
        },
        report: Report {
            answer: Some(answer.text),
            usage: answer.usage,
            refused,
            ..Report::default()
        },
    }
}

/// A request that did not give a stream, and whether asking again may help.
struct Failure {
    why: String,
    retryable: bool,
    retry_after: Option<String>,
}

/// Sends the request, again after each retryable failure while the wait ends before `deadline`, and reads the
/// answer's stream.
async fn converse(
    http: &reqwest::Client,
    ask: &Ask<'_>,
    deadline: Instant,
    answer: &mut Answer,
) -> End {
    let protocol = Protocol::of(ask.agent);
    let url = protocol.url(ask.agent.base_url.as_deref().unwrap_or(""));
    let body = match protocol.body(ask.agent, &ask.record.request, ask.history) {
        Ok(body) => body,
        Err(e) => return End::Refused(format!("cannot write the model request: {e}")),
    };
    let mut tries = 0;
    loop {
        let failure = match send(http, &url, &body, ask.agent).await {
            Ok(response) => return stream(protocol, response, ask.events, answer).await,
            Err(failure) => failure,
        };
        let wait = retry::wait(tries, failure.retry_after.as_deref());
        tries += 1;
        if !failure.retryable {
            return End::Refused(failure.why);
        }
        if Instant::now() + wait >= deadline {
            return End::Refused(format!(
                "{} (tried {tries} times; waiting {:.1} s more would pass the job's timeout)",
                failure.why,
                wait.as_secs_f64()
            ));
        }
        tracing::info!(url, tries, wait_ms = wait.as_millis() as u64, why = %failure.why, "asking the model again");
        tokio::time::sleep(wait).await;
    }
}

/// The response to one request, when it is a success; else what went wrong.
async fn send(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
    agent: &AgentConfig,
) -> Result<reqwest::Response, Failure> {
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    if let Some(key) = &agent.api_key {
        request = request.bearer_auth(key.expose());
    }
    let response = request.send().await.map_err(|e| Failure {
        why: format!("cannot reach the model server at {url}: {}", chain(&e)),
        retryable: true,
        retry_after: None,
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let words = openai::error_message(&error_body(response).await);
    Err(Failure {
        why: format!("the model server answered {status}: {words}"),
        retryable: retry::is_retryable(status),
        retry_after,
    })
}

/// The start of an error response's body (a few KiB say what went wrong; a hostile server may send more).
async fn error_body(response: reqwest::Response) -> Vec<u8> {
    const KEEP: usize = 8 * 1024;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk[..chunk.len().min(KEEP - body.len())]);
        if body.len() >= KEEP {
            break;
        }
    }
    body
}

/// Reads the answer's stream to its end, sending its text as events as it comes.
async fn stream(
    protocol: Protocol,
    response: reqwest::Response,
    events: &Events,
    answer: &mut Answer,
) -> End {
    let mut body = response.bytes_stream();
    let mut lines = Lines::default();
    let mut finished = false;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return End::Refused(format!("the model server's stream broke: {}", chain(&e)))
            }
        };
        for line in lines.push(&chunk) {
            if let Some(end) = take(protocol, &line, events, answer, &mut finished).await {
                return end;
            }
        }
        if lines.is_too_long() {
            return End::Refused("the model server sent a line longer than 1 MiB".into());
        }
    }
    if let Some(line) = lines.finish() {
        if let Some(end) = take(protocol, &line, events, answer, &mut finished).await {
            return end;
        }
    }
    match finished {
        true => End::Answered,
        false => End::Refused("the model server's stream ended before its answer did".into()),
    }
}

/// Acts on one line of the stream; the end, if it says the stream is over.
async fn take(
    protocol: Protocol,
    line: &str,
    events: &Events,
    answer: &mut Answer,
    finished: &mut bool,
) -> Option<End> {
    for piece in protocol.line(line) {
        match piece {
            Piece::Text(text) => {
                answer.push(&text);
                events.delta(text).await;
            }
            Piece::Usage(usage) => answer.usage = Some(usage),
            Piece::Finished => *finished = true,
            Piece::Done => return Some(End::Answered),
            Piece::Failed(why) => return Some(End::Refused(format!("the model server: {why}"))),
        }
    }
    None
}

/// An error with its causes, which for connection errors say what actually failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
