//! MessagePack on the wire (maps with field names, ids and times as strings — "human-readable" mode — so other
//! languages read it as naturally as JSON), JSON accepted from direct
//! publishers. The `Content-Type` header decides; without one the first byte does (a JSON object starts with
//! `{`, which is never the first byte of a MessagePack map).

use serde::{de::DeserializeOwned, Serialize};

pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
pub const MSGPACK: &str = "application/msgpack";
pub const JSON: &str = "application/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MessagePack,
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::MessagePack => MSGPACK,
            Self::Json => JSON,
        }
    }

    /// The format a payload is in, from its content type if given, else from its first meaningful byte.
    pub fn detect(content_type: Option<&str>, payload: &[u8]) -> Self {
        if let Some(ct) = content_type {
            let ct = ct.trim().to_ascii_lowercase();
            if ct.starts_with(JSON) || ct.ends_with("+json") || ct == "text/json" {
                return Self::Json;
            }
            if ct.contains("msgpack") || ct.contains("messagepack") {
                return Self::MessagePack;
            }
        }
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Self::Json,
            _ => Self::MessagePack,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("invalid MessagePack: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot encode MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

pub fn encode<T: Serialize>(value: &T, format: Format) -> Result<Vec<u8>, CodecError> {
    Ok(match format {
        Format::MessagePack => {
            let mut buf = Vec::with_capacity(256);
            write_msgpack(value, &mut buf)?;
            buf
        }
        Format::Json => serde_json::to_vec(value)?,
    })
}

/// MessagePack encoding of a wire value; wire types always encode.
pub fn to_msgpack<T: Serialize>(value: &T) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    encode(value, Format::MessagePack).expect("wire types serialize to MessagePack")
}

/// The length of a wire value's MessagePack encoding, counted without keeping the bytes.
pub fn msgpack_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    #[allow(clippy::expect_used)]
    write_msgpack(value, &mut count).expect("wire types serialize to MessagePack");
    count.0
}

/// The wire's MessagePack: structs as maps (fields by name), timestamps and ids as text.
fn write_msgpack<T: Serialize>(
    value: &T,
    out: impl std::io::Write,
) -> Result<(), rmp_serde::encode::Error> {
    value.serialize(
        &mut rmp_serde::Serializer::new(out)
            .with_struct_map()
            .with_human_readable(),
    )
}

pub fn decode<T: DeserializeOwned>(payload: &[u8], format: Format) -> Result<T, CodecError> {
    Ok(match format {
        Format::MessagePack => T::deserialize(
            &mut rmp_serde::Deserializer::from_read_ref(payload).with_human_readable(),
        )?,
        Format::Json => serde_json::from_slice(payload)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{new_job_id, JobRecord, JobRequest};

    fn record() -> JobRecord {
        JobRecord::queued(JobRequest {
            id: new_job_id(),
            agent: "echo".into(),
            message: "héllo".into(),
            context: Some("ctx".into()),
            timeout: Some(1.5),
            return_files: false,
            input_files: Vec::new(),
            artifact_target: None,
            reply_to: Some("_INBOX.x".into()),
            metadata: [("k".to_string(), serde_json::json!({"n": [1, 2]}))].into(),
            submitted_at: chrono::Utc::now(),
            traceparent: None,
            owner: None,
            owner_name: None,
            chat: vec![crate::chat::ChatMessage::new(
                crate::chat::ChatRole::User,
                "q",
            )],
            sampling: crate::chat::Sampling {
                temperature: Some(0.0),
                ..Default::default()
            },
            session: Some(crate::session::SessionTurn {
                session_id: new_job_id(),
                turn: 2,
            }),
            conversation: Some(crate::conversation::ConversationStep {
                conversation_id: new_job_id(),
                exchange: 2,
                follows: Some(new_job_id()),
                stop_when: Some("done".into()),
            }),
        })
    }

    #[test]
    fn record_round_trips_through_both_formats() {
        let r = record();
        for f in [Format::MessagePack, Format::Json] {
            let bytes = encode(&r, f).unwrap();
            assert_eq!(Format::detect(None, &bytes), f);
            let back: JobRecord = decode(&bytes, f).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn ids_and_times_are_strings_in_msgpack_for_other_languages() {
        let r = record();
        let bytes = encode(&r, Format::MessagePack).unwrap();
        let generic: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(generic["id"], r.id.to_string());
        assert!(generic["updated_at"].as_str().unwrap().contains('T'));
    }

    #[test]
    fn content_type_wins_over_sniffing() {
        assert_eq!(
            Format::detect(Some("application/json; charset=utf-8"), b"\x81"),
            Format::Json
        );
        assert_eq!(
            Format::detect(Some("application/x-msgpack"), b"{"),
            Format::MessagePack
        );
        assert_eq!(Format::detect(None, b"  {\"a\":1}"), Format::Json);
    }
}
