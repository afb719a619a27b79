//! Restoring a saved state into a turn's fresh workspace: directories first, then each pack's files, streamed
//! from the store straight into place. Every entry is created beneath the workspace without following anything
//! (a leftover process of an earlier turn cannot redirect a write), and handed to the agent's user.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use fleet_shared::artifacts::ArtifactStore;
use fleet_shared::session_workspace::{WorkspaceFile, WorkspaceRef};
use futures::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};
use uuid::Uuid;

use super::{Baseline, Stamp};
use crate::beneath::Dir;
use crate::tree;

type User = Option<(libc::uid_t, libc::gid_t)>;

/// Puts the state `from` (none: the session's first saving turn) into `workspace`; the error says what failed.
pub async fn restore(
    store: &ArtifactStore,
    session: &Uuid,
    from: Option<&WorkspaceRef>,
    workspace: &Path,
    user: User,
) -> Result<Baseline, String> {
    let Some(from) = from else {
        return Ok(Baseline::default());
    };
    let manifest = super::manifest(store, session, from).await?;
    let root = Arc::new(Dir::open(workspace).map_err(|e| e.to_string())?);
    let dirs = manifest.dirs.clone();
    let making = Arc::clone(&root);
    blocking(move || make_dirs(&making, &dirs, user)).await?;
    let mut baseline = Baseline::default();
    for (pack, files) in by_pack(&manifest.files) {
        let download = store
            .download(&store.key(session, &pack), None)
            .await
            .map_err(|e| format!("reading {pack}: {e}"))?;
        let body = StreamReader::new(download.body.map_err(std::io::Error::other));
        let reader = SyncIoBridge::new(body);
        let into = Arc::clone(&root);
        let unpacked = blocking(move || unpack(reader, &into, files, user))
            .await
            .map_err(|e| format!("{pack}: {e}"))?;
        for (name, meta) in unpacked {
            baseline.stamps.insert(name.clone(), Stamp::of(&meta));
            baseline.files.push((name, meta));
        }
    }
    baseline.restored = Some((from.clone(), manifest));
    Ok(baseline)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| e.to_string())
}

fn by_pack(files: &[WorkspaceFile]) -> HashMap<String, HashMap<String, WorkspaceFile>> {
    let mut packs: HashMap<String, HashMap<String, WorkspaceFile>> = HashMap::new();
    for file in files {
        packs
            .entry(file.pack.clone())
            .or_default()
            .insert(file.name.clone(), file.clone());
    }
    packs
}

fn make_dirs(root: &Dir, dirs: &[String], user: User) -> std::io::Result<()> {
    for name in dirs {
        let dir = tree::make_dirs(root, name)?;
        tree::give(&dir, user)?;
    }
    Ok(())
}

/// Writes the pack's files the state names (a pack also holds versions later states replaced) and returns
/// each one's metadata as handed over.
fn unpack(
    reader: impl Read,
    root: &Dir,
    mut wanted: HashMap<String, WorkspaceFile>,
    user: User,
) -> std::io::Result<Vec<(String, std::fs::Metadata)>> {
    let mut archive = tar::Archive::new(reader);
    let mut written = Vec::with_capacity(wanted.len());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let Some(file) = wanted.remove(&name) else {
            continue;
        };
        if entry.size() != file.size {
            return Err(std::io::Error::other(format!(
                "`{name}` holds {} bytes, its state says {}",
                entry.size(),
                file.size
            )));
        }
        let mut out = tree::create_file(root, &name, file.executable)?;
        std::io::copy(&mut entry, &mut out)?;
        tree::give(&out, user)?;
        written.push((name, out.metadata()?));
        if wanted.is_empty() {
            break;
        }
    }
    match wanted.keys().next() {
        Some(missing) => Err(std::io::Error::other(format!("`{missing}` is missing"))),
        None => Ok(written),
    }
}
