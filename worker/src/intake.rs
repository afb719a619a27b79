//! Turning a message on a jobs subject into a validated job request, or into the reason it is not one. Used by the
//! pull loop and by the unknown-agent janitor, so both read direct publications the same way.

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fleet_shared::codec::{decode, Format, CONTENT_TYPE_HEADER};
use fleet_shared::seal::FollowedSealer;
use fleet_shared::topology::{
    GENERATION_HEADER, MSG_ID_HEADER, RECORD_REVISION_HEADER, RECORD_SEAL_HEADER, REPLY_TO_HEADER,
};
use fleet_shared::wire::{job_id_for_message, PublishedJob};
use fleet_shared::{ErrorCode, JobError, JobRequest, Topology};
use uuid::Uuid;

/// The parts of a stored job message that matter, whichever API fetched it.
pub struct Incoming<'a> {
    pub subject: &'a str,
    pub payload: &'a Bytes,
    pub headers: Option<&'a HeaderMap>,
    pub stream_sequence: u64,
    pub published: DateTime<Utc>,
}

impl<'a> Incoming<'a> {
    /// A message delivered by a consumer, with its JetStream metadata.
    pub fn delivered(
        msg: &'a async_nats::jetstream::Message,
        info: &async_nats::jetstream::message::Info<'_>,
    ) -> Self {
        Self {
            subject: msg.subject.as_str(),
            payload: &msg.payload,
            headers: msg.headers.as_ref(),
            stream_sequence: info.stream_sequence,
            published: from_offset(info.published),
        }
    }

    /// A message read from the stream directly (the janitor's), not delivered.
    pub fn stored(msg: &'a async_nats::jetstream::message::StreamMessage) -> Self {
        Self {
            subject: msg.subject.as_str(),
            payload: &msg.payload,
            headers: Some(&msg.headers),
            stream_sequence: msg.sequence,
            published: from_offset(msg.time),
        }
    }
}

