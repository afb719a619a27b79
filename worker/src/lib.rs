//! The worker: pulls jobs for its agents from JetStream, claims each with a KV compare-and-set, runs the agent
//! as a supervised subprocess, records exactly one terminal result and replies.

pub mod output;
pub mod supervisor;
pub mod template;
