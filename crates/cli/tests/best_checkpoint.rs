//! The checkpoint with the lowest val_ppl so far is named in the run directory's `best` and
//! never pruned, whatever `train.keep_last` says; `eval-ppl RUN --step best` scores it.

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

    // eval-ppl --step best scores that checkpoint, reproducing its logged val_ppl.
    let v = json_of(&eval_ppl(
        &["run", "--step", "best", "--json"],
        dir.path(),
        &[],
    ));
    assert_eq!(v["step"], lowest);
    let logged = evals.iter().find(|e| e.step == lowest).unwrap().val_ppl;
    let ppl = v["ppl"].as_f64().unwrap();
    assert!((ppl - logged).abs() < 1e-5 * logged, "{ppl} vs {logged}");
    // Its checkpoint folder with --step best agrees; another checkpoint does not.
    let best_dir = format!("run/{}", step_dir_name(lowest));
    let v = json_of(&eval_ppl(
        &[&best_dir, "--step", "best", "--json"],
        dir.path(),
        &[],
    ));
    assert_eq!(v["step"], lowest);
    if lowest != 12 {
        let newest = format!("run/{}", step_dir_name(12));
        let r = eval_ppl(&[&newest, "--step", "best"], dir.path(), &[]);
        assert_error(&r, &["--step best", "different checkpoints"]);
    }
    // A run without `best` says so, and how to go on.
    std::fs::remove_file(run.file("best")).unwrap();
    let r = eval_ppl(&["run", "--step", "best"], dir.path(), &[]);
    assert_error(&r, &["no best checkpoint yet", "--step N"]);
    // Neither a number nor `best`: clap's one line names the choice.
    let r = eval_ppl(&["run", "--step", "good"], dir.path(), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("neither a step number nor `best`"),
        "{}",
        r.stderr
    );
}
