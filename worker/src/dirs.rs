//! Job directories: each job runs in an empty workspace, with an empty TMPDIR beside it, inside a root that holds
//! its full logs (none of it but the workspace collected as artifacts). The root stays the worker's: an agent
//! running as another user is handed only the workspace and TMPDIR, so it cannot plant anything where the worker
//! writes its logs. Creating and deleting directories for every job costs more on
//! ext4 than all the rest of the worker's per-job work, so clean roots are kept and reused: a root goes back to
//! the pool only if it holds nothing but an empty workspace, and is checked again when taken. Both checks read a
//! directory only when its change time says it may have changed since it was last read (`dir_stamp.rs`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_shared::JobRecord;

use crate::dir_stamp::{self, At, Checked, Stamp};

const WORKSPACE: &str = "workspace";
const TMP: &str = "tmp";

pub struct JobDirs {
    pub root: PathBuf,
    pub workspace: PathBuf,
    /// The agent's TMPDIR.
    pub tmp: PathBuf,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    /// Named after the job and kept afterwards, for inspection (`worker.keep_workspaces`).
    kept: bool,
    /// Something beyond the workspace was written (a full log): the directory is not reused.
    dirty: bool,
    /// A session turn's directories: at the session's own path, held exclusively on this machine.
    session: Option<SessionLock>,
    /// The stamps of the root, the workspace and TMPDIR when last seen clean.
    stamps: Stamps,
    /// The same directories named beneath the pool's base, held open, for their stamps.
    names: Names,
    base: Arc<OwnedFd>,
    /// The workspace was found untouched after the run (the agent gone): its stamp holds at give-back unread.
    untouched_after_run: AtomicBool,
}

/// The names of a root's directories beneath the pool's base.
struct Names {
    root: CString,
    workspace: CString,
    tmp: CString,
}

impl Names {
    fn of(relative_root: &Path) -> Self {
        let name = |path: &Path| {
            // Made by the pool from ids and numbers: no NUL inside.
            CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
        };
        Self {
            root: name(relative_root),
            workspace: name(&relative_root.join(WORKSPACE)),
            tmp: name(&relative_root.join(TMP)),
        }
    }
}

/// The stamps of a clean root's directories (`None` where none is trusted yet).
#[derive(Debug, Default, Clone, Copy)]
struct Stamps {
    root: Option<Stamp>,
    workspace: Option<Stamp>,
    tmp: Option<Stamp>,
}

impl JobDirs {
    /// The stamps of the root's directories if it holds exactly an empty workspace and an empty TMPDIR, checked
    /// against those it was taken with. `workspace_known`: the workspace was just seen untouched.
    fn clean_stamps(&self, workspace_known: bool) -> Option<Stamps> {
        let (names, known) = (&self.names, self.stamps);
        let root = self.check(&self.root, &names.root, known.root, holds_only_its_dirs)?;
        let workspace = match workspace_known {
            true => known.workspace,
            false => self.check(
                &self.workspace,
                &names.workspace,
                known.workspace,
                is_empty_dir,
            )?,
        };
        let tmp = self.check(&self.tmp, &names.tmp, known.tmp, is_empty_dir)?;
        Some(Stamps {
            root,
            workspace,
            tmp,
        })
    }

    /// One of the root's directories checked against its stamp: `None` if it fails, else the stamp to keep.
    fn check(
        &self,
        path: &Path,
        name: &CStr,
        known: Option<Stamp>,
        holds: fn(&Path) -> bool,
    ) -> Option<Option<Stamp>> {
        match dir_stamp::check(path, self.at(name), known, holds) {
            Checked::Holds(stamp) => Some(stamp),
            Checked::Fails => None,
        }
    }

    fn at<'a>(&'a self, name: &'a CStr) -> At<'a> {
        At {
            base: self.base.as_fd(),
            name,
        }
    }

