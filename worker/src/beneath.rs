//! Reading a tree the agent controls without following anything it planted there. Every directory is opened
//! relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, every file with `O_NOFOLLOW | O_NONBLOCK`
//! and checked with `fstat` to be a regular file; what is read is read from that descriptor. A link swapped in
//! for a file or a directory at any moment fails the open instead of leading out of the tree, and a FIFO can
//! never block the reader.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// An open directory.
pub struct Dir(OwnedFd);

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> libc::c_int {
        self.0.as_raw_fd()
    }
}

/// What a directory entry is, as the directory itself says (never by following it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    Other,
}

fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn openat(dir: libc::c_int, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: a valid directory fd and a NUL-terminated name; the result is a new fd or -1.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Dir {
    /// A directory the worker made itself (the workspace): its own path is trusted, its contents are not.
    pub fn open(path: &Path) -> io::Result<Self> {
        let name = c_name(path.as_os_str().as_bytes())?;
        openat(libc::AT_FDCWD, &name, libc::O_RDONLY | libc::O_DIRECTORY).map(Self)
    }

    pub fn dir(&self, name: &[u8]) -> io::Result<Self> {
        let name = c_name(name)?;
        openat(
            self.0.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .map(Self)
    }

    /// A regular file in this directory and its size; anything else is refused.
    pub fn file(&self, name: &[u8]) -> io::Result<(File, u64)> {
        let name = c_name(name)?;
        let fd = openat(self.0.as_raw_fd(), &name, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok((file, meta.len()))
    }

    /// The subdirectory `name`, made if missing (an existing link or file there is refused, never followed).
    pub fn make_dir(&self, name: &[u8]) -> io::Result<Self> {
        let c = c_name(name)?;
        // SAFETY: a valid directory fd and a NUL-terminated name.
        if unsafe { libc::mkdirat(self.0.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        self.dir(name)
    }

    /// A new regular file `name` with `mode`; any existing entry of that name (a planted link) fails it.
    pub fn create_file(&self, name: &[u8], mode: libc::mode_t) -> io::Result<File> {
        let name = c_name(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid directory fd and a NUL-terminated name; the result is a new fd or -1.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                flags,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just handed us this fd; we are its only owner.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The entries of this directory (without `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        // fdopendir takes the fd over, so it gets a duplicate.
        let dup = self.0.try_clone()?;
        // SAFETY: a valid directory fd; on success the DIR owns it and closedir closes it.
        let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(dup);
        let mut out = Vec::new();
        loop {
            // SAFETY: a valid DIR stream; the entry it returns lives until the next readdir on it.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated array inside the entry.
            let (name, d_type) = unsafe {
                (
                    CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes().to_vec(),
                    (*entry).d_type,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_REG => Kind::File,
                libc::DT_DIR => Kind::Dir,
                libc::DT_LNK => Kind::Link,
                libc::DT_UNKNOWN => self.kind_of(&name),
                _ => Kind::Other,
            };
            out.push((OsString::from_vec(name), kind));
        }
        // SAFETY: the stream came from fdopendir and is closed once.
        unsafe { libc::closedir(stream) };
        Ok(out)
    }

    /// For filesystems that do not fill in the entry's type: `fstatat` without following.
    fn kind_of(&self, name: &[u8]) -> Kind {
        let Ok(name) = c_name(name) else {
            return Kind::Other;
        };
        // SAFETY: stat is plain old data, written by fstatat on success.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd, a NUL-terminated name, a pointer to a local.
        let r = unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Kind::Other;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Link,
            _ => Kind::Other,
        }
    }
}

/// Opens `name` (a `/`-separated relative name) beneath `root`, one component at a time, none of them followed.
pub fn open_file(root: &Dir, name: &str) -> io::Result<(File, u64)> {
    let mut parts = name.split('/').peekable();
    let mut owned: Option<Dir> = None;
    while let Some(part) = parts.next() {
        if part.is_empty() || part == "." || part == ".." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unsafe name"));
        }
        let here = owned.as_ref().unwrap_or(root);
        if parts.peek().is_none() {
            return here.file(part.as_bytes());
        }
        owned = Some(here.dir(part.as_bytes())?);
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "empty name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_open_only_through_real_directories_and_never_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("a/host")).unwrap();
        let fifo = c_name(root.join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let top = Dir::open(root).unwrap();
        let (_, size) = open_file(&top, "a/b/f.txt").unwrap();
        assert_eq!(size, 5);
        for refused in ["etc/hostname", "a/host", "pipe", "a/../a/b/f.txt", "a"] {
            assert!(open_file(&top, refused).is_err(), "{refused} was opened");
        }
        let mut kinds = top.entries().unwrap();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        let kinds: Vec<_> = kinds
            .iter()
            .map(|(n, k)| (n.to_str().unwrap(), *k))
            .collect();
        assert_eq!(
            kinds,
            [("a", Kind::Dir), ("etc", Kind::Link), ("pipe", Kind::Other)]
        );
    }
}
