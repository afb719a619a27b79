//! Saving the workspace a turn left: walked without following anything, checked against the caps, and only
//! the files the turn wrote packed and uploaded (all of them when the state's packs hold mostly old versions),
//! then a manifest naming every file and where its bytes are.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_shared::artifacts::ArtifactStore;
use fleet_shared::session_workspace::{
    manifest_name, pack_name, repack_due, WorkspaceFile, WorkspaceManifest, WorkspaceRef,
};
use uuid::Uuid;

use super::{Baseline, FLEET_DIR};
use crate::beneath::{self, Dir};
use crate::tree;

/// How large a session's workspace may grow.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_bytes: u64,
    pub max_files: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{0}")]
    TooLarge(String),
    #[error("saving the session's workspace failed: {0}")]
    Store(String),
}

/// The workspace as it is now, walked.
struct Now {
    files: Vec<(String, std::fs::Metadata)>,
    dirs: Vec<String>,
}

/// Saves `workspace` as turn `turn` left it; `scratch` is a directory of the worker's own for the pack being
/// built. `None`: nothing was ever saved and the workspace is empty.
pub async fn save(
    store: &ArtifactStore,
    session: &Uuid,
    turn: u32,
    workspace: &Path,
    scratch: &Path,
    baseline: &Baseline,
    caps: Caps,
) -> Result<Option<WorkspaceRef>, SaveError> {
    let root = Arc::new(Dir::open(workspace).map_err(|e| SaveError::Store(e.to_string()))?);
    let walking = Arc::clone(&root);
    let walked = tokio::task::spawn_blocking(move || {
        let walked = tree::walk(&walking, &[(FLEET_DIR, "the fleet's own")]);
        Now {
            files: walked.files,
            dirs: walked.dirs,
        }
    })
    .await
    .map_err(|e| SaveError::Store(e.to_string()))?;
    check_caps(&walked, caps)?;
    let previous = baseline.restored.as_ref();
    let empty = WorkspaceManifest::default();
    let before = previous.map_or(&empty, |(_, m)| m);
    let mut next = carried_over(before, &walked, baseline);
    let changed: Vec<String> = changed_names(&walked, &next);
    if changed.is_empty() && same_listing(before, &walked) {
        return Ok(previous.map(|(state, _)| state.clone()));
    }
    let id = Uuid::now_v7();
    let pack = pack_name(&id);
    let mut to_pack = changed;
    if would_need_repack(before, &next, &walked) {
        next.clear();
        to_pack = walked.files.iter().map(|(n, _)| n.clone()).collect();
    }
    let packed = write_pack(&root, scratch, &to_pack)
        .await
        .map_err(|e| SaveError::Store(e.to_string()))?;
    let manifest = assemble(turn, &walked, next, &pack, &packed, before);
    upload(store, session, &pack, &packed.path).await?;
    let name = manifest_name(&id);
    let json = serde_json::to_vec(&manifest).map_err(|e| SaveError::Store(e.to_string()))?;
    let manifest_path = scratch.join("session-state.json");
    tokio::fs::write(&manifest_path, json)
        .await
        .map_err(|e| SaveError::Store(e.to_string()))?;
    upload(store, session, &name, &manifest_path).await?;
    Ok(Some(WorkspaceRef {
        turn,
        manifest: name,
        files: manifest.files.len() as u64,
        bytes: manifest.bytes(),
    }))
}

fn check_caps(now: &Now, caps: Caps) -> Result<(), SaveError> {
    let bytes: u64 = now.files.iter().map(|(_, m)| m.len()).sum();
    if bytes > caps.max_bytes || now.files.len() > caps.max_files {
        return Err(SaveError::TooLarge(format!(
            "the session's workspace holds {bytes} bytes in {} files, over its cap of {} bytes and {} files \
             (artifacts.session_workspace_max_bytes, _max_files); the session keeps its workspace from before this turn",
            now.files.len(),
            caps.max_bytes,
            caps.max_files
        )));
    }
    Ok(())
}

