//! Gemini CLI's `--output-format stream-json`: one JSON event a line — `init` (session and model), `message`
//! (user and assistant text, the assistant's in deltas), `tool_use`, `tool_result`, and the closing `result` with
//! its token stats. `error` lines (warnings, failures) are left as output, where a reader sees them. The answer is
//! the assistant's text after its last tool call.

use fleet_shared::wire::Usage;
use serde_json::Value;

use super::{count, text, typed_object, Parse, Said, Tally};

pub struct Gemini;

fn result(v: &Value, tally: &mut Tally) -> Vec<Said> {
    let stats = &v["stats"];
    if stats.is_null() {
        return Vec::new();
    }
    let usage = Usage {
        input_tokens: count(stats, &["input_tokens", "inputTokens", "input"]),
        output_tokens: count(stats, &["output_tokens", "outputTokens", "output"]),
        cost_usd: None,
    };
    tally.usage = Some(usage.clone());
    vec![Said::Usage(usage)]
}

impl Parse for Gemini {
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>> {
        let (v, kind) = typed_object(line)?;
        let said = match kind.as_str() {
            "init" => {
                tally.session_id = text(&v, "session_id").or_else(|| text(&v, "sessionId"));
                Vec::new()
            }
            "message" if v["role"] == "assistant" => {
                let content = text(&v, "content").unwrap_or_default();
                tally.answer.push(&content);
                match v["delta"].as_bool() {
                    Some(true) => vec![Said::Delta(content)],
                    _ => vec![Said::Message(content)],
                }
            }
            "message" => Vec::new(),
            "tool_use" => {
                tally.tool_calls += 1;
                // What was said before a tool call led up to it; the answer comes after the last one.
                tally.answer.clear();
                vec![Said::ToolCall {
                    name: text(&v, "tool_name").unwrap_or_default(),
                    input: v.get("parameters").cloned().unwrap_or(Value::Null),
                }]
            }
            "tool_result" => vec![Said::ToolResult {
                output: text(&v, "output")
                    .or_else(|| text(&v["error"], "message"))
                    .unwrap_or_default(),
                is_error: v["status"] == "error",
            }],
            "result" => result(&v, tally),
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

    /// `gemini -p ... --output-format stream-json` as its headless-mode documentation describes it.
    const TRANSCRIPT: &str = include_str!("../../../tests/transcripts/gemini.jsonl");

    #[test]
    fn a_session_gives_deltas_tools_the_answer_after_them_and_usage() {
        for kind in [AgentKind::Gemini, AgentKind::Qwen] {
            let (said, report) = run(kind, TRANSCRIPT);
            assert!(
                said.iter().all(Option::is_some),
                "{kind:?}: every line known: {said:?}"
            );
            let said: Vec<Said> = said.into_iter().flatten().flatten().collect();
            assert_eq!(said[0], Said::Delta("Let me look.".into()));
            assert!(
                matches!(&said[1], Said::ToolCall { name, input } if name == "run_shell_command" && input["command"] == "ls")
            );
            assert_eq!(said[2], tool_result("a.txt\nb.txt", false));
            assert_eq!(said[4], tool_result("File not found: /w/missing", true));
            assert_eq!(report.answer.as_deref(), Some("There are two files."));
            assert_eq!(
                report.usage,
                Some(Usage {
                    input_tokens: 1600,
                    output_tokens: 50,
                    cost_usd: None
                })
            );
            assert_eq!(
                report.agent_session_id.as_deref(),
                Some("c2a7a0de-2f0e-4b53-9a55-0c0b0d7e1e11")
            );
            assert_eq!(report.tool_calls, 2);
        }
    }
}
