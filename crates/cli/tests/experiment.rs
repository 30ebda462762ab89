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

/// A sweep over a key only dynActGLU reads: one SwiGLU run, one dynActGLU run per value, each
/// value really used, and each compared with SwiGLU in the report.
#[test]
fn a_sweep_crosses_its_values_with_the_ffns_that_read_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = common::tiny_train_lm(tmp.path());
    cmd.args([
        "--ffn",
        "swiglu,dynactglu",
        "--seeds",
        "0",
        "--sweep",
        "optim.dynact_lr_mult=1,30",
        "--steps",
        "4",
    ])
    .arg("--run-dir")
    .arg(tmp.path().join("exp"))
    .args(["--set", "optim.warmup_steps=1", "--set", "eval.eval_at=[2]"]);
    let r = common::finish(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let exp = tmp.path().join("exp");
    let mut runs: Vec<String> = std::fs::read_dir(&exp)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("eval.jsonl").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            "dynactglu-dynact_lr_mult=1-seed0",
            "dynactglu-dynact_lr_mult=30-seed0",
            "swiglu-seed0"
        ]
    );
    let run_toml = std::fs::read_to_string(exp.join(&runs[1]).join("run.toml")).unwrap();
    assert!(run_toml.contains("dynact_lr_mult = 30.0"), "{run_toml}");
    // Alpha and beta move about 30 times as far with 30 times their learning rate (Adam's
    // steps scale with it), so the value reached the optimizer.
    let moved = |run: &str| -> f64 {
        let m = std::fs::read_to_string(exp.join(run).join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(m.lines().last().unwrap()).unwrap();
        (last["alpha"][0].as_f64().unwrap() - 1.0).abs() + last["beta"][0].as_f64().unwrap().abs()
    };
    let (slow, fast) = (moved(&runs[0]), moved(&runs[1]));
    assert!(slow > 0.0 && fast > 10.0 * slow, "{slow} {fast}");

    let table = std::fs::read_to_string(exp.join("comparison").join("comparison.md")).unwrap();
    assert!(
        table.contains("## Each setting against SwiGLU with the same settings"),
        "{table}"
    );
    for value in ["1.0", "30.0"] {
        let row = format!(
            "| 4 | dynactglu (optim.dynact_lr_mult={value}) | swiglu (optim.dynact_lr_mult=n/a) |"
        );
        assert!(table.contains(&row), "{row} not in {table}");
    }
}

#[test]
fn bad_sweeps_stop_before_any_run_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--sweep", "optim.no_such_key=1,2"],
            &["optim.no_such_key"],
        ),
        (
            &["--ffn", "swiglu", "--sweep", "model.dynact.alpha_init=1,2"],
            &["model.dynact.alpha_init", "swiglu does not read"],
        ),
        (
            &["--sweep", "optim.lr=1e-3,3e-3", "--set", "optim.lr=1e-3"],
            &["optim.lr", "drop one"],
        ),
        (&["--sweep", "optim.lr"], &["--sweep optim.lr", "KEY=V1,V2"]),
    ];
    for (args, needles) in cases {
        let mut cmd = common::tiny_train_lm(tmp.path());
        cmd.arg("--run-dir").arg(tmp.path().join("exp")).args(args);
        common::assert_error(&common::finish(&mut cmd), needles);
        assert!(!tmp.path().join("exp").exists(), "{args:?}");
    }
}
