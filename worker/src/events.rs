//! A job's events on `fleet.events.<job_id>` (MessagePack [`JobEvent`]s), kept by the events stream so late
//! listeners replay them. Output goes out as it is read, within a per-attempt byte budget; publishing is a core
//! NATS publish into the client's buffer, so a slow listener never slows the agent (listeners read the stream).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::Utc;
use fleet_shared::nats::publish_event;
use fleet_shared::wire::{FileEntry, JobEvent, OutputStream};
use fleet_shared::{JobRecord, JobStatus, Topology};
use uuid::Uuid;

use crate::output::OutputSink;

/// The events of one attempt of one job. Like claims, they are deferred: until [`Events::go_live`] (called when
/// the job outlives the claim delay, or its early output grows past a few KiB) output is held back, and a job that
/// ends before that publishes no events at all: its done notice carries the record, whose output gateways turn into
/// `output` events. Most jobs are short; this keeps their cost at nothing.
#[derive(Debug)]
pub struct Events {
    client: async_nats::Client,
    topology: Topology,
    id: Uuid,
    attempt: u32,
    worker: String,
    seq: AtomicU64,
    /// Output bytes still allowed as events in this attempt.
    budget: AtomicU64,
    limited: AtomicBool,
    live: AtomicBool,
    /// Output held back until the events go live, and its size.
    held: tokio::sync::Mutex<(Vec<(OutputStream, String)>, usize)>,
    /// Held-back output that makes the events go live at once (so the record's capped copy always holds it all).
    hold_limit: usize,
}

impl Events {
    pub fn new(
        client: &async_nats::Client,
        topology: &Topology,
        id: &Uuid,
        attempt: u32,
        worker: &str,
        budget: u64,
        output_cap: usize,
    ) -> Self {
        Self {
            client: client.clone(),
            topology: topology.clone(),
            id: *id,
            attempt,
            worker: worker.to_string(),
            seq: AtomicU64::new(0),
            budget: AtomicU64::new(budget),
            limited: AtomicBool::new(false),
            live: AtomicBool::new(false),
            held: tokio::sync::Mutex::new((Vec::new(), 0)),
            hold_limit: output_cap.min(HOLD_LIMIT),
        }
    }

    /// Publishes the start and the output held back so far; from now on output goes out as it is read.
    pub async fn go_live(&self) {
        let mut held = self.held.lock().await;
        if self.live.load(Ordering::SeqCst) {
            return;
        }
        self.publish(&JobEvent::Status {
            status: JobStatus::Running,
            attempt: self.attempt,
            worker: self.worker.clone(),
            at: Utc::now(),
        })
        .await;
        for (stream, text) in std::mem::take(&mut held.0) {
            self.send_output(stream, text).await;
        }
        // Only now: output read meanwhile waited on the lock, so it goes out after what was held.
        self.live.store(true, Ordering::SeqCst);
    }

    async fn publish(&self, event: &JobEvent) {
        publish_event(&self.client, &self.topology, &self.id, event).await;
    }

    /// Did this attempt's output go out as events (rather than only in its record)?
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub async fn stored(&self, file: &FileEntry) {
        self.publish(&JobEvent::Artifact { file: file.clone() })
            .await;
    }

