//! The edge every request crosses: the accept loop and its deadlines, client addresses, rate limits, metrics,
//! the OpenAPI document, and the one mapping of errors to HTTP problem bodies.

pub mod client_ip;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod parse_errors;
pub mod rate;
pub mod serve;
pub mod slow;
pub mod steps;
