//! Files jobs produced: listing, and streaming download (HTTP ranges honoured) from whichever store holds them.
//! A name is served only if it is a safe relative name *and* the job's record lists it, so no request can reach
//! outside that job's files.

use std::ops::Range;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use fleet_shared::artifacts::targets::TargetError;
use fleet_shared::artifacts::{is_safe_name, ArtifactStore, StoreError, StoreKey};
use fleet_shared::wire::{FileEntry, SkippedFile};
use fleet_shared::ErrorCode;
use fleet_shared::JobRecord;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Json, Path, Problem, Query};
use crate::jobs::records;
use crate::jobs::tar;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactList {
    pub job_id: Uuid,
    pub files: Vec<FileEntry>,
    pub skipped_files: Vec<SkippedFile>,
    /// Full stdout/stderr logs, when the record's copies are capped or not UTF-8.
    pub logs: Vec<FileEntry>,
}

/// The files a job produced.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = ArtifactList), (status = 404, body = Problem)))]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<ArtifactList>, ApiError> {
    let r = records::get_for_files(&state, &caller, &id).await?;
    Ok(Json(ArtifactList {
        job_id: r.id,
        files: r.files.clone(),
        skipped_files: r.skipped_files.clone(),
        logs: r.logs.clone(),
    }))
}

/// Files up to this size are sent in a tar archive as one chunk with their header.
const SMALL_FILE: u64 = 256 * 1024;
/// Files of a tar archive being opened or read ahead of the one being sent (memory: at most this many small files).
const PREFETCH: usize = 8;

/// `body` made exactly `size` bytes long: cut if the stored object is longer than the record says, padded with
/// zeros (and logged) if shorter, so an archive's headers and bytes always agree.
fn exactly(
    body: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
    size: u64,
    key: String,
) -> futures::stream::BoxStream<'static, Result<Bytes, StoreError>> {
    futures::stream::unfold(
        (body, size, false),
        move |(mut body, left, ended)| {
            let key = key.clone();
            async move {
                if ended {
                    return None;
                }
                match body.next().await {
                    Some(Ok(mut chunk)) if left > 0 => {
                        chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                        let left = left - chunk.len() as u64;
                        Some((Ok(chunk), (body, left, false)))
                    }
                    Some(Ok(_)) => Some((Ok(Bytes::new()), (body, 0, true))),
                    Some(Err(e)) => Some((Err(e), (body, left, true))),
                    None if left > 0 => {
                        tracing::error!(key, missing = left, "a stored file is shorter than its record says; the archive pads it with zeros");
                        let zeros = Bytes::from(vec![0u8; usize::try_from(left).unwrap_or(0)]);
                        Some((Ok(zeros), (body, 0, true)))
                    }
                    None => None,
                }
            }
        },
    )
    .boxed()
}