    /// The directories at `relative` beneath the pool's base.
    fn beneath(pool: &DirPool, relative: &Path, kept: bool) -> Self {
        let root = pool.base.join(relative);
        Self {
            workspace: root.join(WORKSPACE),
            tmp: root.join(TMP),
            stdout_log: root.join("stdout.log"),
            stderr_log: root.join("stderr.log"),
            root,
            kept,
            dirty: false,
            session: None,
            stamps: Stamps::default(),
            names: Names::of(relative),
            base: pool.base_dir.clone(),
            untouched_after_run: AtomicBool::new(false),
        }
    }

    fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.workspace)?;
        std::fs::create_dir(&self.tmp).or_else(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
    }

    /// The directories an agent running as another user is given.
    pub fn agent_owned(&self) -> Vec<PathBuf> {
        vec![self.workspace.clone(), self.tmp.clone()]
    }

    /// Whether the workspace is still as it was taken, empty: it was trusted empty by its stamp, and no entry
    /// has been added to it since. Then there is nothing in it to read. Asked once the agent is gone, the answer
    /// also stands for the directories' give-back.
    pub fn workspace_untouched(&self) -> bool {
        let untouched = self
            .stamps
            .workspace
            .is_some_and(|stamp| dir_stamp::unchanged(self.at(&self.names.workspace), stamp));
        self.untouched_after_run.store(untouched, Ordering::Relaxed);
        untouched
    }

    /// Records that the run left files beside the workspace, so these directories are discarded, not reused.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

pub struct DirPool {
    base: PathBuf,
    /// `base`, held open: the pooled directories' stamps are taken beneath it.
    base_dir: Arc<OwnedFd>,
    keep: bool,
    /// Clean roots, kept whole (their paths, names and stamps) for the next job.
    free: Mutex<Vec<JobDirs>>,
    next_slot: AtomicU64,
}

impl DirPool {
    /// The pool of directories beneath `base`, which must exist.
    pub fn new(base: &Path, keep: bool) -> io::Result<Self> {
        let base_dir = std::fs::File::open(base)?;
        Ok(Self {
            base: base.to_path_buf(),
            base_dir: Arc::new(base_dir.into()),
            keep,
            free: Mutex::new(Vec::new()),
            next_slot: AtomicU64::new(0),
        })
    }

    /// Directories for one attempt of `record`, with an empty workspace, given back when the lease drops.
    pub fn take(&self, record: &JobRecord) -> io::Result<Leased<'_>> {
        self.take_dirs(record).map(|dirs| Leased {
            pool: self,
            dirs: Some(dirs),
        })
    }

    fn take_dirs(&self, record: &JobRecord) -> io::Result<JobDirs> {
        if self.keep {
            let name = format!("{}-{}", record.id, record.attempt);
            let dirs = JobDirs::beneath(self, Path::new(&name), true);
            dirs.create()?;
            return Ok(dirs);
        }
        while let Some(mut dirs) = self.free.lock().ok().and_then(|mut f| f.pop()) {
            // Clean when given back; checked again for what may have appeared since (a daemon of an earlier job).
            if let Some(stamps) = dirs.clean_stamps(false) {
                dirs.stamps = stamps;
                return Ok(dirs);
            }
            discard(dirs.root);
        }
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let name = format!("slot-{}-{slot}", std::process::id());
        let dirs = JobDirs::beneath(self, Path::new(&name), false);
        dirs.create()?;
        Ok(dirs)
    }

    /// Directories for a turn of session `id` at the same path on every worker sharing `worker.work_dir`
    /// (coding CLIs key their own sessions by the absolute working directory), fresh however the last turn
    /// here ended. `WouldBlock`: another run of this session on this machine still holds them.
    pub fn take_session(&self, id: &uuid::Uuid) -> io::Result<Leased<'_>> {
        let sessions = self.base.join("sessions");
        std::fs::create_dir_all(&sessions)?;
        let lock = SessionLock::take(&sessions.join(format!("{id}.lock")))?;
        let name = Path::new("sessions").join(id.to_string());
        let mut dirs = JobDirs::beneath(self, &name, false);
        match std::fs::symlink_metadata(&dirs.root) {
            Ok(_) => self.set_aside(&dirs.root)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        dirs.create()?;
        dirs.session = Some(lock);
        Ok(Leased {
            pool: self,
            dirs: Some(dirs),
        })
    }

    /// Moves `root` out of the way at once (its path is wanted again) and removes it off this thread.
    fn set_aside(&self, root: &Path) -> io::Result<()> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let aside = self
            .base
            .join(format!("discarded-{}-{slot}", std::process::id()));
        std::fs::rename(root, &aside)?;
        discard(aside);
        Ok(())
    }

    /// Returns directories after the job: reused if clean, removed (off this thread) otherwise.
    fn give_back(&self, dirs: JobDirs) {
        if dirs.kept {
            return;
        }
        if dirs.session.is_some() {
            if let Err(e) = self.set_aside(&dirs.root) {
                tracing::warn!(dir = %dirs.root.display(), error = %e, "setting a session's directory aside failed");
            }
            return;
        }
        let clean = match dirs.dirty {
            true => None,
            false => dirs.clean_stamps(dirs.untouched_after_run.load(Ordering::Relaxed)),
        };
        if let Some(stamps) = clean {
            if let Ok(mut free) = self.free.lock() {
                free.push(JobDirs {
                    stamps,
                    untouched_after_run: AtomicBool::new(false),
                    ..dirs
                });
                return;
            }
        }
        discard(dirs.root);
    }
}

