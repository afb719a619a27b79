//! Coding CLIs the fleet understands (`kind = "claude-code"`, `"codex"`, `"opencode"`, `"gemini"`, `"qwen"`,
//! `"aider"`): a parser per CLI reads its machine-readable stdout line by line as it is printed, turning what it
//! knows into typed events (`message`, `tool_call`, `tool_result`, `usage`) and the run's report (answer, usage,
//! the CLI's own session id, tool calls). A line the parser does not know goes on as `output`, never dropped and
//! never failing the job; the record's stdout keeps every byte as printed.

mod aider;
mod claude;
mod codex;
mod gemini;
mod opencode;

use fleet_shared::config::AgentKind;
use fleet_shared::wire::Usage;
use serde_json::Value;

use crate::events::Events;
use crate::lines::Lines;
use crate::output::OutputSink;
use crate::report::Report;

/// A tool result's text in an event is cut to this many bytes (the record's stdout keeps all of it).
const TOOL_RESULT_BYTES: usize = 4 * 1024;

/// What one line said.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    /// A whole message.
    Message(String),
    /// A piece of a message still being written.
    Delta(String),
    ToolCall {
        name: String,
        input: Value,
    },
    ToolResult {
        output: String,
        is_error: bool,
    },
    Usage(Usage),
}

/// How one CLI's stream reads: each line it knows says something, and may tell the tally of the run.
pub trait Parse: Send {
    /// What `line` says; `None` for a line this parser does not know (it goes on as output).
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>>;
    /// A last look at the tally once the output has ended.
    fn finish(&mut self, _tally: &mut Tally) {}
}

/// A CLI's stream parser with what it has learnt of the run.
pub struct Parser {
    parse: Box<dyn Parse>,
    tally: Tally,
}

impl Parser {
    /// What `line` says; `None` for a line this parser does not know (it goes on as output).
    pub fn line(&mut self, line: &str) -> Option<Vec<Said>> {
        self.parse.line(line, &mut self.tally)
    }

    /// What the run said in all, once its output has ended.
    pub fn report(mut self) -> Report {
        self.parse.finish(&mut self.tally);
        self.tally.report()
    }
}

/// The parser of a CLI preset's stream; none for plain commands and model agents. `answer_cap` bounds the
/// answer kept.
pub fn parser(kind: AgentKind, answer_cap: usize) -> Option<Parser> {
    let parse: Box<dyn Parse> = match kind {
        AgentKind::ClaudeCode => Box::new(claude::Claude::default()),
        AgentKind::Codex => Box::new(codex::Codex::default()),
        AgentKind::Opencode => Box::new(opencode::Opencode),
        AgentKind::Gemini => Box::new(gemini::Gemini),
        // Qwen Code prints Claude Code's stream-json; its Gemini CLI roots show in older versions.
        AgentKind::Qwen => Box::new(Either(claude::Claude::default(), gemini::Gemini)),
        AgentKind::Aider => Box::new(aider::Aider),
        AgentKind::Command | AgentKind::Openai | AgentKind::Ollama => return None,
    };
    Some(Parser {
        parse,
        tally: Tally::new(answer_cap),
    })
}

/// A stream in either of two shapes: the first parser that knows a line takes it.
struct Either<A, B>(A, B);

impl<A: Parse, B: Parse> Parse for Either<A, B> {
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>> {
        self.0
            .line(line, tally)
            .or_else(|| self.1.line(line, tally))
    }

    fn finish(&mut self, tally: &mut Tally) {
        self.0.finish(tally);
        self.1.finish(tally);
    }
}

/// The JSON object a line holds, if it holds one with a `type`.
fn typed_object(line: &str) -> Option<(Value, String)> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let value: Value = serde_json::from_str(line).ok()?;
    let kind = value.get("type")?.as_str()?.to_string();
    Some((value, kind))
}

/// A string field, if present and a string.
fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.as_str().map(str::to_string)
}

/// A count under any of `keys` (CLIs spell token counts in snake or camel case).
fn count(v: &Value, keys: &[&str]) -> u64 {
    keys.iter().find_map(|k| v.get(*k)?.as_u64()).unwrap_or(0)
}

/// What a parser has learnt of the run so far.
#[derive(Debug, Default)]
pub struct Tally {
    answer: Answer,
    session_id: Option<String>,
    usage: Option<Usage>,
    tool_calls: u64,
}

