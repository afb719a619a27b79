//! OpenAI's chat completions API (`POST {base_url}/chat/completions`, streamed as Server-Sent Events), which
//! llama.cpp, vLLM, Ollama's `/v1` and the hosted APIs all speak.

use fleet_shared::chat::{ChatMessage, CompletionRequest, Sampling, StreamOptions};
use fleet_shared::wire::Usage;
use serde_json::Value;

use super::Piece;

pub fn url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// The request: streamed, with the token counts on the last chunk.
pub fn body(model: &str, messages: Vec<ChatMessage>, sampling: Sampling) -> CompletionRequest {
    CompletionRequest {
        model: model.to_string(),
        messages,
        stream: true,
        stream_options: Some(StreamOptions {
            include_usage: true,
        }),
        sampling,
        max_completion_tokens: None,
    }
}

/// What one line of the event stream says. Lines other than `data:` (comments, `event:`, blank) say nothing.
pub fn line(line: &str) -> Vec<Piece> {
    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
        return Vec::new();
    };
    if data == "[DONE]" {
        return vec![Piece::Done];
    }
    let chunk: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => return vec![Piece::Failed(format!("an event that is not JSON ({e})"))],
    };
    if let Some(error) = chunk.get("error") {
        return vec![Piece::Failed(error_text(error))];
    }
    let mut pieces = Vec::new();
    for choice in chunk["choices"].as_array().into_iter().flatten() {
        if let Some(text) = choice["delta"]["content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            pieces.push(Piece::Text(text.to_string()));
        }
        if choice["finish_reason"].is_string() {
            pieces.push(Piece::Finished);
        }
    }
    if let Some(usage) = usage(&chunk["usage"]) {
        pieces.push(Piece::Usage(usage));
    }
    pieces
}

fn usage(v: &Value) -> Option<Usage> {
    Some(Usage {
        input_tokens: v.get("prompt_tokens")?.as_u64()?,
        output_tokens: v.get("completion_tokens")?.as_u64()?,
        cost_usd: None,
    })
}

/// The server's own words from an error body (`{"error": {"message": ...}}`, `{"error": "..."}`, or text).
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("error").is_some() => error_text(&v["error"]),
        Ok(v) if v["message"].is_string() => v["message"].as_str().unwrap_or_default().to_string(),
        _ => String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(500)
            .collect(),
    }
}

fn error_text(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        e => e["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as llama.cpp's server sends them (captured from its /v1/chat/completions stream).
    const STREAM: &[&str] = &[
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"object":"chat.completion.chunk"}"#,
        "",
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"I"}}],"object":"chat.completion.chunk"}"#,
        r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"'m"}}],"object":"chat.completion.chunk"}"#,
        r#"data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk"}"#,
        r#"data: {"choices":[],"object":"chat.completion.chunk","usage":{"completion_tokens":12,"prompt_tokens":32,"total_tokens":44}}"#,
        ": a comment",
        "data: [DONE]",
    ];

    #[test]
    fn a_stream_gives_its_text_its_end_and_its_usage() {
        let pieces: Vec<Piece> = STREAM.iter().flat_map(|l| line(l)).collect();
        assert_eq!(
            pieces,
            vec![
                Piece::Text("I".into()),
                Piece::Text("'m".into()),
                Piece::Finished,
                Piece::Usage(Usage {
                    input_tokens: 32,
                    output_tokens: 12,
                    cost_usd: None
                }),
                Piece::Done,
            ]
        );
    }

    #[test]
    fn errors_in_the_stream_and_in_bodies_give_the_server_s_words() {
        assert_eq!(
            line(r#"data: {"error":{"code":500,"message":"slot unavailable"}}"#),
            vec![Piece::Failed("slot unavailable".into())]
        );
        assert!(matches!(&line("data: {not json")[..], [Piece::Failed(_)]));
        let body = br#"{"error":{"code":400,"message":"Expected 'messages' to be an array","type":"invalid_request_error"}}"#;
        assert_eq!(error_message(body), "Expected 'messages' to be an array");
        assert_eq!(error_message(b"Bad Gateway\n"), "Bad Gateway");
    }

    #[test]
    fn the_request_asks_for_a_stream_with_usage_and_the_sampling() {
        let sampling = Sampling {
            temperature: Some(0.0),
            max_tokens: Some(7),
            seed: Some(3),
        };
        let body = serde_json::to_value(body(
            "m",
            vec![ChatMessage::new(fleet_shared::chat::ChatRole::User, "hi")],
            sampling,
        ))
        .unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["seed"], 3);
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(
            url("http://127.0.0.1:1/v1/"),
            "http://127.0.0.1:1/v1/chat/completions"
        );
    }
}
