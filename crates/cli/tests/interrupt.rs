//! Ctrl-C: train-lm finishes the step, saves a checkpoint, says how to resume, and the resumed
//! run completes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn train_lm(dir: &std::path::Path) -> Command {
    let mut cmd = common::tiny_train_lm(dir);
    // Far more steps than the test waits for, so the interrupt always lands mid-run.
    cmd.arg("--run-dir")
        .arg(dir.join("run"))
        .args(["--steps", "1000000"])
        .args(["--set", "eval.eval_at=[]", "--set", "optim.warmup_steps=2"]);
    cmd
}

#[test]
fn ctrl_c_saves_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let child = train_lm(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way, then interrupt as a terminal would.
    let metrics = tmp.path().join("run").join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("resume with: train-lm --resume"),
        "{stderr}"
    );
    let latest = std::fs::read_to_string(tmp.path().join("run").join("latest")).unwrap();
    let stopped: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!(stopped >= 3, "stopped at {stopped}");

    // Resume, finishing a few steps later (a resumed run may change its length).
    let end = stopped + 5;
    let resumed = Command::new(env!("CARGO_BIN_EXE_train-lm"))
        .arg("--resume")
        .arg(tmp.path().join("run"))
        .args(["--steps", &end.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("at step {stopped}")), "{stderr}");
    let latest = std::fs::read_to_string(tmp.path().join("run").join("latest")).unwrap();
    assert_eq!(latest.trim(), format!("step-{end:06}"));
}
