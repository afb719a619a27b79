//! The body of `POST /v1/jobs` and of a session's message: JSON (within `http.max_body_bytes`), or
//! `multipart/form-data` carrying the job's
//! fields plus input files of any size up to the artifact caps. Uploaded files stream to a temporary file (memory
//! stays flat), then into the default artifact store under a content-derived id, and the job refers to them —
//! so a retried upload of the same files makes the same request, and idempotency keys keep working.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use fleet_shared::artifacts::{is_reserved_name, is_safe_name, stored_name_problem};
use fleet_shared::wire::{InputFile, StoredFileRef};
use fleet_shared::ErrorCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::http::error::{ApiError, Json};
use crate::routes::jobs::SubmitJob;
use crate::state::AppState;

/// Form fields naming input files; every other field is a job field.
const FILE_FIELDS: &[&str] = &["file", "files", "files[]", "input_files"];
/// Folder, under the content id, holding an uploaded input.
pub const INPUTS_DIR: &str = "_inputs";

/// A request that may carry input files (a job, a session's message).
pub trait WithInputs: serde::de::DeserializeOwned {
    fn input_files(&mut self) -> &mut Vec<InputFile>;
}

impl WithInputs for SubmitJob {
    fn input_files(&mut self) -> &mut Vec<InputFile> {
        &mut self.input_files
    }
}

/// A submission in either encoding.
pub struct JobBody<T = SubmitJob>(pub T);

impl<T: WithInputs + Send> FromRequest<AppState> for JobBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
        {
            let form = Multipart::from_request(req, state)
                .await
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
            return read_form(state, form).await.map(JobBody);
        }
        // This route lifts the global body limit for uploads; a JSON body keeps it.
        let limit = state.config.http.max_body_bytes;
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|e| unreadable_body(e, limit))?;
        let req = Request::from_parts(parts, Body::from(bytes));
        let Json(job) = Json::<T>::from_request(req, state).await?;
        Ok(JobBody(job))
    }
}

/// A JSON body that could not be read: over the limit (413), or not a well-formed HTTP body at all (a bad chunk).
fn unreadable_body(e: axum::Error, limit: usize) -> ApiError {
    let inner = e.into_inner();
    if inner.is::<http_body_util::LengthLimitError>() {
        return ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("JSON bodies are limited to {limit} bytes; send large input files as multipart/form-data"),
        );
    }
    ApiError::new(
        ErrorCode::MalformedRequest,
        format!("the request body could not be read: {inner}"),
    )
}

async fn read_form<T: WithInputs>(state: &AppState, mut form: Multipart) -> Result<T, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    let limits = &state.config.artifacts;
    let mut fields = serde_json::Map::new();
    let mut job_json: Option<serde_json::Value> = None;
    let mut uploads = Vec::new();
    let mut total = 0u64;
    // Every text field together stays within the JSON body limit: they are held in memory.
    let mut text_room = state.config.http.max_body_bytes;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| bad(format!("unreadable multipart body: {e}")))?
    {
        let name = field.name().unwrap_or("").to_string();
        if name.len() > MAX_FIELD_NAME {
            return Err(bad(format!(
                "a field name is {} bytes; field names are at most {MAX_FIELD_NAME}",
                name.len()
            )));
        }
        if FILE_FIELDS.contains(&name.as_str()) {
            let file_name = field.file_name().unwrap_or("").to_string();
            if let Some(why) = input_name_problem(&file_name) {
                return Err(ApiError::new(
                    ErrorCode::InvalidName,
                    format!("input file name `{}`: {why}", shown(&file_name)),
                ));
            }
            if uploads.len() >= limits.max_files {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("at most {} input files per job", limits.max_files),
                ));
            }
            let spooled = spool(&mut field, &file_name, limits.max_file_bytes).await?;
            total += spooled.size;
            if total > limits.max_job_bytes {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("input files exceed {} bytes in all", limits.max_job_bytes),
                ));
            }
            uploads.push((file_name, spooled));
            continue;
        }
        let text = field_text(&mut field, &mut text_room).await?;
        if name == "job" {
            let v = serde_json::from_str(&text).map_err(|e| {
                ApiError::new(ErrorCode::MalformedJson, format!("field `job`: {e}"))
            })?;
            job_json = Some(v);
            continue;
        }
        let value = field_value(&name, text)?;
        fields.insert(name, value);
    }
    let mut object = match job_json {
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => return Err(bad("field `job` must be a JSON object".into())),
        None => serde_json::Map::new(),
    };
    object.extend(fields);
    let mut job: T = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| bad(format!("job fields: {e}")))?;
    for (file_name, spooled) in uploads {
        let stored = store_upload(state, &file_name, spooled).await?;
        job.input_files().push(stored);
    }
    Ok(job)
}

