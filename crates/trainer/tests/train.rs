//! train-lm's library path on small configs: the loss falls, resuming is exact to the bit,
//! evaluations happen exactly at the listed steps, alpha and beta move and are logged, and
//! failures (a crash mid-save, a non-finite loss, a clashing run dir) lose nothing.

use std::path::Path;

use dynact_model::{Checkpoint, FfnKind};
use dynact_run::{RunDir, EVAL_FILE, METRICS_FILE};
use dynact_trainer::config::{ConfigBuilder, RunConfig};
use dynact_trainer::train::{run, RunOptions};

fn small(dir: &Path, ffn: FfnKind, steps: u64) -> RunConfig {
    let mut b = ConfigBuilder::new();
    for kv in [
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_hidden_layers=2",
        "model.num_attention_heads=2",
        "model.num_key_value_heads=2",
        "model.max_position_embeddings=64",
        "data.builtin_bytes=120000",
        "train.batch_size=4",
        "train.seq_len=32",
        "train.log_every=1",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "eval.batch_size=64",
    ] {
        b.set(kv).unwrap();
    }
    b.set(&format!("train.steps={steps}")).unwrap();
    b.set(&format!("model.ffn={}", ffn.name())).unwrap();
    b.set(&format!("run_dir=\"{}\"", dir.join("run").display()))
        .unwrap();
    b.set(&format!(
        "data.cache_dir=\"{}\"",
        dir.join("cache").display()
    ))
    .unwrap();
    b.build().unwrap().0
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn validation_perplexity_falls_and_evals_happen_exactly_at_the_listed_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(tmp.path(), FfnKind::Swiglu, 60);
    cfg.eval.eval_at = vec![1, 25];
    cfg.eval.eval_every = 20;
    let report = run(cfg.clone(), quiet()).unwrap();
    let evals = jsonl(&cfg.run_dir().join(EVAL_FILE));
    let steps: Vec<u64> = evals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 20, 25, 40, 60]);
    let first = evals[0]["val_ppl"].as_f64().unwrap();
    let last = evals[4]["val_ppl"].as_f64().unwrap();
    assert!(last < 0.6 * first, "val_ppl {first} -> {last}");
    assert_eq!(report.evals.len(), 5);
    // Checkpoints: every eval_at step kept, plus the newest keep_last (2).
    let kept = RunDir::new(cfg.run_dir()).checkpoint_steps().unwrap();
    assert_eq!(kept, vec![1, 25, 40, 60]);
}

#[test]
fn a_short_run_beats_the_unigram_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(tmp.path(), FfnKind::Dynactglu, 150);
    cfg.train.batch_size = 8;
    cfg.optim.lr = 1e-2;
    cfg.optim.min_lr = 1e-3;
    let report = run(cfg, quiet()).unwrap();
    let last = report.evals.last().unwrap().2.ppl;
    assert!(
        last < 0.75 * report.unigram_ppl,
        "val_ppl {last} vs unigram {}",
        report.unigram_ppl
    );
}

#[test]
fn resumed_run_reproduces_every_loss_bit_for_bit() {
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let tmp_a = tempfile::tempdir().unwrap();
        let tmp_b = tempfile::tempdir().unwrap();
        let mut a_cfg = small(tmp_a.path(), ffn, 10);
        a_cfg.model.dropout = 0.1; // dropout masks must replay too
        a_cfg.train.grad_accum = 2;
        let mut b_cfg = small(tmp_b.path(), ffn, 10);
        b_cfg.model = a_cfg.model.clone();
        b_cfg.train.grad_accum = 2;
        let full = run(a_cfg, quiet()).unwrap();

        let first = run(
            b_cfg.clone(),
            RunOptions {
                stop_after: Some(4),
                ..quiet()
            },
        )
        .unwrap();
        assert!(first.interrupted);
        assert_eq!(first.last_step, 4);
        // As if the interrupted run had logged a step after its last checkpoint.
        RunDir::new(b_cfg.run_dir())
            .append_jsonl(METRICS_FILE, &serde_json::json!({"step": 6, "loss": 0.0}))
            .unwrap();
        let b_cfg_dir = b_cfg.run_dir();
        let resumed = run(
            b_cfg,
            RunOptions {
                resume: true,
                ..quiet()
            },
        )
        .unwrap();
        assert_eq!(resumed.losses.first().unwrap().0, 5);
        let expected: Vec<(u64, u32)> = full.losses[4..]
            .iter()
            .map(|(s, l)| (*s, l.to_bits()))
            .collect();
        let got: Vec<(u64, u32)> = resumed
            .losses
            .iter()
            .map(|(s, l)| (*s, l.to_bits()))
            .collect();
        assert_eq!(got, expected, "{ffn:?}: losses after resume differ");
        let logged: Vec<u64> = jsonl(&b_cfg_dir.join(METRICS_FILE))
            .iter()
            .map(|m| m["step"].as_u64().unwrap())
            .collect();
        assert_eq!(logged, (1..=10).collect::<Vec<_>>(), "metrics.jsonl steps");
    }
}

