//! What the gateway knows of the fleet: the agents it runs (their consumers) and its live workers (the NATS
//! service API).

pub mod agents;
pub mod workers;
