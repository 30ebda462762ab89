//! Helpers the fuzz targets share: a scratch folder per process and a way to cut one input
//! into the several files a reader expects.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A scratch folder for this fuzzing process (in /dev/shm when there is one, for speed).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm).expect("a scratch folder in /dev/shm")
        } else {
            tempfile::tempdir().expect("a scratch folder")
        }
    })
    .path()
}

/// A fresh, empty sub-folder of the scratch folder.
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = scratch().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("a scratch sub-folder");
    d
}

/// `data` cut at 0xFF bytes (never part of UTF-8 text) into `n` parts; missing parts are empty.
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0xff).collect();
    out.resize(n, &[]);
    out
}