impl Tally {
    fn new(answer_cap: usize) -> Self {
        Self {
            answer: Answer::new(answer_cap),
            ..Self::default()
        }
    }

    fn report(self) -> Report {
        Report {
            answer: self.answer.into_option(),
            usage: self.usage,
            agent_session_id: self.session_id,
            tool_calls: self.tool_calls,
            refused: None,
        }
    }
}

/// The answer as it grows, at most `cap` bytes of it.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    cap: usize,
}

impl Answer {
    fn new(cap: usize) -> Self {
        Self {
            text: String::new(),
            cap,
        }
    }

    fn push(&mut self, more: &str) {
        let room = self.cap.saturating_sub(self.text.len());
        self.text.push_str(cut(more, room));
    }

    fn replace(&mut self, text: &str) {
        self.text.clear();
        self.push(text);
    }

    fn clear(&mut self) {
        self.text.clear();
    }

    fn into_option(self) -> Option<String> {
        (!self.text.is_empty()).then_some(self.text)
    }
}

/// The first `max` bytes of `text`, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Stdout of a CLI preset: each line to its parser; what it knows becomes typed events, the rest output events.
pub struct ParsingSink<'a, S> {
    inner: S,
    parser: Parser,
    lines: Lines,
    events: Option<&'a Events>,
}

impl<'a, S: OutputSink + Send> ParsingSink<'a, S> {
    pub fn new(inner: S, parser: Parser, events: Option<&'a Events>) -> Self {
        Self {
            inner,
            parser,
            lines: Lines::default(),
            events,
        }
    }

    pub fn into_report(self) -> Report {
        self.parser.report()
    }

    async fn take(&mut self, line: String) {
        let Some(said) = self.parser.line(&line) else {
            let mut raw = line.into_bytes();
            raw.push(b'\n');
            self.inner.chunk(&raw).await;
            return;
        };
        let Some(events) = self.events else { return };
        for said in said {
            match said {
                Said::Message(text) => events.message(text).await,
                Said::Delta(text) => events.delta(text).await,
                Said::ToolCall { name, input } => events.tool_call(name, input).await,
                Said::ToolResult { output, is_error } => {
                    let output = cut(&output, TOOL_RESULT_BYTES).to_string();
                    events.tool_result(output, is_error).await
                }
                Said::Usage(usage) => events.usage(usage).await,
            }
        }
    }
}

impl<S: OutputSink + Send> OutputSink for ParsingSink<'_, S> {
    async fn chunk(&mut self, bytes: &[u8]) {
        for line in self.lines.push(bytes) {
            self.take(line).await;
        }
        if self.lines.is_too_long() {
            // Too long to parse whole: it goes on as output, as printed.
            let raw = self.lines.drain();
            self.inner.chunk(&raw).await;
        }
    }

    async fn finish(&mut self) {
        if let Some(line) = self.lines.finish() {
            self.take(line).await;
        }
        self.inner.finish().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every line of `transcript` through a fresh parser of `kind`: what each said (`None`: not known), and
    /// the report.
    pub fn run(kind: AgentKind, transcript: &str) -> (Vec<Option<Vec<Said>>>, Report) {
        let mut parser = parser(kind, 64 * 1024).expect("a preset");
        let said = transcript.lines().map(|l| parser.line(l)).collect();
        (said, parser.report())
    }

    pub fn tool_result(output: &str, is_error: bool) -> Said {
        Said::ToolResult {
            output: output.into(),
            is_error,
        }
    }

    #[test]
    fn lines_that_are_not_json_or_have_no_type_are_unknown_to_every_preset() {
        for kind in [
            AgentKind::ClaudeCode,
            AgentKind::Codex,
            AgentKind::Opencode,
            AgentKind::Gemini,
            AgentKind::Qwen,
        ] {
            let (said, _) = run(
                kind,
                "plain text\n{\"no\":\"type\"}\n{broken\n[1,2]\n{\"type\":\"from_the_future\"}",
            );
            assert!(said.iter().all(Option::is_none), "{kind:?}: {said:?}");
        }
        assert!(parser(AgentKind::Command, 1).is_none() && parser(AgentKind::Openai, 1).is_none());
    }

    #[test]
    fn the_answer_is_kept_within_its_cap_on_a_character_boundary() {
        let mut answer = Answer::new(5);
        answer.push("ab");
        answer.push("cdé f");
        assert_eq!(answer.text, "abcd");
        answer.replace("xy");
        assert_eq!(answer.into_option().as_deref(), Some("xy"));
    }
}
