//! One module per resource.

pub mod artifacts;
pub mod compat;
pub mod sharing;
pub mod jobs;
pub mod system;
