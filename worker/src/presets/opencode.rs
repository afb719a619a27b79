//! OpenCode's `opencode run --format json`: one JSON event a line, each naming its `sessionID` — `step_start`,
//! `text` (a finished text part), `tool_use` (a tool part with its state: input, output or error), and
//! `step_finish` with the step's tokens and cost. `error` lines are left as output, where a reader sees them.
//! The answer is the text after the last tool call; usage and cost add up over the steps.

use fleet_shared::wire::Usage;
use serde_json::Value;

use super::{count, text, typed_object, Parse, Said, Tally};

pub struct Opencode;

fn tool(part: &Value, tally: &mut Tally) -> Vec<Said> {
    tally.tool_calls += 1;
    tally.answer.clear();
    let state = &part["state"];
    let mut said = vec![Said::ToolCall {
        name: text(part, "tool").unwrap_or_default(),
        input: state.get("input").cloned().unwrap_or(Value::Null),
    }];
    match state["status"].as_str() {
        Some("completed") => said.push(Said::ToolResult {
            output: text(state, "output").unwrap_or_default(),
            is_error: false,
        }),
        Some("error") => said.push(Said::ToolResult {
            output: text(state, "error").unwrap_or_default(),
            is_error: true,
        }),
        _ => {}
    }
    said
}

fn step_finished(part: &Value, tally: &mut Tally) -> Vec<Said> {
    let tokens = &part["tokens"];
    let before = tally.usage.take().unwrap_or_default();
    let cost = part["cost"].as_f64();
    let usage = Usage {
        // Cache reads and writes are prompt tokens counted apart.
        input_tokens: before.input_tokens
            + count(tokens, &["input"])
            + count(&tokens["cache"], &["read"])
            + count(&tokens["cache"], &["write"]),
        output_tokens: before.output_tokens
            + count(tokens, &["output"])
            + count(tokens, &["reasoning"]),
        cost_usd: match (before.cost_usd, cost) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        },
    };
    tally.usage = Some(usage.clone());
    vec![Said::Usage(usage)]
}

impl Parse for Opencode {
    fn line(&mut self, line: &str, tally: &mut Tally) -> Option<Vec<Said>> {
        let (v, kind) = typed_object(line)?;
        if let Some(id) = text(&v, "sessionID") {
            tally.session_id = Some(id);
        }
        let part = &v["part"];
        let said = match kind.as_str() {
            "step_start" => Vec::new(),
            "text" => {
                let message = text(part, "text").unwrap_or_default();
                tally.answer.push(&message);
                vec![Said::Message(message)]
            }
            "tool_use" => tool(part, tally),
            "step_finish" => step_finished(part, tally),
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

    /// `opencode run --format json` as its event format is documented.
    const TRANSCRIPT: &str = include_str!("../../../tests/transcripts/opencode.jsonl");

    #[test]
    fn steps_give_tools_text_and_usage_summed_over_steps() {
        let (said, report) = run(AgentKind::Opencode, TRANSCRIPT);
        assert!(
            said.iter().all(Option::is_some),
            "every line known: {said:?}"
        );
        let said: Vec<Said> = said.into_iter().flatten().flatten().collect();
        assert!(
            matches!(&said[0], Said::ToolCall { name, input } if name == "bash" && input["command"] == "ls")
        );
        assert_eq!(said[1], tool_result("a.txt\nb.txt\n", false));
        assert_eq!(
            said[3],
            Said::Message("There are two files: a.txt and b.txt.".into())
        );
        let usage = report.usage.expect("usage");
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (1200 + 800 + 1300 + 1000, 52)
        );
        assert!(
            (usage.cost_usd.unwrap_or(0.0) - 0.003).abs() < 1e-9,
            "{usage:?}"
        );
        assert_eq!(
            report.answer.as_deref(),
            Some("There are two files: a.txt and b.txt.")
        );
        assert_eq!(
            report.agent_session_id.as_deref(),
            Some("ses_494719016ffe85dkDMj0FPRbHK")
        );
        assert_eq!(report.tool_calls, 1);
    }
}
