//! What the `fleet` binary and the optional `fleet-pg-sink` share: the one configuration loader with its
//! options, coded failures, and logging and tracing set-up.

pub mod args;
pub mod failure;
pub mod telemetry;
