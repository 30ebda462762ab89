//! CPU training benchmark: the step train-lm takes (forward, backward, clipping, AdamW:
//! `Trainer::train_step`) for the cpu-repro, micro and small configs and both FFNs. Prints a
//! table with the median step time, tokens/s, achieved GFLOP/s (model FLOPs, as nanoGPT counts
//! them) and their share of this machine's f32 matmul peak measured in the same process
//! (before the row's work and after it, the better counting), evaluation tokens/s (forward
//! only, the best of 10 passes) and its model FLOPs' share of that peak (a third of a training
//! step's per token), peak RSS, and the speed-up from 1 thread to all cores.
//! `scripts/pytorch_reference.py` prints the same table for PyTorch.
//!
//! Run: `cargo bench -p dynact-trainer --bench cpu_train`. Environment: `DYNACT_BENCH_STEPS`
//! (timed steps, default 6), `DYNACT_BENCH_CONFIGS` (default `cpu-repro,micro,small`),
//! `DYNACT_BENCH_SCALING=0` to skip the 1-thread runs. Each row is measured in a child
//! process of its own, so that peak RSS and the thread count are its own.

use std::process::Command;
use std::time::Instant;

use dynact_data::{Dataset, TokenStream, Tokenizer};
use dynact_model::flops::training_flops_per_token;
use dynact_model::FfnKind;
use dynact_trainer::config::RunConfig;
use dynact_trainer::eval::evaluate;
use dynact_trainer::peak_flops::measured_cpu_matmul;
use dynact_trainer::train::Trainer;

// As in the binaries (see train-lm.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// name -> (vocab, d_model, layers, heads, ffn hidden, seq, batch), as in the PyTorch script.
fn shape(name: &str) -> (usize, usize, usize, usize, usize, usize, usize) {
    match name {
        "cpu-repro" => (256, 128, 4, 4, 352, 64, 12),
        "micro" => (512, 128, 4, 4, 352, 128, 16),
        "small" => (4096, 256, 6, 8, 704, 256, 16),
        other => panic!("unknown config {other}"),
    }
}

fn config(name: &str, ffn: FfnKind) -> RunConfig {
    let (vocab, d, layers, heads, hidden, seq, batch) = shape(name);
    let mut cfg = RunConfig::default();
    cfg.model.ffn = ffn;
    cfg.model.vocab_size = vocab;
    cfg.model.hidden_size = d;
    cfg.model.num_hidden_layers = layers;
    cfg.model.num_attention_heads = heads;
    cfg.model.num_key_value_heads = heads;
    cfg.model.intermediate_size = hidden;
    cfg.model.max_position_embeddings = seq;
    cfg.model.tie_word_embeddings = false;
    cfg.train.seq_len = seq;
    cfg.train.batch_size = batch;
    cfg.optim.weight_decay = 0.1;
    cfg.optim.grad_clip = 1.0;
    cfg
}

/// Pseudo-random token ids below `vocab`.
fn tokens(n: usize, vocab: usize, seed: u64) -> TokenStream {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect();
    TokenStream::from_tokens(v)
}

/// Timed evaluation passes per row (the best counts), as in `scripts/pytorch_reference.py`.
const EVAL_PASSES: usize = 10;