/// A decoded job and how to answer it.
pub struct Intake {
    pub request: JobRequest,
    /// The format the publisher used; the reply is sent in the same one.
    pub format: Format,
    /// Revision of the gateway's `queued` record, when the gateway published the job.
    pub queued_revision: Option<u64>,
    /// Which run of the job this message starts: 0, or the number of retries before it.
    pub generation: u32,
    /// Set when the job cannot run: the request (as far as it could be read) and why.
    pub rejected: Option<JobError>,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

pub fn read(topology: &Topology, sealer: &FollowedSealer, msg: &Incoming<'_>) -> Intake {
    let format = Format::detect(header(msg.headers, CONTENT_TYPE_HEADER), msg.payload);
    let subject_agent = topology.agent_of_subject(msg.subject).unwrap_or_default();
    // A retry's message id is `<job id>.<generation>`.
    let fallback_id = header(msg.headers, MSG_ID_HEADER)
        .and_then(|v| v.split('.').next()?.parse::<Uuid>().ok())
        .unwrap_or_else(|| job_id_for_message(msg.published, msg.stream_sequence));
    // A reply subject is data from the publisher: one the fleet may not publish to is never used.
    let header_reply = header(msg.headers, REPLY_TO_HEADER)
        .filter(|r| topology.is_allowed_reply_subject(r))
        .map(str::to_string);
    let generation = header(msg.headers, GENERATION_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let claimed_revision: Option<u64> =
        header(msg.headers, RECORD_REVISION_HEADER).and_then(|v| v.parse().ok());

    let reject = |reason: String| {
        let mut request = JobRequest::new(fallback_id, subject_agent, String::new(), msg.published);
        request.return_files = false;
        request.reply_to = header_reply.clone();
        Intake {
            request,
            format,
            queued_revision: None,
            generation,
            rejected: Some(JobError::new(ErrorCode::InvalidJob, reason)),
        }
    };

    let published: PublishedJob = match decode(msg.payload, format) {
        Ok(p) => p,
        Err(e) => return reject(format!("cannot decode the job: {e}")),
    };
    let mut request = published.into_request(subject_agent, fallback_id, msg.published);
    if request.reply_to.is_none() {
        request.reply_to = header_reply.clone();
    }
    // The revision is taken only under the gateway's seal; otherwise the message counts as a direct publish.
    let seal = header(msg.headers, RECORD_SEAL_HEADER).unwrap_or("");
    let queued_revision =
        claimed_revision.filter(|rev| sealer.verifies(&request.id, generation, *rev, seal));
    if claimed_revision.is_some() && queued_revision.is_none() {
        tracing::warn!(job_id = %request.id, "a job message names a record revision without the gateway's seal; it is treated as published straight to NATS");
    }
    let mut intake = Intake {
        request,
        format,
        queued_revision,
        generation,
        rejected: None,
    };
    if intake.request.agent != subject_agent {
        let reason = format!(
            "agent `{}` does not match the subject's agent `{subject_agent}`",
            intake.request.agent
        );
        intake.rejected = Some(JobError::new(ErrorCode::InvalidJob, reason));
    } else if let Err(e) = topology.validate_request(&intake.request) {
        intake.rejected = Some(JobError::new(ErrorCode::InvalidJob, e.to_string()));
    }
    if intake.rejected.is_some()
        && !intake
            .request
            .reply_to
            .as_deref()
            .is_some_and(|r| topology.is_allowed_reply_subject(r))
    {
        intake.request.reply_to = header_reply;
    }
    intake
}

/// JetStream timestamps come as `time::OffsetDateTime`; the wire uses chrono.
pub fn from_offset(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::seal::Sealer;

    fn sealer() -> FollowedSealer {
        FollowedSealer::fixed(Sealer::with_key([1; 32]))
    }

    #[test]
    fn a_revision_is_taken_only_under_the_gateways_seal() {
        let t = Topology::new("fleet");
        let id = uuid::Uuid::now_v7();
        let payload = Bytes::from(format!(r#"{{"id":"{id}","message":"hi"}}"#));
        let mut headers = HeaderMap::new();
        headers.insert(RECORD_REVISION_HEADER, "42");
        assert_eq!(
            read(&t, &sealer(), &incoming(&payload, Some(&headers))).queued_revision,
            None
        );
        let seal = Sealer::with_key([1; 32]).seal(&id, 0, 42);
        headers.insert(RECORD_SEAL_HEADER, seal.as_str());
        assert_eq!(
            read(&t, &sealer(), &incoming(&payload, Some(&headers))).queued_revision,
            Some(42)
        );
    }

    fn incoming<'a>(payload: &'a Bytes, headers: Option<&'a HeaderMap>) -> Incoming<'a> {
        Incoming {
            subject: "fleet.jobs.echo",
            payload,
            headers,
            stream_sequence: 7,
            published: Utc::now(),
        }
    }

    #[test]
    fn json_without_id_gets_a_stable_derived_id() {
        let t = Topology::new("fleet");
        let payload = Bytes::from_static(br#"{"message":"hi","reply_to":"r.1"}"#);
        let msg = incoming(&payload, None);
        let a = read(&t, &sealer(), &msg);
        let b = read(&t, &sealer(), &msg);
        assert!(a.rejected.is_none());
        assert_eq!(a.format, Format::Json);
        assert_eq!(a.request.agent, "echo");
        assert_eq!(a.request.id, b.request.id);
        assert_eq!(a.request.id.get_version_num(), 7);
    }

    #[test]
    fn garbage_is_rejected_with_invalid_job_and_keeps_the_header_reply() {
        let t = Topology::new("fleet");
        let payload = Bytes::from_static(b"\xc1\xc1 not a job");
        let mut headers = HeaderMap::new();
        headers.insert(REPLY_TO_HEADER, "answers.here");
        let intake = read(&t, &sealer(), &incoming(&payload, Some(&headers)));
        assert_eq!(intake.rejected.unwrap().code, ErrorCode::InvalidJob);
        assert_eq!(intake.request.reply_to.as_deref(), Some("answers.here"));
    }

    #[test]
    fn a_reply_subject_of_the_fleet_itself_is_refused_and_never_answered() {
        let t = Topology::new("fleet");
        let payload = Bytes::from_static(br#"{"message":"hi","reply_to":"fleet.jobs.echo"}"#);
        let mut headers = HeaderMap::new();
        headers.insert(REPLY_TO_HEADER, "$JS.API.STREAM.DELETE.FLEET_JOBS");
        let intake = read(&t, &sealer(), &incoming(&payload, Some(&headers)));
        assert_eq!(intake.rejected.unwrap().code, ErrorCode::InvalidJob);
        assert_eq!(intake.request.reply_to, None);
        let mut headers = HeaderMap::new();
        headers.insert(REPLY_TO_HEADER, "_INBOX.answers");
        let intake = read(&t, &sealer(), &incoming(&payload, Some(&headers)));
        assert_eq!(intake.request.reply_to.as_deref(), Some("_INBOX.answers"));
    }

    #[test]
    fn subjects_with_wildcards_or_extra_tokens_name_no_agent() {
        let t = Topology::new("fleet");
        for subject in [
            "fleet.jobs.>",
            "fleet.jobs.*",
            "fleet.jobs.echo.>",
            "fleet.jobs.echo.a.b",
        ] {
            assert_eq!(t.agent_of_subject(subject), None, "{subject}");
        }
        assert_eq!(t.agent_of_subject("fleet.jobs.echo"), Some("echo"));
        assert_eq!(
            t.agent_of_subject("fleet.jobs.echo.0123456789abcdef"),
            Some("echo")
        );
    }

    #[test]
    fn agent_field_must_match_subject() {
        let t = Topology::new("fleet");
        let payload = Bytes::from_static(br#"{"message":"hi","agent":"python"}"#);
        let intake = read(&t, &sealer(), &incoming(&payload, None));
        assert_eq!(intake.rejected.unwrap().code, ErrorCode::InvalidJob);
    }
}
