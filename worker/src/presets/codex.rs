//! OpenAI Codex CLI's `codex exec --json`: one JSON event a line — `thread.started` (the thread id resumes the
//! session), `item.started` / `item.completed` for each item of the turn (`agent_message`, `reasoning`,
//! `command_execution`, `file_change`, `mcp_tool_call`, `web_search`, `todo_list`), and `turn.completed` with the
//! token usage. `turn.failed` and `error` are left as output, where a reader sees them.

use std::collections::HashSet;

use fleet_shared::wire::Usage;
use serde_json::{Map, Value};

use super::{count, text, typed_object, Parse, Said, Tally};

#[derive(Default)]
pub struct Codex {
    /// Tool items whose call was told when they started.
    started: HashSet<String>,
}

impl Codex {
    fn item(&mut self, item: &Value, completed: bool, tally: &mut Tally) -> Option<Vec<Said>> {
        let kind = item["type"].as_str()?;
        if kind == "agent_message" {
            let message = text(item, "text").filter(|_| completed);
            if let Some(message) = &message {
                tally.answer.replace(message);
            }
            return Some(message.map(Said::Message).into_iter().collect());
        }
        if matches!(kind, "reasoning" | "todo_list") {
            return Some(Vec::new());
        }
        let (name, input) = tool_call(kind, item)?;
        let id = text(item, "id").unwrap_or_default();
        let mut said = Vec::new();
        // Told already: when the item started (or this is a repeated start).
        let told = match completed {
            true => self.started.remove(&id),
            false => !self.started.insert(id),
        };
        if !told {
            tally.tool_calls += 1;
            said.push(Said::ToolCall { name, input });
        }
        if completed {
            said.push(tool_result(item));
        }
        Some(said)
    }
}

/// A tool item's name and input, for the kinds that are tool calls.
fn tool_call(kind: &str, item: &Value) -> Option<(String, Value)> {
    let field = |key: &str| item.get(key).cloned().unwrap_or(Value::Null);
    let one = |key: &str| Value::Object(Map::from_iter([(key.to_string(), field(key))]));
    match kind {
        "command_execution" => Some(("shell".into(), one("command"))),
        "file_change" => Some(("file_change".into(), one("changes"))),
        "web_search" => Some(("web_search".into(), one("query"))),
        "mcp_tool_call" => {
            let (server, tool) = (
                text(item, "server").unwrap_or_default(),
                text(item, "tool").unwrap_or_default(),
            );
            Some((format!("{server}.{tool}"), field("arguments")))
        }
        _ => None,
    }
}

fn tool_result(item: &Value) -> Said {
    let failed = item["status"] == "failed" || item["exit_code"].as_i64().is_some_and(|c| c != 0);
    let output = text(item, "aggregated_output")
        .or_else(|| item.get("result").map(Value::to_string))
        .or_else(|| item["error"]["message"].as_str().map(str::to_string))
        .or_else(|| text(item, "status"))
        .unwrap_or_default();
    Said::ToolResult {
        output,
        is_error: failed || item.get("error").is_some_and(|e| !e.is_null()),
    }
}

impl Parse for Codex {
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>> {
        let (v, kind) = typed_object(line)?;
        match kind.as_str() {
            "thread.started" => {
                tally.session_id = text(&v, "thread_id");
                Some(Vec::new())
            }
            "turn.started" => Some(Vec::new()),
            "item.started" | "item.updated" => self.item(&v["item"], false, tally),
            "item.completed" => self.item(&v["item"], true, tally),
            "turn.completed" => {
                let usage = Usage {
                    // Cached input tokens are part of `input_tokens` in OpenAI's counting.
                    input_tokens: count(&v["usage"], &["input_tokens"]),
                    output_tokens: count(&v["usage"], &["output_tokens"]),
                    cost_usd: None,
                };
                let total = match &tally.usage {
                    Some(before) => Usage {
                        input_tokens: before.input_tokens + usage.input_tokens,
                        output_tokens: before.output_tokens + usage.output_tokens,
                        cost_usd: None,
                    },
                    None => usage,
                };
                tally.usage = Some(total.clone());
                Some(vec![Said::Usage(total)])
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, tool_result};
    use super::*;
    use fleet_shared::config::AgentKind;

    /// `codex exec --json` as its documentation describes it.
    const TRANSCRIPT: &str = include_str!("../../../tests/transcripts/codex.jsonl");

    #[test]
    fn a_turn_gives_its_commands_their_results_the_answer_and_usage() {
        let (said, report) = run(AgentKind::Codex, TRANSCRIPT);
        assert!(
            said.iter().all(Option::is_some),
            "every line known: {said:?}"
        );
        let said: Vec<Said> = said.into_iter().flatten().flatten().collect();
        assert!(
            matches!(&said[0], Said::ToolCall { name, input } if name == "shell" && input["command"] == "bash -lc ls")
        );
        assert_eq!(said[1], tool_result("a.txt\nb.txt\n", false));
        assert!(
            matches!(&said[3], Said::ToolResult { is_error: true, .. }),
            "{said:?}"
        );
        assert!(matches!(&said[4], Said::ToolCall { name, .. } if name == "file_change"));
        assert_eq!(
            said[6],
            Said::Message("Two files: a.txt and b.txt. I wrote notes.md.".into())
        );
        assert_eq!(
            said[7],
            Said::Usage(Usage {
                input_tokens: 24763,
                output_tokens: 122,
                cost_usd: None
            })
        );
        assert_eq!(report.tool_calls, 3, "a started call is counted once");
        assert_eq!(
            report.answer.as_deref(),
            Some("Two files: a.txt and b.txt. I wrote notes.md.")
        );
        assert_eq!(
            report.agent_session_id.as_deref(),
            Some("0199a213-81c0-7800-8aa1-bbab2a035a53")
        );
    }

    #[test]
    fn failures_stay_visible_as_output() {
        let (said, _) = run(AgentKind::Codex, "{\"type\":\"turn.failed\",\"error\":{\"message\":\"quota\"}}\n{\"type\":\"error\",\"message\":\"x\"}");
        assert_eq!(said, [None, None]);
    }
}
