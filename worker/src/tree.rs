//! A tree the agent controls, read and written without following anything it planted: the walk that lists a
//! workspace's files (for artifacts and a session's saved workspace), and the creation of directories and files
//! beneath a root (for a restored workspace). Built on `beneath`'s descriptor-relative opens.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;

use crate::beneath::{Dir, Kind};

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walked {
    /// Regular files by relative name, sorted, with what `fstat` said of each.
    pub files: Vec<(String, Metadata)>,
    /// Directories by relative name, parents before their children.
    pub dirs: Vec<String>,
    /// What could not be taken, with why.
    pub skipped: Vec<(String, &'static str)>,
}

/// Every regular file and directory under `root`; top-level names in `reserved` are skipped with the reason
/// given beside them. Links, special files and names that are not UTF-8 are skipped, never followed.
pub fn walk(root: &Dir, reserved: &[(&str, &'static str)]) -> Walked {
    let mut walked = Walked::default();
    let mut pending: Vec<(Option<Dir>, String)> = vec![(None, String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let here = dir.as_ref().unwrap_or(root);
        let Ok(entries) = here.entries() else {
            continue;
        };
        for (raw_name, kind) in entries {
            let Some(part) = raw_name.to_str() else {
                let name = format!("{prefix}{}", raw_name.to_string_lossy());
                walked.skipped.push((name, "file name is not UTF-8"));
                continue;
            };
            let name = format!("{prefix}{part}");
            if let Some((_, why)) = reserved
                .iter()
                .find(|(r, _)| prefix.is_empty() && *r == part)
            {
                walked.skipped.push((name, why));
                continue;
            }
            match kind {
                Kind::Dir => match here.dir(part.as_bytes()) {
                    Ok(sub) => {
                        walked.dirs.push(name.clone());
                        pending.push((Some(sub), format!("{name}/")));
                    }
                    Err(_) => walked
                        .skipped
                        .push((name, "directory changed while being read")),
                },
                Kind::File => match here.file(part.as_bytes()).and_then(|(f, _)| f.metadata()) {
                    Ok(meta) => walked.files.push((name, meta)),
                    Err(_) => walked.skipped.push((name, "not a regular file")),
                },
                Kind::Link => walked.skipped.push((name, "symbolic link (not followed)")),
                Kind::Other => walked.skipped.push((name, "not a regular file")),
            }
        }
    }
    walked.files.sort_by(|a, b| a.0.cmp(&b.0));
    walked.dirs.sort();
    walked
}

/// The directory `name` (`/`-separated, relative) beneath `root`, made where missing; nothing is followed, so a
/// link in the way fails the call.
pub fn make_dirs(root: &Dir, name: &str) -> io::Result<Dir> {
    let mut here: Option<Dir> = None;
    for part in parts(name)? {
        let parent = here.as_ref().unwrap_or(root);
        here = Some(parent.make_dir(part.as_bytes())?);
    }
    match here {
        Some(dir) => Ok(dir),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "empty name")),
    }
}

/// Creates the new file `name` beneath `root` (its parents made where missing), never over an existing entry.
pub fn create_file(root: &Dir, name: &str, executable: bool) -> io::Result<File> {
    let (parent, file) = match name.rsplit_once('/') {
        Some((parent, file)) => (Some(make_dirs(root, parent)?), file),
        None => (None, name),
    };
    parts(file)?;
    parent
        .as_ref()
        .unwrap_or(root)
        .create_file(file.as_bytes(), if executable { 0o755 } else { 0o644 })
}

/// Hands an entry the worker created to the agent's user.
pub fn give(entry: &impl AsRawFd, user: Option<(libc::uid_t, libc::gid_t)>) -> io::Result<()> {
    let Some((uid, gid)) = user else {
        return Ok(());
    };
    // SAFETY: a valid descriptor the caller holds.
    if unsafe { libc::fchown(entry.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The components of a relative name, each an ordinary one.
fn parts(name: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe name"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_files_and_directories_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("out/deep")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join("_logs")).unwrap();
        std::fs::write(root.join("_logs/stdout.log"), b"forged").unwrap();
        std::fs::write(root.join("a b.txt"), b"1").unwrap();
        std::fs::write(root.join("out/deep/ü.csv"), b"22").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out/etc")).unwrap();
        let walked = walk(&Dir::open(root).unwrap(), &[("_logs", "reserved")]);
        let files: Vec<_> = walked
            .files
            .iter()
            .map(|(n, m)| (n.as_str(), m.len()))
            .collect();
        assert_eq!(files, [("a b.txt", 1), ("out/deep/ü.csv", 2)]);
        assert_eq!(walked.dirs, ["empty", "out", "out/deep"]);
        let mut skipped: Vec<_> = walked.skipped.iter().map(|s| s.0.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, ["_logs", "escape", "out/etc"]);
    }

    #[test]
    fn files_are_created_only_through_real_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        std::fs::write(root.join("taken"), b"x").unwrap();
        let top = Dir::open(root).unwrap();
        let mut made = create_file(&top, "a/b/new.txt", true).unwrap();
        std::io::Write::write_all(&mut made, b"hi").unwrap();
        assert_eq!(std::fs::read(root.join("a/b/new.txt")).unwrap(), b"hi");
        for refused in ["link/x", "link", "taken", "a/../x", "/abs"] {
            assert!(create_file(&top, refused, false).is_err(), "{refused}");
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
