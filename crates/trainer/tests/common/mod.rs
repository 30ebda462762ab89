//! Helpers shared by the tests: tiny checkpoints written to disk, tensors compared. The tests
//! that run the binaries (crates/cli/tests) share these too.
#![allow(dead_code)]

use std::path::Path;

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
