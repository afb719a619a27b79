//! `POST /v1/import`: an archive of `export.rs` brought into this fleet. Everything is created only where
//! nothing of that id exists yet, so importing twice changes nothing; the importing caller owns what it
//! imports. A session's turns and workspace, and a job's files, come in only with a session or job this import
//! created: nobody can add to an existing one. Records of jobs that had not ended are left out.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use fleet_shared::conversation::ConversationRecord;
use fleet_shared::session::{SessionRecord, Turn};
use fleet_shared::{ErrorCode, JobRecord};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::ApiError;
use crate::jobs::export::{Contents, CONTENTS, VERSION};
use crate::jobs::sessions::store_error;
use crate::state::AppState;

/// What an import created, and what it found already there.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub sessions: u64,
    pub turns: u64,
    pub conversations: u64,
    pub jobs: u64,
    /// Job files and workspace objects stored.
    pub files: u64,
    /// Sessions, conversations and jobs that this fleet already had (left as they were, with their parts).
    pub already_there: u64,
    /// Records left out, with why.
    pub left_out: Vec<String>,
}

/// One entry of the archive: a small JSON document kept in memory, or a file unpacked to disk.
enum Entry {
    Json(Vec<u8>),
    File(PathBuf),
}

/// The most a JSON document of the archive may hold.
const MOST_JSON: u64 = 64 << 20;

fn bad(why: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, why)
}

/// A directory of unpacked files, removed however the import ends.
struct Unpacked(PathBuf);

impl Drop for Unpacked {
    fn drop(&mut self) {
        let dir = self.0.clone();
        // Best effort: temporary files the system cleans anyway.
        std::thread::spawn(move || std::fs::remove_dir_all(dir));
    }
}

/// Reads the archive spooled in `archive`.
fn unpack(archive: std::fs::File, dir: &Path) -> std::io::Result<Vec<(String, Entry)>> {
    std::fs::create_dir_all(dir)?;
    let mut tar = tar::Archive::new(archive);
    let mut entries = Vec::new();
    for (n, entry) in tar.entries()?.enumerate() {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let is_file = name.contains("/files/") || name.contains("/workspace/");
        if is_file {
            let path = dir.join(n.to_string());
            std::io::copy(&mut entry, &mut std::fs::File::create(&path)?)?;
            entries.push((name, Entry::File(path)));
        } else if entry.size() <= MOST_JSON {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data)?;
            entries.push((name, Entry::Json(data)));
        }
    }
    Ok(entries)
}

fn json<T: serde::de::DeserializeOwned>(name: &str, entry: &Entry) -> Result<T, ApiError> {
    match entry {
        Entry::Json(data) => {
            serde_json::from_slice(data).map_err(|e| bad(format!("{name} is not readable: {e}")))
        }
        Entry::File(_) => Err(bad(format!("{name} is not a document"))),
    }
}

/// Imports the archive spooled in `archive`.
pub async fn import(
    state: &AppState,
    caller: &Caller,
    archive: std::fs::File,
) -> Result<ImportReport, ApiError> {
    let unpacked = Unpacked(std::env::temp_dir().join(format!("fleet-import-{}", Uuid::now_v7())));
    let dir = unpacked.0.clone();
    let entries = tokio::task::spawn_blocking(move || unpack(archive, &dir))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
    let contents = entries
        .iter()
        .find(|(name, _)| name == CONTENTS)
        .ok_or_else(|| bad(format!("no {CONTENTS}: not an archive of `fleet export`")))?;
    let contents: Contents = json(CONTENTS, &contents.1)?;
    if contents.version != VERSION {
        return Err(bad(format!(
            "export format {} is not {VERSION}",
            contents.version
        )));
    }
    let mut importing = Importing {
        state,
        caller,
        report: ImportReport::default(),
        new_sessions: HashSet::new(),
        new_jobs: HashSet::new(),
    };
    // Owners first, then their parts: sessions and jobs decide what their turns, workspaces and files join.
    for pass in [Pass::Owners, Pass::Parts] {
        for (name, entry) in &entries {
            importing.entry(pass, name, entry).await?;
        }
    }
    drop(unpacked);
    Ok(importing.report)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Owners,
    Parts,
}

struct Importing<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    report: ImportReport,
    new_sessions: HashSet<Uuid>,
    new_jobs: HashSet<Uuid>,
}

