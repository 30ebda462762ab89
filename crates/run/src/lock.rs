//! One writer per run directory. The writer holds an exclusive `flock` on `run.lock`, which the
//! kernel releases when the process ends in any way (SIGKILL and crashes included), and writes
//! its pid and host into it for the message a second writer sees. A second train-lm (a new run
//! or a resume) is refused while the lock is held; a lock file whose holder is gone is taken
//! over with a notice. A lock file written on another host is never taken over (locks may not
//! reach across a network file system), so a crash there needs the file deleted by hand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::layout::RunDir;

pub const LOCK_FILE: &str = "run.lock";

/// Held while a process writes a run directory: the locked file, removed on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Holds the flock while open; closing it (on drop) releases the lock.
    _file: File,
    /// The run directory did not exist before: removed again on drop if nothing was written.
    created_dir: bool,
    /// Set when a lock left by a process that is gone was taken over: what to tell the user.
    pub notice: Option<String>,
}

/// This machine's name (also in TensorBoard's file names).
pub(crate) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Tries an exclusive, non-blocking flock; Ok(false) when another process holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid open file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(err)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(true)
    }
}

/// Whether `file` is still the file at `path` (not one removed and replaced meanwhile).
fn same_file(file: &File, path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

impl RunDir {
    /// Takes the run directory's lock (creating the directory if needed).
    pub fn lock(&self) -> Result<RunLock> {
        let created_dir = !self.path.exists();
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("cannot create run dir {}", self.path.display()))?;
        let path = self.file(LOCK_FILE);
        let host = this_host();
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut previous = String::new();
            let _ = file.read_to_string(&mut previous);
            let mut parts = previous.split_whitespace();
            let (owner_pid, owner_host) = (parts.next(), parts.next().unwrap_or(""));
            let held =
                !try_lock(&file).with_context(|| format!("cannot lock {}", path.display()))?;
            if held || (!owner_host.is_empty() && owner_host != host) {
                bail!(
                    "{} is being written by another train-lm (pid {} on {}); wait for it to finish or stop it (if it is gone, delete {})",
                    self.path.display(),
                    owner_pid.unwrap_or("unknown"),
                    if owner_host.is_empty() { "this host" } else { owner_host },
                    path.display()
                );
            }
            // The previous holder may have removed the file between our open and our lock.
            if !same_file(&file, &path) {
                continue;
            }
            let notice = owner_pid.map(|pid| {
                format!(
                    "notice: {} was left by process {pid}, which is no longer running; taking it over",
                    path.display()
                )
            });
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{} {host}", std::process::id())
                .and_then(|_| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            return Ok(RunLock {
                path,
                _file: file,
                created_dir,
                notice,
            });
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so no one locks a file that is about to disappear; the
        // kernel releases the lock when `_file` closes, after this.
        let _ = std::fs::remove_file(&self.path);
        if self.created_dir {
            // A run that stopped before writing anything leaves no empty folder behind.
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_stale_locks_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let lock = run.lock().unwrap();
        assert!(lock.notice.is_none());
        let err = run.lock().unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("run.lock"),
            "{err}"
        );
        drop(lock);
        assert!(!run.file(LOCK_FILE).exists());
        // The folder it made for nothing is gone too; a folder that was there stays.
        assert!(!run.path.exists());
        std::fs::create_dir_all(&run.path).unwrap();
        drop(run.lock().unwrap());
        assert!(run.path.is_dir());

        // A lock file nobody holds (its process died): taken over, with a notice.
        std::fs::write(run.file(LOCK_FILE), format!("4194305 {}\n", this_host())).unwrap();
        let lock = run.lock().unwrap();
        assert!(
            lock.notice.as_deref().unwrap().contains("4194305"),
            "{:?}",
            lock.notice
        );
        drop(lock);

        // Another host's lock is never taken over.
        std::fs::write(run.file(LOCK_FILE), "1 some-other-host\n").unwrap();
        let err = run.lock().unwrap_err().to_string();
        assert!(err.contains("pid 1 on some-other-host"), "{err}");
    }
}
