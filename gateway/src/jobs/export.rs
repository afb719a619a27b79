//! `GET /v1/export`: a session (with its turns' jobs and its workspace), a conversation (with its participants'
//! sessions), or the caller's jobs since a time, as one tar archive another fleet imports (`import.rs`). The
//! archive is spooled to an unlinked temporary file and streamed from there.
//!
//! Layout: `fleet-export.json` (what it holds), `sessions/<id>.json`, `sessions/<id>/turns/<n>.json`,
//! `sessions/<id>/workspace/<state or pack>`, `conversations/<id>.json`, `jobs/<id>.json`,
//! `jobs/<id>/files/<name>` (its files and full logs).

use std::collections::BTreeSet;
use std::io::SeekFrom;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fleet_shared::artifacts::{ArtifactStore, StoreError};
use fleet_shared::session::SessionRecord;
use fleet_shared::session_workspace::WorkspaceManifest;
use fleet_shared::JobRecord;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::sessions::store_error;
use crate::jobs::tar::{file_header, padding};
use crate::jobs::{conversations, listing, records, sessions};
use crate::state::AppState;

/// The archive's table of contents.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Contents {
    /// The export format's version.
    pub version: u32,
    pub exported_at: Option<DateTime<Utc>>,
    pub sessions: Vec<Uuid>,
    pub conversations: Vec<Uuid>,
    pub jobs: Vec<Uuid>,
}

pub const CONTENTS: &str = "fleet-export.json";
pub const VERSION: u32 = 1;

/// What to export.
pub enum Selection {
    Session(Uuid),
    Conversation(Uuid),
    /// The caller's jobs submitted since then.
    JobsSince(DateTime<Utc>),
}

/// Jobs of one export at most (a larger history goes in several, by time).
const MOST_JOBS: usize = 10_000;

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("writing the export failed", e)
}

/// A tar archive being written to an unlinked temporary file.
pub struct Archive {
    file: tokio::fs::File,
    contents: Contents,
    jobs: BTreeSet<Uuid>,
}

impl Archive {
    async fn new() -> Result<Self, ApiError> {
        // Unlinked from the start: it lives as long as the response reading it.
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(failed)?
            .map_err(failed)?;
        Ok(Self {
            file: tokio::fs::File::from_std(file),
            contents: Contents {
                version: VERSION,
                exported_at: Some(Utc::now()),
                ..Contents::default()
            },
            jobs: BTreeSet::new(),
        })
    }

    async fn add_json(&mut self, name: &str, value: &impl Serialize) -> Result<(), ApiError> {
        let data = serde_json::to_vec_pretty(value).map_err(failed)?;
        self.add_bytes(name, &data).await
    }

    async fn add_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), ApiError> {
        let mtime = Utc::now().timestamp().max(0) as u64;
        self.file
            .write_all(&file_header(name, data.len() as u64, mtime))
            .await
            .map_err(failed)?;
        self.file.write_all(data).await.map_err(failed)?;
        self.pad(data.len() as u64).await
    }

    /// The object at `key` of `store`, under `name`.
    async fn add_object(
        &mut self,
        name: &str,
        store: &ArtifactStore,
        key: &fleet_shared::artifacts::StoreKey,
    ) -> Result<(), ApiError> {
        let download = store.download(key, None).await.map_err(failed)?;
        let mtime = Utc::now().timestamp().max(0) as u64;
        self.file
            .write_all(&file_header(name, download.size, mtime))
            .await
            .map_err(failed)?;
        let mut written = 0u64;
        let mut body = download.body;
        while let Some(chunk) = body.next().await {
            let chunk: Bytes = chunk.map_err(failed)?;
            written += chunk.len() as u64;
            self.file.write_all(&chunk).await.map_err(failed)?;
        }
        if written != download.size {
            return Err(failed(format!("{key} changed while it was read")));
        }
        self.pad(written).await
    }

    async fn pad(&mut self, size: u64) -> Result<(), ApiError> {
        let zeros = vec![0u8; padding(size)];
        self.file.write_all(&zeros).await.map_err(failed)
    }

    /// The archive, read from its start, and its length.
    async fn finish(mut self) -> Result<(tokio::fs::File, u64), ApiError> {
        let contents = std::mem::take(&mut self.contents);
        self.add_json(CONTENTS, &contents).await?;
        self.file.write_all(&[0u8; 1024]).await.map_err(failed)?;
        self.file.flush().await.map_err(failed)?;
        let length = self.file.stream_position().await.map_err(failed)?;
        self.file.seek(SeekFrom::Start(0)).await.map_err(failed)?;
        Ok((self.file, length))
    }
}

