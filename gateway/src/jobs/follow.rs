//! A job's events as a listener sees them: what the events stream holds, replayed, then the live tail, ending
//! with `end` (the terminal record) whatever happened meanwhile — a job that ended before its events went live,
//! a lost `end`, a retried run, a listener too slow for the tail. Each event comes with its stream sequence, so
//! `Last-Event-ID` resumes exactly after the last one seen. The SSE and WebSocket routes and the OpenAI front
//! door all read jobs through this.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use fleet_shared::codec::{decode, Format};
use fleet_shared::wire::{JobEvent, OutputStream};
use fleet_shared::JobRecord;
use futures::stream::BoxStream;
use futures::StreamExt;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::records;
use crate::state::AppState;

/// Job `id`'s events after `after` (all if none), replayed then live, ending with `end`; each with its id.
pub async fn job_events(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    after: Option<u64>,
) -> Result<BoxStream<'static, (Option<u64>, JobEvent)>, ApiError> {
    // Subscribed before the record is read, so a job ending meanwhile cannot slip by.
    let watch = records::watch_end(state, &id).await?;
    let record = records::get_or_404(state, caller, &id).await?;
    let generation = record.generation();
    let terminal = record.status.is_terminal().then_some(record);
    let last = match &terminal {
        Some(_) => last_stored_event(state, &id).await,
        None => None,
    };
    // A job that ended before its events went live has none: its record is the whole story.
    let stored = terminal.is_none() || last.is_some();
    // Whether the run's own attempt published events (a retried job's stream also holds earlier runs'); unknown,
    // so assumed, while it runs.
    let run_stored = match (&terminal, &last) {
        (Some(record), Some(event)) => {
            JobEvent::attempt(event).is_none_or(|a| a == output_attempt_of(record))
        }
        (Some(_), None) => false,
        (None, _) => true,
    };
    let mut tail = None;
    let messages = match (stored, &terminal) {
        (false, _) => futures::stream::empty().boxed(),
        (true, Some(_)) => follow(state, &id, after).await?.map(Feed::from).boxed(),
        (true, None) => {
            // Live: the shared tail first, then what the stream already holds, then the tail from there on.
            let (handle, receiver) = state
                .live
                .tail(id)
                .await
                .map_err(|e| ApiError::unavailable("following the job's events failed", e))?;
            tail = Some(handle);
            let seen = after.unwrap_or(0);
            let stored_to = last_stored(state, &id).await.unwrap_or(0);
            let replay = match stored_to > seen {
                true => replay_to(follow(state, &id, after).await?, stored_to),
                false => futures::stream::empty().boxed(),
            };
            replay.chain(live(receiver, stored_to.max(seen))).boxed()
        }
    };
    let done = futures::stream::unfold(watch, |mut watch| async move {
        let end = watch.next().await;
        Some((end, watch))
    })
    .boxed();
    Ok(futures::stream::unfold(
        Follow {
            messages,
            done,
            terminal,
            ended: None,
            resumed: after.is_some(),
            generation,
            run_stored,
            output_attempt: None,
            queue: VecDeque::new(),
            finished: false,
            last_id: after.unwrap_or(0),
            _tail: tail,
        },
        Follow::next,
    )
    .boxed())
}

/// What a listener is fed: events with their stream sequence (and how many the replay still holds), or word that
/// it fell behind the live tail.
enum Feed {
    Event(u64, u64, JobEvent),
    Behind,
}

impl From<(u64, u64, JobEvent)> for Feed {
    fn from((seq, pending, event): (u64, u64, JobEvent)) -> Self {
        Self::Event(seq, pending, event)
    }
}

/// The job's last stored event, when this version can read it.
async fn last_stored_event(state: &AppState, id: &Uuid) -> Option<JobEvent> {
    let message = state
        .events
        .get_last_raw_message_by_subject(&state.topology.events_subject(id))
        .await
        .ok()?;
    decode(&message.payload, Format::MessagePack).ok()
}

/// The stream sequence of the job's last stored event.
async fn last_stored(state: &AppState, id: &Uuid) -> Option<u64> {
    state
        .events
        .get_last_raw_message_by_subject(&state.topology.events_subject(id))
        .await
        .ok()
        .map(|m| m.sequence)
}

