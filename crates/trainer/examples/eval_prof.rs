// Scratch profiling harness: NOT committed.
use dynact_data::{Dataset, TokenStream, Tokenizer};
use dynact_model::FfnKind;
use dynact_trainer::config::RunConfig;
use dynact_trainer::eval::evaluate;
use dynact_trainer::train::Trainer;
use std::time::Instant;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn shape(name: &str) -> (usize, usize, usize, usize, usize, usize, usize) {
    match name {
        "cpu-repro" => (256, 128, 4, 4, 352, 64, 12),
        "micro" => (512, 128, 4, 4, 352, 128, 16),
        "small" => (4096, 256, 6, 8, 704, 256, 16),
        o => panic!("{o}"),
    }
}
fn tokens(n: usize, vocab: usize, seed: u64) -> TokenStream {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    TokenStream::from_tokens(
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % vocab as u64) as u32
            })
            .collect(),
    )
}
fn main() {
    dynact_trainer::set_up_cpu(0);
    let name = std::env::var("CFG").unwrap_or("micro".into());
    let ffn: FfnKind = std::env::var("FFN")
        .unwrap_or("swiglu".into())
        .parse()
        .unwrap();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let train_steps: usize = std::env::var("TRAIN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (vocab, d, layers, heads, hidden, seq, batch) = shape(&name);
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
    let dataset = Dataset {
        tokenizer: Tokenizer::bytes(),
        train: tokens(64 * batch * seq, vocab, 1),
        val: tokens(8 * batch * seq + 1, vocab, 2),
        val_bytes: None,
        description: "r".into(),
    };
    let val = dataset.val.clone();
    let mut trainer = Trainer::in_memory(cfg, dataset).unwrap();
    if train_steps > 0 {
        let mut best = f64::INFINITY;
        for step in 1..=train_steps as u64 {
            let s = trainer.train_step(step).unwrap();
            best = best.min(s.seconds);
            if std::env::var("SHOW").is_ok() {
                println!("step {step} {:.1} ms", s.seconds * 1e3);
            }
        }
        println!("train best {:.0} tokens/s", (batch * seq) as f64 / best);
        return;
    }
    let model = trainer.inference_model().unwrap();
    let dev = candle_core::Device::Cpu;
    let windows = 4 * batch;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        evaluate(
            &model,
            &val,
            seq,
            batch,
            Some(windows),
            None,
            &dev,
            |_, _| {},
        )
        .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name} eval best {:.0} tokens/s",
        (windows * seq) as f64 / best
    );
}
