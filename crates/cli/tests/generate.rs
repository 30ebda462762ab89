//! `generate`: KV-cached decoding writes exactly what recomputing the whole sequence would,
//! greedy and seeded sampling are reproducible, and the binary prints the prompt and its
//! continuation (or one error line).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use dynact_model::{init_model, FfnKind, ForwardCtx, ModelConfig};
use dynact_trainer::language_model::TransformerDecoder;
use dynact_trainer::sample::{argmax, generate, Sampler, SamplingConfig};

fn greedy() -> Sampler {
    Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    })
    .unwrap()
}

#[test]
fn cached_decoding_equals_full_recomputation() {
    for ffn in [FfnKind::Swiglu, FfnKind::Dynactglu] {
        let cfg = ModelConfig {
            tie_word_embeddings: ffn == FfnKind::Dynactglu,
            ..tiny(ffn)
        };
        let (_, model) = init_model(&cfg, 4, &Device::Cpu).unwrap();
        let prompt = [10u32, 200, 33, 7, 99];
        let got = generate(
            &mut TransformerDecoder::new(model.clone()),
            &prompt,
            20,
            &mut greedy(),
            None,
            &Device::Cpu,
            |_| Ok(()),
        )
        .unwrap();
        let mut seq = prompt.to_vec();
        for _ in 0..20 {
            let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu).unwrap();
            let logits = model.forward(&ids, &ForwardCtx::EVAL).unwrap();
            let last: Vec<f32> = logits
                .i((0, seq.len() - 1))
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            seq.push(argmax(&last));
        }
        assert_eq!(got, seq[prompt.len()..], "{ffn:?}");
    }
}

#[test]
fn generation_stops_at_eos_and_at_the_context_limit() {
    let cfg = tiny(FfnKind::Swiglu);
    let (_, model) = init_model(&cfg, 4, &Device::Cpu).unwrap();
    let prompt = [10u32, 200, 33];
    let free = generate(
        &mut TransformerDecoder::new(model.clone()),
        &prompt,
        10,
        &mut greedy(),
        None,
        &Device::Cpu,
        |_| Ok(()),
    )
    .unwrap();
    let stop = free[3];
    let stopped = generate(
        &mut TransformerDecoder::new(model.clone()),
        &prompt,
        10,
        &mut greedy(),
        Some(stop),
        &Device::Cpu,
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(
        stopped,
        free[..=free.iter().position(|&t| t == stop).unwrap()]
    );
    // 64 positions: a prompt of 60 leaves room for 5 new tokens (the last is never fed back)
    let long = vec![1u32; 60];
    let out = generate(
        &mut TransformerDecoder::new(model.clone()),
        &long,
        100,
        &mut greedy(),
        None,
        &Device::Cpu,
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(out.len(), 5);
    assert!(generate(
        &mut TransformerDecoder::new(model.clone()),
        &[300],
        5,
        &mut greedy(),
        None,
        &Device::Cpu,
        |_| Ok(())
    )
    .is_err());
    assert!(generate(
        &mut TransformerDecoder::new(model.clone()),
        &[1; 65],
        5,
        &mut greedy(),
        None,
        &Device::Cpu,
        |_| Ok(())
    )
    .is_err());
}

#[test]
fn the_binary_writes_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    write_checkpoint(&ckpt, &tiny(FfnKind::Dynactglu), 8, true);
    let c = ckpt.to_str().unwrap();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [c, "--prompt", "Once upon a time", "--max-new-tokens", "12"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let go = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        generate_bin(&a, dir.path())
    };
    let g1 = go(args(&["--temperature", "0"]));
    assert_eq!(g1.code, 0, "{}", g1.stderr);
    assert!(g1.stdout.starts_with("Once upon a time"), "{}", g1.stdout);
    assert!(g1.stderr.contains("new tokens"), "{}", g1.stderr);
    assert_eq!(go(args(&["--temperature", "0"])).stdout, g1.stdout);
    let s1 = go(args(&["--seed", "5", "--top-k", "20", "--top-p", "0.9"]));
    let s2 = go(args(&["--seed", "5", "--top-k", "20", "--top-p", "0.9"]));
    assert_eq!(s1.code, 0, "{}", s1.stderr);
    assert_eq!(s1.stdout, s2.stdout);

    // bad input: one line each
    assert_error(&go(args(&["--temperature=-1"])), &["--temperature"]);
    let bare = dir.path().join("bare");
    write_checkpoint(&bare, &tiny(FfnKind::Swiglu), 8, false);
    assert_error(
        &generate_bin(&[bare.to_str().unwrap(), "--prompt", "x"], dir.path()),
        &["generate needs a tokenizer", "--tokenizer"],
    );
    assert_error(
        &generate_bin(&["missing", "--prompt", "x"], dir.path()),
        &["missing", "no such file"],
    );
}

fn generate_bin(args: &[&str], cwd: &std::path::Path) -> Run {
    common::generate(args, cwd)
}