/// Directories taken from the pool for one attempt, given back when dropped, however the attempt ends.
pub struct Leased<'a> {
    pool: &'a DirPool,
    dirs: Option<JobDirs>,
}

impl std::ops::Deref for Leased<'_> {
    type Target = JobDirs;
    fn deref(&self) -> &JobDirs {
        // Some until dropped.
        self.dirs.as_ref().expect("leased directories")
    }
}

impl std::ops::DerefMut for Leased<'_> {
    fn deref_mut(&mut self) -> &mut JobDirs {
        self.dirs.as_mut().expect("leased directories")
    }
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        if let Some(dirs) = self.dirs.take() {
            self.pool.give_back(dirs);
        }
    }
}

/// A session's directories held by this process: an exclusive `flock` on a lock file beside them, checked to
/// still be the file at that path (a holder removes it when done, so a waiter may have locked a removed one).
struct SessionLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl SessionLock {
    fn take(path: &Path) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: a valid descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let held = file.metadata()?.ino();
        match std::fs::metadata(path) {
            Ok(at_path) if at_path.ino() == held => Ok(Self {
                path: path.to_path_buf(),
                _file: file,
            }),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody locks this file after us believing it current.
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(error = %e, "removing a session's lock file failed");
        }
    }
}

/// The root holds exactly a workspace and a TMPDIR.
fn holds_only_its_dirs(root: &Path) -> bool {
    let mut names: Vec<_> = match std::fs::read_dir(root) {
        Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
        Err(_) => return false,
    };
    names.sort();
    names == [TMP, WORKSPACE]
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

fn discard(root: PathBuf) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            tracing::warn!(dir = %root.display(), error = %e, "removing a job directory failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        let request = fleet_shared::JobRequest::new(
            fleet_shared::wire::new_job_id(),
            "a",
            String::new(),
            chrono::Utc::now(),
        );
        JobRecord::queued(request)
    }

    #[tokio::test]
    async fn clean_directories_are_reused_and_dirty_ones_never() {
        let base = tempfile::tempdir().unwrap();
        let pool = DirPool::new(base.path(), false).unwrap();
        let first = pool.take(&record()).unwrap();
        let root = first.root.clone();
        drop(first);
        let again = pool.take(&record()).unwrap();
        assert_eq!(again.root, root, "a clean root is reused");

        std::fs::write(again.tmp.join("left-behind"), b"x").unwrap();
        drop(again);
        let fresh = pool.take(&record()).unwrap();
        assert_ne!(fresh.root, root, "a dirty root is not reused");
        assert!(std::fs::read_dir(&fresh.workspace)
            .unwrap()
            .next()
            .is_none());
    }

    /// Once a pooled root's directories have settled they are trusted by their change time, not read; whatever a
    /// daemon of an earlier job plants in any of them afterwards is still caught when the root is taken.
    #[tokio::test]
    async fn what_appears_in_a_settled_pooled_root_is_caught_when_it_is_taken() {
        let places = [
            format!("{WORKSPACE}/planted"),
            format!("{TMP}/planted"),
            "planted".into(),
        ];
        let bases: Vec<_> = places
            .iter()
            .map(|_| tempfile::tempdir().unwrap())
            .collect();
        let pools: Vec<_> = bases
            .iter()
            .map(|b| DirPool::new(b.path(), false).unwrap())
            .collect();
        let roots: Vec<_> = pools
            .iter()
            .map(|p| p.take(&record()).unwrap().root.clone())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for pool in &pools {
            let dirs = pool.take(&record()).unwrap();
            assert!(dirs.workspace_untouched(), "settled and trusted");
            drop(dirs);
            let free = pool.free.lock().unwrap();
            let stamps = free[0].stamps;
            assert!(stamps.root.is_some() && stamps.workspace.is_some() && stamps.tmp.is_some());
        }
        for ((pool, root), place) in pools.iter().zip(&roots).zip(&places) {
            std::fs::write(root.join(place), b"x").unwrap();
            let next = pool.take(&record()).unwrap();
            assert_ne!(&next.root, root, "{place} planted: the root is not reused");
            assert!(std::fs::read_dir(&next.workspace).unwrap().next().is_none());
        }
    }

    /// A settled workspace is not read after the job unless the job added something to it.
    #[tokio::test]
    async fn a_workspace_is_untouched_until_the_job_makes_something_in_it() {
        let base = tempfile::tempdir().unwrap();
        let pool = DirPool::new(base.path(), false).unwrap();
        let fresh = pool.take(&record()).unwrap();
        assert!(!fresh.workspace_untouched(), "nothing trusted yet");
        drop(fresh);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let dirs = pool.take(&record()).unwrap();
        assert!(dirs.workspace_untouched());
        std::fs::create_dir(dirs.workspace.join("made")).unwrap();
        assert!(!dirs.workspace_untouched());
    }

    /// The workspace seen untouched after the run is not looked at again when the directories are given back; the
    /// rest still is, so a file left in TMPDIR keeps the root out of the pool.
    #[tokio::test]
    async fn a_root_whose_workspace_was_seen_untouched_is_still_checked_at_give_back() {
        let base = tempfile::tempdir().unwrap();
        let pool = DirPool::new(base.path(), false).unwrap();
        drop(pool.take(&record()).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let dirs = pool.take(&record()).unwrap();
        assert!(dirs.workspace_untouched());
        drop(dirs);
        assert_eq!(pool.free.lock().unwrap().len(), 1, "clean: pooled");
        let dirs = pool.take(&record()).unwrap();
        assert!(dirs.workspace_untouched());
        std::fs::write(dirs.tmp.join("left-behind"), b"x").unwrap();
        drop(dirs);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "TMPDIR dirty: discarded"
        );
    }

    #[tokio::test]
    async fn kept_directories_are_named_after_the_job() {
        let base = tempfile::tempdir().unwrap();
        let pool = DirPool::new(base.path(), true).unwrap();
        let r = record();
        let dirs = pool.take(&r).unwrap();
        assert_eq!(
            dirs.root,
            base.path().join(format!("{}-{}", r.id, r.attempt))
        );
        drop(dirs);
        assert!(base.path().join(format!("{}-{}", r.id, r.attempt)).exists());
    }
}
