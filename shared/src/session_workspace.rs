//! A session's workspace between turns: the files a turn left, kept in the default store under
//! `<artifacts.sessions_prefix>/<session id>/` so the next turn finds them on whichever worker runs it.
//!
//! Each saved state is a manifest (`state/<id>.json`) naming every file and directory, and for each file the
//! pack (`packs/<id>.tar`) that holds its bytes. A turn uploads only what it changed, as one new pack; the
//! manifest points at older packs for the rest. When the packs a state points at hold much more than the state
//! itself (or are many), the whole workspace is written as one pack again. Only regular files and directories
//! are kept: links and special files are not, so a restored workspace has nothing that leads out of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A saved state of a session's workspace, as a turn's record and the session name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceRef {
    /// The turn that left it.
    pub turn: u32,
    /// Its manifest's name under the session's keys (`state/<id>.json`).
    pub manifest: String,
    pub files: u64,
    pub bytes: u64,
}

/// Every file and directory of a saved workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceManifest {
    pub turn: u32,
    /// Directories by relative name (parents before children), so empty ones come back too.
    #[serde(default)]
    pub dirs: Vec<String>,
    pub files: Vec<WorkspaceFile>,
    /// The size of each pack the files are in, by pack name.
    #[serde(default)]
    pub packs: BTreeMap<String, u64>,
}

/// One file of a saved workspace and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceFile {
    pub name: String,
    pub size: u64,
    /// Whether anyone may execute it (the only mode bit kept).
    #[serde(default)]
    pub executable: bool,
    /// The pack holding it (`packs/<id>.tar`).
    pub pack: String,
}

impl WorkspaceManifest {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Bytes of every pack this state reads from.
    pub fn packed_bytes(&self) -> u64 {
        self.packs.values().sum()
    }

    /// Whether this state should be written again as one fresh pack.
    pub fn needs_repack(&self) -> bool {
        repack_due(self.packs.len(), self.packed_bytes(), self.bytes())
    }

    /// What this state keeps: its manifest, and its packs.
    pub fn keys(&self, manifest: &str) -> Vec<String> {
        std::iter::once(manifest.to_string())
            .chain(self.packs.keys().cloned())
            .collect()
    }
}

/// Whether a state reading `packs` packs of `packed` bytes in all, for `live` bytes of files, should be written
/// as one fresh pack: its packs hold over twice its own size (old versions of changed files), or are too many
/// to fetch quickly.
pub fn repack_due(packs: usize, packed: u64, live: u64) -> bool {
    const MOST_PACKS: usize = 16;
    packs > MOST_PACKS || packed > 2 * live + (1 << 20)
}

/// A new state's manifest name.
pub fn manifest_name(id: &uuid::Uuid) -> String {
    format!("state/{id}.json")
}

/// A new pack's name.
pub fn pack_name(id: &uuid::Uuid) -> String {
    format!("packs/{id}.tar")
}

/// The store sessions' workspaces are kept in: the configured default target, under `sessions_prefix`.
pub fn store(
    cfg: &crate::config::ArtifactsConfig,
) -> Result<crate::artifacts::ArtifactStore, crate::artifacts::StoreError> {
    crate::artifacts::ArtifactStore::new(&cfg.default_target(), &cfg.sessions_prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, pack: &str) -> WorkspaceFile {
        WorkspaceFile {
            name: name.into(),
            size,
            executable: false,
            pack: pack.into(),
        }
    }

    #[test]
    fn a_state_is_repacked_once_its_packs_hold_mostly_old_versions() {
        let mut state = WorkspaceManifest {
            turn: 3,
            dirs: vec![],
            files: vec![file("a", 4 << 20, "p1"), file("b", 1 << 20, "p2")],
            packs: [("p1".to_string(), 4 << 20), ("p2".to_string(), 1 << 20)].into(),
        };
        assert!(!state.needs_repack(), "every packed byte is live");
        state.packs.insert("p3".into(), 20 << 20);
        assert!(state.needs_repack(), "packs hold 25 MiB for 5 MiB of files");
        assert_eq!(state.keys("state/x.json").len(), 4);
    }
}