    /// A sink for one output stream of the run.
    pub fn sink(&self, stream: OutputStream) -> StreamEvents<'_> {
        StreamEvents {
            events: self,
            stream,
            pending: Vec::new(),
        }
    }

    async fn output(&self, stream: OutputStream, text: String) {
        if text.is_empty() {
            return;
        }
        if !self.live.load(Ordering::SeqCst) {
            let mut held = self.held.lock().await;
            if !self.live.load(Ordering::SeqCst) {
                held.1 += text.len();
                held.0.push((stream, text));
                let over = held.1 > self.hold_limit;
                drop(held);
                if over {
                    self.go_live().await;
                }
                return;
            }
        }
        self.send_output(stream, text).await;
    }

    async fn send_output(&self, stream: OutputStream, text: String) {
        let bytes = text.len() as u64;
        let Some(before) = self.spend(bytes).await else {
            return;
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.publish(&JobEvent::Output {
            stream,
            attempt: self.attempt,
            seq,
            text,
        })
        .await;
        self.flush_now_and_then(before, bytes).await;
    }

    /// Assistant text (a model's tokens, a CLI's messages), within the same budget as output. Typed events
    /// have no copy in the record to wait in, so they make the events go live at once.
    pub async fn message(&self, text: String) {
        self.assistant(text, false).await;
    }

    /// A piece of a message still being written (a model's tokens).
    pub async fn delta(&self, text: String) {
        self.assistant(text, true).await;
    }

    async fn assistant(&self, text: String, delta: bool) {
        let bytes = text.len() as u64;
        if text.is_empty() {
            return;
        }
        let event = JobEvent::Message {
            attempt: self.attempt,
            text,
            delta,
        };
        self.typed_within_budget(event, bytes).await;
    }

    /// The agent called a tool; counted against the events' budget like output.
    pub async fn tool_call(&self, name: String, input: serde_json::Value) {
        let bytes = (name.len() + input.to_string().len()) as u64;
        let event = JobEvent::ToolCall {
            attempt: self.attempt,
            name,
            input,
        };
        self.typed_within_budget(event, bytes).await;
    }

    /// What a tool call returned (already cut short by the caller).
    pub async fn tool_result(&self, output: String, is_error: bool) {
        let bytes = output.len() as u64;
        let event = JobEvent::ToolResult {
            attempt: self.attempt,
            output,
            is_error,
        };
        self.typed_within_budget(event, bytes).await;
    }

    async fn typed_within_budget(&self, event: JobEvent, bytes: u64) {
        let Some(before) = self.spend(bytes).await else {
            return;
        };
        self.typed(event).await;
        self.flush_now_and_then(before, bytes).await;
    }

    pub async fn usage(&self, usage: fleet_shared::wire::Usage) {
        self.typed(JobEvent::Usage {
            attempt: self.attempt,
            usage,
        })
        .await;
    }

    async fn typed(&self, event: JobEvent) {
        if !self.is_live() {
            self.go_live().await;
        }
        self.publish(&event).await;
    }

    /// Takes `bytes` from the events' budget, returning what it held before; none when the budget is spent
    /// (the first time, listeners are told with an `output_limit` event).
    async fn spend(&self, bytes: u64) -> Option<u64> {
        let left = self.budget.load(Ordering::Relaxed);
        if bytes > left {
            self.budget.store(0, Ordering::Relaxed);
            if !self.limited.swap(true, Ordering::Relaxed) {
                self.publish(&JobEvent::OutputLimit {
                    attempt: self.attempt,
                    bytes: left,
                })
                .await;
            }
            return None;
        }
        Some(self.budget.fetch_sub(bytes, Ordering::Relaxed))
    }

    /// The client queues publishes in memory: wait for them to leave every so often, so a flood of output
    /// costs the worker a bounded amount of memory rather than the whole budget at once.
    async fn flush_now_and_then(&self, before: u64, bytes: u64) {
        if (before / FLUSH_EVERY) != ((before - bytes) / FLUSH_EVERY) {
            if let Err(e) = self.client.flush().await {
                tracing::debug!(error = %e, "flushing job events failed");
            }
        }
    }
}

/// Output event bytes between waits for the client's queue to drain.
const FLUSH_EVERY: u64 = 256 * 1024;

/// Held-back output above which events go live before the claim delay.
const HOLD_LIMIT: usize = 16 * 1024;

/// The terminal record as the last event of a job whose events went live.
pub async fn end(client: &async_nats::Client, topology: &Topology, record: &JobRecord) {
    let event = JobEvent::End {
        record: Box::new(record.clone()),
        output_sent: true,
    };
    publish_event(client, topology, &record.id, &event).await;
}

/// One output stream's events: text in read order, a character split between reads held back until whole.
pub struct StreamEvents<'a> {
    events: &'a Events,
    stream: OutputStream,
    pending: Vec<u8>,
}

impl OutputSink for StreamEvents<'_> {
    async fn chunk(&mut self, bytes: &[u8]) {
        if self.events.limited.load(Ordering::Relaxed) {
            return;
        }
        self.pending.extend_from_slice(bytes);
        let text = take_text(&mut self.pending, false);
        self.events.output(self.stream, text).await;
    }

    async fn finish(&mut self) {
        let text = take_text(&mut self.pending, true);
        self.events.output(self.stream, text).await;
    }
}

/// The text at the front of `buf`, leaving in it only an incomplete character at its end (unless `last`).
/// Invalid bytes become U+FFFD.
fn take_text(buf: &mut Vec<u8>, last: bool) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // `good` is the valid prefix `from_utf8` itself reported.
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &bad[n..];
                    }
                    None if last => {
                        out.push('\u{FFFD}');
                        rest = &[];
                        break;
                    }
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    *buf = rest.to_vec();
    out
}

#[cfg(test)]
mod tests {
    use super::take_text;

    #[test]
    fn characters_split_between_reads_arrive_whole() {
        let mut buf = b"caf\xc3".to_vec();
        assert_eq!(take_text(&mut buf, false), "caf");
        buf.extend_from_slice(b"\xa9 ok");
        assert_eq!(take_text(&mut buf, false), "é ok");
        assert!(buf.is_empty());
        let mut buf = b"a\xffb\xe2\x82".to_vec();
        assert_eq!(take_text(&mut buf, false), "a\u{fffd}b");
        assert_eq!(take_text(&mut buf, true), "\u{fffd}");
    }
}
