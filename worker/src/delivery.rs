//! Announcing a terminal record: to the job's reply subject (in the format the publisher used), as the job's
//! last event if its events went live, and on the job's done subject, where gateways waiting on the job (and
//! following its events) listen.

use async_nats::HeaderMap;
use fleet_shared::codec::{encode, CodecError, Format, CONTENT_TYPE_HEADER};
use fleet_shared::record_store::Encoded;
use fleet_shared::topology::OUTPUT_EVENTS_HEADER;
use fleet_shared::{JobRecord, Topology};

/// Announces the job's terminal record, its stored encoding sent as is wherever MessagePack goes.
pub async fn announce(
    client: &async_nats::Client,
    topology: &Topology,
    stored: &Encoded,
    format: Format,
    output_sent: bool,
) {
    let record = stored.record();
    let payload = || match format {
        Format::MessagePack => Ok(stored.msgpack()),
        Format::Json => encode(record, format).map(Into::into),
    };
    send_reply(client, record, format, payload).await;
    done(client, topology, record, stored.msgpack(), output_sent).await;
}

/// Sends `record` to its reply subject only: for an answer that is not the job's record (a message refused
/// without touching the job it names), which must not reach that job's waiters.
pub async fn reply(client: &async_nats::Client, record: &JobRecord, format: Format) {
    send_reply(client, record, format, || {
        encode(record, format).map(Into::into)
    })
    .await;
}

/// Sends `record`, encoded by `payload` only if it has a reply subject.
async fn send_reply(
    client: &async_nats::Client,
    record: &JobRecord,
    format: Format,
    payload: impl FnOnce() -> Result<bytes::Bytes, CodecError>,
) {
    let Some(reply_to) = &record.request.reply_to else {
        return;
    };
    let payload = match payload() {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!(job_id = %record.id, error = %e, "encoding the reply failed");
            return;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, format.content_type());
    // The requester may continue the job's trace.
    fleet_shared::trace_context::inject(&mut headers);
    if let Err(e) = client
        .publish_with_headers(reply_to.clone(), headers, payload)
        .await
    {
        tracing::warn!(job_id = %record.id, error = %e, "publishing the reply failed");
    }
}

async fn done(
    client: &async_nats::Client,
    topology: &Topology,
    record: &JobRecord,
    stored: bytes::Bytes,
    output_sent: bool,
) {
    // A job whose events never went live publishes no `end` event: listeners take its end from the done notice.
    let mut headers = HeaderMap::new();
    if output_sent {
        crate::events::end(client, topology, record).await;
        headers.insert(OUTPUT_EVENTS_HEADER, "sent");
    }
    let done = topology.done_subject(&record.id);
    if let Err(e) = client.publish_with_headers(done, headers, stored).await {
        tracing::warn!(job_id = %record.id, error = %e, "publishing the done notice failed");
    }
}
