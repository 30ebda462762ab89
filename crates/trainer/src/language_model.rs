//! What evaluation and generation ask of a model, whichever architecture it is: the loss of
//! every target of a batch of windows ([`ScoresTokens`]), and the next token's logits as a
//! sequence grows ([`Decoder`]). This project's decoder and the public models of
//! [`crate::public_models`] both answer them, so `eval-ppl` and `generate` treat them alike.

use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor};
use dynact_model::{FfnKind, KvCache, ModelConfig, Transformer};

use crate::public_models::PublicModel;

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

/// This project's decoder with its KV cache.
pub struct TransformerDecoder {
    model: Transformer,
    cache: KvCache,
}

impl TransformerDecoder {
    pub fn new(model: Transformer) -> Self {
        let cache = KvCache::new(model.config().num_hidden_layers);
        TransformerDecoder { model, cache }
    }
}

impl Decoder for TransformerDecoder {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn max_positions(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn reset(&mut self) {
        self.cache = KvCache::new(self.model.config().num_hidden_layers);
    }

    fn feed(&mut self, new: &[u32], device: &Device) -> Result<Vec<f32>> {
        let input = Tensor::from_slice(new, (1, new.len()), device)?;
        let logits = self.model.forward_cached(&input, &mut self.cache)?; // (1, T, V)
        let t = logits.dim(1)?;
        Ok(logits.i((0, t - 1))?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

/// A public model and the sequence fed to it so far.
pub struct PublicDecoder {
    model: PublicModel,
    info: ModelInfo,
    history: Vec<u32>,
}

impl Decoder for PublicDecoder {
    fn vocab_size(&self) -> usize {
        self.info.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.info.max_positions
    }

    fn reset(&mut self) {
        self.model.reset();
        self.history.clear();
    }

    fn feed(&mut self, new: &[u32], device: &Device) -> Result<Vec<f32>> {
        let offset = self.history.len();
        self.history.extend_from_slice(new);
        let input = Tensor::from_slice(new, (1, new.len()), device)?;
        let logits = self.model.next_logits(&input, offset, &self.history)?;
        Ok(logits.to_vec1()?)
    }
}

/// A loaded model of any supported architecture.
pub enum Network {
    /// This project's decoder (Llama, SwiGLU or dynActGLU).
    Ours(Transformer),
    Public {
        model: PublicModel,
        info: ModelInfo,
    },
}

impl Network {
    /// The decoder for `generate`.
    pub fn into_decoder(self) -> Box<dyn Decoder> {
        match self {
            Network::Ours(model) => Box::new(TransformerDecoder::new(model)),
            Network::Public { model, info } => Box::new(PublicDecoder {
                model,
                info,
                history: vec![],
            }),
        }
    }
}

impl ScoresTokens for &mut Network {
    fn token_nll(&mut self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        match &mut **self {
            Network::Ours(model) => crate::row_shards::token_nll(model, ids, targets),
            Network::Public { model, .. } => {
                let logits = model.all_logits(ids)?;
                let (b, t, v) = logits.dims3()?;
                Ok(dynact_model::ops::token_nll(
                    &logits.reshape((b * t, v))?,
                    &targets.reshape(b * t)?,
                )?)
            }
        }
    }
}
