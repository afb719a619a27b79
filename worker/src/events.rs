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

/// The events of one attempt of one job.
#[derive(Debug)]
pub struct Events {
    client: async_nats::Client,
    topology: Topology,
    id: Uuid,
    attempt: u32,
    seq: AtomicU64,
    /// Output bytes still allowed as events in this attempt.
    budget: AtomicU64,
    limited: AtomicBool,
}

impl Events {
    pub fn new(
        client: &async_nats::Client,
        topology: &Topology,
        id: &Uuid,
        attempt: u32,
        budget: u64,
    ) -> Self {
        Self {
            client: client.clone(),
            topology: topology.clone(),
            id: *id,
            attempt,
            seq: AtomicU64::new(0),
            budget: AtomicU64::new(budget),
            limited: AtomicBool::new(false),
        }
    }

    async fn publish(&self, event: &JobEvent) {
        publish_event(&self.client, &self.topology, &self.id, event).await;
    }

    pub async fn started(&self, worker: &str) {
        self.publish(&JobEvent::Status {
            status: JobStatus::Running,
            attempt: self.attempt,
            worker: worker.to_string(),
            at: Utc::now(),
        })
        .await;
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
        let bytes = text.len() as u64;
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
            return;
        }
        self.budget.fetch_sub(bytes, Ordering::Relaxed);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.publish(&JobEvent::Output {
            stream,
            attempt: self.attempt,
            seq,
            text,
        })
        .await;
    }
}

/// The terminal record as the job's last event.
pub async fn end(client: &async_nats::Client, topology: &Topology, record: &JobRecord) {
    let event = JobEvent::End {
        record: Box::new(record.clone()),
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