/// Writes what `selection` names, which the caller may read; the archive and its length.
pub async fn export(
    state: &AppState,
    caller: &Caller,
    selection: Selection,
) -> Result<(tokio::fs::File, u64), ApiError> {
    let mut archive = Archive::new().await?;
    match selection {
        Selection::Session(id) => {
            let session = sessions::get_or_404(state, caller, &id).await?;
            add_session(state, &mut archive, &session).await?;
        }
        Selection::Conversation(id) => {
            let conversation = conversations::get_or_404(state, caller, &id).await?;
            for p in &conversation.participants {
                let session = sessions::get_or_404(state, caller, &p.session_id).await?;
                add_session(state, &mut archive, &session).await?;
            }
            let name = format!("conversations/{id}.json");
            archive.add_json(&name, &conversation).await?;
            archive.contents.conversations.push(id);
        }
        Selection::JobsSince(since) => {
            for record in jobs_since(state, caller, since).await? {
                add_job(state, &mut archive, &record).await?;
            }
        }
    }
    archive.finish().await
}

async fn add_session(
    state: &AppState,
    archive: &mut Archive,
    session: &SessionRecord,
) -> Result<(), ApiError> {
    let id = session.session_id;
    archive
        .add_json(&format!("sessions/{id}.json"), session)
        .await?;
    let turns = state
        .sessions
        .turns(&id, 1, session.turn_count)
        .await
        .map_err(store_error)?;
    for turn in &turns {
        let name = format!("sessions/{id}/turns/{}.json", turn.turn);
        archive.add_json(&name, turn).await?;
        if let Some(record) = records::get(state, &turn.job_id).await? {
            add_job(state, archive, &record).await?;
        }
    }
    if let Some(workspace) = &session.workspace {
        let store = &state.session_files;
        let manifest = download_json::<WorkspaceManifest>(store, &id, &workspace.manifest).await?;
        for key in manifest.keys(&workspace.manifest) {
            let name = format!("sessions/{id}/workspace/{key}");
            archive
                .add_object(&name, store, &store.key(&id, &key))
                .await?;
        }
    }
    archive.contents.sessions.push(id);
    Ok(())
}

async fn download_json<T: serde::de::DeserializeOwned>(
    store: &ArtifactStore,
    id: &Uuid,
    name: &str,
) -> Result<T, ApiError> {
    let download = store
        .download(&store.key(id, name), None)
        .await
        .map_err(failed)?;
    let chunks: Vec<Result<Bytes, StoreError>> = download.body.collect().await;
    let mut data = Vec::new();
    for chunk in chunks {
        data.extend_from_slice(&chunk.map_err(failed)?);
    }
    serde_json::from_slice(&data).map_err(failed)
}

/// A job's record and every file it stored (the full logs too), once per archive.
async fn add_job(
    state: &AppState,
    archive: &mut Archive,
    record: &JobRecord,
) -> Result<(), ApiError> {
    if !archive.jobs.insert(record.id) {
        return Ok(());
    }
    archive
        .add_json(&format!("jobs/{}.json", record.id), record)
        .await?;
    let stored: Vec<_> = record.files.iter().chain(&record.logs).collect();
    if !stored.is_empty() {
        let store = state
            .stores
            .resolve(record.artifact_store.as_deref())
            .await
            .map_err(failed)?;
        for file in stored {
            let name = format!("jobs/{}/files/{}", record.id, file.name);
            archive
                .add_object(&name, &store, &store.key(&record.id, &file.name))
                .await?;
        }
    }
    archive.contents.jobs.push(record.id);
    Ok(())
}

/// The caller's jobs submitted since `since`, oldest first.
async fn jobs_since(
    state: &AppState,
    caller: &Caller,
    since: DateTime<Utc>,
) -> Result<Vec<JobRecord>, ApiError> {
    let mut filters = listing::Filters::default();
    filters.query.submitted_after = Some(since);
    filters.query.oldest_first = true;
    filters.query.limit = 500;
    let mut jobs = Vec::new();
    loop {
        let page = listing::list(state, caller, &filters).await?;
        jobs.extend(page.jobs.into_iter().filter(|r| r.status.is_terminal()));
        match page.next {
            Some(next) if jobs.len() < MOST_JOBS => filters.query.after = Some(next.0),
            Some(_) => {
                return Err(ApiError::new(
                    fleet_shared::ErrorCode::InvalidRequest,
                    format!("more than {MOST_JOBS} jobs since then: export a shorter time at once"),
                ))
            }
            None => return Ok(jobs),
        }
    }
}
