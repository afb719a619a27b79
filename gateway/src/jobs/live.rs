//! One live tail per running job per gateway, shared by all of that job's listeners on this gateway: a single
//! ordered consumer on the job's events subject feeds a broadcast channel. A hundred listeners on one job cost
//! nats-server one delivery per event, not a hundred. A listener too slow for the channel's buffer is told so and
//! dropped (it resumes with `Last-Event-ID`); nothing it does can slow the worker or grow this process's memory.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::stream;
use fleet_shared::codec::{decode, Format};
use fleet_shared::wire::JobEvent;
use fleet_shared::Topology;
use futures::StreamExt;
use tokio::sync::{broadcast, Mutex};
use uuid::Uuid;

/// An event with its position in the events stream.
#[derive(Debug)]
pub struct LiveEvent {
    pub seq: u64,
    pub event: JobEvent,
}

/// A job's live tail; dropping the last handle stops its consumer.
pub struct Tail {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct LiveHub {
    client: async_nats::Client,
    events: stream::Stream,
    topology: Topology,
    /// Events buffered per job for its slowest listener before that listener is dropped.
    buffer: usize,
    tails: Mutex<HashMap<Uuid, Weak<Tail>>>,
}

impl LiveHub {
    pub fn new(
        client: async_nats::Client,
        events: stream::Stream,
        topology: Topology,
        buffer: usize,
    ) -> Self {
        Self {
            client,
            events,
            topology,
            buffer,
            tails: Mutex::new(HashMap::new()),
        }
    }

    /// The live tail of job `id` (started if this gateway has none) and a receiver of every event published
    /// from now on. Events published earlier are the caller's to replay from the stream.
    pub async fn tail(
        &self,
        id: Uuid,
    ) -> Result<(Arc<Tail>, broadcast::Receiver<Arc<LiveEvent>>), async_nats::Error> {
        let mut tails = self.tails.lock().await;
        if let Some(tail) = tails.get(&id).and_then(Weak::upgrade) {
            let receiver = tail.sender.subscribe();
            return Ok((tail, receiver));
        }
        tails.retain(|_, t| t.strong_count() > 0);
        let consumer = self
            .events
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: self.topology.events_subject(&id),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let (sender, receiver) = broadcast::channel(self.buffer);
        let forward = sender.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let Ok(info) = m.info() else { continue };
                let seq = info.stream_sequence;
                let Ok(event) = decode::<JobEvent>(&m.payload, Format::MessagePack) else {
                    continue;
                };
                let end = matches!(event, JobEvent::End { .. });
                // No receivers right now is fine: the next listener replays from the stream.
                let _ = forward.send(Arc::new(LiveEvent { seq, event }));
                if end {
                    break;
                }
            }
        });
        let tail = Arc::new(Tail {
            sender,
            task: task.abort_handle(),
        });
        tails.insert(id, Arc::downgrade(&tail));
        Ok((tail, receiver))
    }
}
