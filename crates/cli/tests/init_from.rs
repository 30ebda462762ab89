//! `train-lm --init-from SOURCE`: a new run from the weights of a run, a checkpoint folder or
//! a Hub model (from a cache laid out by the test); a SwiGLU source trained as dynActGLU
//! starts as the same function; keys that contradict the source are refused by name.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;
use dynact_model::{Checkpoint, FfnKind, ForwardCtx, ModelConfig};
use dynact_trainer::init_from::starting_from;

fn train(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    tiny_train(dir, args, env)
}

fn first_loss(run: &Path) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["loss"].as_f64().unwrap()
}

#[test]
fn a_swiglu_source_trained_as_dynactglu_starts_as_the_same_function() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(FfnKind::Swiglu);
    write_checkpoint(dir.path(), &cfg, 5, false);
    let source = Checkpoint::load_dir(dir.path(), &Device::Cpu).unwrap();
    let dyn_cfg = ModelConfig {
        ffn: FfnKind::Dynactglu,
        ..cfg
    };
    let (_, converted) = starting_from(&source, &dyn_cfg, 9, &Device::Cpu).unwrap();
    assert_eq!(converted.dynacts().len(), dyn_cfg.num_hidden_layers);
    let ids = Tensor::new(&[[1u32, 7, 42, 200, 3, 9, 11, 250]], &Device::Cpu).unwrap();
    let ctx = ForwardCtx::EVAL;
    let a = source
        .model(&Device::Cpu)
        .unwrap()
        .forward(&ids, &ctx)
        .unwrap();
    let b = converted.forward(&ids, &ctx).unwrap();
    let diff = common::max_abs(&(a - b).unwrap());
    assert!(diff < 1e-5, "logits differ by {diff}");
}

#[test]
fn runs_start_from_a_run_or_a_hub_model_and_contradictions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = train(
        d,
        &[
            "--ffn",
            "swiglu",
            "--steps",
            "40",
            "--eval-at",
            "40",
            "--lr",
            "0.01",
            "--run-dir",
            "src",
        ],
        &[],
    );
    assert_eq!(src.code, 0, "{}", src.stderr);

    let from_run = train(
        d,
        &[
            "--init-from",
            "src",
            "--ffn",
            "dynactglu",
            "--steps",
            "2",
            "--eval-at",
            "2",
            "--run-dir",
            "b",
        ],
        &[],
    );
    assert_eq!(from_run.code, 0, "{}", from_run.stderr);
    assert!(
        from_run.stderr.contains("starting from the weights of src"),
        "{}",
        from_run.stderr
    );
    let run_toml = std::fs::read_to_string(d.join("b/run.toml")).unwrap();
    assert!(run_toml.contains("init_from = \"src\"") && run_toml.contains("ffn = \"dynactglu\""));
    let fresh = train(
        d,
        &[
            "--ffn",
            "dynactglu",
            "--steps",
            "2",
            "--eval-at",
            "2",
            "--run-dir",
            "c",
        ],
        &[],
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    // The trained weights start far below a fresh model's loss.
    let (started, scratch) = (first_loss(&d.join("b")), first_loss(&d.join("c")));
    assert!(started < 0.8 * scratch, "init {started} vs fresh {scratch}");

    // The config key does what the flag does.
    let by_key = train(
        d,
        &[
            "--set",
            "init_from=\"src\"",
            "--steps",
            "2",
            "--eval-at",
            "2",
            "--run-dir",
            "b2",
        ],
        &[],
    );
    assert_eq!(by_key.code, 0, "{}", by_key.stderr);
    assert!(first_loss(&d.join("b2")) < 0.8 * scratch);

    assert_error(
        &train(
            d,
            &[
                "--init-from",
                "src",
                "--set",
                "model.hidden_size=64",
                "--run-dir",
                "e1",
            ],
            &[],
        ),
        &["model.hidden_size is 64", "32 in --init-from src"],
    );
    assert_error(
        &train(
            d,
            &["--init-from", "b", "--ffn", "swiglu", "--run-dir", "e2"],
            &[],
        ),
        &["dynActGLU model", "train it as dynactglu"],
    );

    // A Hub model repository (this run's checkpoint, as a snapshot of the cache).
    let home = d.join("hf-home");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.join("hub/models--someone--tiny-llama");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::copy(d.join("src/step-000040").join(f), snap.join(f)).unwrap();
    }
    let hub_env: &[(&str, &Path)] = &[("HF_HOME", &home)];
    let from_hub = train(
        d,
        &[
            "--init-from",
            "hf://someone/tiny-llama",
            "--steps",
            "2",
            "--eval-at",
            "2",
            "--run-dir",
            "h",
        ],
        hub_env,
    );
    assert_eq!(from_hub.code, 0, "{}", from_hub.stderr);
    assert!(first_loss(&d.join("h")) < 0.8 * scratch);
    let missing = train(
        d,
        &["--init-from", "hf://someone/absent", "--run-dir", "h2"],
        hub_env,
    );
    assert_error(
        &missing,
        &["hf://someone/absent", "not in the Hugging Face cache"],
    );
}
