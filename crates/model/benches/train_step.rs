//! Forward and backward time of one training step for the configs of docs/candle-notes.md (micro:
//! vocab 512, d 128, 4 layers, seq 128, batch 16; small: vocab 4096, d 256, 6 layers, seq 256,
//! batch 16), both FFNs. `cargo bench -p dynact-model --bench train_step` prints a table.

use std::time::Instant;

use candle_core::{Device, Tensor};
use dynact_model::{init_model, FfnKind, ForwardCtx, ModelConfig};

// As in the binaries: glibc's allocator returns large buffers to the kernel after every step
// and takes page faults to get them back; mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(ffn: FfnKind, small: bool) -> (ModelConfig, usize, usize) {
    let cfg = ModelConfig {
        ffn,
        vocab_size: if small { 4096 } else { 512 },
        hidden_size: if small { 256 } else { 128 },
        intermediate_size: if small { 704 } else { 352 },
        num_hidden_layers: if small { 6 } else { 4 },
        num_attention_heads: if small { 8 } else { 4 },
        num_key_value_heads: if small { 8 } else { 4 },
        max_position_embeddings: 256,
        ..ModelConfig::default()
    };
    (cfg, 16, if small { 256 } else { 128 })
}

fn main() {
    let dev = Device::Cpu;
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!("| config | ffn | forward s | backward s | step s | tokens/s |");
    println!("|---|---|---:|---:|---:|---:|");
    for small in [false, true] {
        for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
            let (cfg, b, t) = config(ffn, small);
            let (_vm, model) = init_model(&cfg, 0, &dev).unwrap();
            let ids: Vec<u32> = (0..b * t)
                .map(|i| (i * 7919 % cfg.vocab_size) as u32)
                .collect();
            let x = Tensor::from_vec(ids.clone(), (b, t), &dev).unwrap();
            let y = Tensor::from_vec(
                ids.iter()
                    .map(|v| (v + 1) % cfg.vocab_size as u32)
                    .collect::<Vec<_>>(),
                (b, t),
                &dev,
            )
            .unwrap();
            let (mut fwd, mut bwd) = (0f64, 0f64);
            for rep in 0..=reps {
                let t0 = Instant::now();
                let loss = model.loss(&x, &y, &ForwardCtx::EVAL).unwrap();
                loss.to_scalar::<f32>().unwrap();
                let t1 = Instant::now();
                let grads = loss.backward().unwrap();
                drop(grads);
                if rep > 0 {
                    fwd += (t1 - t0).as_secs_f64();
                    bwd += t1.elapsed().as_secs_f64();
                }
            }
            let (fwd, bwd) = (fwd / reps as f64, bwd / reps as f64);
            println!(
                "| {} | {} | {fwd:.3} | {bwd:.3} | {:.3} | {:.0} |",
                if small { "small" } else { "micro" },
                ffn.name(),
                fwd + bwd,
                (b * t) as f64 / (fwd + bwd)
            );
        }
    }
}
