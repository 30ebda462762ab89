//! Helpers shared by the eval-ppl, hub and generate tests: tiny checkpoints written to disk
//! and the binaries run as subprocesses, with their one-line errors checked.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use dynact_data::Tokenizer;
use dynact_model::checkpoint::save_tensors;
use dynact_model::{init_model, Checkpoint, FfnKind, ModelConfig, Transformer};

/// A two-layer model over the byte vocabulary (257), grouped-query attention (4 heads, 2 kv).
pub fn tiny(ffn: FfnKind) -> ModelConfig {
    ModelConfig {
        ffn,
        vocab_size: 257,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        ..ModelConfig::default()
    }
}

/// Writes a fresh model of `cfg` (seeded) to `dir` as a checkpoint folder, with the byte
/// tokenizer beside it when `with_tokenizer`.
pub fn write_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    seed: u64,
    with_tokenizer: bool,
) -> (VarMap, Transformer) {
    let (varmap, model) = init_model(cfg, seed, &Device::Cpu).unwrap();
    Checkpoint {
        config: cfg.clone(),
        varmap: varmap.clone(),
    }
    .save_dir(dir)
    .unwrap();
    if with_tokenizer {
        Tokenizer::bytes()
            .save(&dir.join("tokenizer.json"))
            .unwrap();
    }
    (varmap, model)
}

/// The named tensors of `varmap` in `dtype`, sorted by name.
pub fn tensors_as(varmap: &VarMap, dtype: DType) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, var)| (k.clone(), var.as_tensor().to_dtype(dtype).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes `tensors` as one safetensors file.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) {
    save_tensors(tensors, path).unwrap();
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `cmd` run to the end: its exit code and output.
pub fn finish(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Clears the Hugging Face variables of the environment (a test never reaches the network),
/// then sets `env`.
fn offline(cmd: &mut Command, env: &[(&str, &Path)]) {
    for k in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "RUST_LOG",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Runs binary `exe` with `args` in `cwd`, with `env` set (and the Hub variables cleared
/// unless given).
pub fn run(exe: &str, args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new(exe);
    cmd.args(args).current_dir(cwd);
    offline(&mut cmd, env);
    finish(&mut cmd)
}

/// `train-lm` as [`tiny_train_lm`] sets it up, with `args`, in `dir`, offline, `env` set.
pub fn tiny_train(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut cmd = tiny_train_lm(dir);
    cmd.args(args).current_dir(dir);
    offline(&mut cmd, env);
    finish(&mut cmd)
}

pub fn eval_ppl(args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Run {
    run(env!("CARGO_BIN_EXE_eval-ppl"), args, cwd, env)
}

pub fn generate(args: &[&str], cwd: &Path) -> Run {
    run(env!("CARGO_BIN_EXE_generate"), args, cwd, &[])
}

/// The one JSON object a successful `eval-ppl --json` prints.
pub fn json_of(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "eval-ppl failed: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is not one line: {:?}", r.stdout);
    serde_json::from_str(lines[0]).unwrap()
}

/// A failure: exit code 1, one `error: ...` line on stderr containing every needle, no panic.
pub fn assert_error(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, 1, "expected exit 1; stderr: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", r.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// `train-lm` set up to train a one-layer toy model on a small built-in corpus in seconds,
/// caching its tokens under `dir/cache`; callers add their own flags.
pub fn tiny_train_lm(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train-lm"));
    for kv in [
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_hidden_layers=1",
        "model.num_attention_heads=2",
        "model.num_key_value_heads=2",
        "data.builtin_bytes=100000",
        "train.batch_size=2",
        "train.seq_len=32",
        "train.log_every=1",
    ] {
        cmd.args(["--set", kv]);
    }
    cmd.args([
        "--set",
        &format!("data.cache_dir=\"{}\"", dir.join("cache").display()),
    ]);
    cmd
}
