//! OpenAI's chat completions, the one shape of a conversation in the fleet: what a job may carry for a model
//! agent, what the worker asks an OpenAI-compatible server, and what the gateway's front door takes and answers.

use serde::{Deserialize, Deserializer, Serialize};

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    /// OpenAI's newer name for a system message; passed on as it is.
    Developer,
    User,
    Assistant,
    Tool,
}

/// One message of a conversation. Content arrives as text or as OpenAI's list of parts (of which only text
/// parts are understood); it is kept and sent as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    pub role: ChatRole,
    #[serde(default, deserialize_with = "content_text")]
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// `"text"`, `null`, or `[{"type": "text", "text": "..."}, ...]` as one text.
fn content_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: Option<String>,
    }
    match Option::<Content>::deserialize(d)? {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .map(|part| match (part.kind.as_str(), part.text) {
                ("text", Some(text)) => Ok(text),
                (kind, _) => Err(serde::de::Error::custom(format!(
                    "content parts of type {kind:?} are not supported (only text)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("")),
    }
}

/// How a model samples its answer; what is absent is the agent's setting, else the server's default.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub seed: Option<i64>,
}

impl Sampling {
    /// Each setting of `self`, else `fallback`'s.
    pub fn or(self, fallback: Sampling) -> Sampling {
        Sampling {
            temperature: self.temperature.or(fallback.temperature),
            max_tokens: self.max_tokens.or(fallback.max_tokens),
            seed: self.seed.or(fallback.seed),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `POST /chat/completions`: asked by the worker of a model server, and taken by the gateway's front door
/// (which ignores the OpenAI fields it does not use).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// OpenAI's newer name for `max_tokens`, which some SDK versions send instead.
    pub max_completion_tokens: Option<u32>,
}

impl CompletionRequest {
    /// The sampling asked for, `max_completion_tokens` standing in for a missing `max_tokens`.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            max_tokens: self.sampling.max_tokens.or(self.max_completion_tokens),
            ..self.sampling
        }
    }

    /// Whether the last streamed chunk should carry the token counts.
    pub fn wants_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Token counts as OpenAI's API gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A whole answer (`"object": "chat.completion"`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<CompletionUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub message: ChatMessage,
    pub finish_reason: Option<String>,
}

/// One piece of a streamed answer (`"object": "chat.completion.chunk"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Present on the last chunk only, when the request asked for it (`null` before, as OpenAI sends).
    #[serde(default)]
    pub usage: Option<CompletionUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub role: Option<ChatRole>,
    pub content: Option<String>,
}

/// A model on the front door's `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_as_text_parts_or_null_reads_as_text() {
        let messages: Vec<ChatMessage> = serde_json::from_str(
            r#"[{"role":"user","content":"hi"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null}]"#,
        )
        .unwrap();
        let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["hi", "ab", ""]);
        let image = r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}"#;
        let err = serde_json::from_str::<ChatMessage>(image).unwrap_err();
        assert!(err.to_string().contains("image_url"), "{err}");
    }

    #[test]
    fn a_message_survives_messagepack() {
        let m = ChatMessage::new(ChatRole::Developer, "be brief");
        let bytes = rmp_serde::to_vec_named(&m).unwrap();
        assert_eq!(rmp_serde::from_slice::<ChatMessage>(&bytes).unwrap(), m);
    }

    #[test]
    fn a_request_takes_sdk_fields_and_sends_only_what_is_set() {
        let request: CompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true},
                "max_completion_tokens":5,"temperature":0,"n":1,"user":"u"}"#,
        )
        .unwrap();
        assert!(request.wants_usage());
        assert_eq!(request.sampling().max_tokens, Some(5));
        assert_eq!(request.sampling().temperature, Some(0.0));
        let sent = serde_json::to_value(CompletionRequest {
            max_completion_tokens: None,
            sampling: Sampling::default(),
            ..request
        })
        .unwrap();
        assert_eq!(
            sent.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["messages", "model", "stream", "stream_options"]
        );
    }
}
