//! `eval.train_tokens` scores a fixed slice of the training stream at every evaluation, beside
//! val (dropout off, as val is scored), and changes nothing else of the run.

mod common;

use common::*;
use dynact_run::{EvalRecord, MetricsRecord};

#[test]
fn the_training_split_is_scored_beside_val_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let train = |name: &str, extra: &[&str]| {
        let r = finish(
            tiny_train_lm(dir.path())
                .args(["--steps", "12", "--eval-at", "4,12", "--run-dir", name])
                .args(extra)
                .current_dir(dir.path()),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    train("plain", &[]);
    let with = train("with", &["--set", "eval.train_tokens=256"]);
    assert!(with.stderr.contains("train_ce"), "{}", with.stderr);

    let plain_evals: Vec<EvalRecord> = records(&dir.path().join("plain/eval.jsonl"));
    let evals: Vec<EvalRecord> = records(&dir.path().join("with/eval.jsonl"));
    assert_eq!(evals.len(), 2);
    for (a, b) in plain_evals.iter().zip(&evals) {
        assert_eq!(a.train_ce, None);
        // The same run: val scores and training losses to the bit.
        assert_eq!(a.val_ce, b.val_ce, "step {}", a.step);
        let ce = b.train_ce.expect("train_ce at every evaluation");
        assert!(ce.is_finite() && ce > 0.0, "{ce}");
        let ppl = b.train_ppl.unwrap();
        assert!((ppl - ce.exp()).abs() <= 1e-12 * ppl, "{ppl} vs exp({ce})");
    }
    let losses = |run: &str| -> Vec<f32> {
        records::<MetricsRecord>(&dir.path().join(format!("{run}/metrics.jsonl")))
            .iter()
            .map(|m| m.loss)
            .collect()
    };
    assert_eq!(losses("plain"), losses("with"));
    // The model learns its training data: the slice scores better at step 12 than at step 4.
    assert!(
        evals[1].train_ce < evals[0].train_ce,
        "{:?} then {:?}",
        evals[0].train_ce,
        evals[1].train_ce
    );

    // Less than one window is refused, naming the key and the fix.
    let bad = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "2", "--set", "eval.train_tokens=5"])
            .current_dir(dir.path()),
    );
    assert_error(
        &bad,
        &["eval.train_tokens 5 is less than one window of train.seq_len 32"],
    );
}
