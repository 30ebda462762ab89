//! Helpers shared by the tests of the binaries: the binaries run as subprocesses, with their
//! one-line errors checked, and (from crates/trainer/tests/common) tiny checkpoints written to
//! disk.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

#[path = "../../../trainer/tests/common/mod.rs"]
mod checkpoints;
#[allow(unused_imports)]
pub use checkpoints::*;

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

/// The records of a JSON-lines file (metrics.jsonl, eval.jsonl).
pub fn records<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
