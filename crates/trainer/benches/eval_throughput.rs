//! Evaluation throughput (forward passes only, no gradients) through `eval::evaluate`, the
//! path `eval-ppl` and training-time evaluation take, for the small config: vocab
//! 4096, d_model 256, 6 layers, 8 heads, FFN hidden 704, untied embeddings, windows of 256,
//! batches of 16; SwiGLU and dynActGLU. Prints tokens/s and ms per batch (best of the timed
//! passes after one warm-up batch).
//!
//! Run: `cargo bench -p dynact-trainer --bench eval_throughput`. Environment:
//! `DYNACT_BENCH_BATCHES` (timed batches per pass, default 4), `DYNACT_BENCH_DEVICE` (`cpu`,
//! `cuda`, ...; a GPU needs `--features cuda`), `DYNACT_BENCH_DTYPE` (`f32` or `bf16`).

use candle_core::Device;
use dynact_data::TokenStream;
use dynact_model::{init_model, Checkpoint, FfnKind, ModelConfig};
use dynact_trainer::eval::evaluate;
use dynact_trainer::{parse_device, parse_dtype};

// As in the binaries (see train-lm.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEQ_LEN: usize = 256;
const BATCH: usize = 16;

fn config(ffn: FfnKind) -> ModelConfig {
    ModelConfig {
        ffn,
        vocab_size: 4096,
        hidden_size: 256,
        intermediate_size: 704,
        num_hidden_layers: 6,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        max_position_embeddings: SEQ_LEN,
        tie_word_embeddings: false,
        ..ModelConfig::default()
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn main() -> anyhow::Result<()> {
    // The thread and allocator settings eval-ppl uses.
    dynact_trainer::set_up_cpu(0);
    let batches: usize = env_or("DYNACT_BENCH_BATCHES", "4").parse()?;
    let device_name = env_or("DYNACT_BENCH_DEVICE", "cpu");
    let dtype_name = env_or("DYNACT_BENCH_DTYPE", "f32");
    let device: Device = parse_device(&device_name)?;
    let dtype = parse_dtype(&dtype_name)?;
    // Deterministic pseudo-random tokens, enough for the timed batches.
    let n = batches * BATCH * SEQ_LEN + 1;
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 8) % 4096)
        .collect();
    let stream = TokenStream::from_tokens(tokens);
    println!(
        "eval throughput: vocab 4096, d_model 256, 6 layers, 8 heads, FFN 704, untied; seq {SEQ_LEN}, batch {BATCH}; {device_name} {dtype_name}, {batches} batches"
    );
    println!("| ffn       | tokens/s | ms/batch |");
    println!("|-----------|---------:|---------:|");
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        // Detached weights, as eval-ppl and training-time evaluation use them.
        let (varmap, _) = init_model(&config(ffn), 0, &device)?;
        let model = Checkpoint {
            config: config(ffn),
            varmap,
        }
        .inference_model(&device)?;
        let model = model.with_compute_dtype(dtype);
        // warm-up: one batch
        evaluate(
            &model,
            &stream,
            SEQ_LEN,
            BATCH,
            Some(BATCH),
            None,
            &device,
            |_, _| {},
        )?;
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let r = evaluate(
                &model,
                &stream,
                SEQ_LEN,
                BATCH,
                None,
                None,
                &device,
                |_, _| {},
            )?;
            best = best.min(r.seconds);
        }
        let tokens = (batches * BATCH * SEQ_LEN) as f64;
        println!(
            "| {:<9} | {:>8.0} | {:>8.1} |",
            ffn.name(),
            tokens / best,
            best * 1e3 / batches as f64
        );
    }
    Ok(())
}
