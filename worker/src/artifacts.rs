//! Collecting what a job produced: every regular file in its workspace (which starts empty, so everything there
//! was created or modified by the job) is stored under `<prefix>/<job_id>/<relative name>`, within the size and
//! count caps; symbolic links are never followed. Full logs go beside them when the record's copies are not the
//! exact output. Nothing is reported stored unless its upload succeeded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use async_nats::jetstream::kv;
use fleet_shared::artifacts::targets::Stores;
use fleet_shared::artifacts::{
    content_type, stored_name_problem, ArtifactStore, Source, StoreError, LOGS_DIR,
};
use fleet_shared::config::ArtifactsConfig;
use fleet_shared::wire::{FileEntry, InputFile, Manifest, SkippedFile};
use fleet_shared::JobRecord;

use crate::beneath::{self, Dir};
use crate::dirs::JobDirs;
use crate::supervisor::RunOutcome;

/// Upload attempts per file before the job is failed with `artifact_upload_failed`.
const UPLOAD_ATTEMPTS: u32 = 3;
/// Files of one job uploaded at once.
const UPLOADS_IN_FLIGHT: usize = 8;

/// Entries of `skipped_files` a record lists at most; the manifest lists them all.
const SKIPPED_LISTED: usize = 100;
/// Past this many files and skipped entries in all, a manifest listing them is stored beside the logs, so a
/// record trimmed to fit NATS's message size still points at everything.
const MANIFEST_OVER: usize = 200;

#[derive(Debug, Default)]
pub struct Collected {
    pub files: Vec<FileEntry>,
    pub skipped: Vec<SkippedFile>,
    /// Skipped entries left out of `skipped` (listed in the manifest).
    pub skipped_omitted: u64,
    pub logs: Vec<FileEntry>,
}

/// A file found in the workspace.
struct Found {
    name: String,
    size: u64,
    modified: Option<SystemTime>,
}

/// Size and modification time of each input file as written, to tell inputs the job left alone (not
/// artifacts) from files it created or changed.
#[derive(Debug, Default)]
pub struct Inputs(HashMap<String, (u64, Option<SystemTime>)>);

impl Inputs {
    /// Counts a file the fleet put in the workspace (a session's restored file) as an input: stored as an
    /// artifact only if the job changes it.
    /// An input of the same name, written over it, stays as written.
    pub fn insert(&mut self, name: &str, meta: &std::fs::Metadata) {
        self.0
            .entry(name.to_string())
            .or_insert((meta.len(), meta.modified().ok()));
    }

    fn unchanged(&self, f: &Found) -> bool {
        self.0.get(&f.name) == Some(&(f.size, f.modified))
    }
}

/// Writes the job's input files into its workspace; files given by reference are read from the store that holds
/// the referenced job's files. The error says which input and why.
pub async fn write_inputs(
    stores: &Stores,
    records: &kv::Store,
    inputs: &[InputFile],
    workspace: &Path,
) -> Result<Inputs, String> {
    let mut written = Inputs::default();
    for input in inputs {
        let path = workspace.join(&input.name);
        let fail = |why: String| format!("input file `{}`: {why}", input.name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        match (input.inline_bytes(), &input.from) {
            (Some(Ok(data)), _) => tokio::fs::write(&path, data)
                .await
                .map_err(|e| fail(e.to_string()))?,
            (Some(Err(e)), _) => return Err(fail(format!("data_base64 is not valid base64: {e}"))),
            (None, Some(from)) => {
                let store = holder_of(stores, records, &from.job_id)
                    .await
                    .map_err(fail)?;
                let key = store.key(&from.job_id, &from.name);
                let download = store.download(&key, None).await.map_err(|e| {
                    fail(if e.is_not_found() {
                        format!("job {} stored no file named `{}`", from.job_id, from.name)
                    } else {
                        e.to_string()
                    })
                })?;
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let mut body = download.body;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| fail(e.to_string()))?;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                file.flush().await.map_err(|e| fail(e.to_string()))?;
            }
            (None, None) => return Err(fail("no content".into())),
        }
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        written
            .0
            .insert(input.name.clone(), (meta.len(), meta.modified().ok()));
    }
    Ok(written)
}

