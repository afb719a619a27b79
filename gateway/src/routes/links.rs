//! `POST /v1/jobs/{id}/links`: a download link for one of a job's files, or for all of them as a tar archive, that
//! works without credentials for a minute (see `auth::links`). Browsers need it to stream a large file to disk:
//! a plain link cannot carry an `Authorization` header, and a script's download holds the whole file in memory.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{links, Caller};
use crate::http::error::{ApiError, Json, Path, Problem};
use crate::jobs::records;
use crate::routes::artifacts::listed_entry;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// A file the job stored, by its listed name (e.g. `out/report.pdf`); absent: all its files as one tar archive.
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadLink {
    /// Path and query on this gateway (any gateway of the fleet answers it): GET it, with no credentials, until
    /// `expires_at`.
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// A download link for one file of a job, or for all of them as a tar archive, valid for 60 seconds.
#[utoipa::path(post, path = "/v1/jobs/{id}/links", tag = "jobs", params(("id" = Uuid, Path)),
    request_body = LinkRequest,
    responses((status = 200, body = DownloadLink), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(request): Json<LinkRequest>,
) -> Result<Json<DownloadLink>, ApiError> {
    let path = match &request.file {
        Some(name) => {
            listed_entry(&state, &caller, id, name).await?;
            format!("/v1/jobs/{id}/artifacts/{}", encode_path(name))
        }
        None => {
            records::get_for_files(&state, &caller, &id).await?;
            format!("/v1/jobs/{id}/artifacts.tar")
        }
    };
    let expires_at = Utc::now() + chrono::Duration::seconds(links::LINK_SECS);
    let principal = caller.owner().unwrap_or_default();
    let ticket = links::mint(&state.sealer, &principal, &path, expires_at.timestamp());
    Ok(Json(DownloadLink {
        url: format!("{path}?ticket={ticket}"),
        expires_at,
    }))
}

/// `name` as a URL path: each byte but the unreserved ones and `/` percent-encoded, so no client re-encodes it
/// and the path it sends is the path the ticket was made for.
fn encode_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn names_are_encoded_so_no_client_changes_them() {
        assert_eq!(encode_path("out/report.pdf"), "out/report.pdf");
        assert_eq!(encode_path("a b/ü?#%.txt"), "a%20b/%C3%BC%3F%23%25.txt");
    }
}
