//! A file through which rank 0 hands the other ranks a few bytes (NCCL's unique id) when no
//! MPI launcher is there to broadcast them: a torchrun-style launch, where every rank is told
//! only `RANK`, `WORLD_SIZE` and `LOCAL_RANK`. The path must be on a filesystem every rank
//! sees (one node: /tmp; several: a shared home or scratch folder) and new to this job.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::DistError;

/// The variable that names the rendezvous file.
pub const ID_FILE_VAR: &str = "DYNACT_NCCL_ID_FILE";

/// Writes `bytes` (as hex) at `path` for the other ranks: whole, to a temporary name that is
/// then linked into place, so a reader never sees part of it. Refuses a path that exists: it
/// is left over from another job, whose id the other ranks may already have read.
pub fn publish(path: &Path, bytes: &[u8]) -> Result<(), DistError> {
    let io = |e: std::io::Error| DistError::Rendezvous {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let tmp = temporary_name(path);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    f.write_all(hex.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io)?;
    // A hard link, unlike a rename, fails when the path exists (even one made a moment ago).
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(DistError::RendezvousExists {
                path: path.to_path_buf(),
            })
        }
        other => other.map_err(io),
    }
}

/// The bytes rank 0 published at `path`, waiting up to `timeout` for them to appear.
pub fn await_published(path: &Path, timeout: Duration) -> Result<Vec<u8>, DistError> {
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) => return decode(text.trim()).ok_or(DistError::Rendezvous {
                path: path.to_path_buf(),
                why: "it does not hold what rank 0 writes (hex digits); remove it and start the job again".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DistError::Rendezvous {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })
            }
        }
        if start.elapsed() > timeout {
            return Err(DistError::RendezvousTimeout {
                path: path.to_path_buf(),
                seconds: timeout.as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the file once every rank has read it (after the collective that used the bytes).
pub fn retire(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn decode(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_ranks_read_what_rank_0_published_even_when_it_comes_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nccl-id");
        let id: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        let (p, bytes) = (path.clone(), id.clone());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            publish(&p, &bytes).unwrap();
        });
        let got = await_published(&path, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(got, id);
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        retire(&path);
        assert!(!path.exists());
    }

    #[test]
    fn a_file_left_by_another_job_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nccl-id");
        std::fs::write(&path, "00ff").unwrap();
        let err = publish(&path, &[1, 2]).unwrap_err().to_string();
        assert!(
            err.contains("already exists") && err.contains("nccl-id"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "00ff");
    }

    #[test]
    fn waiting_ends_with_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never");
        let err = await_published(&path, Duration::from_millis(120)).unwrap_err();
        assert!(matches!(err, DistError::RendezvousTimeout { .. }));
        assert!(err.to_string().contains("never"), "{err}");
        std::fs::write(&path, "0g").unwrap();
        let err = await_published(&path, Duration::from_millis(120)).unwrap_err();
        assert!(err.to_string().contains("hex digits"), "{err}");
    }
}
