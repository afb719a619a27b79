//! A session's workspace on the worker: restored from the session's last saved state before a turn runs, saved
//! after the turn when its agent ended on its own (a cancelled, timed-out or limit-killed turn leaves the
//! session's workspace as it was), and the states nothing reads any more removed once a newer one is recorded.
//! The format and the store are `fleet_shared::session_workspace`'s.

mod restore;
mod save;

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use fleet_shared::artifacts::{ArtifactStore, StoreError};
use fleet_shared::session_workspace::{WorkspaceManifest, WorkspaceRef};
use futures::StreamExt;
use uuid::Uuid;

pub use restore::restore;
pub use save::{save, Caps, SaveError};

/// The fleet's own files in a session's workspace (its history): never saved with it.
pub const FLEET_DIR: &str = ".fleet";

/// What identifies a file's content without reading it: any write, rename or chmod changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// The state a turn started from: what was restored, and each restored file's stamp as handed to the agent, to
/// tell the files the turn left alone (not uploaded again) from those it wrote.
#[derive(Debug, Default)]
pub struct Baseline {
    pub restored: Option<(WorkspaceRef, WorkspaceManifest)>,
    stamps: HashMap<String, Stamp>,
    /// The restored files' metadata, for artifacts to tell them from the turn's own files.
    pub files: Vec<(String, Metadata)>,
}

impl Baseline {
    fn unchanged(&self, name: &str, meta: &Metadata) -> bool {
        self.stamps.get(name) == Some(&Stamp::of(meta))
    }
}

/// The whole object at `key`, for the small ones (manifests).
async fn fetch(store: &ArtifactStore, session: &Uuid, name: &str) -> Result<Vec<u8>, StoreError> {
    let download = store.download(&store.key(session, name), None).await?;
    let mut body = download.body;
    let mut data = Vec::with_capacity(download.size as usize);
    while let Some(chunk) = body.next().await {
        data.extend_from_slice(&chunk?);
    }
    Ok(data)
}

async fn manifest(
    store: &ArtifactStore,
    session: &Uuid,
    state: &WorkspaceRef,
) -> Result<WorkspaceManifest, String> {
    let data = fetch(store, session, &state.manifest)
        .await
        .map_err(|e| format!("reading the workspace state of turn {}: {e}", state.turn))?;
    serde_json::from_slice(&data).map_err(|e| {
        format!(
            "the workspace state of turn {} is unreadable: {e}",
            state.turn
        )
    })
}

/// Removes what the replaced state `old` kept and the state now recorded, `new`, does not share with it.
pub async fn forget(store: &ArtifactStore, session: &Uuid, old: &WorkspaceRef, new: &WorkspaceRef) {
    let forgetting = async {
        let old_manifest = manifest(store, session, old).await?;
        let new_manifest = manifest(store, session, new).await?;
        let kept = new_manifest.keys(&new.manifest);
        for key in old_manifest.keys(&old.manifest) {
            if !kept.contains(&key) {
                store
                    .delete(&store.key(session, &key))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(())
    };
    if let Err(e) = forgetting.await {
        // Left over until the session is deleted, which removes everything under it.
        tracing::warn!(session_id = %session, error = %e, "removing a replaced workspace state failed");
    }
}
