//! `train-lm --tensorboard` writes TensorBoard event files into the run directory: every logged
//! step's numbers and every evaluation's, the same as metrics.jsonl and eval.jsonl (as f32,
//! TensorBoard's scalar type), read back by this project's reader and, where Python has the
//! `tensorboard` package (`$DYNACT_PYTHON`, else `python3`), by TensorBoard's own. A resumed run
//! writes a second file that starts where it goes on.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use dynact_run::tensorboard::{event_files, read_scalars};
use dynact_run::{EvalRecord, MetricsRecord, RunDir};

fn python() -> String {
    std::env::var("DYNACT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Every scalar of the run's event files as (tag, step) -> value, the later file's winning.
fn scalars(run: &Path) -> BTreeMap<(String, u64), f32> {
    let mut all = BTreeMap::new();
    for file in event_files(run).unwrap() {
        for s in read_scalars(&file).unwrap() {
            all.insert((s.tag, s.step), s.value);
        }
    }
    all
}

/// TensorBoard's reader over the run directory, as {tag: {step: value}}, or None without it.
fn tensorboard_reads(run: &Path) -> Option<BTreeMap<String, BTreeMap<u64, f32>>> {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(run)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named 'tensorboard'"),
            "TensorBoard's reader failed: {err}"
        );
        eprintln!(
            "skipped TensorBoard's own reader: {} has no tensorboard",
            python()
        );
        return None;
    }
    let parsed: BTreeMap<String, BTreeMap<String, f32>> =
        serde_json::from_slice(&out.stdout).unwrap();
    Some(
        parsed
            .into_iter()
            .map(|(tag, by_step)| {
                let by_step = by_step
                    .into_iter()
                    .map(|(s, v)| (s.parse().unwrap(), v))
                    .collect();
                (tag, by_step)
            })
            .collect(),
    )
}

#[test]
fn training_writes_what_it_logs_as_tensorboard_scalars_and_a_resume_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let trained = finish(
        tiny_train_lm(dir.path())
            .args(["--steps", "6", "--run-dir", "run", "--tensorboard"])
            .args(["--ffn", "dynactglu", "--eval-at", "3,6"])
            .args([
                "--set",
                "train.log_every=2",
                "--set",
                "model.num_hidden_layers=2",
            ])
            .current_dir(dir.path()),
    );
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    let run = RunDir::new(dir.path().join("run"));
    assert_eq!(event_files(&run.path).unwrap().len(), 1);
    let got = scalars(&run.path);
    let metrics: Vec<MetricsRecord> = records(&run.file("metrics.jsonl"));
    let evals: Vec<EvalRecord> = records(&run.file("eval.jsonl"));
    assert_eq!(metrics.len(), 3);
    let at = |tag: &str, step: u64| -> f32 {
        *got.get(&(tag.to_string(), step))
            .unwrap_or_else(|| panic!("no {tag} at step {step} in {got:?}"))
    };
    for m in &metrics {
        assert_eq!(at("train/loss", m.step), m.loss);
        assert_eq!(at("train/lr", m.step), m.lr as f32);
        assert_eq!(at("train/grad_norm", m.step), m.grad_norm as f32);
        let alpha = m.alpha.as_ref().expect("dynActGLU logs alpha");
        assert_eq!(alpha.len(), 2);
        for (layer, a) in alpha.iter().enumerate() {
            assert_eq!(
                at(&format!("dynact/alpha/layer_{layer:02}"), m.step),
                *a as f32
            );
        }
        let beta = m.beta.as_ref().unwrap();
        assert_eq!(at("dynact/beta/layer_01", m.step), beta[1] as f32);
    }
    for e in &evals {
        assert_eq!(at("eval/val_ce", e.step), e.val_ce as f32);
        assert_eq!(at("eval/val_ppl", e.step), e.val_ppl as f32);
    }
    if let Some(tb) = tensorboard_reads(&run.path) {
        assert_eq!(tb["train/loss"].len(), 3);
        for ((tag, step), value) in &got {
            assert_eq!(tb[tag][step], *value, "{tag} at {step}");
        }
    }

    // Resumed to 8 steps: a second file, for steps 7 and 8.
    let resumed = finish(
        Command::new(env!("CARGO_BIN_EXE_train-lm"))
            .args(["--resume", "run", "--steps", "8"])
            .current_dir(dir.path()),
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(event_files(&run.path).unwrap().len(), 2);
    let got = scalars(&run.path);
    let metrics: Vec<MetricsRecord> = records(&run.file("metrics.jsonl"));
    let last = metrics.last().unwrap();
    assert_eq!(last.step, 8);
    assert_eq!(got[&("train/loss".to_string(), 8)], last.loss);
    if let Some(tb) = tensorboard_reads(&run.path) {
        assert_eq!(
            tb["train/loss"].keys().copied().collect::<Vec<_>>(),
            vec![2, 4, 6, 8]
        );
    }
}
