//! A real PostgreSQL server for the tests: `initdb` into a temporary directory, then `postgres` listening only on
//! a Unix socket in that directory (no TCP port to race for), stopped by a fast shutdown when dropped. As root it
//! runs as `nobody`, since PostgreSQL refuses to run as root.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The socket's number (it names the socket file; nothing listens on TCP).
const PORT: u16 = 5432;
const NOBODY: u32 = 65534;

pub struct Postgres {
    child: Child,
    dir: TempDir,
}

impl Postgres {
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let initdb = command(&bin.join("initdb"), as_root)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "fleet",
                "-A",
                "trust",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log");
        let child = command(&bin.join("postgres"), as_root)
            .arg("-D")
            .arg(&data)
            .args(["-p", &PORT.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let server = Self { child, dir };
        server.wait_ready();
        server
    }

    /// Connection settings (libpq's key=value form) for the database `postgres` as the superuser `fleet`.
    pub fn url(&self) -> String {
        format!(
            "host={} port={PORT} user=fleet dbname=postgres",
            self.dir.path().display()
        )
    }

    fn wait_ready(&self) {
        let socket = self.dir.path().join(format!(".s.PGSQL.{PORT}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        // The socket appears once the server accepts connections (after its start-up checkpoint).
        while !socket.exists() || !self.dir.path().join("data/postmaster.pid").exists() {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: the fast shutdown (disconnect clients, stop).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

fn command(program: &Path, as_nobody: bool) -> Command {
    let mut command = Command::new(program);
    command.env("LC_ALL", "C");
    if as_nobody {
        command.uid(NOBODY).gid(NOBODY);
    }
    command
}

/// Where Debian keeps the server's programs (they are not on PATH), else PATH's.
fn bin_dir() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists());
    if let Some(bin) = versions.max() {
        return bin;
    }
    let initdb = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("initdb"))
        .find(|p| p.exists())
        .expect("PostgreSQL's server programs (initdb, postgres): install them with `scripts/deps test`");
    initdb.parent().expect("dir").to_path_buf()
}
