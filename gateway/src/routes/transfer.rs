//! `GET /v1/export` and `POST /v1/import`: sessions, conversations and jobs carried from one fleet to another
//! (an offline device, a migration) as one tar archive.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fleet_shared::ErrorCode;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Problem, Query};
use crate::jobs::export::{self, Selection};
use crate::jobs::import::{self, ImportReport};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// A session: its turns, their jobs and files, and its workspace.
    pub session: Option<Uuid>,
    /// A conversation: its participants' sessions.
    pub conversation: Option<Uuid>,
    /// The caller's jobs submitted since then (RFC 3339), with their files.
    pub since: Option<DateTime<Utc>>,
}

/// Export a session, a conversation, or your jobs since a time, as a tar archive `POST /v1/import` takes.
#[utoipa::path(get, path = "/v1/export", tag = "sessions", params(ExportParams),
    responses((status = 200, description = "application/x-tar", content_type = "application/x-tar"),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn export(
    caller: Caller,
    State(state): State<AppState>,
    Query(params): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let (selection, label) = match (params.session, params.conversation, params.since) {
        (Some(id), None, None) => (Selection::Session(id), format!("session-{id}")),
        (None, Some(id), None) => (Selection::Conversation(id), format!("conversation-{id}")),
        (None, None, Some(since)) => (
            Selection::JobsSince(since),
            format!("jobs-since-{}", since.timestamp()),
        ),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "name one of session, conversation or since",
            ))
        }
    };
    let (file, length) = export::export(&state, &caller, selection).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"fleet-{label}.tar\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// Import an archive of `GET /v1/export`: what this fleet does not have yet is created, owned by the caller;
/// importing the same archive again changes nothing.
#[utoipa::path(post, path = "/v1/import", tag = "sessions",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The archive as `fleet export` wrote it (a tar; any content type is taken)"),
    responses((status = 200, body = ImportReport), (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn import(
    caller: Caller,
    State(state): State<AppState>,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    let most = state.config.artifacts.max_job_bytes.saturating_mul(4);
    let spooled = spool(body, most).await?;
    Ok(Json(import::import(&state, &caller, spooled).await?))
}

/// The request body in an unlinked temporary file, refused past `most` bytes.
async fn spool(body: Body, most: u64) -> Result<std::fs::File, ApiError> {
    let failed = |e: std::io::Error| ApiError::unavailable("spooling the archive failed", e);
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(std::io::Error::other)
        .and_then(|f| f)
        .map_err(failed)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::MalformedRequest, e.to_string()))?;
        size += chunk.len() as u64;
        if size > most {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("an archive may hold at most {most} bytes (4 × artifacts.max_job_bytes)"),
            ));
        }
        file.write_all(&chunk).await.map_err(failed)?;
    }
    file.flush().await.map_err(failed)?;
    let mut file = file.into_std().await;
    std::io::Seek::rewind(&mut file).map_err(failed)?;
    Ok(file)
}
