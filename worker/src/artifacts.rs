//! Collecting what a job produced: every regular file in its workspace (which starts empty, so everything there
//! was created or modified by the job) is stored under `<prefix>/<job_id>/<relative name>`, within the size and
//! count caps; symbolic links are never followed. Full logs go beside them when the record's copies are not the
//! exact output. Nothing is reported stored unless its upload succeeded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use async_nats::jetstream::kv;
use fleet_shared::artifacts::targets::Stores;
use fleet_shared::artifacts::{content_type, ArtifactStore, StoreError, LOGS_DIR};
use fleet_shared::config::ArtifactsConfig;
use fleet_shared::wire::{FileEntry, InputFile, SkippedFile};
use fleet_shared::JobRecord;

use crate::dirs::JobDirs;
use crate::supervisor::RunOutcome;

/// Upload attempts per file before the job is failed with `artifact_upload_failed`.
const UPLOAD_ATTEMPTS: u32 = 3;
/// Files of one job uploaded at once.
const UPLOADS_IN_FLIGHT: usize = 8;

#[derive(Debug, Default)]
pub struct Collected {
    pub files: Vec<FileEntry>,
    pub skipped: Vec<SkippedFile>,
    pub logs: Vec<FileEntry>,
}

/// A file found in the workspace.
struct Found {
    name: String,
    path: PathBuf,
    size: u64,
}

/// Size and modification time of each input file as written, to tell inputs the job left alone (not
/// artifacts) from files it created or changed.
#[derive(Debug, Default)]
pub struct Inputs(HashMap<String, (u64, Option<SystemTime>)>);

impl Inputs {
    fn unchanged(&self, name: &str, path: &Path) -> bool {
        let Some(written) = self.0.get(name) else {
            return false;
        };
        std::fs::metadata(path).is_ok_and(|m| (m.len(), m.modified().ok()) == *written)
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
    let target = crate::records::current(records, &id.to_string())
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
    if record.request.return_files {
        let workspace = dirs.workspace.clone();
        let (found, unreadable) = tokio::task::spawn_blocking(move || walk(&workspace))
            .await
            .unwrap_or_default();
        collected.skipped = unreadable;
        let mut total = 0u64;
        let mut accepted = Vec::new();
        for f in found
            .into_iter()
            .filter(|f| !inputs.unchanged(&f.name, &f.path))
        {
            let reason = if f.size > limits.max_file_bytes {
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
            if let Some(reason) = reason {
                collected.skipped.push(SkippedFile {
                    name: f.name,
                    size: f.size,
                    reason,
                });
                continue;
            }
            total += f.size;
            accepted.push(f);
        }
        // Several uploads at a time: a job's many small files would otherwise pay one store round trip each,
        // back to back. `buffered` keeps the record's files in name order.
        let uploads: Vec<_> = accepted
            .iter()
            .map(|f| store_one(store, record, &f.name, &f.path))
            .collect();
        collected.files = futures::stream::iter(uploads)
            .buffered(UPLOADS_IN_FLIGHT)
            .try_collect()
            .await?;
    }
    for (captured, path, name) in [
        (&outcome.stdout, &dirs.stdout_log, "stdout.log"),
        (&outcome.stderr, &dirs.stderr_log, "stderr.log"),
    ] {
        if captured.logged && path.exists() {
            let name = format!("{LOGS_DIR}/{name}");
            collected
                .logs
                .push(store_one(store, record, &name, path).await?);
        }
    }
    Ok(collected)
}

async fn store_one(
    store: &ArtifactStore,
    record: &JobRecord,
    name: &str,
    path: &Path,
) -> Result<FileEntry, StoreError> {
    let key = store.key(&record.id, name);
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match store.upload_file(&key, path).await {
            Ok(up) => {
                return Ok(FileEntry {
                    name: name.to_string(),
                    size: up.size,
                    sha256: up.sha256,
                    content_type: content_type(name),
                    location: up.location,
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
/// names that are not UTF-8).
fn walk(root: &Path) -> (Vec<Found>, Vec<SkippedFile>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let raw_name = entry.file_name();
            let Some(part) = raw_name.to_str() else {
                let name = format!("{prefix}{}", raw_name.to_string_lossy());
                skipped.push(SkippedFile {
                    name,
                    size: 0,
                    reason: "file name is not UTF-8".into(),
                });
                continue;
            };
            let name = format!("{prefix}{part}");
            // symlink_metadata: a link is reported as a link, never followed out of the workspace.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                pending.push((entry.path(), format!("{name}/")));
            } else if kind.is_file() {
                found.push(Found {
                    name,
                    path: entry.path(),
                    size: meta.len(),
                });
            } else {
                let reason = if kind.is_symlink() {
                    "symbolic link (not followed)"
                } else {
                    "not a regular file"
                };
                skipped.push(SkippedFile {
                    name,
                    size: 0,
                    reason: reason.into(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    (found, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_nested_files_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("out/deep")).unwrap();
        std::fs::write(root.join("a b.txt"), b"1").unwrap();
        std::fs::write(root.join("out/deep/ü.csv"), b"22").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        let (found, skipped) = walk(root);
        let names: Vec<_> = found.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(names, [("a b.txt", 1), ("out/deep/ü.csv", 2)]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].name, "escape");
    }
}
