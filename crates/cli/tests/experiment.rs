//! `train-lm --ffn swiglu,dynactglu --seeds ...` runs the grid, compares it, and picks up where
//! it stopped when run again.

mod common;

use std::process::Command;

fn grid_command(dir: &std::path::Path) -> Command {
    let mut cmd = common::tiny_train_lm(dir);
    cmd.args([
        "--ffn",
        "swiglu,dynactglu",
        "--seeds",
        "0,1",
        "--jobs",
        "2",
        "--steps",
        "4",
    ])
    .arg("--run-dir")
    .arg(dir.join("exp"))
    .args(["--set", "optim.warmup_steps=1", "--set", "eval.eval_at=[2]"]);
    cmd
}

#[test]
fn grid_runs_every_cell_compares_them_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = grid_command(tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // One line per finished evaluation of each run (two each).
    assert_eq!(stderr.matches("val_ppl").count(), 8, "{stderr}");
    assert!(
        stderr.contains("dynactglu-seed1: step 4  val_ppl"),
        "{stderr}"
    );
    let exp = tmp.path().join("exp");
    for run in [
        "swiglu-seed0",
        "dynactglu-seed0",
        "swiglu-seed1",
        "dynactglu-seed1",
    ] {
        let evals = std::fs::read_to_string(exp.join(run).join("eval.jsonl")).unwrap();
        assert_eq!(evals.lines().count(), 2, "{run}: {evals}");
    }
    let table = std::fs::read_to_string(exp.join("comparison").join("comparison.md")).unwrap();
    assert!(
        table.contains("dynactglu") && table.contains("swiglu"),
        "{table}"
    );
    // Both FFNs of one seed start from the same weights and see the same batches: their
    // first logged losses are equal (dynActGLU at alpha=1, beta=0 is SwiGLU).
    let first_loss = |run: &str| -> f64 {
        let m = std::fs::read_to_string(exp.join(run).join("metrics.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(m.lines().next().unwrap()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    assert!((first_loss("swiglu-seed1") - first_loss("dynactglu-seed1")).abs() < 1e-5);
    assert!((first_loss("swiglu-seed0") - first_loss("swiglu-seed1")).abs() > 1e-6);

    // Running the same command again finds every run finished.
    let again = grid_command(tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(stderr.matches("already finished").count(), 4, "{stderr}");
}

#[test]
fn a_grid_with_missing_data_stops_before_any_run_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let r = common::finish(grid_command(tmp.path()).args(["--data", "no/such/corpus.txt"]));
    common::assert_error(&r, &["no/such/corpus.txt", "no such file"]);
    assert!(!tmp.path().join("exp").join("swiglu-seed0").exists());
}
