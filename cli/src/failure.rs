//! The one shape of a `fleet` error: `fleet: code: message` on stderr and exit code 1. A stable code lets scripts
//! tell failures apart; the message tells a person what to do.

use std::fmt;

#[derive(Debug)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Failure {}

pub fn failure(code: &str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code: code.to_string(),
        message: message.into(),
    })
}

/// Gives an error a code, keeping its message (and its causes, joined by `: `).
pub trait Coded<T> {
    fn coded(self, code: &str) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Coded<T> for Result<T, E> {
    fn coded(self, code: &str) -> anyhow::Result<T> {
        self.map_err(|e| {
            let e: anyhow::Error = e.into();
            if e.downcast_ref::<Failure>().is_some() {
                return e;
            }
            failure(code, format!("{e:#}"))
        })
    }
}

/// The line printed for an error: its own code when it has one, `failed` otherwise.
pub fn line(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Failure>() {
        Some(f) => format!("fleet: {f}"),
        None => format!("fleet: failed: {e:#}"),
    }
}