/// The store holding job `id`'s files: its record's target, or the default (where the gateway puts files
/// uploaded with a job, before the job has stored anything).
async fn holder_of(
    stores: &Stores,
    records: &kv::Store,
    id: &Uuid,
) -> Result<ArtifactStore, String> {
    let target = fleet_shared::record_store::current(records, &id.to_string())
        .await
        .map_err(|e| e.to_string())?
        .and_then(|held| held.record.artifact_store);
    stores
        .resolve(target.as_deref())
        .await
        .map_err(|e| e.to_string())
}

pub async fn collect(
    store: &ArtifactStore,
    limits: &ArtifactsConfig,
    record: &JobRecord,
    dirs: &JobDirs,
    inputs: &Inputs,
    outcome: &RunOutcome,
) -> Result<Collected, StoreError> {
    let mut collected = Collected::default();
    // An untouched workspace is known empty: nothing to read.
    if record.request.return_files && !dirs.workspace_untouched() {
        let path = dirs.workspace.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let workspace = Dir::open(&path)?;
            let (found, skipped) = walk(&workspace);
            Ok::<_, std::io::Error>((Arc::new(workspace), found, skipped))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let (workspace, found, unreadable) = walked.map_err(|e| StoreError::Read {
            store: store.name().to_string(),
            path: dirs.workspace.display().to_string(),
            source: e,
        })?;
        collected.skipped = unreadable;
        let accepted = within_caps(limits, found, inputs, &mut collected.skipped);
        // Several uploads at a time: a job's many small files would otherwise pay one store round trip each,
        // back to back. `buffered` keeps the record's files in name order.
        let uploads: Vec<_> = accepted
            .iter()
            .map(|f| store_found(store, record, &workspace, f))
            .collect();
        let results: Vec<_> = futures::stream::iter(uploads)
            .buffered(UPLOADS_IN_FLIGHT)
            .collect()
            .await;
        for result in results {
            match result? {
                Stored::File(entry) => collected.files.push(entry),
                Stored::Gone(skipped) => collected.skipped.push(skipped),
            }
        }
    }
    for (captured, name) in [
        (&outcome.stdout, "stdout.log"),
        (&outcome.stderr, "stderr.log"),
    ] {
        let (true, Some(log)) = (captured.logged, &captured.log) else {
            continue;
        };
        let name = format!("{LOGS_DIR}/{name}");
        let source = log
            .try_clone()
            .and_then(|f| Ok((f.metadata()?.len(), f)))
            .map(|(size, f)| Source::new(f, size, name.clone()))
            .map_err(|e| StoreError::Read {
                store: store.name().to_string(),
                path: name.clone(),
                source: e,
            })?;
        let mut entry = store_one(store, record, &name, &source).await?;
        entry.truncated = captured.log_truncated;
        collected.logs.push(entry);
    }
    if collected.files.len() + collected.skipped.len() > MANIFEST_OVER {
        let manifest = store_manifest(store, record, dirs, &collected).await?;
        collected.logs.push(manifest);
    }
    if collected.skipped.len() > SKIPPED_LISTED {
        collected.skipped_omitted = (collected.skipped.len() - SKIPPED_LISTED) as u64;
        collected.skipped.truncate(SKIPPED_LISTED);
    }
    Ok(collected)
}

/// `_logs/manifest.json`: every stored and every skipped file, written where only the worker writes.
async fn store_manifest(
    store: &ArtifactStore,
    record: &JobRecord,
    dirs: &JobDirs,
    collected: &Collected,
) -> Result<FileEntry, StoreError> {
    let name = format!("{LOGS_DIR}/manifest.json");
    let body = serde_json::to_vec(&Manifest {
        files: collected.files.as_slice().into(),
        skipped_files: collected.skipped.as_slice().into(),
    })
    .map_err(|e| StoreError::Read {
        store: store.name().to_string(),
        path: name.clone(),
        source: e.into(),
    })?;
    let path = dirs.root.join("manifest.json");
    let label = name.clone();
    let written = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = crate::output::create_log(&path)?;
        file.write_all(&body)?;
        file.flush()?;
        let size = file.metadata()?.len();
        Ok::<_, std::io::Error>(Source::new(file, size, label))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let source = written.map_err(|e| StoreError::Read {
        store: store.name().to_string(),
        path: name.clone(),
        source: e,
    })?;
    store_one(store, record, &name, &source).await
}

