//! Whether a directory still holds what it held when it was last read, without reading it again. Adding,
//! removing or renaming an entry sets a directory's change time (ctime) to the current time, which no process
//! can set otherwise (short of setting the clock), so an unchanged ctime on the same inode means the same
//! entries. Reading an ext4 directory costs several times a `stat` (it builds a hash tree even when empty), and
//! the job directories are read on every job. A stamp is trusted only once the clock has moved well past it, so a
//! change within the same clock tick as the stamped one cannot hide behind an equal ctime. Directories are stamped
//! by their name beneath a directory held open, so a stamp walks two names, not the whole path from `/`.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
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

/// A directory named beneath one held open.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub base: BorrowedFd<'a>,
    pub name: &'a CStr,
}

impl Stamp {
    /// The stamp of the directory `at` names itself (a link there is not followed and is no directory).
    fn of(at: At<'_>) -> Option<Self> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid descriptor, a NUL-terminated name and room for one `stat`.
        let found = unsafe {
            libc::fstatat(
                at.base.as_raw_fd(),
                at.name.as_ptr(),
                stat.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if found != 0 {
            return None;
        }
        // SAFETY: fstatat succeeded, so it filled the `stat`.
        let stat = unsafe { stat.assume_init() };
        (stat.st_mode & libc::S_IFMT == libc::S_IFDIR).then_some(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            ctime: stat.st_ctime,
            ctime_nsec: stat.st_ctime_nsec,
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

/// Whether the directory `at` names is still the one `stamp` was taken of, with no entry added or removed since.
pub fn unchanged(at: At<'_>, stamp: Stamp) -> bool {
    Stamp::of(at) == Some(stamp)
}

/// What checking a directory found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// It holds what it should; the stamp to check against next time, once one can be trusted.
    Holds(Option<Stamp>),
    /// It does not (or is no longer a directory).
    Fails,
}

/// Checks the directory at `path` (named by `at`): unchanged since `known` (a trusted stamp taken when it last held
/// what it should), or else `holds` it, read now.
pub fn check(
    path: &Path,
    at: At<'_>,
    known: Option<Stamp>,
    holds: impl FnOnce(&Path) -> bool,
) -> Checked {
    let Some(before) = Stamp::of(at) else {
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
    let trusted = Stamp::of(at) == Some(before) && before.settled_before(now);
    Checked::Holds(trusted.then_some(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
    }

    /// The base directory held open, as the pool holds its own.
    fn open(base: &Path) -> std::fs::File {
        std::fs::File::open(base).unwrap()
    }

    fn at(base: &std::fs::File) -> At<'_> {
        use std::os::fd::AsFd;
        At {
            base: base.as_fd(),
            name: c"d",
        }
    }

    #[test]
    fn a_fresh_change_is_read_again_and_a_settled_one_trusted_until_the_next_change() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let held = open(base.path());
        let d = at(&held);
        // Just changed: it is read, and no stamp is trusted yet.
        assert_eq!(check(&dir, d, None, empty), Checked::Holds(None));
        // Once settled: a stamp, and an unchanged directory is not read again.
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        let Checked::Holds(Some(stamp)) = check(&dir, d, None, empty) else {
            panic!("a settled directory gets a stamp");
        };
        assert_eq!(
            check(&dir, d, Some(stamp), |_| panic!("read again")),
            Checked::Holds(Some(stamp))
        );
        // An entry added at once after the stamp changes it, and the reading says so.
        std::fs::write(dir.join("planted"), b"x").unwrap();
        assert_eq!(check(&dir, d, Some(stamp), empty), Checked::Fails);
        // Removed again: it holds once more, read, and not trusted until it has settled.
        std::fs::remove_file(dir.join("planted")).unwrap();
        assert_eq!(check(&dir, d, Some(stamp), empty), Checked::Holds(None));
    }

    #[test]
    fn a_directory_replaced_or_turned_into_a_link_is_no_longer_the_one_stamped() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let held = open(base.path());
        let d = at(&held);
        let stamp = Stamp::of(d).unwrap();
        std::fs::rename(&dir, base.path().join("elsewhere")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        assert_ne!(Stamp::of(d), Some(stamp));
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(base.path().join("elsewhere"), &dir).unwrap();
        assert_eq!(check(&dir, d, Some(stamp), |_| true), Checked::Fails);
    }
}