impl Importing<'_> {
    async fn entry(&mut self, pass: Pass, name: &str, entry: &Entry) -> Result<(), ApiError> {
        let parts: Vec<&str> = name.split('/').collect();
        match (pass, parts.as_slice()) {
            (Pass::Owners, ["sessions", file]) => {
                self.session(name, json(name, entry)?, file).await
            }
            (Pass::Owners, ["conversations", _]) => self.conversation(json(name, entry)?).await,
            (Pass::Owners, ["jobs", _]) => self.job(json(name, entry)?).await,
            (Pass::Parts, ["sessions", id, "turns", _]) => {
                let turn: Turn = json(name, entry)?;
                self.turn(parse_id(id)?, &turn).await
            }
            (Pass::Parts, ["sessions", id, "workspace", key @ ..]) => {
                self.workspace_object(parse_id(id)?, &key.join("/"), entry)
                    .await
            }
            (Pass::Parts, ["jobs", id, "files", file @ ..]) => {
                self.job_file(parse_id(id)?, &file.join("/"), entry).await
            }
            _ => Ok(()),
        }
    }

    async fn session(
        &mut self,
        name: &str,
        mut session: SessionRecord,
        file: &str,
    ) -> Result<(), ApiError> {
        if file != format!("{}.json", session.session_id) {
            return Err(bad(format!("{name} holds session {}", session.session_id)));
        }
        self.caller.may_run(&session.agent)?;
        session.owner = self.caller.owner();
        session.owner_name = self.caller.principal().map(|p| p.name.clone());
        let id = session.session_id;
        if self
            .state
            .sessions
            .session(&id)
            .await
            .map_err(store_error)?
            .is_some()
        {
            self.report.already_there += 1;
            return Ok(());
        }
        self.state
            .sessions
            .create(&session)
            .await
            .map_err(store_error)?;
        self.new_sessions.insert(id);
        self.report.sessions += 1;
        Ok(())
    }

    async fn turn(&mut self, session: Uuid, turn: &Turn) -> Result<(), ApiError> {
        if !self.new_sessions.contains(&session) {
            return Ok(());
        }
        if self
            .state
            .sessions
            .create_turn(&session, turn)
            .await
            .map_err(store_error)?
        {
            self.report.turns += 1;
        }
        Ok(())
    }

    async fn conversation(&mut self, mut conversation: ConversationRecord) -> Result<(), ApiError> {
        for p in &conversation.participants {
            self.caller.may_run(&p.agent)?;
        }
        conversation.owner = self.caller.owner();
        conversation.owner_name = self.caller.principal().map(|p| p.name.clone());
        let id = conversation.conversation_id;
        if self
            .state
            .sessions
            .conversation(&id)
            .await
            .map_err(store_error)?
            .is_some()
        {
            self.report.already_there += 1;
            return Ok(());
        }
        match self.state.sessions.create_conversation(&conversation).await {
            Ok(()) => self.report.conversations += 1,
            // Created meanwhile by another import of the same archive.
            Err(_) => self.report.already_there += 1,
        }
        Ok(())
    }

    async fn job(&mut self, mut record: JobRecord) -> Result<(), ApiError> {
        self.caller.may_run(&record.request.agent)?;
        if !record.status.is_terminal() {
            let why = format!(
                "job {}: it had not ended ({})",
                record.id,
                record.status.as_str()
            );
            self.report.left_out.push(why);
            return Ok(());
        }
        record.request.owner = self.caller.owner();
        record.request.owner_name = self.caller.principal().map(|p| p.name.clone());
        // Its files are stored in this fleet's default store.
        record.artifact_store = None;
        let key = self.state.topology.record_key(&record.id);
        let id = record.id;
        let record = fleet_shared::record_store::Encoded::new(record);
        let created = fleet_shared::record_store::create_only(&self.state.records, &key, &record)
            .await
            .map_err(|e| ApiError::unavailable("storing an imported record failed", e))?;
        if created {
            self.new_jobs.insert(id);
            self.report.jobs += 1;
        } else {
            self.report.already_there += 1;
        }
        Ok(())
    }

    async fn workspace_object(
        &mut self,
        session: Uuid,
        key: &str,
        entry: &Entry,
    ) -> Result<(), ApiError> {
        if !self.new_sessions.contains(&session) {
            return Ok(());
        }
        let well_formed = ["state/", "packs/"].iter().any(|dir| {
            key.strip_prefix(dir).is_some_and(|rest| {
                rest.split_once('.').is_some_and(|(id, ext)| {
                    id.parse::<Uuid>().is_ok() && matches!(ext, "json" | "tar")
                })
            })
        });
        if !well_formed {
            return Err(bad(format!("`{key}` is not a workspace state or pack")));
        }
        let store = &self.state.session_files;
        self.store(store, &store.key(&session, key), entry).await
    }

    async fn job_file(&mut self, job: Uuid, name: &str, entry: &Entry) -> Result<(), ApiError> {
        if !self.new_jobs.contains(&job) {
            return Ok(());
        }
        if !fleet_shared::artifacts::is_safe_name(name) {
            return Err(bad(format!("`{name}` is not a file name a job can have")));
        }
        let store = self.state.stores.default_store().clone();
        self.store(&store, &store.key(&job, name), entry).await
    }

    async fn store(
        &mut self,
        store: &fleet_shared::artifacts::ArtifactStore,
        key: &fleet_shared::artifacts::StoreKey,
        entry: &Entry,
    ) -> Result<(), ApiError> {
        let Entry::File(path) = entry else {
            return Ok(());
        };
        store
            .upload_file(key, path)
            .await
            .map_err(|e| ApiError::unavailable("storing an imported file failed", e))?;
        self.report.files += 1;
        Ok(())
    }
}

fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse()
        .map_err(|_| bad(format!("`{text}` in the archive is not an id")))
}
