//! One writer per run directory. `run.lock` is created atomically (create-new) and holds the
//! owner's pid and host; a second train-lm (a new run or a resume) is refused while the owner
//! lives. A lock left by a process that is gone (SIGKILL, a crash) on this host is taken over
//! with a notice; one from another host is never guessed about. The lock is removed when the
//! run ends, whichever way it ends short of being killed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::layout::RunDir;

pub const LOCK_FILE: &str = "run.lock";

/// Held while a process writes a run directory; removing the lock file on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Set when a stale lock was taken over: what to tell the user.
    pub notice: Option<String>,
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` runs on this machine (Linux: /proc; elsewhere assumed alive).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl RunDir {
    /// Takes the run directory's lock (creating the directory if needed).
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.path)
            .with_context(|| format!("cannot create run dir {}", self.path.display()))?;
        let path = self.file(LOCK_FILE);
        let (me, host) = (std::process::id(), this_host());
        let mut notice = None;
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{me} {host}")
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(RunLock { path, notice });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = text.split_whitespace();
                    let pid: Option<u32> = parts.next().and_then(|p| p.parse().ok());
                    let owner_host = parts.next().unwrap_or("").to_string();
                    match pid {
                        Some(pid) if owner_host == host && !alive(pid) => {
                            notice = Some(format!(
                                "notice: {} was left by process {pid}, which is no longer running; taking it over",
                                path.display()
                            ));
                            std::fs::remove_file(&path).with_context(|| {
                                format!("cannot remove the stale lock {}", path.display())
                            })?;
                        }
                        _ => bail!(
                            "{} is being written by another train-lm (pid {} on {}); wait for it to finish or stop it (if it is gone, delete {})",
                            self.path.display(),
                            pid.map_or("unknown".into(), |p| p.to_string()),
                            if owner_host.is_empty() { "an unknown host" } else { &owner_host },
                            path.display()
                        ),
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!(
            "cannot take {}: another process keeps creating it",
            path.display()
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only our own lock: a lock another process took over stays.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
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
        // The folder it made for nothing is gone too.
        assert!(!run.path.exists());
        std::fs::create_dir_all(&run.path).unwrap();

        // A pid that cannot be running (above Linux's pid_max) on this host: stale.
        std::fs::write(run.file(LOCK_FILE), format!("4194305 {}\n", this_host())).unwrap();
        let lock = run.lock().unwrap();
        assert!(
            lock.notice.as_deref().unwrap().contains("4194305"),
            "{:?}",
            lock.notice
        );
        drop(lock);

        // Another host's lock is never taken over.
        std::fs::create_dir_all(&run.path).unwrap();
        std::fs::write(run.file(LOCK_FILE), "1 some-other-host\n").unwrap();
        let err = run.lock().unwrap_err().to_string();
        assert!(err.contains("pid 1 on some-other-host"), "{err}");
    }
}