/// The files within the size and count caps, in name order; the others go to `skipped` with the reason.
fn within_caps(
    limits: &ArtifactsConfig,
    found: Vec<Found>,
    inputs: &Inputs,
    skipped: &mut Vec<SkippedFile>,
) -> Vec<Found> {
    let mut total = 0u64;
    let mut accepted = Vec::new();
    for f in found.into_iter().filter(|f| !inputs.unchanged(f)) {
        let reason = if let Some(why) = stored_name_problem(&f.name) {
            Some(format!("name too long to store: {why}"))
        } else if f.size > limits.max_file_bytes {
            Some(format!(
                "larger than the per-file limit of {} bytes",
                limits.max_file_bytes
            ))
        } else if accepted.len() >= limits.max_files {
            Some(format!(
                "over the limit of {} files per job",
                limits.max_files
            ))
        } else if total + f.size > limits.max_job_bytes {
            Some(format!(
                "over the per-job limit of {} bytes",
                limits.max_job_bytes
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(SkippedFile {
                name: f.name,
                size: f.size,
                reason,
            }),
            None => {
                total += f.size;
                accepted.push(f);
            }
        }
    }
    accepted
}

enum Stored {
    File(FileEntry),
    /// The file was no longer a regular file in the workspace when it was opened for storing.
    Gone(SkippedFile),
}

/// Opens a found file again beneath the workspace (nothing followed) and stores at most the size the caps saw.
async fn store_found(
    store: &ArtifactStore,
    record: &JobRecord,
    workspace: &Arc<Dir>,
    found: &Found,
) -> Result<Stored, StoreError> {
    let (dir, name, cap) = (workspace.clone(), found.name.clone(), found.size);
    let opened = tokio::task::spawn_blocking(move || beneath::open_file(&dir, &name))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let source = match opened {
        Ok((file, size)) => Source::new(file, size.min(cap), found.name.clone()),
        Err(e) => {
            return Ok(Stored::Gone(SkippedFile {
                name: found.name.clone(),
                size: found.size,
                reason: format!("changed while being stored ({e})"),
            }))
        }
    };
    store_one(store, record, &found.name, &source)
        .await
        .map(Stored::File)
}

async fn store_one(
    store: &ArtifactStore,
    record: &JobRecord,
    name: &str,
    source: &Source,
) -> Result<FileEntry, StoreError> {
    let key = store.key(&record.id, name);
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match store.upload(&key, source).await {
            Ok(up) => {
                return Ok(FileEntry {
                    name: name.to_string(),
                    size: up.size,
                    sha256: up.sha256,
                    content_type: content_type(name),
                    location: up.location,
                    truncated: false,
                })
            }
            Err(e) if attempt < UPLOAD_ATTEMPTS => {
                tracing::warn!(error = %e, name, attempt, "artifact upload failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Regular files under `root`, by relative name, sorted; and what could not be taken (links, special files,
/// names that are not UTF-8, the names the fleet keeps for itself). Nothing is followed.
fn walk(root: &Dir) -> (Vec<Found>, Vec<SkippedFile>) {
    const RESERVED: &str = "reserved name: the fleet stores the job's logs under `_logs/`";
    let walked = crate::tree::walk(root, &[(LOGS_DIR, RESERVED)]);
    let found = walked
        .files
        .into_iter()
        .map(|(name, meta)| Found {
            name,
            size: meta.len(),
            modified: meta.modified().ok(),
        })
        .collect();
    let skipped = walked
        .skipped
        .into_iter()
        .map(|(name, reason)| SkippedFile {
            name,
            size: 0,
            reason: reason.into(),
        })
        .collect();
    (found, skipped)
}
