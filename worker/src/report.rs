//! What an agent the fleet understands says it did, beside its raw output: its answer, the tokens it used,
//! its own session id, its tool calls, and (for a model agent) why its server refused.

use fleet_shared::wire::Usage;
use fleet_shared::JobRecord;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub answer: Option<String>,
    pub usage: Option<Usage>,
    pub agent_session_id: Option<String>,
    pub tool_calls: u64,
    /// A model server refused the question or garbled the answer: the job fails with `model_error`.
    pub refused: Option<String>,
}

impl Report {
    /// Copies the report into the job's record.
    pub fn apply(&self, record: &mut JobRecord) {
        record.answer = self.answer.clone();
        record.usage = self.usage.clone();
        record.agent_session_id = self.agent_session_id.clone();
        record.tool_calls = self.tool_calls;
    }
}
