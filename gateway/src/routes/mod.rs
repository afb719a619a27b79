//! One module per resource.

pub mod artifacts;
pub mod chat;
pub mod compat;
pub mod conversations;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod links;
pub mod sessions;
pub mod sharing;
pub mod system;
pub mod transfer;
