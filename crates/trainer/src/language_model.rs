//! A loaded model of any supported architecture ([`Network`]) and its decoders: this
//! project's decoder and the public models of [`crate::public_models`] behind the questions of
//! [`crate::model_api`], so `eval-ppl` and `generate` treat them alike.

use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor};
use dynact_model::{KvCache, Transformer};

use crate::model_api::{Decoder, ModelInfo, ScoresTokens};
use crate::public_models::PublicModel;

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
