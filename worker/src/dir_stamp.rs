//! Whether a directory still holds what it held when it was last read, without reading it again. Adding,
//! removing or renaming an entry sets a directory's change time (ctime) to the current time, which no process
//! can set otherwise (short of setting the clock), so an unchanged ctime on the same inode means the same
//! entries. Reading an ext4 directory costs several times a `stat` (it builds a hash tree even when empty), and
//! the job directories are read on every job. A stamp is trusted only once the clock has moved well past it, so a
//! change within the same clock tick as the stamped one cannot hide behind an equal ctime.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after a directory's last change its stamp is trusted: far beyond the clock's tick.
const SETTLED: Duration = Duration::from_secs(1);

/// A directory's identity and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    /// The stamp of the directory at `path` itself (a link there is not followed and is no directory).
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.is_dir().then(|| Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        })
    }

    /// Whether the change it stamps is older than `now` by more than `SETTLED`.
    fn settled_before(&self, now: SystemTime) -> bool {
        let changed = Duration::new(
            u64::try_from(self.ctime).unwrap_or(0),
            u32::try_from(self.ctime_nsec).unwrap_or(0),
        );
        now.duration_since(UNIX_EPOCH)
            .is_ok_and(|now| now > changed + SETTLED)
    }
}

/// Whether the directory at `path` is still the one `stamp` was taken of, with no entry added or removed since.
pub fn unchanged(path: &Path, stamp: Stamp) -> bool {
    Stamp::of(path) == Some(stamp)
}

/// What checking a directory found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// It holds what it should; the stamp to check against next time, once one can be trusted.
    Holds(Option<Stamp>),
    /// It does not (or is no longer a directory).
    Fails,
}

/// Checks the directory at `path`: unchanged since `known` (a trusted stamp taken when it last held what it
/// should), or else `holds` it, read now.
pub fn check(path: &Path, known: Option<Stamp>, holds: impl FnOnce(&Path) -> bool) -> Checked {
    let Some(before) = Stamp::of(path) else {
        return Checked::Fails;
    };
    if known == Some(before) {
        return Checked::Holds(known);
    }
    let now = SystemTime::now();
    if !holds(path) {
        return Checked::Fails;
    }
    // Trusted only if nothing changed while it was read, and its last change is well behind the reading.
    let trusted = Stamp::of(path) == Some(before) && before.settled_before(now);
    Checked::Holds(trusted.then_some(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
    }

    #[test]
    fn a_fresh_change_is_read_again_and_a_settled_one_trusted_until_the_next_change() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        // Just changed: it is read, and no stamp is trusted yet.
        assert_eq!(check(&dir, None, empty), Checked::Holds(None));
        // Once settled: a stamp, and an unchanged directory is not read again.
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        let Checked::Holds(Some(stamp)) = check(&dir, None, empty) else {
            panic!("a settled directory gets a stamp");
        };
        assert_eq!(
            check(&dir, Some(stamp), |_| panic!("read again")),
            Checked::Holds(Some(stamp))
        );
        // An entry added at once after the stamp changes it, and the reading says so.
        std::fs::write(dir.join("planted"), b"x").unwrap();
        assert_eq!(check(&dir, Some(stamp), empty), Checked::Fails);
        // Removed again: it holds once more, read, and not trusted until it has settled.
        std::fs::remove_file(dir.join("planted")).unwrap();
        assert_eq!(check(&dir, Some(stamp), empty), Checked::Holds(None));
    }

    #[test]
    fn a_directory_replaced_or_turned_into_a_link_is_no_longer_the_one_stamped() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let stamp = Stamp::of(&dir).unwrap();
        std::fs::rename(&dir, base.path().join("elsewhere")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        assert_ne!(Stamp::of(&dir), Some(stamp));
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(base.path().join("elsewhere"), &dir).unwrap();
        assert_eq!(check(&dir, Some(stamp), |_| true), Checked::Fails);
    }
}
