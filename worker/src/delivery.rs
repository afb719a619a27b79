//! Announcing a terminal record: to the job's reply subject (in the format the publisher used), as the job's
//! last event, and on the job's done subject, where gateways waiting on the job listen.

use async_nats::HeaderMap;
use fleet_shared::codec::{encode, to_msgpack, Format, CONTENT_TYPE_HEADER};
use fleet_shared::{JobRecord, Topology};

pub async fn announce(
    client: &async_nats::Client,
    topology: &Topology,
    record: &JobRecord,
    format: Format,
    output_sent: bool,
) {
    if let Some(reply_to) = &record.request.reply_to {
        match encode(record, format) {
            Ok(payload) => {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE_HEADER, format.content_type());
                if let Err(e) = client
                    .publish_with_headers(reply_to.clone(), headers, payload.into())
                    .await
                {
                    tracing::warn!(job_id = %record.id, error = %e, "publishing the reply failed");
                }
            }
            Err(e) => tracing::error!(job_id = %record.id, error = %e, "encoding the reply failed"),
        }
    }
    crate::events::end(client, topology, record, output_sent).await;
    let done = topology.done_subject(&record.id);
    if let Err(e) = client.publish(done, to_msgpack(record).into()).await {
        tracing::warn!(job_id = %record.id, error = %e, "publishing the done notice failed");
    }
}