/// One row, measured in this process; printed as one JSON line.
fn measure(name: &str, ffn: FfnKind, steps: usize) -> serde_json::Value {
    let cfg = config(name, ffn);
    let (vocab, _, _, _, _, seq, batch) = shape(name);
    let dataset = Dataset {
        tokenizer: Tokenizer::bytes(),
        train: tokens(64 * batch * seq, vocab, 1),
        val: tokens(8 * batch * seq + 1, vocab, 2),
        val_bytes: None,
        description: "random tokens".into(),
    };
    let val = dataset.val.clone();
    let flops = training_flops_per_token(&cfg.model, seq).unwrap();
    // The peak is measured before the row's work and after it, the better of the two counting:
    // the other tenants of a shared machine slow it for seconds at a time, and one measurement
    // taken in such a spell made the evaluation's share of "the peak" 105%.
    let peak_before = measured_cpu_matmul().unwrap_or(f64::NAN);
    let mut trainer = Trainer::in_memory(cfg, dataset).unwrap();
    let mut times = vec![];
    for step in 1..=steps as u64 + 1 {
        let stats = trainer.train_step(step).unwrap();
        if step > 1 {
            times.push(stats.seconds);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (batch * seq) as f64;
    let model = trainer.inference_model().unwrap();
    let device = candle_core::Device::Cpu;
    let windows = 4 * batch;
    let eval_pass = |windows: usize| {
        let start = Instant::now();
        evaluate(
            &model,
            &val,
            seq,
            batch,
            Some(windows),
            None,
            &device,
            |_, _| {},
        )
        .unwrap();
        start.elapsed().as_secs_f64()
    };
    eval_pass(batch);
    // The best of a few passes, as the PyTorch script takes: one pass is short enough that
    // the other tenants of a shared machine decide much of its time.
    let best = (0..EVAL_PASSES)
        .map(|_| eval_pass(windows))
        .fold(f64::INFINITY, f64::min);
    let eval_tps = (windows * seq) as f64 / best;
    let peak = peak_before.max(measured_cpu_matmul().unwrap_or(f64::NAN));
    serde_json::json!({
        "step_s": median, "tokens_per_s": tokens / median,
        "gflops": tokens * flops / median / 1e9, "peak_gflops": peak / 1e9,
        "eval_tokens_per_s": eval_tps, "eval_gflops": eval_tps * flops / 3.0 / 1e9,
        "peak_rss_mb": dynact_trainer::peak_memory_mb(),
    })
}

fn child(name: &str, ffn: FfnKind, threads: Option<usize>) -> serde_json::Value {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.env("DYNACT_BENCH_ROW", format!("{name},{}", ffn.name()));
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.lines().last().unwrap()).unwrap()
}

fn main() {
    let steps: usize = std::env::var("DYNACT_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    if let Ok(row) = std::env::var("DYNACT_BENCH_ROW") {
        let (name, ffn) = row.split_once(',').unwrap();
        // The thread settings train-lm uses.
        dynact_trainer::set_up_cpu(0);
        println!("{}", measure(name, ffn.parse().unwrap(), steps));
        return;
    }
    let configs =
        std::env::var("DYNACT_BENCH_CONFIGS").unwrap_or_else(|_| "cpu-repro,micro,small".into());
    let scaling = std::env::var("DYNACT_BENCH_SCALING").map_or(true, |v| v != "0");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("dynact-lm (Candle), {cores} threads, {steps} timed steps per row (median)");
    println!("| config | ffn | step s (median) | tokens/s | GFLOP/s | of peak | eval tokens/s | eval of peak | peak RSS MB | 1 -> {cores} threads |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in configs.split(',') {
        for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
            let all = child(name, ffn, None);
            let speedup = if scaling && cores > 1 {
                let one = child(name, ffn, Some(1));
                format!(
                    "{:.2}x",
                    all["tokens_per_s"].as_f64().unwrap() / one["tokens_per_s"].as_f64().unwrap()
                )
            } else {
                "-".into()
            };
            let f = |k: &str| all[k].as_f64().unwrap();
            println!(
                "| {name} | {} | {:.4} | {:.0} | {:.1} | {:.0}% | {:.0} | {:.0}% | {:.0} | {speedup} |",
                ffn.name(),
                f("step_s"),
                f("tokens_per_s"),
                f("gflops"),
                100.0 * f("gflops") / f("peak_gflops"),
                f("eval_tokens_per_s"),
                100.0 * f("eval_gflops") / f("peak_gflops"),
                f("peak_rss_mb"),
            );
        }
    }
}
