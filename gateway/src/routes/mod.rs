//! One module per resource.

pub mod compat;
pub mod jobs;
pub mod system;
