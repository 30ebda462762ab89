//! Data throughput: tokenization MB/s of this crate's encoders next to the `tokenizers` crate's
//! own `encode_batch` on the same text, and the loader's batches/s at seq_len 256, batch 16.
//! Text: Tiny Shakespeare (data/tinyshakespeare in the repository), else the built-in
//! synthetic corpus. Run: `cargo bench -p dynact-data --bench data_throughput`.

use std::path::Path;
use std::time::Instant;

use dynact_data::pretokenize::tokenize_documents;
use dynact_data::{builtin, BatchLoader, TokenStream, Tokenizer};

fn corpus() -> (String, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare/input.txt");
    match std::fs::read_to_string(&p) {
        Ok(t) => ("tinyshakespeare/input.txt".to_string(), t),
        Err(_) => (
            "built-in synthetic corpus".to_string(),
            builtin::generate(0, builtin::DEFAULT_BYTES),
        ),
    }
}

/// Best of three runs of `f`, in seconds.
fn time<T>(mut f: impl FnMut() -> T) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let (name, text) = corpus();
    let mb = text.len() as f64 / 1e6;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let docs = vec![text.clone()];
    println!(
        "text: {name}, {mb:.2} MB, {} threads",
        rayon::current_num_threads()
    );
    println!();
    println!("| tokenizer | encoder | MB/s | tokens |");
    println!("| --- | --- | ---: | ---: |");
    let bytes = Tokenizer::bytes();
    let t0 = Instant::now();
    let bpe = Tokenizer::train_bpe([text.as_str()], 4096).expect("training a BPE");
    let train_s = t0.elapsed().as_secs_f64();
    for (label, t) in [("bytes (257)", &bytes), ("bpe (4096)", &bpe)] {
        let ours = tokenize_documents(t, &docs, "bench").expect("encode");
        let s = time(|| tokenize_documents(t, &docs, "bench"));
        println!(
            "| {label} | dynact-data, both cores | {:.1} | {} |",
            mb / s,
            ours.len()
        );
        let batch = t
            .hf()
            .encode_batch(lines.clone(), false)
            .expect("encode_batch");
        let n: usize = batch.iter().map(|e| e.len()).sum();
        let s = time(|| t.hf().encode_batch(lines.clone(), false));
        println!(
            "| {label} | tokenizers encode_batch (lines) | {:.1} | {n} |",
            mb / s
        );
    }
    println!();
    println!("BPE training (4096) on the text: {train_s:.2} s");
    let g = time(|| builtin::generate(0, builtin::DEFAULT_BYTES));
    println!(
        "built-in corpus ({} bytes, seed 0): generated in {g:.3} s",
        builtin::DEFAULT_BYTES
    );
    println!();

    let stream = TokenStream::from_tokens(bytes.encode(&text).expect("encode"));
    println!("| loader (seq_len 256, batch 16) | batches/s | MB tokens/s |");
    println!("| --- | ---: | ---: |");
    for (label, depth) in [("prefetch thread", 4), ("inline", 0)] {
        let mut l = BatchLoader::new(stream.clone(), 256, 16, 0, 0, 1)
            .expect("loader")
            .with_prefetch(depth);
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(l.next_batch());
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "| {label} | {:.0} | {:.1} |",
            n as f64 / s,
            n as f64 * 256.0 * 16.0 / s / 1e6
        );
    }
}
