//! The checkpoint with the lowest val_ppl so far is named in the run directory's `best` and
//! never pruned, whatever `train.keep_last` says.

mod common;

use common::*;
use dynact_run::{step_dir_name, EvalRecord, RunDir};

#[test]
fn the_best_checkpoint_is_named_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let trained = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "12", "--run-dir", "run"])
            .args(["--set", "eval.eval_every=1", "--set", "train.keep_last=1"])
            // A constant, large step size, so that val_ppl goes up and down (on the machine
            // this was written on, the best is step 10 of 12).
            .args(["--set", "optim.lr=0.3", "--set", "optim.warmup_steps=0"])
            .args([
                "--set",
                "optim.schedule=\"wsd\"",
                "--set",
                "optim.decay_fraction=0.0",
            ])
            .current_dir(dir.path()),
    );
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    let run = RunDir::new(dir.path().join("run"));
    let evals: Vec<EvalRecord> = records(&run.file("eval.jsonl"));
    assert_eq!(
        evals.iter().map(|e| e.step).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<u64>>()
    );
    let lowest = evals
        .iter()
        .min_by(|a, b| a.val_ppl.total_cmp(&b.val_ppl))
        .unwrap()
        .step;
    assert_eq!(run.best_step(), Some(lowest));
    assert!(run.step_dir(lowest).join("model.safetensors").is_file());
    // keep_last = 1 keeps the newest; the best survives pruning besides it.
    let mut kept = run.checkpoint_steps().unwrap();
    let mut expected = vec![lowest, 12];
    expected.dedup();
    kept.sort_unstable();
    expected.sort_unstable();
    assert_eq!(kept, expected, "best is {}", step_dir_name(lowest));
}