#[test]
fn dynact_parameters_move_and_are_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small(tmp.path(), FfnKind::Dynactglu, 20);
    run(cfg.clone(), quiet()).unwrap();
    let metrics = jsonl(&cfg.run_dir().join(METRICS_FILE));
    assert_eq!(metrics.len(), 20);
    let last = metrics.last().unwrap();
    let alpha: Vec<f64> = serde_json::from_value(last["alpha"].clone()).unwrap();
    let beta: Vec<f64> = serde_json::from_value(last["beta"].clone()).unwrap();
    assert_eq!((alpha.len(), beta.len()), (2, 2));
    assert!(
        alpha.iter().all(|a| (a - 1.0).abs() > 1e-3),
        "alpha did not move: {alpha:?}"
    );
    assert!(
        beta.iter().all(|b| b.abs() > 1e-3),
        "beta did not move: {beta:?}"
    );
    for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(last.get(key).is_some(), "metrics.jsonl lacks {key}");
    }
}

#[test]
fn a_save_that_fails_before_renaming_leaves_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small(tmp.path(), FfnKind::Dynactglu, 4);
    run(cfg.clone(), quiet()).unwrap();
    let rd = RunDir::new(cfg.run_dir());
    let before = rd.latest_checkpoint().unwrap().unwrap();
    let err = rd
        .save_checkpoint(
            5,
            0,
            |dir| {
                std::fs::write(dir.join("model.safetensors"), b"half-written")?;
                Ok(())
            },
            || anyhow::bail!("simulated crash"),
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("previous checkpoint is intact"));
    assert_eq!(rd.latest_checkpoint().unwrap().unwrap(), before);
    assert_eq!(rd.checkpoint_steps().unwrap(), vec![4]);
    Checkpoint::load_dir(&before, &candle_core::Device::Cpu).unwrap();
    // Nothing half-written is left lying around.
    let names: Vec<String> = std::fs::read_dir(&rd.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn clashing_run_dirs_and_resume_mismatches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small(tmp.path(), FfnKind::Swiglu, 3);
    run(cfg.clone(), quiet()).unwrap();
    let err = run(cfg.clone(), quiet()).unwrap_err().to_string();
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );

    let mut other = cfg.clone();
    other.model.hidden_size = 64;
    other.train.steps = 4;
    let err = run(
        other,
        RunOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.hidden_size"), "{err}");

    let mut reseeded = cfg.clone();
    reseeded.seed = 5;
    let err = run(
        reseeded,
        RunOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("seed is 0 in the run but 5"), "{err}");

    // Running longer is a legitimate change on resume.
    let mut longer = cfg.clone();
    longer.train.steps = 5;
    let report = run(
        longer,
        RunOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(report.last_step, 5);
}

#[test]
fn a_nonfinite_loss_stops_the_run_naming_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(tmp.path(), FfnKind::Swiglu, 6);
    cfg.eval.eval_at = vec![1];
    cfg.optim.lr = 1e35;
    cfg.optim.weight_decay = 0.0;
    cfg.optim.min_lr = 0.0;
    cfg.optim.warmup_steps = 0;
    cfg.optim.grad_clip = 0.0;
    let err = format!("{:#}", run(cfg.clone(), quiet()).unwrap_err());
    assert!(
        err.contains("non-finite") && err.contains("at step"),
        "{err}"
    );
    // The checkpoint of step 1 is still there and loads.
    let latest = RunDir::new(cfg.run_dir())
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    Checkpoint::load_dir(&latest, &candle_core::Device::Cpu).unwrap();
}

#[test]
fn skipped_nonfinite_batches_still_evaluate_and_save() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(tmp.path(), FfnKind::Swiglu, 4);
    cfg.eval.eval_at = vec![2];
    cfg.optim.lr = 1e35;
    cfg.optim.weight_decay = 0.0;
    cfg.optim.warmup_steps = 0;
    cfg.optim.grad_clip = 0.0;
    cfg.train.on_nonfinite = dynact_trainer::config::NonFinitePolicy::Skip;
    let report = run(cfg.clone(), quiet()).unwrap();
    assert_eq!(report.last_step, 4);
    let steps: Vec<u64> = report.evals.iter().map(|e| e.0).collect();
    assert_eq!(steps, vec![2, 4]);
    assert_eq!(
        RunDir::new(cfg.run_dir()).checkpoint_steps().unwrap(),
        vec![2, 4]
    );
}