/// All of a job's files as one tar archive, streamed (`curl -o out.tar`, then `tar -xf out.tar`).
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts.tar", tag = "jobs", params(("id" = Uuid, Path),
        ("ticket" = Option<String>, Query, description = "A download link's ticket (`POST /v1/jobs/{id}/links`)")),
    responses((status = 200, description = "A POSIX tar archive of the job's files", content_type = "application/x-tar"),
        (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn archive(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let record = records::get_for_files(&state, &caller, &id).await?;
    let store = holder(&state, &record).await?;
    let mtime = record
        .finished_at
        .map_or(0, |t| t.timestamp().max(0) as u64);
    let mut length = tar::TRAILER.len() as u64;
    let mut parts = Vec::with_capacity(record.files.len());
    for f in &record.files {
        let header = Bytes::from(tar::file_header(&f.name, f.size, mtime));
        length += header.len() as u64 + f.size + tar::padding(f.size) as u64;
        parts.push((header, store.key(&id, &f.name), f.size));
    }
    let body = futures::stream::iter(parts)
        .map(move |(header, key, size)| {
            let store = store.clone();
            async move {
                let head = {
                    let header = header.clone();
                    futures::stream::once(async move { Ok::<_, StoreError>(header) })
                };
                let tail =
                    futures::stream::once(
                        async move { Ok(Bytes::from(vec![0u8; tar::padding(size)])) },
                    );
                // Never more than the header declares, whatever the store now holds.
                let download = match store.download(&key, Some(0..size)).await {
                    Ok(d) => d,
                    Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
                };
                let body = exactly(download.body, size, key.to_string());
                if size > SMALL_FILE {
                    return head.chain(body).chain(tail).boxed();
                }
                // A small file goes out as one chunk with its header and padding: a chunk per piece made
                // archives of many small files several times slower.
                futures::stream::once(async move {
                    let mut one = BytesMut::with_capacity(header.len() + size as usize + 512);
                    one.extend_from_slice(&header);
                    let mut body = body;
                    while let Some(chunk) = body.next().await {
                        one.extend_from_slice(&chunk?);
                    }
                    one.resize(one.len() + tar::padding(size), 0);
                    Ok(one.freeze())
                })
                .boxed()
            }
        })
        // Files are opened (and small ones read) a few ahead of the one being sent, in order.
        .buffered(PREFETCH)
        .flatten()
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(&tar::TRAILER))
        }));
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&format!("{id}.tar"))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadParams {
    /// Instead of the file, answer with a URL straight to the store valid this many seconds (S3 stores).
    #[param(minimum = 1, maximum = 604800)]
    pub presign: Option<f64>,
    /// A download link's ticket (`POST /v1/jobs/{id}/links`), standing in for credentials on this path only.
    pub ticket: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Presigned {
    pub url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Longest validity of a presigned URL (S3's own limit).
const MAX_PRESIGN_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// Download one file of a job (`Range: bytes=…` honoured), or get a presigned URL for it.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", tag = "jobs",
    params(("id" = Uuid, Path), ("name" = String, Path, description = "Relative name, e.g. `out/report.pdf`"),
        DownloadParams),
    responses((status = 200, description = "The file, or a `Presigned` URL with `?presign`"),
        (status = 206, description = "The requested range"),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 416, body = Problem),
        (status = 422, body = Problem)))]
pub async fn download(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, name)): Path<(Uuid, String)>,
    Query(params): Query<DownloadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(secs) = params.presign else {
        return serve(&state, &caller, id, &name, &headers).await;
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_PRESIGN_SECS) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("presign must be 1 to {MAX_PRESIGN_SECS} seconds"),
        ));
    }
    let (_, key, store) = listed_file(&state, &caller, id, &name).await?;
    let expires_in = fleet_shared::config::secs(secs);
    let url = store
        .presigned_get(&key, expires_in)
        .await
        .map_err(|e| ApiError::unavailable("presigning failed", e))?;
    let url = url.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} cannot hand out presigned URLs; download through the gateway",
                store.name()
            ),
        )
    })?;
    let expires_at =
        // Only past chrono's range (thousands of years) would it fail; then: expires now.
        chrono::Utc::now() + chrono::Duration::from_std(expires_in).unwrap_or_default();
    Ok(Json(Presigned { url, expires_at }).into_response())
}

/// The stored file `name` of job `id`, its key and the store holding it, if the name is safe and the job's
/// record lists it.
async fn listed_file(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    name: &str,
) -> Result<(FileEntry, StoreKey, ArtifactStore), ApiError> {
    let (record, entry) = listed_entry(state, caller, id, name).await?;
    let store = holder(state, &record).await?;
    Ok((entry, store.key(&id, name), store))
}

/// Job `id`'s record and its entry for file `name`, if the caller may read the job, the name is safe and the
/// record lists it.
pub(crate) async fn listed_entry(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    name: &str,
) -> Result<(std::sync::Arc<JobRecord>, FileEntry), ApiError> {
    if !is_safe_name(name) {
        return Err(ApiError::new(
            ErrorCode::InvalidName,
            "artifact names are relative paths without `.` or `..` parts",
        ));
    }
    let record = records::get_for_files(state, caller, &id).await?;
    let entry = record.stored_file(name).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("job {id} has no stored file named `{name}`"),
        )
    })?;
    Ok((record, entry))
}