/// The earlier state's entries for files still there and unchanged, by name.
fn carried_over(
    before: &WorkspaceManifest,
    now: &Now,
    baseline: &Baseline,
) -> BTreeMap<String, WorkspaceFile> {
    let unchanged: HashSet<&str> = now
        .files
        .iter()
        .filter(|(name, meta)| baseline.unchanged(name, meta))
        .map(|(name, _)| name.as_str())
        .collect();
    before
        .files
        .iter()
        .filter(|f| unchanged.contains(f.name.as_str()))
        .map(|f| (f.name.clone(), f.clone()))
        .collect()
}

fn changed_names(now: &Now, carried: &BTreeMap<String, WorkspaceFile>) -> Vec<String> {
    now.files
        .iter()
        .filter(|(name, _)| !carried.contains_key(name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The same files (by name) and directories as before: with nothing changed, nothing is saved.
fn same_listing(before: &WorkspaceManifest, now: &Now) -> bool {
    before.dirs == now.dirs
        && before.files.len() == now.files.len()
        && before
            .files
            .iter()
            .zip(&now.files)
            .all(|(b, (n, _))| &b.name == n)
}

/// Whether the state that keeps the carried-over entries (and one new pack of the rest) would read from packs
/// holding mostly old versions, or from too many.
fn would_need_repack(
    before: &WorkspaceManifest,
    carried: &BTreeMap<String, WorkspaceFile>,
    now: &Now,
) -> bool {
    let read: HashSet<&str> = carried.values().map(|f| f.pack.as_str()).collect();
    let old_packs: u64 = read
        .iter()
        .map(|p| before.packs.get(*p).copied().unwrap_or(0))
        .sum();
    let live: u64 = now.files.iter().map(|(_, m)| m.len()).sum();
    let carried_bytes: u64 = carried.values().map(|f| f.size).sum();
    let new_pack = live.saturating_sub(carried_bytes);
    repack_due(read.len() + 1, old_packs + new_pack, live)
}

/// A pack as written: where, its size, and each file's size as packed.
struct Packed {
    path: PathBuf,
    size: u64,
    sizes: BTreeMap<String, (u64, bool)>,
}

async fn write_pack(root: &Arc<Dir>, scratch: &Path, names: &[String]) -> std::io::Result<Packed> {
    let root = Arc::clone(root);
    let path = scratch.join("session-pack.tar");
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&path)?;
        let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
        let mut sizes = BTreeMap::new();
        for name in names {
            let (file, size) = beneath::open_file(&root, &name)?;
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&file.metadata()?.permissions()) & 0o111
                    != 0;
            let mut header = tar::Header::new_gnu();
            header.set_size(size);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, &name, file.take(size))?;
            sizes.insert(name, (size, executable));
        }
        let file = builder
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        let size = file.metadata()?.len();
        Ok(Packed { path, size, sizes })
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The new state: carried-over entries and the packed files, with the size of every pack it reads.
fn assemble(
    turn: u32,
    now: &Now,
    mut files: BTreeMap<String, WorkspaceFile>,
    pack: &str,
    packed: &Packed,
    before: &WorkspaceManifest,
) -> WorkspaceManifest {
    for (name, (size, executable)) in &packed.sizes {
        let file = WorkspaceFile {
            name: name.clone(),
            size: *size,
            executable: *executable,
            pack: pack.to_string(),
        };
        files.insert(name.clone(), file);
    }
    let mut packs = BTreeMap::new();
    for file in files.values() {
        let size = match file.pack.as_str() {
            p if p == pack => packed.size,
            p => before.packs.get(p).copied().unwrap_or(0),
        };
        packs.insert(file.pack.clone(), size);
    }
    WorkspaceManifest {
        turn,
        dirs: now.dirs.clone(),
        files: files.into_values().collect(),
        packs,
    }
}

async fn upload(
    store: &ArtifactStore,
    session: &Uuid,
    name: &str,
    path: &Path,
) -> Result<(), SaveError> {
    store
        .upload_file(&store.key(session, name), path)
        .await
        .map(drop)
        .map_err(|e| SaveError::Store(e.to_string()))
}
