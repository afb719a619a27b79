//! Ollama's native chat API (`POST {base_url}/api/chat`): newline-delimited JSON objects, the last one with
//! `done: true` and the token counts.

use fleet_shared::chat::{ChatMessage, Sampling};
use fleet_shared::wire::Usage;
use serde::Serialize;
use serde_json::Value;

use super::Piece;

pub fn url(base_url: &str) -> String {
    format!("{}/api/chat", base_url.trim_end_matches('/'))
}

/// The native request: streamed, sampling under `options` with Ollama's names.
#[derive(Debug, Serialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    stream: bool,
    options: Options,
}

#[derive(Debug, Serialize)]
struct Options {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
}

pub fn body(model: &str, messages: Vec<ChatMessage>, sampling: Sampling) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages,
        stream: true,
        options: Options {
            temperature: sampling.temperature,
            num_predict: sampling.max_tokens,
            seed: sampling.seed,
        },
    }
}

/// What one line of the stream says.
pub fn line(line: &str) -> Vec<Piece> {
    let line = line.trim();
    if line.is_empty() {
        return Vec::new();
    }
    let chunk: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return vec![Piece::Failed(format!("a line that is not JSON ({e})"))],
    };
    if let Some(error) = chunk["error"].as_str() {
        return vec![Piece::Failed(error.to_string())];
    }
    let mut pieces = Vec::new();
    if let Some(text) = chunk["message"]["content"]
        .as_str()
        .filter(|t| !t.is_empty())
    {
        pieces.push(Piece::Text(text.to_string()));
    }
    if chunk["done"].as_bool() == Some(true) {
        if let (Some(input), Some(output)) = (
            chunk["prompt_eval_count"].as_u64(),
            chunk["eval_count"].as_u64(),
        ) {
            pieces.push(Piece::Usage(Usage {
                input_tokens: input,
                output_tokens: output,
                cost_usd: None,
            }));
        }
        pieces.push(Piece::Finished);
        pieces.push(Piece::Done);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    // A transcript of `/api/chat` with `"stream": true`, as Ollama's API documentation gives it.
    const TRANSCRIPT: &str = r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}
{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":" sky"},"done":false}
{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}
"#;

    #[test]
    fn a_transcript_gives_its_text_usage_and_end() {
        let pieces: Vec<Piece> = TRANSCRIPT.lines().flat_map(line).collect();
        assert_eq!(
            pieces,
            vec![
                Piece::Text("The".into()),
                Piece::Text(" sky".into()),
                Piece::Usage(Usage {
                    input_tokens: 26,
                    output_tokens: 282,
                    cost_usd: None
                }),
                Piece::Finished,
                Piece::Done,
            ]
        );
    }

    #[test]
    fn an_error_line_gives_the_server_s_words() {
        assert_eq!(
            line(r#"{"error":"model 'llama9' not found, try pulling it first"}"#),
            vec![Piece::Failed(
                "model 'llama9' not found, try pulling it first".into()
            )]
        );
    }

    #[test]
    fn options_carry_the_sampling_under_ollama_s_names() {
        let sampling = Sampling {
            max_tokens: Some(9),
            seed: Some(1),
            temperature: None,
        };
        let messages = vec![ChatMessage::new(fleet_shared::chat::ChatRole::User, "hi")];
        let body = serde_json::to_value(body("m", messages, sampling)).unwrap();
        assert_eq!(body["options"]["num_predict"], 9);
        assert_eq!(body["options"]["seed"], 1);
        assert!(body["options"].get("temperature").is_none());
        assert_eq!(body["stream"], true);
        assert_eq!(
            url("http://127.0.0.1:11434/"),
            "http://127.0.0.1:11434/api/chat"
        );
    }
}
