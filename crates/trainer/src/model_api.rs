//! What evaluation and generation ask of a model, whichever architecture it is: what the tools
//! print of it ([`ModelInfo`]), the loss of every target of a batch of windows
//! ([`ScoresTokens`]), and the next token's logits as a sequence grows ([`Decoder`]). The
//! architectures (this project's decoder, the public models) answer them; `language_model`
//! puts them behind one type, so `eval-ppl` and `generate` treat them alike.

use anyhow::Result;
use candle_core::{Device, Tensor};
use dynact_model::{FfnKind, ModelConfig, Transformer};

/// What the tools print and check of a model, whatever its architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// `config.json`'s model_type (`llama`, `dynact_llama`, `gpt2`, `qwen2`, ...).
    pub model_type: String,
    /// This project's FFN (SwiGLU or dynActGLU) for its own models; None for public ones.
    pub ffn: Option<FfnKind>,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub layers: usize,
    pub hidden_size: usize,
}

impl ModelInfo {
    /// The info of this project's own model.
    pub fn of(cfg: &ModelConfig) -> Self {
        ModelInfo {
            model_type: cfg.to_hf_json()["model_type"]
                .as_str()
                .unwrap_or("llama")
                .to_string(),
            ffn: Some(cfg.ffn),
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
            layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
        }
    }

    /// `dynactglu`, `swiglu`, or the public model_type.
    pub fn kind(&self) -> &str {
        self.ffn.map_or(self.model_type.as_str(), |f| f.name())
    }
}

/// Cross-entropy in nats of every target, (B * T,) f32, for ids and targets (B, T).
pub trait ScoresTokens {
    fn token_nll(&mut self, ids: &Tensor, targets: &Tensor) -> Result<Tensor>;
}

impl ScoresTokens for &Transformer {
    fn token_nll(&mut self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        crate::row_shards::token_nll(self, ids, targets)
    }
}

/// Next-token logits for a growing sequence.
pub trait Decoder {
    fn vocab_size(&self) -> usize;
    fn max_positions(&self) -> usize;
    /// Forgets the sequence so far.
    fn reset(&mut self);
    /// Feeds `new` tokens after those fed since the last reset; logits (V,) of the next one.
    fn feed(&mut self, new: &[u32], device: &Device) -> Result<Vec<f32>>;
}
