//! The `compare-runs` binary end to end, on run directories written by hand in the layout
//! `train-lm` uses (crates/compare/tests/common), and its one-line errors.

#[path = "../../compare/tests/common/mod.rs"]
mod runs;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use runs::two_groups;

#[test]
fn binary_end_to_end_and_errors() {
    let exe = env!("CARGO_BIN_EXE_compare-runs");
    let tmp = tempfile::tempdir().unwrap();
    let dirs = two_groups(tmp.path());
    let out = tmp.path().join("cmp");
    let o = Command::new(exe)
        .args(&dirs)
        .arg("--out")
        .arg(&out)
        .arg("--no-plots")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("# Run comparison") && stdout.contains("| 220 | 1.36x |"),
        "{stdout}"
    );
    assert!(out.join("comparison.md").is_file() && out.join("summary.csv").is_file());
    assert!(!out.join("val_ppl.png").exists());

    // Errors: non-zero exit, one "error:" line, no panic.
    let not_eval = tmp.path().join("fresh-run");
    fs::create_dir_all(&not_eval).unwrap();
    for args in [
        vec![],
        vec![not_eval.display().to_string()],
        vec![
            dirs[0].display().to_string(),
            "--baseline".into(),
            "nothing".into(),
        ],
    ] {
        let o = Command::new(exe)
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_experiment_folder_stands_for_its_runs_and_other_paths_are_skipped() {
    let exe = env!("CARGO_BIN_EXE_compare-runs");
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("exp");
    let dirs = two_groups(&exp);
    // What a grid leaves beside its runs.
    fs::write(exp.join("swiglu-s1.log"), "log").unwrap();
    fs::create_dir_all(exp.join("configs")).unwrap();
    let table = |args: Vec<PathBuf>| {
        let o = Command::new(exe)
            .args(&args)
            .arg("--out")
            .arg(tmp.path().join("cmp"))
            .arg("--no-plots")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        (String::from_utf8_lossy(&o.stdout).into_owned(), stderr)
    };
    // The folder's runs are taken in sorted order.
    let mut dirs = dirs;
    dirs.sort();
    let (direct, _) = table(dirs.clone());
    let (folder, notes) = table(vec![exp.clone()]);
    assert_eq!(folder, direct);
    assert!(
        notes.contains("comparing the 4 run directories inside it"),
        "{notes}"
    );
    // A shell glob like exp/*-s* also matches the log file.
    let mut globbed = dirs.clone();
    globbed.push(exp.join("swiglu-s1.log"));
    let (with_log, notes) = table(globbed);
    assert_eq!(with_log, direct);
    assert!(
        notes.contains("swiglu-s1.log is not a run directory; skipped"),
        "{notes}"
    );
}