/// An uploaded file on local disk, with its size and SHA-256.
struct Spooled {
    file: tempfile::TempPath,
    size: u64,
    sha256: [u8; 32],
}

async fn spool(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &str,
    max: u64,
) -> Result<Spooled, ApiError> {
    let io = |e: std::io::Error| ApiError::unavailable("spooling an upload failed", e);
    let path = tempfile::NamedTempFile::new().map_err(io)?.into_temp_path();
    let mut out = tokio::fs::File::create(&path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("input file `{name}`: {e}"),
        )
    })? {
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("input file `{name}` is over the {max}-byte limit per file"),
            ));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    Ok(Spooled {
        file: path,
        size,
        sha256: hasher.finalize().into(),
    })
}

/// A job field given as form text, as the JSON value it stands for.
fn field_value(name: &str, text: String) -> Result<serde_json::Value, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    Ok(match name {
        "timeout" => {
            let secs = text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0);
            let secs = secs.ok_or_else(|| {
                bad(format!(
                    "field `timeout`: `{}` is not a positive number of seconds",
                    shown(&text)
                ))
            })?;
            serde_json::Value::from(secs)
        }
        "return_files" => serde_json::Value::from(match text.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => {
                return Err(bad(format!(
                    "field `return_files`: `{}` is not true or false",
                    shown(other)
                )))
            }
        }),
        "metadata" => serde_json::from_str(&text).map_err(|e| {
            ApiError::new(ErrorCode::MalformedJson, format!("field `metadata`: {e}"))
        })?,
        _ => serde_json::Value::from(text),
    })
}

/// Longest multipart field name (the job's fields have short names; a long one is never echoed back).
const MAX_FIELD_NAME: usize = 64;

/// At most the first 64 characters of a value the caller sent, for messages.
fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Why `name` cannot be an uploaded input's name, if it cannot: checked before anything is spooled or stored.
fn input_name_problem(name: &str) -> Option<String> {
    if !is_safe_name(name) {
        return Some("not a safe relative path".into());
    }
    if is_reserved_name(name) {
        return Some("`_logs/` is reserved for the job's logs".into());
    }
    stored_name_problem(name).or_else(|| stored_name_problem(&format!("{INPUTS_DIR}/{name}")))
}

/// A text field, taken from `room` (the bytes all text fields may still use).
async fn field_text(
    field: &mut axum::extract::multipart::Field<'_>,
    room: &mut usize,
) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_string();
    let mut bytes = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("field `{name}`: {e}")))?
    {
        if chunk.len() > *room {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the form's text fields are over http.max_body_bytes in all; send large content as files",
            ));
        }
        *room -= chunk.len();
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("field `{name}` is not UTF-8"),
        )
    })
}

/// Stores an upload in the default store, under an id derived from its content, and returns the job's reference.
async fn store_upload(
    state: &AppState,
    name: &str,
    spooled: Spooled,
) -> Result<InputFile, ApiError> {
    let mut id_bytes = [0u8; 16];
    id_bytes.copy_from_slice(&spooled.sha256[..16]);
    let content_id = uuid::Builder::from_custom_bytes(id_bytes).into_uuid();
    let stored_name = format!("{INPUTS_DIR}/{name}");
    let store = state.stores.default_store();
    let key = store.key(&content_id, &stored_name);
    store
        .upload_file(&key, &spooled.file)
        .await
        .map_err(|e| ApiError::unavailable("storing an uploaded input failed", e))?;
    Ok(InputFile {
        name: name.to_string(),
        data_base64: None,
        from: Some(StoredFileRef {
            job_id: content_id,
            name: stored_name,
        }),
        size: Some(spooled.size),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_ids_are_version_8_and_stable() {
        let a = uuid::Builder::from_custom_bytes([7; 16]).into_uuid();
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(a, uuid::Builder::from_custom_bytes([7; 16]).into_uuid());
    }
}