/// The store holding a job's files, as its record names it.
async fn holder(state: &AppState, record: &JobRecord) -> Result<ArtifactStore, ApiError> {
    state
        .stores
        .resolve(record.artifact_store.as_deref())
        .await
        .map_err(|e| match e {
            TargetError::Unknown(target) => ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "job {} stored its files in target `{target}`, which this gateway does not know",
                    record.id
                ),
            ),
            e => ApiError::unavailable("the job's artifact store cannot be opened", e),
        })
}

/// Download a file (agent-interaction server compatible).
#[utoipa::path(get, path = "/download/{id}/{filename}", tag = "compatible",
    params(("id" = Uuid, Path), ("filename" = String, Path)),
    responses((status = 200, description = "The file"), (status = 404, body = Problem)))]
pub async fn download_compat(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, name)): Path<(Uuid, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&state, &caller, id, &name, &headers).await
}

async fn serve(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (entry, key, store) = listed_file(state, caller, id, name).await?;
    let range = requested_range(headers, entry.size)?;
    let download = store.download(&key, range.clone()).await.map_err(|e| {
        if e.is_not_found() {
            ApiError::new(
                ErrorCode::NotFound,
                format!("`{name}` is listed but missing from {}", store.name()),
            )
        } else {
            ApiError::unavailable("reading an artifact failed", e)
        }
    })?;
    let served = download.range.clone();
    let mut response = Response::new(Body::from_stream(download.body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(served.end - served.start),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if range.is_some() {
        let v = format!(
            "bytes {}-{}/{}",
            served.start,
            served.end.saturating_sub(1),
            download.size
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response.into_response())
}

/// The single byte range asked for, as `start..end` (end exclusive). Several ranges, or a header that is not a
/// byte range, are ignored (the whole file is served, as HTTP allows); a range outside the file is refused.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>, ApiError> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || {
        ApiError::new(
            ErrorCode::RangeNotSatisfiable,
            format!("range `{spec}` is outside the file's {size} bytes"),
        )
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let range = match (first.parse::<u64>().ok(), last.parse::<u64>().ok()) {
        (Some(start), Some(end)) if start <= end => start..end.saturating_add(1).min(size),
        (Some(start), None) if last.is_empty() => start..size,
        // A zero-length suffix selects nothing: unsatisfiable (RFC 9110 14.1.2).
        (None, Some(0)) if first.is_empty() => return Err(unsatisfiable()),
        (None, Some(suffix)) if first.is_empty() => size.saturating_sub(suffix)..size,
        _ => return Ok(None),
    };
    if range.start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

/// `attachment` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / 5987).
fn content_disposition(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let ascii: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in base.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<Range<u64>>, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested_range(&h, size)
    }

    #[test]
    fn byte_ranges_are_parsed_and_clamped() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(range("bytes=90-200", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=95-", 100).unwrap(), Some(95..100));
        assert_eq!(range("bytes=-5", 100).unwrap(), Some(95..100));
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(range("items=0-1", 100).unwrap(), None);
        assert_eq!(
            range("bytes=100-", 100).unwrap_err().code,
            ErrorCode::RangeNotSatisfiable
        );
        // The largest last byte a client can write, and an empty suffix.
        assert_eq!(
            range("bytes=0-18446744073709551615", 100).unwrap(),
            Some(0..100)
        );
        assert_eq!(
            range("bytes=-0", 100).unwrap_err().code,
            ErrorCode::RangeNotSatisfiable
        );
    }

    #[test]
    fn disposition_keeps_unicode_names_exactly() {
        assert_eq!(
            content_disposition("out/résumé final.pdf"),
            "attachment; filename=\"r_sum_ final.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf"
        );
    }
}
