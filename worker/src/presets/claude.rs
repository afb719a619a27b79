//! Claude Code's `--output-format stream-json --verbose`: one JSON object a line — `system` (its `init` names the
//! session), `assistant` and `user` messages whose content blocks are text, `tool_use` and `tool_result`,
//! `stream_event` (with `--include-partial-messages`: text as it is generated), and the closing `result` with
//! the final text, the token usage and the cost.

use fleet_shared::wire::Usage;
use serde_json::Value;

use super::{count, text, typed_object, Parse, Said, Tally};

#[derive(Default)]
pub struct Claude {
    /// Text already streamed as partial messages: the whole message's text is not sent again.
    partial: bool,
}

impl Claude {
    fn assistant(&self, message: &Value, tally: &mut Tally) -> Vec<Said> {
        let mut said = Vec::new();
        for block in blocks(message) {
            match block["type"].as_str() {
                Some("text") if !self.partial => {
                    said.extend(text(block, "text").map(Said::Message))
                }
                Some("tool_use") => {
                    tally.tool_calls += 1;
                    said.push(Said::ToolCall {
                        name: text(block, "name").unwrap_or_default(),
                        input: block.get("input").cloned().unwrap_or(Value::Null),
                    });
                }
                _ => {}
            }
        }
        said
    }
}

fn result(v: &Value, tally: &mut Tally) -> Vec<Said> {
    if let Some(answer) = text(v, "result") {
        tally.answer.replace(&answer);
    }
    let Some(usage) = v.get("usage") else {
        return Vec::new();
    };
    // Cached prompt tokens are counted apart from `input_tokens`; all of them were read.
    let input = count(usage, &["input_tokens"])
        + count(usage, &["cache_creation_input_tokens"])
        + count(usage, &["cache_read_input_tokens"]);
    let usage = Usage {
        input_tokens: input,
        output_tokens: count(usage, &["output_tokens"]),
        cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
    };
    tally.usage = Some(usage.clone());
    vec![Said::Usage(usage)]
}

/// A message's content blocks.
fn blocks(message: &Value) -> impl Iterator<Item = &Value> {
    message["content"].as_array().into_iter().flatten()
}

/// A tool result's content: text, or a list of blocks whose text parts are joined.
fn result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl Parse for Claude {
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>> {
        let (v, kind) = typed_object(line)?;
        if let Some(id) = text(&v, "session_id") {
            tally.session_id = Some(id);
        }
        let said = match kind.as_str() {
            "system" => Vec::new(),
            "assistant" => self.assistant(&v["message"], tally),
            "user" => blocks(&v["message"])
                .filter(|b| b["type"] == "tool_result")
                .map(|b| Said::ToolResult {
                    output: result_text(&b["content"]),
                    is_error: b["is_error"].as_bool().unwrap_or(false),
                })
                .collect(),
            "stream_event" => {
                let delta = &v["event"]["delta"];
                match (v["event"]["type"].as_str(), delta["type"].as_str()) {
                    (Some("content_block_delta"), Some("text_delta")) => {
                        self.partial = true;
                        text(delta, "text").map(Said::Delta).into_iter().collect()
                    }
                    _ => Vec::new(),
                }
            }
            // Gemini CLI's result carries `stats` instead (Qwen Code may print either).
            "result" if v.get("stats").is_none() => result(&v, tally),
            _ => return None,
        };
        Some(said)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, tool_result};
    use super::*;
    use fleet_shared::config::AgentKind;

    /// A session as Claude Code prints it with `-p --output-format stream-json --verbose` (written from its
    /// documented stream format; the fleet's tests also feed it through a real process).
    const TRANSCRIPT: &str = include_str!("../../../tests/transcripts/claude-code.jsonl");

    #[test]
    fn a_session_gives_messages_tool_calls_results_usage_and_its_id() {
        let (said, report) = run(AgentKind::ClaudeCode, TRANSCRIPT);
        let said: Vec<Said> = said
            .into_iter()
            .flat_map(|s| s.expect("every line known"))
            .collect();
        assert_eq!(said[0], Said::Message("I'll list the files.".into()));
        assert!(
            matches!(&said[1], Said::ToolCall { name, input } if name == "Bash" && input["command"] == "ls")
        );
        assert_eq!(said[2], tool_result("a.txt\nb.txt", false));
        assert_eq!(
            said[3],
            Said::Message("There are two files: a.txt and b.txt.".into())
        );
        let usage = Usage {
            input_tokens: 3210,
            output_tokens: 74,
            cost_usd: Some(0.0123),
        };
        assert_eq!(said[4], Said::Usage(usage.clone()));
        assert_eq!(
            report.answer.as_deref(),
            Some("There are two files: a.txt and b.txt.")
        );
        assert_eq!(report.usage, Some(usage));
        assert_eq!(
            report.agent_session_id.as_deref(),
            Some("9f1c2d3e-0000-4000-8000-000000000001")
        );
        assert_eq!(report.tool_calls, 1);
    }

    #[test]
    fn partial_messages_stream_text_once() {
        let transcript = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}},"session_id":"s"}
{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}},"session_id":"s"}
{"type":"stream_event","event":{"type":"message_stop"},"session_id":"s"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Hello"}]},"session_id":"s"}"#;
        let (said, _) = run(AgentKind::ClaudeCode, transcript);
        let texts: Vec<Said> = said.into_iter().flatten().flatten().collect();
        assert_eq!(texts, [Said::Delta("Hel".into()), Said::Delta("lo".into())]);
    }
}
