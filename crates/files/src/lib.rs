//! dynact-files: files written whole. Checkpoints, configs, token shards and logs rewritten in
//! place all go through [`atomic_write`]: a reader (or a run resumed after a crash) sees the old
//! file or the complete new one, never a torn one. [`free_space`] and [`describe_write_error`]
//! turn a full disk into a sentence that says how much room was missing.

use std::fs::File;
use std::io;
use std::path::Path;

/// Writes a file through `write`, given a temporary path in the same folder (named after the
/// file and this process, so concurrent writers do not collide), fsyncs it, renames it over
/// `path` and fsyncs the folder. On failure the temporary file is removed and `path` is
/// untouched. The folder is created if missing.
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        write(&tmp)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = dir {
            // Persist the rename itself; not every platform can open a folder, so best effort.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Atomically writes `bytes` to `path`.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write(path, |tmp| std::fs::write(tmp, bytes))
}

/// Bytes available to this user on the filesystem holding `path` (or its nearest existing
/// ancestor); None where it cannot be asked.
pub fn free_space(path: &Path) -> Option<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(probe.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `12.3 MB`.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// For a write that failed because the disk is full: how much it needed and how much is free
/// where it was going; None for other errors.
pub fn describe_write_error(err: &io::Error, path: &Path, needed: u64) -> Option<String> {
    let full = err.kind() == io::ErrorKind::StorageFull || err.raw_os_error() == Some(28);
    if !full {
        return None;
    }
    let free = free_space(path).map_or("unknown".to_string(), megabytes);
    Some(format!(
        "the disk is full: writing {} needs about {}, and {free} is free there; free some space or point the run elsewhere",
        path.display(),
        megabytes(needed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        atomic_write_bytes(&path, b"one").unwrap();
        atomic_write_bytes(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");

        // A writer that fails half-way leaves the old file and no temporary behind.
        let err = atomic_write(&path, |tmp| {
            std::fs::write(tmp, b"thr")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
