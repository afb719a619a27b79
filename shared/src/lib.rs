//! Everything more than one fleet process must agree on: the wire types (the only values serialized across
//! processes), the NATS topology (every stream, consumer, bucket and subject name), the codec, the stable error
//! codes, the job's lifecycle and the store of its records, and the one configuration loader. No HTTP framework and no process spawning live here.

pub mod artifacts;
pub mod auth;
pub mod chat;
pub mod codec;
pub mod config;
pub mod conversation;
pub mod error_code;
pub mod keys;
pub mod kv_batch;
pub mod lifecycle;
pub mod metrics;
pub mod nats;
pub mod published;
pub mod record_store;
pub mod seal;
pub mod services;
pub mod session;
pub mod session_workspace;
pub mod topology;
pub mod trace_context;
pub mod watch;
pub mod wire;

pub use error_code::ErrorCode;
pub use topology::Topology;
pub use wire::{JobError, JobRecord, JobRequest, JobStatus, Resources};
