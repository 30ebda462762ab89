//! Run directories written by earlier versions of train-lm: a version-0 run (the committed
//! fixture, from before the format carried versions) resumes and continues as an uninterrupted
//! run of today's code does, to float rounding; a run from a newer format is refused, naming both
//! versions.

mod common;

use std::path::Path;

use candle_core::Device;

use common::records;
use dynact_run::{EvalRecord, MetricsRecord};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn fixture_copy(root: &Path) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-v0");
    let run = root.join("run-v0");
    copy_dir(&fixture, &run);
    run
}

fn train_lm(cwd: &Path, args: &[&str]) -> common::Run {
    common::run(env!("CARGO_BIN_EXE_train-lm"), args, cwd, &[])
}

#[test]
fn a_version_0_run_resumes_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fixture_copy(tmp.path());
    let resumed = train_lm(tmp.path(), &["--resume", "run-v0"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stderr.contains("resuming"), "{}", resumed.stderr);

    // The same config from step 0, never interrupted. A version-0 run drew its dropout masks
    // from ChaCha8 and ran its batches whole, and its resume keeps doing so; a new run must ask
    // for that generator and one row shard.
    let fresh = train_lm(
        tmp.path(),
        &[
            "--config",
            "run-v0/run.toml",
            "--run-dir",
            "fresh",
            "--set",
            "train.dropout_rng=\"chacha8\"",
            "--set",
            "train.row_shards=1",
        ],
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    let fresh_dir = tmp.path().join("fresh");

    // Steps 1-3 of the fixture were computed by the code of its day; the fused kernels have
    // since changed the order of some float sums, so its steps agree with today's to rounding,
    // not to the bit (a run of today resumes bit for bit: tests/train.rs). A misread file (the
    // optimizer's moments, the loader's position, the dropout generator) is off by far more.
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * y.abs().max(1e-3);
    let a: Vec<MetricsRecord> = records(&run.join("metrics.jsonl"));
    let b: Vec<MetricsRecord> = records(&fresh_dir.join("metrics.jsonl"));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        let at = x.step;
        assert!(
            close(x.loss as f64, y.loss as f64),
            "loss at step {at}: {} against {}",
            x.loss,
            y.loss
        );
        assert!(
            close(x.grad_norm, y.grad_norm),
            "gradient norm at step {at}"
        );
        for (p, q) in [(&x.alpha, &y.alpha), (&x.beta, &y.beta)] {
            let (p, q) = (p.as_ref().unwrap(), q.as_ref().unwrap());
            assert!(
                p.iter().zip(q).all(|(p, q)| (p - q).abs() < 1e-5),
                "alpha or beta at step {at}"
            );
        }
    }
    let ea: Vec<EvalRecord> = records(&run.join("eval.jsonl"));
    let eb: Vec<EvalRecord> = records(&fresh_dir.join("eval.jsonl"));
    assert_eq!(ea.last().unwrap().step, 6);
    assert!(close(
        ea.last().unwrap().val_ppl,
        eb.last().unwrap().val_ppl
    ));
    let weights = |dir: &Path| {
        candle_core::safetensors::load(dir.join("step-000006/model.safetensors"), &Device::Cpu)
            .unwrap()
    };
    let (wa, wb) = (weights(&run), weights(&fresh_dir));
    assert_eq!(wa.len(), wb.len());
    for (name, t) in &wa {
        let diff = common::max_abs(&(t - &wb[name]).unwrap());
        assert!(diff < 1e-5, "{name} differs by {diff}");
    }

    // The resumed run writes today's versions.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("step-000006/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["format_version"], dynact_run::TRAINER_STATE_VERSION);
}

#[test]
fn a_run_from_a_newer_format_is_refused_with_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let run = fixture_copy(tmp.path());
    let state_path = run.join("step-000003/trainer_state.json");
    let text = std::fs::read_to_string(&state_path).unwrap();
    std::fs::write(
        &state_path,
        text.replacen('{', "{\"format_version\": 7,", 1),
    )
    .unwrap();
    let r = train_lm(tmp.path(), &["--resume", "run-v0"]);
    common::assert_error(&r, &["format_version 7", "reads up to 1"]);

    // The optimizer file carries its own version.
    let run = fixture_copy(&tmp.path().join("second"));
    let opt = run.join("step-000003/optimizer.safetensors");
    let bytes = std::fs::read(&opt).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    let mut named: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    dynact_model::checkpoint::save_tensors_with_metadata(
        &named,
        &[("dynact_optimizer", "adamw"), ("format_version", "5")],
        &opt,
    )
    .unwrap();
    let r = train_lm(&tmp.path().join("second"), &["--resume", "run-v0"]);
    common::assert_error(&r, &["optimizer state", "format_version 5", "up to 1"]);
}
