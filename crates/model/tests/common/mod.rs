//! Small configs and helpers shared by the model tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use dynact_model::{FfnKind, ModelConfig};

pub fn tiny(ffn: FfnKind) -> ModelConfig {
    ModelConfig {
        ffn,
        vocab_size: 48,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        ..ModelConfig::default()
    }
}

/// Deterministic pseudo-random token ids (B, T).
pub fn ids(b: usize, t: usize, vocab: usize, salt: u32) -> Tensor {
    let v: Vec<u32> = (0..b * t)
        .map(|i| {
            ((i as u32 + 1)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt * 97)
                >> 7)
                % vocab as u32
        })
        .collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Deterministic values spread over [-2, 2), on the CPU.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i as u64 + 1)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed * 1442695040888963407)
                >> 33) as f32;
            (x / (1u64 << 31) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}
