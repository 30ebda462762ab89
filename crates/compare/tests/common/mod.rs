//! Run directories written by hand in the layout `train-lm` uses (run.toml, eval.jsonl,
//! metrics.jsonl), for the tests of `compare` and of the `compare-runs` binary
//! (crates/cli/tests/compare_runs.rs).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

pub const STEPS: [u64; 3] = [100, 200, 300];

/// Writes a run directory. `ppl` are the validation perplexities at `steps`; val_ce = ln(ppl).
/// `extra` is appended to the `[train]` table.
pub fn write_run(
    root: &Path,
    name: &str,
    ffn: &str,
    seed: u64,
    steps: &[u64],
    ppl: &[f64],
    extra: &str,
) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        r#"name = "{name}"
run_dir = "checkpoints/{name}"

[model]
ffn = "{ffn}"
hidden_size = 64
num_hidden_layers = 2

[model.dynact]
init_alpha = 1.0
init_beta = 0.0

[data]
shuffle_seed = {seed}

[train]
seed = {seed}
steps = 300
lr = 0.001
out_dir = "checkpoints/{name}/ckpt"
log_file = "logs/seed-{seed}.txt"
{extra}

[eval]
eval_at = [100, 200, 300]
"#
    );
    fs::write(dir.join("run.toml"), toml).unwrap();
    let mut eval = String::new();
    for (s, p) in steps.iter().zip(ppl) {
        eval.push_str(&format!(
            "{{\"step\": {s}, \"tokens_seen\": {}, \"val_ce\": {}, \"val_ppl\": {p}, \"val_bpb\": null, \"elapsed_s\": 1.5}}\n",
            s * 64,
            p.ln()
        ));
    }
    fs::write(dir.join("eval.jsonl"), eval).unwrap();
    let mut metrics = String::new();
    for step in (10..=300).step_by(10) {
        let loss = 3.0 - step as f64 / 200.0 + (seed as f64) * 0.01;
        let ab = if ffn == "dynactglu" {
            let t = step as f64 / 300.0;
            format!(
                ", \"alpha\": [{}, {}], \"beta\": [{}, {}]",
                1.0 - 0.1 * t,
                1.0 - 0.2 * t,
                0.05 * t,
                0.15 * t
            )
        } else {
            String::new()
        };
        metrics.push_str(&format!(
            "{{\"step\": {step}, \"loss\": {loss}, \"lr\": 0.001, \"grad_norm\": 0.9, \"tokens_per_s\": 1234.0, \"elapsed_s\": 3.1{ab}}}\n"
        ));
    }
    fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    dir
}

/// Two groups with two seeds each:
///   swiglu   s1 [10, 6, 5.0], s2 [12, 7, 5.2]  -> mean [11, 6.5, 5.1]
///   dynactglu s1 [8, 5.5, 4.6], s2 [9, 5.0, 4.4] -> mean [8.5, 5.25, 4.5]
pub fn two_groups(root: &Path) -> Vec<PathBuf> {
    vec![
        write_run(
            root,
            "swiglu-s1",
            "swiglu",
            1,
            &STEPS,
            &[10.0, 6.0, 5.0],
            "",
        ),
        write_run(
            root,
            "swiglu-s2",
            "swiglu",
            2,
            &STEPS,
            &[12.0, 7.0, 5.2],
            "",
        ),
        write_run(
            root,
            "dynact-s1",
            "dynactglu",
            1,
            &STEPS,
            &[8.0, 5.5, 4.6],
            "",
        ),
        write_run(
            root,
            "dynact-s2",
            "dynactglu",
            2,
            &STEPS,
            &[9.0, 5.0, 4.4],
            "",
        ),
    ]
}
