//! Following a KV watch for as long as the process runs. A watch that fails is never polled again (async-nats
//! panics when a watch is polled past the error that says its connection is closing); it is opened again a
//! second later, so a follower outlives NATS restarts.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;

/// Feeds every entry of `first`, then of each watch `reopen` opens after the last one failed or ended, to
/// `apply`. Runs until its task is dropped.
pub async fn follow<O, Fut, A>(what: &'static str, first: kv::Watch, mut reopen: O, mut apply: A)
where
    O: FnMut() -> Fut,
    Fut: Future<Output = Result<kv::Watch, kv::WatchError>>,
    A: FnMut(kv::Entry),
{
    let mut watch = Some(first);
    let mut failures = 0u32;
    loop {
        if let Some(mut current) = watch.take() {
            while let Some(entry) = current.next().await {
                match entry {
                    Ok(entry) => {
                        failures = 0;
                        apply(entry);
                    }
                    Err(e) => {
                        // Once is what a closing connection looks like (a process stopping): only a watch that
                        // keeps failing is worth a warning.
                        failures += 1;
                        match failures {
                            1 => {
                                tracing::debug!(error = %e, "watching {what} failed; watching it again")
                            }
                            _ => {
                                tracing::warn!(error = %e, failures, "watching {what} keeps failing; watching it again")
                            }
                        }
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match reopen().await {
            Ok(w) => watch = Some(w),
            Err(e) => tracing::debug!(error = %e, "cannot watch {what} yet; retrying"),
        }
    }
}