/// `replay` up to and including sequence `last`, then its end (without waiting for anything later).
fn replay_to(
    replay: BoxStream<'static, (u64, u64, JobEvent)>,
    last: u64,
) -> BoxStream<'static, Feed> {
    futures::stream::unfold((replay, false), move |(mut replay, done)| async move {
        if done {
            return None;
        }
        let (seq, pending, event) = replay.next().await?;
        Some((Feed::Event(seq, pending, event), (replay, seq >= last)))
    })
    .boxed()
}

/// Live events after sequence `after` from the job's shared tail.
fn live(
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::jobs::live::LiveEvent>>,
    after: u64,
) -> BoxStream<'static, Feed> {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(receiver, move |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(e) if e.seq <= after => continue,
                Ok(e) => return Some((Feed::Event(e.seq, 0, e.event.clone()), receiver)),
                Err(RecvError::Lagged(_)) => return Some((Feed::Behind, receiver)),
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

/// Events of job `id` after stream sequence `after` (from the first if none), then live ones.
async fn follow(
    state: &AppState,
    id: &Uuid,
    after: Option<u64>,
) -> Result<BoxStream<'static, (u64, u64, JobEvent)>, ApiError> {
    let deliver_policy = match after {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => DeliverPolicy::All,
    };
    let consumer = state
        .events
        .create_consumer(push::OrderedConfig {
            deliver_subject: state.client.new_inbox(),
            filter_subject: state.topology.events_subject(id),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::unavailable("following the job's events failed", e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::unavailable("following the job's events failed", e))?;
    Ok(messages
        // The consumer's connection is gone for good (the client is closing): end here, for a stream polled
        // after that error would panic inside async-nats. Other errors (a missed heartbeat, a recreated
        // consumer) are the ordered consumer's to recover from.
        .take_while(|m| {
            let closing = matches!(m, Err(e) if e.kind() == push::OrderedErrorKind::Other);
            std::future::ready(!closing)
        })
        .filter_map(|m| async move {
            let m = m
                .inspect_err(|e| tracing::debug!(error = %e, "the job's events consumer recovers"))
                .ok()?;
            let info = m.info().ok()?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            // An event this version cannot read (a newer worker's) is skipped, not fatal.
            let event = decode::<JobEvent>(&m.payload, Format::MessagePack).ok()?;
            Some((seq, pending, event))
        })
        .boxed())
}

/// How long a listener whose job has ended waits, with no event arriving, for the job's `end` event before the
/// record stands in for it.
const END_GRACE: Duration = Duration::from_secs(2);

struct Follow {
    messages: BoxStream<'static, Feed>,
    /// The job's end as this gateway learns it (its done notice, or its record re-read when no notice came).
    done: BoxStream<'static, records::JobEnd>,
    /// The terminal record when the job had already ended at connect time.
    terminal: Option<JobRecord>,
    /// The terminal record when the job ended while followed live: its `end` event should follow in the stream.
    ended: Option<JobRecord>,
    /// The client resumed after an event id, so it saw earlier events on another connection.
    resumed: bool,
    /// The run (0 for the first, one more per retry) the listener follows: earlier runs' ends do not end it.
    generation: u32,
    /// The stream may hold events of the ended attempt (known when the job had ended at connect time).
    run_stored: bool,
    /// The attempt of the last `output` event sent here.
    output_attempt: Option<u32>,
    /// The last events, sent before the stream ends.
    queue: VecDeque<(Option<u64>, JobEvent)>,
    /// The end is queued: nothing more is read.
    finished: bool,
    /// The id of the last event sent.
    last_id: u64,
    /// Keeps the job's shared live tail running while this listener follows it.
    _tail: Option<std::sync::Arc<crate::jobs::live::Tail>>,
}

impl Follow {
    async fn next(mut self) -> Option<((Option<u64>, JobEvent), Self)> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some((item, self));
            }
            if self.finished {
                return None;
            }
            if self.terminal.is_some() {
                // Ended before the listener came: once its stored events are replayed, if they do not hold its end
                // (expired, or never published), the record stands in.
                let next = tokio::time::timeout(Duration::from_millis(500), self.messages.next());
                match next.await.ok().flatten() {
                    Some(item) => return self.event(item),
                    None => {
                        let record = self.terminal.take()?;
                        let send_output = self.output_unseen(&record);
                        self.finish(None, record, send_output);
                    }
                }
                continue;
            }
            let awaiting_end = self.ended.is_some();
            tokio::select! {
                item = self.messages.next() => match item {
                    Some(item) => return self.event(item),
                    // The events consumer ended (NATS trouble): the done notice still ends the stream.
                    None => self.messages = futures::stream::pending().boxed(),
                },
                end = self.done.next(), if !awaiting_end => match end {
                    // Never went live: no events will come; the record holds its output.
                    Some(records::JobEnd { record, events_live: Some(false) }) => {
                        // That attempt published nothing, so no connection can have shown its output as events.
                        let send_output = self.output_attempt != Some(output_attempt_of(&record));
                        self.finish(None, record, send_output);
                    }
                    // Went live, or unknown: its `end` should follow in the stream with any output still in
                    // flight, but it is a core-NATS publish and may be lost, so events keep flowing until it comes
                    // or the stream has been quiet for END_GRACE.
                    Some(end) => self.ended = Some(end.record),
                    None => self.done = futures::stream::pending().boxed(),
                },
                // Re-armed on every pass, so each event forwarded restarts the quiet period.
                _ = tokio::time::sleep(END_GRACE), if awaiting_end => {
                    let record = self.ended.take()?;
                    let send_output = self.output_unseen(&record);
                    self.finish(None, record, send_output);
                }
            }
        }
    }

    fn event(mut self, feed: Feed) -> Option<((Option<u64>, JobEvent), Self)> {
        let (seq, pending, event) = match feed {
            Feed::Event(seq, pending, event) => (seq, pending, event),
            Feed::Behind => {
                self.finished = true;
                let behind = JobEvent::Behind {
                    last_id: self.last_id,
                };
                return Some(((None, behind), self));
            }
        };
        self.last_id = self.last_id.max(seq);
        let seq = (seq > 0).then_some(seq);
        if let JobEvent::End { record, .. } = event {
            if record.generation() < self.generation {
                return Some(((seq, earlier_run_ended(&record)), self));
            }
            self.finish(seq, *record, false);
            let item = self.queue.pop_front()?;
            return Some((item, self));
        }
        if let JobEvent::Output { attempt, .. } = event {
            self.output_attempt = Some(attempt);
        }
        if pending == 0 {
            if let Some(record) = self.terminal.take() {
                // Replayed to the end without an `end`: this event, then the record's.
                let send_output = self.output_unseen(&record);
                self.queue.push_back((seq, event));
                self.finish(None, record, send_output);
                let item = self.queue.pop_front()?;
                return Some((item, self));
            }
        }
        Some(((seq, event), self))
    }

    /// The client has seen none of `record`'s attempt's output as events, here or on an earlier connection.
    fn output_unseen(&self, record: &JobRecord) -> bool {
        let shown_here = self.output_attempt == Some(output_attempt_of(record));
        let maybe_shown_before = self.resumed && self.run_stored;
        !shown_here && !maybe_shown_before
    }

    /// Queues the end: first the record's output as `output` events when it never went out as events (jobs that
    /// ended before their events went live), then `end` itself.
    fn finish(&mut self, seq: Option<u64>, record: JobRecord, send_output: bool) {
        if send_output {
            let texts = [
                (OutputStream::Stdout, &record.stdout),
                (OutputStream::Stderr, &record.stderr),
            ];
            let mut n = 0;
            for (stream, text) in texts {
                if !text.is_empty() {
                    n += 1;
                    let output = JobEvent::Output {
                        stream,
                        attempt: output_attempt_of(&record),
                        seq: n,
                        text: text.clone(),
                    };
                    self.queue.push_back((None, output));
                }
            }
        }
        let end = JobEvent::End {
            record: Box::new(record),
            output_sent: true,
        };
        self.queue.push_back((seq, end));
        self.finished = true;
    }
}

/// The attempt a record's output belongs to (a record that never started counts as the first).
fn output_attempt_of(record: &JobRecord) -> u32 {
    record.attempt.max(1)
}

/// An earlier run's `end` met in a retried job's stream: told as that run's final status, for the stream goes on.
fn earlier_run_ended(record: &JobRecord) -> JobEvent {
    JobEvent::Status {
        status: record.status,
        attempt: record.attempt,
        worker: record.worker.clone().unwrap_or_default(),
        at: record.finished_at.unwrap_or(record.updated_at),
    }
}
